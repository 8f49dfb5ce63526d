// The CPU paged-attention kernel: attention of query tokens over K/V read straight
// from the pool through a block table (no gather into a contiguous copy), parallel
// over (query token, KV head), GQA-aware (each KV head is read once for all the
// query heads of its group). The `contiguous` mode is this same kernel over a
// block table of consecutive ids. Prefill uses it too: a prompt's queries (runs of 16
// or more, each one position after the one before) go in tiles of 16 through the tile
// kernel where there is one (bf16 K/V with AVX512-BF16: paged_attention_cpu_prefill.cc),
// one query at a time otherwise.
// fp32 activations and sums whatever the pool's dtype (kv_quant.h says how each is
// stored).
#pragma once

#include <cstdint>

#include "common/kv_layout.h"

namespace kvpool {

struct AttentionQuery {
  const int32_t* block_table;  // the sequence's block ids, in position order
  int32_t context_len;         // this query sees K/V positions [0, context_len)
};

// q:   num_queries rows, each [num_heads][head_dim], rows `q_row_stride` floats apart.
// out: [num_queries][num_heads * head_dim], contiguous.
// k_region / v_region: one layer's K and V regions (KvPool::RegionBytes) of a pool of
// any dtype; geometry.dtype says how to read them.
void PagedAttentionCpu(const float* q, int64_t q_row_stride, float* out, const void* k_region,
                       const void* v_region, const PoolGeometry& geometry,
                       const AttentionQuery* queries, int64_t num_queries, int32_t num_heads,
                       float scale);

// Whether this CPU reads bf16 K/V of head size `head_dim` with bf16 dot products
// (AVX512-BF16, head sizes 64 and 128): the query and the softmax weights are then
// rounded to bf16 too, as vLLM's CPU attention does: a third less attention time at
// batch 32 (docs/benchmarks.md); otherwise the elements are widened to fp32.
bool PagedAttentionCpuBf16Dot(int32_t head_dim);

}  // namespace kvpool
