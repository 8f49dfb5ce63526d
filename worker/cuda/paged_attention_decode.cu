// PagedAttentionDecode: one query token per sequence over K/V read straight from the
// pool through the block table. One thread block per (sequence, KV head, head tile,
// split): it reads each K/V row of its token range once for every query head of the
// tile (GQA: up to 8 heads per tile), 16 bytes per lane, with an fp32 online softmax
// in registers. Long contexts at small batch are cut into splits (flash-decoding)
// whose partial results a second kernel merges, so one sequence still fills the GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>

#include "cuda/cuda_status.h"
#include "cuda/kernel_common.cuh"
#include "cuda/paged_attention.h"

namespace kvpool::gpu {
namespace {

using detail::kFullMask;
using detail::Pack;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMinPartitionTokens = 32;  // short splits: cold-cache K/V reads are latency-bound
constexpr int kMaxSplits = 128;
// Blocks of 4 warps the planner aims to put on each SM before it stops splitting:
// enough warps in flight to keep HBM busy (a block uses at most ~1/4 of an SM's
// registers for head tiles up to 4).
constexpr int kTargetBlocksPerSm = 4;

// Per (seq, head, split) partial results of the split path: the normalized output
// row (fp32, head_dim) and (max, sum) of the split's scores in the log2 domain.
struct DecodePlan {
  int head_tile = 1;  // query heads per thread block (1, 2, 4 or 8; divides the group)
  int num_splits = 1;
  int partition_tokens = 0;
};

int HeadTile(int group) {
  for (int tile : {8, 4, 2}) {
    if (group % tile == 0) return tile;
  }
  return 1;
}

template <typename T, int kHeadDim, int kHeadTile>
__global__ void __launch_bounds__(kThreads)
    DecodeKernel(const T* __restrict__ q, T* __restrict__ out, float* __restrict__ part_out,
                 float* __restrict__ part_ml, const T* __restrict__ k_cache,
                 const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                 const int32_t* __restrict__ context_lens, int num_heads, int num_kv_heads,
                 int max_blocks_per_seq, int block_size_log2, int partition_tokens, int num_splits,
                 float scale_log2) {
  constexpr int kVec = Pack<T>::kElems;            // elements per 16-byte load
  constexpr int kLanesPerToken = kHeadDim / kVec;  // lanes sharing one K/V row
  static_assert(kLanesPerToken >= 1 && kLanesPerToken <= 32 && 32 % kLanesPerToken == 0,
                "a K/V row must map onto a power-of-two part of a warp");
  constexpr int kTokensPerWarp = 32 / kLanesPerToken;
  constexpr int kTokensPerStep = kTokensPerWarp * kWarps;

  const int group = num_heads / num_kv_heads;
  const int tiles_per_kv_head = group / kHeadTile;
  const int kv_head = blockIdx.x / tiles_per_kv_head;
  const int head0 = kv_head * group + (blockIdx.x % tiles_per_kv_head) * kHeadTile;
  const int seq = blockIdx.y;
  const int split = blockIdx.z;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int token_in_warp = lane / kLanesPerToken;
  const int dim0 = (lane % kLanesPerToken) * kVec;

  const int ctx = min(context_lens[seq], max_blocks_per_seq << block_size_log2);
  const int begin = split * partition_tokens;
  // The last split runs to the end, so a context above max_context_len stays correct.
  const int end = split == num_splits - 1 ? ctx : min(ctx, begin + partition_tokens);
  if (begin >= end) {
    // Nothing to attend. Unsplit, write the zero row; split, the merge skips this split.
    if (num_splits == 1) {
      for (int i = threadIdx.x; i < kHeadTile * kHeadDim; i += kThreads) {
        out[(int64_t{seq} * num_heads + head0 + i / kHeadDim) * kHeadDim + i % kHeadDim] =
            detail::FromFloat<T>(0.0f);
      }
    }
    return;
  }

  // This lane's slice of each query head, pre-scaled into the log2 domain.
  float qf[kHeadTile][kVec];
#pragma unroll
  for (int g = 0; g < kHeadTile; ++g) {
    Pack<T>::ToFloat(detail::LoadPack(q + (int64_t{seq} * num_heads + head0 + g) * kHeadDim + dim0),
                     qf[g]);
#pragma unroll
    for (int i = 0; i < kVec; ++i) qf[g][i] *= scale_log2;
  }

  float m[kHeadTile], l[kHeadTile], acc[kHeadTile][kVec];
#pragma unroll
  for (int g = 0; g < kHeadTile; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[g][i] = 0.0f;
  }

  const int64_t row_stride = int64_t{num_kv_heads} * kHeadDim;  // elements per token slot
  const T* k_base = k_cache + int64_t{kv_head} * kHeadDim + dim0;
  const T* v_base = v_cache + int64_t{kv_head} * kHeadDim + dim0;
  const int32_t* table = block_tables + int64_t{seq} * max_blocks_per_seq;
  const int offset_mask = (1 << block_size_log2) - 1;
  auto slot_of = [&](int t) -> int64_t {
    return (int64_t{table[t >> block_size_log2]} << block_size_log2) | (t & offset_mask);
  };

  // Software pipeline: the next step's K/V rows are in flight while this one computes.
  int t = begin + warp * kTokensPerWarp + token_in_warp;
  uint4 k_next = make_uint4(0, 0, 0, 0), v_next = make_uint4(0, 0, 0, 0);
  if (t < end) {
    const int64_t slot = slot_of(t);
    k_next = detail::LoadPack(k_base + slot * row_stride);
    v_next = detail::LoadPack(v_base + slot * row_stride);
  }
  // `base` is warp-uniform, so every lane takes part in the shuffles below.
  for (int base = begin + warp * kTokensPerWarp; base < end;
       base += kTokensPerStep, t += kTokensPerStep) {
    const uint4 k_cur = k_next, v_cur = v_next;
    const int t_next = t + kTokensPerStep;
    if (t_next < end) {
      const int64_t slot = slot_of(t_next);
      k_next = detail::LoadPack(k_base + slot * row_stride);
      v_next = detail::LoadPack(v_base + slot * row_stride);
    }
    float kf[kVec];
    Pack<T>::ToFloat(k_cur, kf);
    float s[kHeadTile];
#pragma unroll
    for (int g = 0; g < kHeadTile; ++g) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot = fmaf(qf[g][i], kf[i], dot);
      s[g] = dot;
    }
    // Sum over the lanes of this token (aligned groups of kLanesPerToken lanes).
#pragma unroll
    for (int offset = kLanesPerToken / 2; offset > 0; offset /= 2) {
#pragma unroll
      for (int g = 0; g < kHeadTile; ++g) s[g] += __shfl_xor_sync(kFullMask, s[g], offset);
    }
    if (t < end) {
      float vf[kVec];
      Pack<T>::ToFloat(v_cur, vf);
#pragma unroll
      for (int g = 0; g < kHeadTile; ++g) {
        const float m_new = fmaxf(m[g], s[g]);
        const float alpha = exp2f(m[g] - m_new);  // 0 while m is still -inf
        const float p = exp2f(s[g] - m_new);
        l[g] = fmaf(l[g], alpha, p);
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[g][i] = fmaf(acc[g][i], alpha, p * vf[i]);
        m[g] = m_new;
      }
    }
  }

  // Merge the token groups of the warp (lanes with the same dims, kLanesPerToken apart).
#pragma unroll
  for (int offset = kLanesPerToken; offset < 32; offset *= 2) {
#pragma unroll
    for (int g = 0; g < kHeadTile; ++g) {
      const float m_o = __shfl_xor_sync(kFullMask, m[g], offset);
      const float l_o = __shfl_xor_sync(kFullMask, l[g], offset);
      const float m_new = fmaxf(m[g], m_o);
      const float a = m[g] == -INFINITY ? 0.0f : exp2f(m[g] - m_new);
      const float b = m_o == -INFINITY ? 0.0f : exp2f(m_o - m_new);
      l[g] = l[g] * a + l_o * b;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float acc_o = __shfl_xor_sync(kFullMask, acc[g][i], offset);
        acc[g][i] = acc[g][i] * a + acc_o * b;
      }
      m[g] = m_new;
    }
  }

  // Merge the warps through shared memory.
  __shared__ float s_acc[kWarps][kHeadTile][kHeadDim];
  __shared__ float s_m[kWarps][kHeadTile];
  __shared__ float s_l[kWarps][kHeadTile];
  if (token_in_warp == 0) {
#pragma unroll
    for (int g = 0; g < kHeadTile; ++g) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) s_acc[warp][g][dim0 + i] = acc[g][i];
      if (dim0 == 0) {
        s_m[warp][g] = m[g];
        s_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kHeadTile * kHeadDim; idx += kThreads) {
    const int g = idx / kHeadDim;
    const int d = idx % kHeadDim;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, s_m[w][g]);
    float sum = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (s_m[w][g] == -INFINITY) continue;  // a warp that saw no token
      const float c = exp2f(s_m[w][g] - m_max);
      sum = fmaf(s_l[w][g], c, sum);
      o = fmaf(s_acc[w][g][d], c, o);
    }
    const float value = sum > 0.0f ? o / sum : 0.0f;
    const int64_t row = int64_t{seq} * num_heads + head0 + g;
    if (num_splits == 1) {
      out[row * kHeadDim + d] = detail::FromFloat<T>(value);
    } else {
      const int64_t part = row * num_splits + split;
      part_out[part * kHeadDim + d] = value;
      if (d == 0) {
        part_ml[part * 2] = m_max;
        part_ml[part * 2 + 1] = sum;
      }
    }
  }
}

// Merges the splits of one (seq, head): blockDim.x == head_dim.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kHeadDim)
    DecodeMergeKernel(T* __restrict__ out, const float* __restrict__ part_out,
                      const float* __restrict__ part_ml, const int32_t* __restrict__ context_lens,
                      int num_heads, int max_blocks_per_seq, int block_size_log2,
                      int partition_tokens, int num_splits) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int d = threadIdx.x;
  const int ctx = min(context_lens[seq], max_blocks_per_seq << block_size_log2);
  // Split p wrote a result iff p * partition_tokens < ctx.
  const int valid = ctx <= 0 ? 0 : min(num_splits, (ctx + partition_tokens - 1) / partition_tokens);
  const int64_t row = int64_t{seq} * num_heads + head;
  const int64_t part0 = row * num_splits;
  float m_max = -INFINITY;
  for (int p = 0; p < valid; ++p) m_max = fmaxf(m_max, part_ml[(part0 + p) * 2]);
  float sum = 0.0f, o = 0.0f;
  for (int p = 0; p < valid; ++p) {
    const float m = part_ml[(part0 + p) * 2];
    if (m == -INFINITY) continue;
    const float w = part_ml[(part0 + p) * 2 + 1] * exp2f(m - m_max);
    sum += w;
    o = fmaf(w, part_out[(part0 + p) * kHeadDim + d], o);
  }
  out[row * kHeadDim + d] = detail::FromFloat<T>(sum > 0.0f ? o / sum : 0.0f);
}

Status Validate(const PagedAttentionDecodeParams& p) {
  constexpr const char* kWho = "PagedAttentionDecode";
  KVPOOL_RETURN_IF_ERROR(
      detail::CheckAttentionShape(kWho, p.geometry, p.num_heads, p.num_seqs, p.max_blocks_per_seq));
  if (p.max_context_len < 0) return InvalidArgument("PagedAttentionDecode: max_context_len < 0");
  if (!std::isfinite(p.scale)) return InvalidArgument("PagedAttentionDecode: scale not finite");
  if (p.num_seqs == 0) return Status::Ok();
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "k_cache", p.k_cache, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "v_cache", p.v_cache, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "q", p.q, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "out", p.out, false));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "block_tables", p.block_tables, false));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "context_lens", p.context_lens, false));
  return Status::Ok();
}

// The SM count of the current device, cached per ordinal (it is queried every step).
StatusOr<int> CurrentSmCount() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device), "PagedAttentionDecode: cudaGetDevice");
  if (device >= 0 && device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int sms = 0;
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
                              "PagedAttentionDecode: multiprocessor count");
  if (device >= 0 && device < kMaxDevices) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

// Splits only when the unsplit grid would leave SMs idle: aim at kTargetBlocksPerSm
// blocks per SM, each split holding at least kMinPartitionTokens tokens.
DecodePlan Plan(const PagedAttentionDecodeParams& p, int sm_count) {
  DecodePlan plan;
  const int group = p.num_heads / p.geometry.num_kv_heads;
  plan.head_tile = HeadTile(group);
  const int64_t blocks = int64_t{p.num_seqs} * p.geometry.num_kv_heads * (group / plan.head_tile);
  const int max_ctx = std::max(1, p.max_context_len);
  const int64_t wanted =
      (kTargetBlocksPerSm * int64_t{sm_count} + blocks - 1) / std::max<int64_t>(blocks, 1);
  const int64_t by_length = (max_ctx + kMinPartitionTokens - 1) / kMinPartitionTokens;
  const int splits =
      static_cast<int>(std::clamp<int64_t>(std::min(wanted, by_length), 1, kMaxSplits));
  if (splits == 1) {
    plan.partition_tokens = max_ctx;
    return plan;
  }
  plan.partition_tokens = ((max_ctx + splits - 1) / splits + 31) / 32 * 32;
  plan.num_splits = (max_ctx + plan.partition_tokens - 1) / plan.partition_tokens;
  return plan;
}

size_t WorkspaceBytes(const PagedAttentionDecodeParams& p, const DecodePlan& plan) {
  if (plan.num_splits == 1) return 0;
  return size_t(p.num_seqs) * p.num_heads * plan.num_splits * (p.geometry.head_dim + 2) *
         sizeof(float);
}

template <typename T, int kHeadDim, int kHeadTile>
void LaunchTyped(const PagedAttentionDecodeParams& p, const DecodePlan& plan, cudaStream_t stream) {
  const int group = p.num_heads / p.geometry.num_kv_heads;
  const dim3 grid(p.geometry.num_kv_heads * (group / kHeadTile), p.num_seqs, plan.num_splits);
  const int bs_log2 = detail::Log2(p.geometry.block_size);
  const float scale_log2 = p.scale * detail::kLog2e;
  float* part_out = static_cast<float*>(p.workspace);
  float* part_ml = plan.num_splits == 1
                       ? nullptr
                       : part_out + size_t(p.num_seqs) * p.num_heads * plan.num_splits * kHeadDim;
  DecodeKernel<T, kHeadDim, kHeadTile><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(p.q), static_cast<T*>(p.out), part_out, part_ml,
      static_cast<const T*>(p.k_cache), static_cast<const T*>(p.v_cache), p.block_tables,
      p.context_lens, p.num_heads, p.geometry.num_kv_heads, p.max_blocks_per_seq, bs_log2,
      plan.partition_tokens, plan.num_splits, scale_log2);
  if (plan.num_splits > 1) {
    DecodeMergeKernel<T, kHeadDim><<<dim3(p.num_heads, p.num_seqs), kHeadDim, 0, stream>>>(
        static_cast<T*>(p.out), part_out, part_ml, p.context_lens, p.num_heads,
        p.max_blocks_per_seq, bs_log2, plan.partition_tokens, plan.num_splits);
  }
}

template <typename T, int kHeadDim>
void LaunchTile(const PagedAttentionDecodeParams& p, const DecodePlan& plan, cudaStream_t s) {
  switch (plan.head_tile) {
    case 8:
      return LaunchTyped<T, kHeadDim, 8>(p, plan, s);
    case 4:
      return LaunchTyped<T, kHeadDim, 4>(p, plan, s);
    case 2:
      return LaunchTyped<T, kHeadDim, 2>(p, plan, s);
    default:
      return LaunchTyped<T, kHeadDim, 1>(p, plan, s);
  }
}

template <typename T>
void LaunchDim(const PagedAttentionDecodeParams& p, const DecodePlan& plan, cudaStream_t s) {
  if (p.geometry.head_dim == 64) {
    LaunchTile<T, 64>(p, plan, s);
  } else {
    LaunchTile<T, 128>(p, plan, s);
  }
}

}  // namespace

size_t PagedAttentionDecodeWorkspaceBytes(const PagedAttentionDecodeParams& params) {
  if (!Validate(params).ok() || params.num_seqs == 0) return 0;
  StatusOr<int> sms = CurrentSmCount();
  if (!sms.ok()) return 0;
  return WorkspaceBytes(params, Plan(params, *sms));
}

Status PagedAttentionDecode(const PagedAttentionDecodeParams& params, cudaStream_t stream) {
  KVPOOL_RETURN_IF_ERROR(Validate(params));
  if (params.num_seqs == 0) return Status::Ok();
  KVPOOL_ASSIGN_OR_RETURN(const int sms, CurrentSmCount());
  DecodePlan plan = Plan(params, sms);
  if (plan.num_splits > 1) {
    const size_t needed = WorkspaceBytes(params, plan);
    if (params.workspace == nullptr && params.workspace_bytes == 0) {
      plan.num_splits = 1;  // documented: no workspace runs unsplit
      plan.partition_tokens = std::max(1, params.max_context_len);
    } else if (params.workspace == nullptr || params.workspace_bytes < needed) {
      return InvalidArgument("PagedAttentionDecode: workspace of " +
                             std::to_string(params.workspace_bytes) + " bytes, need " +
                             std::to_string(needed) +
                             " (size it with PagedAttentionDecodeWorkspaceBytes)");
    } else if (!detail::Aligned16(params.workspace)) {
      return InvalidArgument("PagedAttentionDecode: workspace must be 16-byte aligned");
    }
  }
  switch (params.geometry.dtype) {
    case KvDtype::kFloat32:
      LaunchDim<float>(params, plan, stream);
      break;
    case KvDtype::kFloat16:
      LaunchDim<__half>(params, plan, stream);
      break;
    case KvDtype::kBFloat16:
      LaunchDim<__nv_bfloat16>(params, plan, stream);
      break;
    case KvDtype::kInt8:
    case KvDtype::kFp8E4m3:
      return InvalidArgument(std::string("PagedAttentionDecode: ") +
                             KvDtypeName(params.geometry.dtype) +
                             " pools are the CPU engine's (CUDA: fp32, fp16, bf16)");
  }
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaGetLastError(), "PagedAttentionDecode: kernel launch");
  return Status::Ok();
}

}  // namespace kvpool::gpu
