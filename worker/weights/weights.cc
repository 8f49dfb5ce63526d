// ModelWeights: see weights.h. Seeded random weights in the engine's layout, the
// checks that loaded weights have the shapes the config says, and the copy to another
// device or dtype.
#include "weights/weights.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <string>

namespace kvpool {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fills with uniform values of standard deviation `std`, reproducibly: each chunk of
// 64Ki elements has its own stream keyed by (seed, tensor id, chunk), so the bytes do
// not depend on the thread count.
at::Tensor Random(std::vector<int64_t> shape, float std_dev, uint64_t seed, uint64_t tensor_id) {
  at::Tensor t = at::empty(shape, at::kFloat);
  float* data = t.data_ptr<float>();
  const int64_t n = t.numel();
  constexpr int64_t kChunk = 1 << 16;
  const float half_width = std_dev * std::sqrt(3.0f);
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      uint64_t state = seed * 0x100000001B3ull ^ (tensor_id << 32) ^ static_cast<uint64_t>(c);
      SplitMix64(state);
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
        const double u = static_cast<double>(SplitMix64(state) >> 11) * 0x1.0p-53;  // [0,1)
        data[i] = static_cast<float>((2.0 * u - 1.0) * half_width);
      }
    }
  });
  return t;
}

Status CheckShape(const at::Tensor& t, const std::vector<int64_t>& want, const std::string& what) {
  if (!t.defined()) return InvalidArgument("weight '" + what + "' is missing");
  if (t.sizes().vec() != want) {
    auto str = [](at::IntArrayRef s) {
      std::string out = "[";
      for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
      return out + "]";
    };
    return InvalidArgument("weight '" + what + "' has shape " + str(t.sizes()) + ", expected " +
                           str(want));
  }
  return Status::Ok();
}

}  // namespace

ModelWeights RandomWeights(const ModelConfig& c, uint64_t seed) {
  constexpr float kStd = 0.02f;
  const bool gpt2 = c.arch == Architecture::kGpt2;
  const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  uint64_t id = 0;
  ModelWeights w;
  w.token_embedding = Random({c.vocab_size, c.hidden_size}, kStd, seed, id++);
  if (gpt2) w.position_embedding = Random({c.max_position, c.hidden_size}, 0.01f, seed, id++);
  w.final_norm_w = at::ones({c.hidden_size});
  if (gpt2) w.final_norm_b = at::zeros({c.hidden_size});
  w.lm_head = c.tie_word_embeddings ? w.token_embedding
                                    : Random({c.vocab_size, c.hidden_size}, kStd, seed, id++);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm_w = at::ones({c.hidden_size});
    lw.mlp_norm_w = at::ones({c.hidden_size});
    lw.qkv_w = Random({q + 2 * kv, c.hidden_size}, kStd, seed, id++);
    lw.o_w = Random({c.hidden_size, q}, kStd, seed, id++);
    const int64_t up_rows = gpt2 ? c.intermediate_size : 2 * c.intermediate_size;
    lw.up_w = Random({up_rows, c.hidden_size}, kStd, seed, id++);
    lw.down_w = Random({c.hidden_size, c.intermediate_size}, kStd, seed, id++);
    if (gpt2) {
      lw.attn_norm_b = at::zeros({c.hidden_size});
      lw.mlp_norm_b = at::zeros({c.hidden_size});
      lw.qkv_b = Random({q + 2 * kv}, kStd, seed, id++);
      lw.o_b = at::zeros({c.hidden_size});
      lw.up_b = Random({c.intermediate_size}, kStd, seed, id++);
      lw.down_b = at::zeros({c.hidden_size});
    }
    w.layers.push_back(std::move(lw));
  }
  return w;
}

int64_t ModelWeights::ParameterBytes() const {
  int64_t bytes = 0;
  auto add = [&](const at::Tensor& t) {
    if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  };
  add(token_embedding);
  add(position_embedding);
  add(final_norm_w);
  add(final_norm_b);
  if (!lm_head.is_same(token_embedding)) add(lm_head);
  for (const LayerWeights& l : layers) {
    for (const at::Tensor* t :
         {&l.attn_norm_w, &l.attn_norm_b, &l.qkv_w, &l.qkv_b, &l.o_w, &l.o_b, &l.mlp_norm_w,
          &l.mlp_norm_b, &l.up_w, &l.up_b, &l.down_w, &l.down_b}) {
      add(*t);
    }
  }
  return bytes;
}

Status ModelWeights::Validate(const ModelConfig& c) const {
  const bool gpt2 = c.arch == Architecture::kGpt2;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  KVPOOL_RETURN_IF_ERROR(CheckShape(token_embedding, {c.vocab_size, h}, "token_embedding"));
  KVPOOL_RETURN_IF_ERROR(CheckShape(lm_head, {c.vocab_size, h}, "lm_head"));
  KVPOOL_RETURN_IF_ERROR(CheckShape(final_norm_w, {h}, "final_norm.weight"));
  if (gpt2) {
    KVPOOL_RETURN_IF_ERROR(
        CheckShape(position_embedding, {c.max_position, h}, "position_embedding"));
    KVPOOL_RETURN_IF_ERROR(CheckShape(final_norm_b, {h}, "final_norm.bias"));
  }
  if (static_cast<int64_t>(layers.size()) != c.num_layers) {
    return InvalidArgument("weights have " + std::to_string(layers.size()) + " layers, config " +
                           std::to_string(c.num_layers));
  }
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const LayerWeights& l = layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    KVPOOL_RETURN_IF_ERROR(CheckShape(l.attn_norm_w, {h}, p + "attn_norm.weight"));
    KVPOOL_RETURN_IF_ERROR(CheckShape(l.mlp_norm_w, {h}, p + "mlp_norm.weight"));
    KVPOOL_RETURN_IF_ERROR(CheckShape(l.qkv_w, {q + 2 * kv, h}, p + "qkv.weight"));
    KVPOOL_RETURN_IF_ERROR(CheckShape(l.o_w, {h, q}, p + "o.weight"));
    KVPOOL_RETURN_IF_ERROR(CheckShape(
        l.up_w, {gpt2 ? c.intermediate_size : 2 * c.intermediate_size, h}, p + "up.weight"));
    KVPOOL_RETURN_IF_ERROR(CheckShape(l.down_w, {h, c.intermediate_size}, p + "down.weight"));
    if (gpt2) {
      KVPOOL_RETURN_IF_ERROR(CheckShape(l.attn_norm_b, {h}, p + "attn_norm.bias"));
      KVPOOL_RETURN_IF_ERROR(CheckShape(l.mlp_norm_b, {h}, p + "mlp_norm.bias"));
      KVPOOL_RETURN_IF_ERROR(CheckShape(l.qkv_b, {q + 2 * kv}, p + "qkv.bias"));
      KVPOOL_RETURN_IF_ERROR(CheckShape(l.o_b, {h}, p + "o.bias"));
      KVPOOL_RETURN_IF_ERROR(CheckShape(l.up_b, {c.intermediate_size}, p + "up.bias"));
      KVPOOL_RETURN_IF_ERROR(CheckShape(l.down_b, {h}, p + "down.bias"));
    }
  }
  return Status::Ok();
}

ModelWeights ModelWeights::To(at::Device device, at::ScalarType dtype) const {
  auto mv = [&](const at::Tensor& t) {
    return t.defined() ? t.to(device, dtype).contiguous() : at::Tensor();
  };
  ModelWeights out;
  out.token_embedding = mv(token_embedding);
  out.position_embedding = mv(position_embedding);
  out.final_norm_w = mv(final_norm_w);
  out.final_norm_b = mv(final_norm_b);
  out.lm_head = lm_head.is_same(token_embedding) ? out.token_embedding : mv(lm_head);
  for (const LayerWeights& l : layers) {
    LayerWeights o;
    o.attn_norm_w = mv(l.attn_norm_w);
    o.attn_norm_b = mv(l.attn_norm_b);
    o.qkv_w = mv(l.qkv_w);
    o.qkv_b = mv(l.qkv_b);
    o.o_w = mv(l.o_w);
    o.o_b = mv(l.o_b);
    o.mlp_norm_w = mv(l.mlp_norm_w);
    o.mlp_norm_b = mv(l.mlp_norm_b);
    o.up_w = mv(l.up_w);
    o.up_b = mv(l.up_b);
    o.down_w = mv(l.down_w);
    o.down_b = mv(l.down_b);
    out.layers.push_back(std::move(o));
  }
  return out;
}

}  // namespace kvpool
