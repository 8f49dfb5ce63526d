// The CPU transformer forward (GPT-2 and Llama): see model.h. Embedding, per layer the
// fused QKV projection, K/V written to the pool, paged attention, the MLP, then the
// final norm and the logits of the rows asked for. Sampling is the engine's.
#include "engine/model.h"

#include <cmath>
#include <cstring>

#include "engine/cpu_linear.h"

namespace kvpool {
namespace {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * at::rsqrt(var + eps) * w;
}

at::Tensor ToTensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())}, at::kLong)
      .clone();
}

}  // namespace

Model::Model(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  if (config_.arch == Architecture::kLlama) {
    // Same float32 arithmetic as Hugging Face's LlamaRotaryEmbedding.
    const int64_t half = config_.head_dim / 2;
    std::vector<float> inv_freq(half);
    for (int64_t i = 0; i < half; ++i) {
      inv_freq[i] =
          1.0f / std::pow(static_cast<float>(config_.rope_theta),
                          static_cast<float>(2 * i) / static_cast<float>(config_.head_dim));
    }
    rope_cos_.resize(config_.max_position * half);
    rope_sin_.resize(config_.max_position * half);
    for (int64_t p = 0; p < config_.max_position; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * inv_freq[i];
        rope_cos_[p * half + i] = std::cos(angle);
        rope_sin_[p * half + i] = std::sin(angle);
      }
    }
  }
}

at::Tensor Model::Embed(const ForwardBatch& batch) const {
  at::Tensor x = at::embedding(weights_.token_embedding, ToTensor(batch.token_ids));
  if (config_.arch == Architecture::kGpt2) {
    x.add_(at::embedding(weights_.position_embedding, ToTensor(batch.positions)));
  }
  return x;
}

void Model::ApplyRope(at::Tensor& qkv, const ForwardBatch& batch) const {
  const int64_t d = config_.head_dim, half = d / 2;
  const int64_t heads_to_rotate = config_.num_heads + config_.num_kv_heads;  // q and k
  const int64_t row = qkv.size(1);
  float* data = qkv.data_ptr<float>();
  for (size_t t = 0; t < batch.positions.size(); ++t) {
    const float* cos = rope_cos_.data() + batch.positions[t] * half;
    const float* sin = rope_sin_.data() + batch.positions[t] * half;
    for (int64_t h = 0; h < heads_to_rotate; ++h) {
      float* v = data + t * row + h * d;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i] + a * sin[i];
      }
    }
  }
}

void Model::WriteKv(const at::Tensor& qkv, const ForwardBatch& batch, const KvPool& pool,
                    int32_t layer) const {
  const PoolGeometry& g = pool.geometry();
  const int64_t q_dim = config_.num_heads * config_.head_dim;
  const int64_t kv_dim = g.token_elems();
  const int64_t row = qkv.size(1);
  const float* src = qkv.data_ptr<float>();
  float* k_region = pool.Region(layer, KvPart::kKey);
  float* v_region = pool.Region(layer, KvPart::kValue);
  for (size_t t = 0; t < batch.slots.size(); ++t) {
    const int64_t slot = batch.slots[t];
    const int64_t dst = (slot / g.block_size) * g.block_elems() + (slot % g.block_size) * kv_dim;
    std::memcpy(k_region + dst, src + t * row + q_dim, kv_dim * sizeof(float));
    std::memcpy(v_region + dst, src + t * row + q_dim + kv_dim, kv_dim * sizeof(float));
  }
}

at::Tensor Model::Forward(const ForwardBatch& batch, const KvPool& pool) {
  const ModelConfig& c = config_;
  const bool gpt2 = c.arch == Architecture::kGpt2;
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  at::Tensor x = Embed(batch);
  at::Tensor attn = at::empty({num_tokens, c.num_heads * c.head_dim}, at::kFloat);
  for (int32_t l = 0; l < static_cast<int32_t>(c.num_layers); ++l) {
    const LayerWeights& w = weights_.layers[l];
    at::Tensor h =
        gpt2 ? at::layer_norm(x, {c.hidden_size}, w.attn_norm_w, w.attn_norm_b, c.norm_eps)
             : RmsNorm(x, w.attn_norm_w, c.norm_eps);
    at::Tensor qkv = CpuLinear(h, w.qkv_w, w.qkv_b).contiguous();
    if (!gpt2) ApplyRope(qkv, batch);
    WriteKv(qkv, batch, pool, l);
    PagedAttentionCpu(qkv.data_ptr<float>(), qkv.size(1), attn.data_ptr<float>(),
                      pool.Region(l, KvPart::kKey), pool.Region(l, KvPart::kValue), pool.geometry(),
                      batch.queries.data(), num_tokens, static_cast<int32_t>(c.num_heads), scale);
    x.add_(CpuLinear(attn, w.o_w, w.o_b));
    h = gpt2 ? at::layer_norm(x, {c.hidden_size}, w.mlp_norm_w, w.mlp_norm_b, c.norm_eps)
             : RmsNorm(x, w.mlp_norm_w, c.norm_eps);
    at::Tensor up = CpuLinear(h, w.up_w, w.up_b);
    if (gpt2) {
      up = at::gelu(up, c.gelu_tanh ? "tanh" : "none");
    } else {
      auto parts = up.split(c.intermediate_size, /*dim=*/1);
      up = at::silu(parts[0]) * parts[1];
    }
    x.add_(CpuLinear(up, w.down_w, w.down_b));
  }
  at::Tensor last = x.index_select(0, ToTensor(batch.logit_rows));
  last = gpt2 ? at::layer_norm(last, {c.hidden_size}, weights_.final_norm_w, weights_.final_norm_b,
                               c.norm_eps)
              : RmsNorm(last, weights_.final_norm_w, c.norm_eps);
  return CpuLinear(last, weights_.lm_head, at::Tensor());
}

}  // namespace kvpool
