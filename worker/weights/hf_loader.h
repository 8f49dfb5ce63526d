// Loading a Hugging Face model folder (config.json plus model.safetensors, or the
// shards named by model.safetensors.index.json) into the engine's fp32 fused layout
// of weights.h: HF GPT-2 Conv1D matrices are transposed to [out, in], Llama's q/k/v
// and gate/up projections are concatenated. Every stored tensor must be consumed
// exactly once (known non-parameter buffers aside) and have the expected shape, so a
// folder for a different model fails loudly instead of loading half-right. It does
// not parse config.json itself (ModelConfigFromHfJson does) and never writes.
#pragma once

#include <string>

#include "common/model_config.h"
#include "common/status.h"
#include "weights/weights.h"

namespace kvpool {

// Reads dir/config.json; the config is named after the folder's basename.
StatusOr<ModelConfig> LoadHfConfig(const std::string& dir);

// CPU fp32 weights for `config` from dir's safetensors files, then Validate(config).
// NotFound for a missing file or tensor, InvalidArgument for a wrong shape, an
// unexpected tensor or an untied lm_head that differs from a tied config's
// embedding, DataLoss for a corrupt file or index.
StatusOr<ModelWeights> LoadHfWeights(const std::string& dir, const ModelConfig& config);

}  // namespace kvpool
