// The transformer forward pass (GPT-2 and Llama) over the KV pool. One call runs
// a packed batch of tokens from any number of sequences (a prefill, a decode step,
// or a recompute): each token's K/V is written into its pool slot, then attention
// reads K/V back from the pool through each sequence's block table. Linear layers go
// through LibTorch/BLAS (one gemv per matrix for a single token); attention is the
// CPU paged kernel. The model owns no KV memory and no sequence state.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "engine/kv_pool.h"
#include "engine/model_config.h"
#include "engine/paged_attention_cpu.h"
#include "weights/weights.h"

namespace kvpool {

struct ForwardBatch {
  std::vector<int64_t> token_ids;        // [T]
  std::vector<int64_t> positions;        // [T]
  std::vector<int64_t> slots;            // [T] pool slot: block_id * block_size + offset
  std::vector<AttentionQuery> queries;   // [T] block table and visible context of each token
  std::vector<int64_t> logit_rows;       // rows of the batch whose next-token logits are wanted

  void Clear();
  // Appends tokens[begin, end) of one sequence whose block table covers them.
  void AddTokens(const std::vector<int32_t>& tokens, int64_t begin, int64_t end,
                 const std::vector<int32_t>& block_table, int32_t block_size, bool want_logits);
};

class Model {
 public:
  Model(ModelConfig config, ModelWeights weights);

  // Runs the batch; returns logits [logit_rows.size(), vocab] (fp32).
  at::Tensor Forward(const ForwardBatch& batch, const KvPool& pool) const;

  const ModelConfig& config() const { return config_; }
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
