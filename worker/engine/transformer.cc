// The one transformer forward (see transformer.h): embeddings, then per layer the
// pre-norm attention block and the pre-norm MLP with their residuals, then the final
// norm and the logits of the rows asked for. Device-neutral ATen calls only; the
// backend does the linear layers and the attention block.
#include "engine/transformer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace kvpool {
namespace {

// LayerNorm (GPT-2) or RMSNorm in float32 (Llama, as Hugging Face computes it).
at::Tensor Norm(const ModelConfig& c, const at::Tensor& x, const at::Tensor& w,
                const at::Tensor& b) {
  if (c.arch == Architecture::kGpt2) return at::layer_norm(x, {c.hidden_size}, w, b, c.norm_eps);
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + c.norm_eps);
  return w * normed.to(x.scalar_type());
}

}  // namespace

at::Tensor TransformerForward(const ModelConfig& c, const ModelWeights& weights,
                              ForwardBackend& backend, const at::Tensor& token_ids,
                              const at::Tensor& positions, const at::Tensor& logit_rows) {
  const bool gpt2 = c.arch == Architecture::kGpt2;
  at::Tensor x = at::embedding(weights.token_embedding, token_ids);
  if (gpt2) x.add_(at::embedding(weights.position_embedding, positions));
  // Whether some tokens need no logits (a prompt's, a chunk's): then the last layer
  // drops them after writing their K/V. Shapes only, so no device synchronisation; a
  // decode step's rows are all its tokens and go the usual way.
  const bool select = logit_rows.size(0) < token_ids.size(0);
  const auto last_layer = static_cast<int32_t>(c.num_layers) - 1;
  for (int32_t l = 0; l <= last_layer; ++l) {
    const LayerWeights& w = weights.layers[l];
    at::Tensor h = Norm(c, x, w.attn_norm_w, w.attn_norm_b);
    at::Tensor qkv = backend.Linear(h, w.qkv_w, w.qkv_b, {}, /*gelu_tanh=*/false);
    at::Tensor attn;
    if (select && l == last_layer) {
      attn = backend.AttentionRows(l, qkv, logit_rows);
      x = x.index_select(0, logit_rows);
    } else {
      attn = backend.Attention(l, qkv);
    }
    x = backend.Linear(attn, w.o_w, w.o_b, /*residual=*/x, /*gelu_tanh=*/false);
    h = Norm(c, x, w.mlp_norm_w, w.mlp_norm_b);
    at::Tensor up;
    if (gpt2) {
      up = backend.Linear(h, w.up_w, w.up_b, {}, /*gelu_tanh=*/c.gelu_tanh);
      if (!c.gelu_tanh) up = at::gelu(up, "none");
    } else {
      up = backend.Linear(h, w.up_w, w.up_b, {}, /*gelu_tanh=*/false);
      auto parts = up.split(c.intermediate_size, /*dim=*/1);
      up = at::silu(parts[0]) * parts[1];
    }
    x = backend.Linear(up, w.down_w, w.down_b, /*residual=*/x, /*gelu_tanh=*/false);
  }
  // x holds the logit rows only, either way.
  at::Tensor last = select ? x : x.index_select(0, logit_rows);
  last = Norm(c, last, weights.final_norm_w, weights.final_norm_b);
  return backend.Linear(last, weights.lm_head, {}, {}, /*gelu_tanh=*/false).to(at::kFloat);
}

RotaryTables MakeRotaryTables(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  at::Tensor cos = at::empty({c.max_position, half}, at::kFloat);
  at::Tensor sin = at::empty({c.max_position, half}, at::kFloat);
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(c.rope_theta),
                                  static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
  }
  float* cp = cos.data_ptr<float>();
  float* sp = sin.data_ptr<float>();
  for (int64_t p = 0; p < c.max_position; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv_freq[i];
      cp[p * half + i] = std::cos(angle);
      sp[p * half + i] = std::sin(angle);
    }
  }
  return {cos, sin};
}

}  // namespace kvpool
