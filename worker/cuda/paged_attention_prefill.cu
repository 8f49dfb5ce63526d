// PagedAttentionPrefill: varlen causal attention of the new tokens of several
// sequences over their whole context in the pool (prefix included). One thread block
// per (query tile of 32 tokens, query head, sequence); K/V are staged through shared
// memory 32 positions at a time (converted to fp32), four lanes per query each own a
// quarter of head_dim, with an fp32 online softmax. Scalar FMA, no tensor cores:
// correctness first, reasonable speed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>

#include "cuda/cuda_status.h"
#include "cuda/kernel_common.cuh"
#include "cuda/paged_attention.h"

namespace kvpool::gpu {
namespace {

using detail::kFullMask;
using detail::Pack;

constexpr int kThreads = 128;
constexpr int kLanesPerQuery = 4;
constexpr int kQueriesPerBlock = kThreads / kLanesPerQuery;  // 32
constexpr int kKeysPerTile = 32;

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    PrefillKernel(const T* __restrict__ q, T* __restrict__ out, const T* __restrict__ k_cache,
                  const T* __restrict__ v_cache, const int32_t* __restrict__ query_start_loc,
                  const int32_t* __restrict__ context_lens,
                  const int32_t* __restrict__ block_tables, int num_heads, int num_kv_heads,
                  int max_blocks_per_seq, int block_size_log2, float scale_log2) {
  constexpr int kVec = Pack<T>::kElems;
  constexpr int kChunks = kHeadDim / 4 / kLanesPerQuery;  // float4 chunks per lane
  const int seq = blockIdx.z;
  const int head = blockIdx.y;
  const int q_begin = query_start_loc[seq];
  const int q_len = query_start_loc[seq + 1] - q_begin;
  const int tile_q0 = blockIdx.x * kQueriesPerBlock;
  if (tile_q0 >= q_len) return;  // block-uniform
  const int ctx = min(context_lens[seq], max_blocks_per_seq << block_size_log2);
  const int kv_head = head / (num_heads / num_kv_heads);

  const int query = threadIdx.x / kLanesPerQuery;
  const int part = threadIdx.x % kLanesPerQuery;
  const int i = tile_q0 + query;
  const bool valid_q = i < q_len;
  const int pos = ctx - q_len + i;  // this query attends positions [0, pos]
  // Lane `part` owns dims 4 * (part + kLanesPerQuery * c) + [0, 4): conflict-free float4
  // reads of shared memory, the four lanes of a query reading 64 consecutive bytes.
  float qf[kChunks][4];
  const T* q_row =
      q + (int64_t{q_begin} + min(i, q_len - 1)) * num_heads * kHeadDim + int64_t{head} * kHeadDim;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      qf[c][e] = float(q_row[4 * (part + kLanesPerQuery * c) + e]) * scale_log2;
    }
  }
  float m = -INFINITY, l = 0.0f, acc[kChunks][4];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[c][e] = 0.0f;
  }

  // Positions this tile needs: up to the last query's own position.
  const int last_q = min(q_len, tile_q0 + kQueriesPerBlock) - 1;
  const int kv_end = min(ctx, ctx - q_len + last_q + 1);

  __shared__ __align__(16) float s_k[kKeysPerTile][kHeadDim];
  __shared__ __align__(16) float s_v[kKeysPerTile][kHeadDim];
  const int64_t row_stride = int64_t{num_kv_heads} * kHeadDim;
  const int32_t* table = block_tables + int64_t{seq} * max_blocks_per_seq;
  const int offset_mask = (1 << block_size_log2) - 1;
  constexpr int kPacksPerRow = kHeadDim / kVec;

  for (int kt = 0; kt < kv_end; kt += kKeysPerTile) {
    for (int idx = threadIdx.x; idx < kKeysPerTile * kPacksPerRow; idx += kThreads) {
      const int key = idx / kPacksPerRow;
      const int d0 = (idx % kPacksPerRow) * kVec;
      const int t = kt + key;
      float kf[kVec], vf[kVec];
      if (t < kv_end) {
        const int64_t slot =
            (int64_t{table[t >> block_size_log2]} << block_size_log2) | (t & offset_mask);
        const int64_t off = slot * row_stride + int64_t{kv_head} * kHeadDim + d0;
        Pack<T>::ToFloat(detail::LoadPack(k_cache + off), kf);
        Pack<T>::ToFloat(detail::LoadPack(v_cache + off), vf);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) kf[e] = vf[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        s_k[key][d0 + e] = kf[e];
        s_v[key][d0 + e] = vf[e];
      }
    }
    __syncthreads();
    const int keys = min(kKeysPerTile, kv_end - kt);  // block-uniform
    for (int key = 0; key < keys; ++key) {
      float s = 0.0f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const float4 k4 =
            *reinterpret_cast<const float4*>(&s_k[key][4 * (part + kLanesPerQuery * c)]);
        s = fmaf(qf[c][0], k4.x, s);
        s = fmaf(qf[c][1], k4.y, s);
        s = fmaf(qf[c][2], k4.z, s);
        s = fmaf(qf[c][3], k4.w, s);
      }
      s += __shfl_xor_sync(kFullMask, s, 1);
      s += __shfl_xor_sync(kFullMask, s, 2);
      if (valid_q && kt + key <= pos) {
        const float m_new = fmaxf(m, s);
        const float alpha = exp2f(m - m_new);
        const float p = exp2f(s - m_new);
        l = fmaf(l, alpha, p);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const float4 v4 =
              *reinterpret_cast<const float4*>(&s_v[key][4 * (part + kLanesPerQuery * c)]);
          acc[c][0] = fmaf(acc[c][0], alpha, p * v4.x);
          acc[c][1] = fmaf(acc[c][1], alpha, p * v4.y);
          acc[c][2] = fmaf(acc[c][2], alpha, p * v4.z);
          acc[c][3] = fmaf(acc[c][3], alpha, p * v4.w);
        }
        m = m_new;
      }
    }
    __syncthreads();
  }

  if (!valid_q) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  T* out_row = out + (int64_t{q_begin} + i) * num_heads * kHeadDim + int64_t{head} * kHeadDim;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      out_row[4 * (part + kLanesPerQuery * c) + e] = detail::FromFloat<T>(acc[c][e] * inv);
    }
  }
}

Status Validate(const PagedAttentionPrefillParams& p) {
  constexpr const char* kWho = "PagedAttentionPrefill";
  KVPOOL_RETURN_IF_ERROR(
      detail::CheckAttentionShape(kWho, p.geometry, p.num_heads, p.num_seqs, p.max_blocks_per_seq));
  if (p.max_query_len < 0) return InvalidArgument("PagedAttentionPrefill: max_query_len < 0");
  if (!std::isfinite(p.scale)) return InvalidArgument("PagedAttentionPrefill: scale not finite");
  if (p.num_seqs == 0 || p.max_query_len == 0) return Status::Ok();
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "k_cache", p.k_cache, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "v_cache", p.v_cache, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "q", p.q, false));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "out", p.out, false));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "query_start_loc", p.query_start_loc, false));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "context_lens", p.context_lens, false));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "block_tables", p.block_tables, false));
  return Status::Ok();
}

template <typename T, int kHeadDim>
void Launch(const PagedAttentionPrefillParams& p, cudaStream_t stream) {
  const dim3 grid((p.max_query_len + kQueriesPerBlock - 1) / kQueriesPerBlock, p.num_heads,
                  p.num_seqs);
  PrefillKernel<T, kHeadDim><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(p.q), static_cast<T*>(p.out), static_cast<const T*>(p.k_cache),
      static_cast<const T*>(p.v_cache), p.query_start_loc, p.context_lens, p.block_tables,
      p.num_heads, p.geometry.num_kv_heads, p.max_blocks_per_seq,
      detail::Log2(p.geometry.block_size), p.scale * detail::kLog2e);
}

template <typename T>
void LaunchDim(const PagedAttentionPrefillParams& p, cudaStream_t stream) {
  if (p.geometry.head_dim == 64) {
    Launch<T, 64>(p, stream);
  } else {
    Launch<T, 128>(p, stream);
  }
}

}  // namespace

Status PagedAttentionPrefill(const PagedAttentionPrefillParams& params, cudaStream_t stream) {
  KVPOOL_RETURN_IF_ERROR(Validate(params));
  if (params.num_seqs == 0 || params.max_query_len == 0) return Status::Ok();
  if (params.num_heads > 65535) {
    return InvalidArgument("PagedAttentionPrefill: num_heads above 65535");
  }
  switch (params.geometry.dtype) {
    case KvDtype::kFloat32:
      LaunchDim<float>(params, stream);
      break;
    case KvDtype::kFloat16:
      LaunchDim<__half>(params, stream);
      break;
    case KvDtype::kBFloat16:
      LaunchDim<__nv_bfloat16>(params, stream);
      break;
    case KvDtype::kInt8:
    case KvDtype::kFp8E4m3:
      return InvalidArgument(std::string("PagedAttentionPrefill: ") +
                             KvDtypeName(params.geometry.dtype) +
                             " pools are the CPU engine's (CUDA: fp32, fp16, bf16)");
  }
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaGetLastError(), "PagedAttentionPrefill: kernel launch");
  return Status::Ok();
}

}  // namespace kvpool::gpu
