// kvpool-cuda-attention-bench: times PagedAttentionDecode (fp16, block size 16,
// shuffled block tables) with CUDA events after warm-up, the median of 100 launches
// (device time: the launches are queued behind a spin kernel, so host launch overhead
// is not counted; the split path's two kernels are counted together),
// for batch 1 and 32, contexts 200 / 1000 / 4000, over the GPT-2 shape (12 heads,
// head_dim 64), the Llama-7B shape (32 heads, 128) and a GQA shape (32 heads, 8 KV
// heads, 128). Prints a table with the bandwidth achieved on the K/V bytes read.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/device_buffer.h"
#include "cuda/paged_attention.h"

namespace {

using kvpool::KvDtype;
using kvpool::gpu::DeviceBuffer;

#define BENCH_CHECK(call)                                                               \
  do {                                                                                  \
    const cudaError_t _e = (call);                                                      \
    if (_e != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call,                 \
                   cudaGetErrorString(_e));                                             \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

DeviceBuffer MustAllocate(size_t bytes) {
  kvpool::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  if (!b.ok()) {
    std::fprintf(stderr, "%s\n", b.status().message().c_str());
    std::exit(1);
  }
  return std::move(b).value();
}

__global__ void FillHalf(__half* data, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    data[i] = __float2half((x & 0xffff) / 32768.0f - 1.0f);
  }
}

// Keeps the GPU busy while the host enqueues the timed launches, so that the event
// pairs measure device time rather than host launch overhead.
__global__ void Spin(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

struct Shape {
  const char* name;
  int num_heads;
  int num_kv_heads;
  int head_dim;
};

}  // namespace

int main() {
  constexpr int kBlockSize = 16;
  constexpr int kWarmup = 10;
  constexpr int kIters = 100;
  const Shape shapes[] = {{"gpt2", 12, 12, 64}, {"llama7b", 32, 32, 128}, {"gqa8", 32, 8, 128}};
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; fp16 pool, block_size %d, median of %d after %d warm-up\n",
              prop.name, prop.multiProcessorCount, kBlockSize, kIters, kWarmup);
  std::printf("%-8s %5s %7s %7s %10s %10s %9s\n", "shape", "batch", "context", "splits",
              "median_us", "kv_MB", "GB/s");
  cudaStream_t stream;
  BENCH_CHECK(cudaStreamCreate(&stream));
  std::vector<cudaEvent_t> starts(kIters), stops(kIters);
  for (int i = 0; i < kIters; ++i) {
    BENCH_CHECK(cudaEventCreate(&starts[i]));
    BENCH_CHECK(cudaEventCreate(&stops[i]));
  }
  std::mt19937_64 rng(42);
  for (const Shape& shape : shapes) {
    for (int batch : {1, 32}) {
      for (int context : {200, 1000, 4000}) {
        const int blocks_per_seq = (context + kBlockSize - 1) / kBlockSize;
        kvpool::PoolGeometry g;
        g.num_layers = 1;
        g.num_kv_heads = shape.num_kv_heads;
        g.head_dim = shape.head_dim;
        g.block_size = kBlockSize;
        g.num_blocks = int64_t{batch} * blocks_per_seq;
        g.dtype = KvDtype::kFloat16;
        DeviceBuffer pool = MustAllocate(g.pool_bytes());
        FillHalf<<<1024, 256>>>(static_cast<__half*>(pool.data()), g.pool_bytes() / 2, 1);
        std::vector<int32_t> ids(g.num_blocks);
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), rng);
        std::vector<int32_t> lens(batch, context);
        const size_t q_elems = size_t(batch) * shape.num_heads * shape.head_dim;
        DeviceBuffer q = MustAllocate(q_elems * 2), out = MustAllocate(q_elems * 2);
        FillHalf<<<64, 256>>>(static_cast<__half*>(q.data()), q_elems, 2);
        DeviceBuffer tables = MustAllocate(ids.size() * 4), ctx = MustAllocate(lens.size() * 4);
        BENCH_CHECK(cudaMemcpy(tables.data(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMemcpy(ctx.data(), lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));

        kvpool::gpu::PagedAttentionDecodeParams p;
        p.geometry = g;
        p.k_cache = pool.data();
        p.v_cache = static_cast<char*>(pool.data()) + g.region_bytes();
        p.q = q.data();
        p.out = out.data();
        p.block_tables = static_cast<const int32_t*>(tables.data());
        p.context_lens = static_cast<const int32_t*>(ctx.data());
        p.num_seqs = batch;
        p.num_heads = shape.num_heads;
        p.max_blocks_per_seq = blocks_per_seq;
        p.max_context_len = context;
        p.scale = 1.0f / std::sqrt(float(shape.head_dim));
        const size_t workspace_bytes = kvpool::gpu::PagedAttentionDecodeWorkspaceBytes(p);
        DeviceBuffer workspace = MustAllocate(workspace_bytes);
        p.workspace = workspace.data();
        p.workspace_bytes = workspace.bytes();
        const int splits =
            workspace_bytes == 0
                ? 1
                : int(workspace_bytes / (size_t(batch) * shape.num_heads * (shape.head_dim + 2) * 4));

        for (int i = 0; i < kWarmup; ++i) {
          const kvpool::Status s = kvpool::gpu::PagedAttentionDecode(p, stream);
          if (!s.ok()) {
            std::fprintf(stderr, "decode failed: %s\n", s.message().c_str());
            return 1;
          }
        }
        Spin<<<1, 1, 0, stream>>>(20'000'000);  // ~10 ms: the host enqueues meanwhile
        for (int i = 0; i < kIters; ++i) {
          BENCH_CHECK(cudaEventRecord(starts[i], stream));
          (void)kvpool::gpu::PagedAttentionDecode(p, stream);  // checked in the warm-up
          BENCH_CHECK(cudaEventRecord(stops[i], stream));
        }
        BENCH_CHECK(cudaStreamSynchronize(stream));
        std::vector<float> times_ms(kIters);
        for (int i = 0; i < kIters; ++i) {
          BENCH_CHECK(cudaEventElapsedTime(&times_ms[i], starts[i], stops[i]));
        }
        std::sort(times_ms.begin(), times_ms.end());
        const double median_s = times_ms[times_ms.size() / 2] * 1e-3;
        const double kv_bytes = 2.0 * batch * context * g.token_elems() * 2;
        std::printf("%-8s %5d %7d %7d %10.1f %10.2f %9.1f\n", shape.name, batch, context, splits,
                    median_s * 1e6, kv_bytes / 1e6, kv_bytes / median_s / 1e9);
      }
    }
  }
  for (int i = 0; i < kIters; ++i) {
    BENCH_CHECK(cudaEventDestroy(starts[i]));
    BENCH_CHECK(cudaEventDestroy(stops[i]));
  }
  BENCH_CHECK(cudaStreamDestroy(stream));
  return 0;
}
