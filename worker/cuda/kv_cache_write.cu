// WriteKvCache: scatters the K and V rows of new tokens into one layer's pool regions
// at their slots (block_id * block_size + offset), 16 bytes per thread. It is a pure
// copy (no dtype conversion): the inputs already have the pool's dtype. Negative
// slots are padding and skipped; slots past the pool are skipped, never written.
#include <string>

#include "cuda/cuda_status.h"
#include "cuda/kernel_common.cuh"
#include "cuda/paged_attention.h"

namespace kvpool::gpu {
namespace {

constexpr int kThreads = 128;

// One block per token; `packs` 16-byte packs per token row of num_kv_heads * head_dim.
__global__ void __launch_bounds__(kThreads)
    WriteKvCacheKernel(const uint4* __restrict__ k, const uint4* __restrict__ v,
                       uint4* __restrict__ k_cache, uint4* __restrict__ v_cache,
                       const int64_t* __restrict__ slot_mapping, int64_t num_slots, int packs) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0 || slot >= num_slots) return;
  for (int i = threadIdx.x; i < packs; i += kThreads) {
    k_cache[slot * packs + i] = k[token * packs + i];
    v_cache[slot * packs + i] = v[token * packs + i];
  }
}

}  // namespace

Status WriteKvCache(const WriteKvCacheParams& p, cudaStream_t stream) {
  constexpr const char* kWho = "WriteKvCache";
  const PoolGeometry& g = p.geometry;
  if (g.dtype != KvDtype::kFloat32 && g.dtype != KvDtype::kFloat16 &&
      g.dtype != KvDtype::kBFloat16) {
    return InvalidArgument(std::string("WriteKvCache: ") + KvDtypeName(g.dtype) +
                           " pools are the CPU engine's (CUDA: fp32, fp16, bf16)");
  }
  if (g.num_kv_heads <= 0 || g.head_dim <= 0 || g.block_size <= 0 || g.num_blocks < 0) {
    return InvalidArgument("WriteKvCache: num_kv_heads, head_dim, block_size must be positive");
  }
  const size_t row_bytes = size_t(g.head_dim) * KvDtypeBytes(g.dtype);
  if (row_bytes % 16 != 0) {
    return InvalidArgument("WriteKvCache: head_dim " + std::to_string(g.head_dim) + " of " +
                           KvDtypeName(g.dtype) + " is not a multiple of 16 bytes");
  }
  if (p.num_tokens < 0 || p.num_tokens > 0x7fffffff) {
    return InvalidArgument("WriteKvCache: num_tokens " + std::to_string(p.num_tokens) +
                           " out of range [0, 2^31)");
  }
  if (p.num_tokens == 0) return Status::Ok();
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "k_cache", p.k_cache, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "v_cache", p.v_cache, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "k", p.k, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "v", p.v, true));
  KVPOOL_RETURN_IF_ERROR(detail::CheckPointer(kWho, "slot_mapping", p.slot_mapping, false));
  const int packs = static_cast<int>(row_bytes / 16 * g.num_kv_heads);
  WriteKvCacheKernel<<<static_cast<unsigned>(p.num_tokens), kThreads, 0, stream>>>(
      static_cast<const uint4*>(p.k), static_cast<const uint4*>(p.v),
      static_cast<uint4*>(p.k_cache), static_cast<uint4*>(p.v_cache), p.slot_mapping,
      g.num_blocks * g.block_size, packs);
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaGetLastError(), "WriteKvCache: kernel launch");
  return Status::Ok();
}

}  // namespace kvpool::gpu
