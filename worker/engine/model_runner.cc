// ForwardBatch's packing of tokens, and the CUDA runner's factory where the build has
// no CUDA: see model_runner.h. The forwards themselves are model.cc (CPU) and
// cuda_model_runner.cc (CUDA).
#include "engine/model_runner.h"

namespace kvpool {

void ForwardBatch::Clear() {
  token_ids.clear();
  positions.clear();
  slots.clear();
  queries.clear();
  query_start.assign(1, 0);
  block_tables.clear();
  context_lens.clear();
  logit_rows.clear();
}

void ForwardBatch::AddTokens(const std::vector<int32_t>& tokens, int64_t begin, int64_t end,
                             const std::vector<int32_t>& block_table, int32_t block_size,
                             bool want_logits) {
  if (query_start.empty()) query_start.push_back(0);
  for (int64_t p = begin; p < end; ++p) {
    token_ids.push_back(tokens[p]);
    positions.push_back(p);
    slots.push_back(int64_t{block_table[p / block_size]} * block_size + p % block_size);
    queries.push_back({block_table.data(), static_cast<int32_t>(p + 1)});
  }
  query_start.push_back(static_cast<int32_t>(token_ids.size()));
  block_tables.push_back(&block_table);
  context_lens.push_back(static_cast<int32_t>(end));
  if (want_logits) logit_rows.push_back(static_cast<int64_t>(token_ids.size()) - 1);
}

#ifndef KVPOOL_HAVE_CUDA_TORCH
StatusOr<std::unique_ptr<ModelRunner>> CreateCudaModelRunner(const ModelConfig&,
                                                             const ModelWeights&, int,
                                                             at::ScalarType, bool) {
  return FailedPrecondition(
      "this kvpool was built without CUDA LibTorch; rebuild against a CUDA LibTorch "
      "(scripts/gpu-check.sh) to run on a GPU");
}
#endif

}  // namespace kvpool
