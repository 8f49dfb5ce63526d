// The CPU model runner: the one transformer forward (engine/transformer.h) over the
// CPU backend. Linear layers go through CpuLinear (its own kernel for a few rows,
// BLAS beyond; weights in fp32, bf16 or fp16); the attention block rotates q and k in place (Llama),
// stores each token's K/V into its pool slot in the pool's dtype and runs the CPU paged kernel. One
// call runs a packed batch of tokens from any number of sequences (a prefill, a decode step, or a
// recompute). The runner owns no KV memory and no sequence state.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "engine/model_runner.h"

namespace kvpool {

class Model : public ModelRunner {
 public:
  // weight_dtype: at::kFloat, or at::kBFloat16 / at::kHalf for the linear layers'
  // matrices (see CpuLinear: fp32 activations and sums; half the bytes per decode step).
  // kv_dtype: what the pool holds and the K/V write stores (any KvDtype; kv_quant.h).
  Model(ModelConfig config, ModelWeights weights, at::ScalarType weight_dtype = at::kFloat,
        KvDtype kv_dtype = KvDtype::kFloat32);

  const ModelConfig& config() const override { return config_; }
  std::string device() const override { return "cpu"; }
  KvDtype kv_dtype() const override { return kv_dtype_; }
  StatusOr<KvPool> CreatePool(const PoolGeometry& geometry) const override {
    return KvPool::Create(geometry);
  }
  at::Tensor Forward(const ForwardBatch& batch, const KvPool& pool) override;

 private:
  class CpuBackend;

  ModelConfig config_;
  ModelWeights weights_;
  at::ScalarType weight_dtype_;
  KvDtype kv_dtype_;
  std::vector<float> rope_cos_, rope_sin_;  // [max_position][head_dim / 2], Llama only
  // The bf16 matrices packed for AVX512-BF16 (cpu_linear_packed.h) and the fp16 ones
  // packed for AVX-512 (cpu_linear_packed_fp16.h), by their data, with their rows (before
  // the padding).
  std::unordered_map<const void*, int64_t> packed_;
};

}  // namespace kvpool
