// The transformer forward pass (GPT-2 and Llama) over the KV pool, on the CPU. One call runs
// a packed batch of tokens from any number of sequences (a prefill, a decode step,
// or a recompute): each token's K/V is written into its pool slot, then attention
// reads K/V back from the pool through each sequence's block table. Linear layers go
// through LibTorch/BLAS (one gemv per matrix for a single token); attention is the
// CPU paged kernel. The model owns no KV memory and no sequence state.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "engine/model_runner.h"

namespace kvpool {

class Model : public ModelRunner {
 public:
  Model(ModelConfig config, ModelWeights weights);

  const ModelConfig& config() const override { return config_; }
  std::string device() const override { return "cpu"; }
  KvDtype kv_dtype() const override { return KvDtype::kFloat32; }
  StatusOr<KvPool> CreatePool(const PoolGeometry& geometry) const override {
    return KvPool::Create(geometry);
  }
  at::Tensor Forward(const ForwardBatch& batch, const KvPool& pool) override;

  const ModelWeights& weights() const { return weights_; }

 private:
  at::Tensor Embed(const ForwardBatch& batch) const;
  void ApplyRope(at::Tensor& qkv, const ForwardBatch& batch) const;
  void WriteKv(const at::Tensor& qkv, const ForwardBatch& batch, const KvPool& pool,
               int32_t layer) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::vector<float> rope_cos_, rope_sin_;  // [max_position][head_dim / 2], Llama only
};

}  // namespace kvpool
