// The one transformer forward: GPT-2 and Llama are configurations of it (learned
// positions or rotary ones, LayerNorm or RMSNorm, GELU or SwiGLU), written once over
// a ForwardBackend that supplies the parts a device does its own way: the linear
// layers (with their fused epilogues) and the attention block (rotary positions, the
// K/V write into the pool, paged attention). The CPU runner (engine/model.h) and the
// CUDA runner (engine/cuda_model_runner.cc) are backends; what they share (the layer
// order, embeddings, norms, activations, the rotary tables) lives here only. This
// file must never touch sequences, blocks or sampling, and never synchronise with a
// device (the CUDA runner captures this forward into CUDA graphs).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/model_config.h"
#include "weights/weights.h"

namespace kvpool {

class ForwardBackend {
 public:
  virtual ~ForwardBackend() = default;
  // x W^T + b (b may be undefined), then tanh-GELU when `gelu_tanh`, then plus
  // `residual` when it is defined. A backend may add into `residual` in place and
  // return it: the forward never reads the residual's old value afterwards.
  virtual at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            const at::Tensor& residual, bool gelu_tanh) = 0;
  // Layer `layer`'s attention over the packed batch: rotary positions on q and k
  // (Llama), every token's K/V written to its pool slot, then paged attention through
  // each sequence's block table. qkv is [tokens, (heads + 2 * kv_heads) * head_dim]
  // (a backend may rotate it in place); returns [tokens, heads * head_dim].
  virtual at::Tensor Attention(int32_t layer, const at::Tensor& qkv) = 0;
  // The same, returning only the output rows `rows` (int64, on the weights' device):
  // every token's K/V is still written, but only those queries need their attention.
  // The forward asks for it in the last layer, whose outputs feed nothing but the
  // logits. A backend may compute every row and select (this default).
  virtual at::Tensor AttentionRows(int32_t layer, const at::Tensor& qkv, const at::Tensor& rows) {
    return Attention(layer, qkv).index_select(0, rows);
  }
};

// The logits [logit_rows, vocab] in float32, on the weights' device. token_ids,
// positions and logit_rows are int64 tensors on that device. The last layer carries
// only the logit rows past its attention (as llama.cpp's output ids do): a prompt's
// other tokens need that layer's K/V and nothing after it.
at::Tensor TransformerForward(const ModelConfig& config, const ModelWeights& weights,
                              ForwardBackend& backend, const at::Tensor& token_ids,
                              const at::Tensor& positions, const at::Tensor& logit_rows);

// Rotary embedding tables [max_position, head_dim / 2], float32 on the CPU, with the
// same float32 arithmetic as Hugging Face's LlamaRotaryEmbedding.
struct RotaryTables {
  at::Tensor cos, sin;
};
RotaryTables MakeRotaryTables(const ModelConfig& config);

}  // namespace kvpool
