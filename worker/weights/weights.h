// Model weights in the engine's layout: every matrix is [out_features, in_features],
// fp32, contiguous, on the engine's device, so that a linear layer is y = W x (+ b):
// at batch 1 that is one BLAS gemv over rows. Q, K and V are fused into one matrix
// (rows: all query heads, then K heads, then V heads); Llama's gate and up
// projections are fused too (rows: gate, then up).
//
// Producers: RandomWeights (seeded, the embedded default) and the Hugging Face
// folder loader (hf_loader.h). Consumers: the model (engine/model.h) and the
// Hugging Face folder writer.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "common/status.h"

namespace kvpool {

struct LayerWeights {
  at::Tensor attn_norm_w, attn_norm_b;  // GPT-2 ln_1 (w, b); Llama input_layernorm (w)
  at::Tensor qkv_w, qkv_b;              // [(H + 2*Hkv) * D, hidden]; bias GPT-2 only
  at::Tensor o_w, o_b;                  // [hidden, H * D]; bias GPT-2 only
  at::Tensor mlp_norm_w, mlp_norm_b;    // GPT-2 ln_2; Llama post_attention_layernorm
  // GPT-2: up_w = c_fc [inter, hidden] (+ up_b), down_w = c_proj [hidden, inter] (+ down_b).
  // Llama: up_w = [gate; up] [2 * inter, hidden], down_w [hidden, inter], no biases.
  at::Tensor up_w, up_b;
  at::Tensor down_w, down_b;
};

struct ModelWeights {
  at::Tensor token_embedding;     // [vocab, hidden]
  at::Tensor position_embedding;  // [max_position, hidden], GPT-2 only
  at::Tensor final_norm_w, final_norm_b;
  at::Tensor lm_head;  // [vocab, hidden]; the same tensor as token_embedding when tied
  std::vector<LayerWeights> layers;

  // Bytes a decode step must read: every weight matrix once (the tied head once).
  int64_t ParameterBytes() const;
  // Checks every tensor's shape against the config; names the first mismatch.
  Status Validate(const ModelConfig& config) const;
  // Moves (or casts) every tensor; used by the GPU path.
  ModelWeights To(at::Device device, at::ScalarType dtype) const;
};

// Seeded random weights (std 0.02, norms 1, biases 0): the same bytes on every run
// and machine (our own generator, not ATen's, whose sampling changes across versions).
ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed = 42);

}  // namespace kvpool
