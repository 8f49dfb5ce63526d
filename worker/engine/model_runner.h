// The seam between the engine (sequences, blocks, sampling) and the device that runs
// the model: the CPU runner (engine/model.h: LibTorch + the C++ paged kernel) or
// the CUDA runner (engine/cuda_model_runner.h: LibTorch CUDA + the CUDA kernels, with
// CUDA graphs for decode). A runner owns the weights on its device and makes pool
// memory that its kernels can read; it owns no sequence state.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "common/model_config.h"
#include "common/status.h"
#include "engine/kv_pool.h"
#include "engine/paged_attention_cpu.h"
#include "weights/weights.h"

namespace kvpool {

// A pool dtype as LibTorch's and back: the one mapping, both directions. The scaled
// dtypes map to their storage (int8: kChar; fp8, which LibTorch 1.13 lacks: kByte).
inline at::ScalarType TorchDtypeOf(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat16:
      return at::kHalf;
    case KvDtype::kBFloat16:
      return at::kBFloat16;
    case KvDtype::kInt8:
      return at::kChar;
    case KvDtype::kFp8E4m3:
      return at::kByte;
    case KvDtype::kFloat32:
      break;
  }
  return at::kFloat;
}
inline KvDtype KvDtypeOf(at::ScalarType dtype) {
  return dtype == at::kHalf       ? KvDtype::kFloat16
         : dtype == at::kBFloat16 ? KvDtype::kBFloat16
                                  : KvDtype::kFloat32;
}

struct ForwardBatch {
  // Per token.
  std::vector<int64_t> token_ids;
  std::vector<int64_t> positions;
  std::vector<int64_t> slots;           // pool slot: block_id * block_size + offset
  std::vector<AttentionQuery> queries;  // block table and visible context of each token
  // Per sequence (the GPU kernels work per sequence).
  std::vector<int32_t> query_start;  // [num_seqs + 1] first token of each sequence
  std::vector<const std::vector<int32_t>*> block_tables;
  std::vector<int32_t> context_lens;  // tokens visible to the sequence's last query
  std::vector<int64_t> logit_rows;    // rows whose next-token logits are wanted

  void Clear();
  // Appends tokens[begin, end) of one sequence whose block table covers them. The
  // table must stay alive and unchanged until the forward has run.
  void AddTokens(const std::vector<int32_t>& tokens, int64_t begin, int64_t end,
                 const std::vector<int32_t>& block_table, int32_t block_size, bool want_logits);
  int64_t num_seqs() const { return static_cast<int64_t>(context_lens.size()); }
  // One token per sequence, each wanting its logits (a 1-token prefill chunk short of
  // its prompt's end wants none: that batch takes the general path).
  bool decode_only() const {
    return token_ids.size() == context_lens.size() && logit_rows.size() == context_lens.size();
  }
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string device() const = 0;
  virtual KvDtype kv_dtype() const = 0;
  // Pool memory of this geometry that this runner's kernels can address.
  virtual StatusOr<KvPool> CreatePool(const PoolGeometry& geometry) const = 0;
  // Runs the batch over the pool; returns logits [logit_rows, vocab], fp32, on the CPU.
  virtual at::Tensor Forward(const ForwardBatch& batch, const KvPool& pool) = 0;
};

// The CUDA runner (weights cast to `dtype`, KV in the same dtype). FAILED_PRECONDITION
// in builds without CUDA LibTorch.
StatusOr<std::unique_ptr<ModelRunner>> CreateCudaModelRunner(const ModelConfig& config,
                                                             const ModelWeights& weights,
                                                             int device_index, at::ScalarType dtype,
                                                             bool use_cuda_graphs);

}  // namespace kvpool
