// The GPU attention kernels over the KV pool, and the kernel that writes new K/V
// into it: PagedAttentionDecode (one query token per sequence), PagedAttentionPrefill
// (varlen causal prefill over the pool, prefix included) and WriteKvCache. They read
// and write the pool only through kvpool::PoolGeometry (common/kv_layout.h):
// the k_cache / v_cache pointers are one layer's K and V region bases (see
// RegionPointer in cuda/cuda_pool.h), and a token slot is block_id * block_size +
// offset. They take raw device pointers and a cudaStream_t (no LibTorch), launch
// asynchronously on that stream and never synchronize it.
//
// Errors are values: every launcher validates its arguments first and returns
// INVALID_ARGUMENT naming the offending field for anything unsupported (dtype,
// head_dim, block_size, head counts, alignment, a too small workspace) rather than
// computing a wrong result; a failed launch returns INTERNAL with the CUDA error
// string. Device-side contents (block ids, context lengths, slots) cannot be checked
// without a synchronization: their preconditions are stated per field below.
//
// Supported: dtype fp32 / fp16 / bf16 (pool, q and out share it; math in fp32 with
// an online softmax), head_dim 64 or 128 for attention (WriteKvCache: any head_dim
// whose row is a multiple of 16 bytes), block_size a power of two in [1, 256], any
// GQA group size num_heads / num_kv_heads >= 1. q, out, k and v are dense.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "common/kv_layout.h"

namespace kvpool::gpu {

struct PagedAttentionDecodeParams {
  // The pool's num_kv_heads, head_dim, block_size and dtype (num_layers and
  // num_blocks are not needed here).
  PoolGeometry geometry;
  const void* k_cache = nullptr;  // one layer's K region base, 16-byte aligned
  const void* v_cache = nullptr;  // one layer's V region base, 16-byte aligned
  const void* q = nullptr;        // [num_seqs, num_heads, head_dim], 16-byte aligned
  void* out = nullptr;            // [num_seqs, num_heads, head_dim]
  // [num_seqs, max_blocks_per_seq] block ids; entries past a sequence's last block
  // are never read. Every id read must be < geometry.num_blocks.
  const int32_t* block_tables = nullptr;
  // [num_seqs]; 0 gives a zero output row; values above max_blocks_per_seq *
  // block_size are clamped to it.
  const int32_t* context_lens = nullptr;
  int32_t num_seqs = 0;
  int32_t num_heads = 0;  // query heads, a multiple of geometry.num_kv_heads
  int32_t max_blocks_per_seq = 0;
  // Host-side upper bound of context_lens; it only picks how many splits a
  // sequence's context is cut into (a larger actual length is still correct, slower).
  int32_t max_context_len = 0;
  float scale = 0.0f;  // usually 1 / sqrt(head_dim)
  // Scratch for the split (flash-decoding) path, sized by
  // PagedAttentionDecodeWorkspaceBytes. Null + 0 runs unsplit: correct, but a small
  // batch then uses few SMs.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Bytes of workspace that PagedAttentionDecode wants for these shapes on the
// current device (0 when it will not split). Depends on num_seqs, num_heads,
// num_kv_heads, head_dim and max_context_len only.
size_t PagedAttentionDecodeWorkspaceBytes(const PagedAttentionDecodeParams& params);

// out[s, h, :] = softmax(scale * q[s, h] . K[s, 0:context_len]) V, with K/V of head
// h / (num_heads / num_kv_heads) read from the pool through block table row s.
Status PagedAttentionDecode(const PagedAttentionDecodeParams& params, cudaStream_t stream);

struct PagedAttentionPrefillParams {
  PoolGeometry geometry;
  const void* k_cache = nullptr;  // one layer's K region base, 16-byte aligned
  const void* v_cache = nullptr;
  const void* q = nullptr;  // [total_q_tokens, num_heads, head_dim], sequences packed
  void* out = nullptr;      // [total_q_tokens, num_heads, head_dim]
  // [num_seqs + 1], non-decreasing, query_start_loc[0] == 0.
  const int32_t* query_start_loc = nullptr;
  // [num_seqs]: tokens in the cache including the new ones (already written by
  // WriteKvCache). Query i of a sequence with q_len queries sits at position
  // context_len - q_len + i and attends positions <= its own. Needs
  // context_len >= q_len (a query at a negative position gets a zero row).
  const int32_t* context_lens = nullptr;
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int32_t num_seqs = 0;
  int32_t num_heads = 0;
  int32_t max_blocks_per_seq = 0;
  // Host-side upper bound of every q_len; queries past it are NOT computed, so it
  // must be exact or larger.
  int32_t max_query_len = 0;
  float scale = 0.0f;
};

Status PagedAttentionPrefill(const PagedAttentionPrefillParams& params, cudaStream_t stream);

struct WriteKvCacheParams {
  PoolGeometry geometry;     // num_kv_heads, head_dim, block_size, num_blocks, dtype
  void* k_cache = nullptr;   // one layer's K region base, 16-byte aligned
  void* v_cache = nullptr;
  const void* k = nullptr;   // [num_tokens, num_kv_heads, head_dim], 16-byte aligned
  const void* v = nullptr;
  // [num_tokens] slot = block_id * block_size + offset. Negative: the token is
  // skipped (padding). Slots >= num_blocks * block_size are skipped as well (out of
  // the pool: never written).
  const int64_t* slot_mapping = nullptr;
  int64_t num_tokens = 0;
};

Status WriteKvCache(const WriteKvCacheParams& params, cudaStream_t stream);

}  // namespace kvpool::gpu
