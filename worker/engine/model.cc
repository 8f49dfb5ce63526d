// The CPU model runner (see model.h): the backend half of the forward. The layer
// order, norms and activations are transformer.cc's; here are only the CPU's linear
// layers, rotary positions, K/V write and attention call.
#include "engine/model.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/cpu_linear.h"
#include "engine/cpu_linear_packed.h"
#include "engine/cpu_linear_packed_fp16.h"
#include "engine/kv_quant.h"
#include "engine/transformer.h"

namespace kvpool {
namespace {

at::Tensor ToTensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())}, at::kLong)
      .clone();
}

}  // namespace

// One forward's CPU backend: the batch and pool it runs over, and the attention
// output buffer that every layer reuses.
class Model::CpuBackend : public ForwardBackend {
 public:
  CpuBackend(const Model& model, const ForwardBatch& batch, const KvPool& pool)
      : model_(model),
        batch_(batch),
        pool_(pool),
        attn_(at::empty({static_cast<int64_t>(batch.token_ids.size()),
                         model.config_.num_heads * model.config_.head_dim},
                        at::kFloat)) {}

  at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                    const at::Tensor& residual, bool gelu_tanh) override {
    const auto packed = model_.packed_.find(w.data_ptr());
    const bool fusable =
        !residual.defined() || (residual.is_contiguous() && residual.scalar_type() == at::kFloat);
    const bool fp16 = w.scalar_type() == at::kHalf;
    if (packed != model_.packed_.end() && fusable) {
      // GELU and the residual add happen in the product's epilogue.
      return fp16 ? CpuLinearPackedFp16(x, w, packed->second, b, {gelu_tanh, residual})
                  : CpuLinearPackedBf16(x, w, packed->second, b, PackedKernel::kAuto,
                                        {gelu_tanh, residual});
    }
    at::Tensor y = packed == model_.packed_.end() ? CpuLinear(x, w, b)
                   : fp16                         ? CpuLinearPackedFp16(x, w, packed->second, b)
                                                  : CpuLinearPackedBf16(x, w, packed->second, b);
    if (gelu_tanh) y = at::gelu(y, "tanh");
    if (!residual.defined()) return y;
    residual.add_(y);
    return residual;
  }

  at::Tensor Attention(int32_t layer, const at::Tensor& qkv_in) override {
    const at::Tensor qkv = RotateAndWrite(layer, qkv_in);
    Attend(layer, qkv.data_ptr<float>(), qkv.size(1), attn_.data_ptr<float>(),
           batch_.queries.data(), static_cast<int64_t>(batch_.token_ids.size()));
    return attn_;
  }

  // Only the queries of `rows` attend (their q gathered first; the rest of each row
  // comes along, unread).
  at::Tensor AttentionRows(int32_t layer, const at::Tensor& qkv_in,
                           const at::Tensor& rows) override {
    const at::Tensor qkv = RotateAndWrite(layer, qkv_in);
    const int64_t n = rows.size(0);
    at::Tensor out = at::empty({n, attn_.size(1)}, at::kFloat);
    if (n == 0) return out;
    const at::Tensor q = qkv.index_select(0, rows);
    const int64_t* r = rows.data_ptr<int64_t>();
    std::vector<AttentionQuery> queries(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) queries[i] = batch_.queries[r[i]];
    Attend(layer, q.data_ptr<float>(), q.size(1), out.data_ptr<float>(), queries.data(), n);
    return out;
  }

 private:
  // Rotary positions (Llama), then every token's K/V into the pool.
  at::Tensor RotateAndWrite(int32_t layer, const at::Tensor& qkv_in) const {
    at::Tensor qkv = qkv_in.contiguous();
    if (model_.config_.arch == Architecture::kLlama) ApplyRope(qkv);
    WriteKv(qkv, layer);
    return qkv;
  }

  void Attend(int32_t layer, const float* q, int64_t q_row_stride, float* out,
              const AttentionQuery* queries, int64_t num_queries) const {
    const ModelConfig& c = model_.config_;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    PagedAttentionCpu(q, q_row_stride, out, pool_.RegionBytes(layer, KvPart::kKey),
                      pool_.RegionBytes(layer, KvPart::kValue), pool_.geometry(), queries,
                      num_queries, static_cast<int32_t>(c.num_heads), scale);
  }

  // Rotates the q and k heads of every token in place by its position.
  void ApplyRope(at::Tensor& qkv) const {
    const ModelConfig& c = model_.config_;
    const int64_t d = c.head_dim, half = d / 2;
    const int64_t heads_to_rotate = c.num_heads + c.num_kv_heads;  // q and k
    const int64_t row = qkv.size(1);
    float* data = qkv.data_ptr<float>();
    for (size_t t = 0; t < batch_.positions.size(); ++t) {
      const float* cos = model_.rope_cos_.data() + batch_.positions[t] * half;
      const float* sin = model_.rope_sin_.data() + batch_.positions[t] * half;
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

  // Stores each token's K and V into its pool slot, head by head in the pool's dtype
  // (kv_quant.h: fp32 copied, fp16/bf16 rounded, int8/fp8 quantized with their scales).
  // Tokens are split between the threads in runs of 64: a prompt's are, a decode
  // step's (one per sequence) mostly not worth a fork.
  void WriteKv(const at::Tensor& qkv, int32_t layer) const {
    const PoolGeometry& g = pool_.geometry();
    const int64_t q_dim = model_.config_.num_heads * model_.config_.head_dim;
    const int64_t kv_dim = g.token_elems();
    const int64_t row = qkv.size(1);
    const float* src = qkv.data_ptr<float>();
    const void* regions[2] = {pool_.RegionBytes(layer, KvPart::kKey),
                              pool_.RegionBytes(layer, KvPart::kValue)};
    const int64_t* slots = batch_.slots.data();
    at::parallel_for(0, static_cast<int64_t>(batch_.slots.size()), 64, [&](int64_t t0, int64_t t1) {
      for (int part = 0; part < 2; ++part) {
        const int64_t from = q_dim + part * kv_dim;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t block = slots[t] / g.block_size;
          const auto slot = static_cast<int32_t>(slots[t] % g.block_size);
          for (int32_t h = 0; h < g.num_kv_heads; ++h) {
            EncodeKvHead(src + t * row + from + int64_t{h} * g.head_dim, g.head_dim, g.dtype,
                         const_cast<char*>(KvHeadPointer(regions[part], g, block, slot, h)),
                         const_cast<char*>(KvScalePointer(regions[part], g, block, slot, h)));
          }
        }
      }
    });
  }

  const Model& model_;
  const ForwardBatch& batch_;
  const KvPool& pool_;
  at::Tensor attn_;
};

Model::Model(ModelConfig config, ModelWeights weights, at::ScalarType weight_dtype,
             KvDtype kv_dtype)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      weight_dtype_(weight_dtype),
      kv_dtype_(kv_dtype) {
  if (weight_dtype_ == at::kBFloat16 || weight_dtype_ == at::kHalf) {
    // The matrices of the linear layers, the head included (a tied head gets its own
    // copy; the embedding lookup keeps fp32 rows). Norms, biases and embeddings stay
    // fp32: they are a small share of the bytes a step reads.
    const at::ScalarType dtype = weight_dtype_;
    const auto narrow = [dtype](at::Tensor& w) { w = w.to(dtype).contiguous(); };
    for (LayerWeights& l : weights_.layers) {
      for (at::Tensor* w : {&l.qkv_w, &l.o_w, &l.up_w, &l.down_w}) narrow(*w);
    }
    narrow(weights_.lm_head);
    // In the layout of the packed product where the CPU runs one (bf16: AVX512-BF16;
    // fp16: AVX-512). Each is a new tensor: the matrix may share its storage with
    // another weight.
    const bool bf16 = weight_dtype_ == at::kBFloat16;
    // All of them in one arena: one mapping in huge pages.
    if (bf16 ? CpuPacksBf16Weights() : CpuPacksFp16Weights()) {
      std::vector<at::Tensor*> matrices;
      for (LayerWeights& l : weights_.layers) {
        for (at::Tensor* w : {&l.qkv_w, &l.o_w, &l.up_w, &l.down_w}) matrices.push_back(w);
      }
      matrices.push_back(&weights_.lm_head);
      const auto packable = [bf16](const at::Tensor& w) {
        return bf16 ? CanPackBf16(w) : CanPackFp16(w);
      };
      size_t bytes = 0;
      for (const at::Tensor* w : matrices) {
        if (packable(*w)) bytes += PackedArena::Footprint(w->size(0), w->size(1));
      }
      PackedArena arena(bytes);
      for (at::Tensor* w : matrices) {
        if (!packable(*w)) continue;
        const int64_t rows = w->size(0);
        *w = bf16 ? PackBf16(*w, &arena) : PackFp16(*w, &arena);
        packed_.emplace(w->data_ptr(), rows);
      }
    }
  }
  if (config_.arch == Architecture::kLlama) {
    const RotaryTables tables = MakeRotaryTables(config_);
    const float* cos = tables.cos.data_ptr<float>();
    const float* sin = tables.sin.data_ptr<float>();
    rope_cos_.assign(cos, cos + tables.cos.numel());
    rope_sin_.assign(sin, sin + tables.sin.numel());
  }
}

at::Tensor Model::Forward(const ForwardBatch& batch, const KvPool& pool) {
  CpuBackend backend(*this, batch, pool);
  return TransformerForward(config_, weights_, backend, ToTensor(batch.token_ids),
                            ToTensor(batch.positions), ToTensor(batch.logit_rows));
}

}  // namespace kvpool
