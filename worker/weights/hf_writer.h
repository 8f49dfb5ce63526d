// Writing engine weights as a Hugging Face model folder (config.json and a single
// model.safetensors in HF naming, q/k/v and gate/up unfused, GPT-2's Conv1D matrices
// transposed back to [in, out]) that `transformers` loads as GPT2LMHeadModel or
// LlamaForCausalLM with no missing keys: the way to run the reference implementation
// on exactly our (random) weights. The inverse of hf_loader.h; it never reads.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/model_config.h"
#include "common/status.h"
#include "weights/weights.h"

namespace kvpool {

// Creates `dir` if needed and overwrites its config.json and model.safetensors.
// `dtype`: at::kFloat, at::kHalf or at::kBFloat16 (also written as torch_dtype).
Status SaveHfFolder(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                    at::ScalarType dtype = at::kFloat);

}  // namespace kvpool
