// kvpool-linear-bench (Google Benchmark): one gpt2 layer's four bf16 products (qkv
// 768->2304, proj 768->768, fc 768->3072, fc proj 3072->768) at a number of rows,
// through each path a bf16 weight can take on this CPU:
// - packed: cpu_linear_packed.h (the CPU model's path where the CPU has AVX512-BF16),
//   its kernel chosen by shape; packed_avx512 and packed_amx force one (the latter
//   where the CPU has AMX-BF16);
// - cpu_linear: CpuLinear on the [N, K] matrix (its row-dot kernel up to
//   kBf16KernelMaxRows rows, ATen's bf16 product beyond);
// - aten: ATen's bf16 product (oneDNN 2.6 under Debian's LibTorch) for every row count.
// packed_model: the packed path through gpt2's 12 layers of distinct weights, which do not
// fit in the L3 (the other benchmarks' one layer does), as in a model's step.
// Counter: GFLOP of the four products per second. Threads: --threads N as the first argument
// (default 2, the VMs' cores), the rest goes to Google Benchmark.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine/cpu_linear.h"
#include "engine/cpu_linear_packed.h"

namespace kvpool {
namespace {

struct Layer {
  std::vector<at::Tensor> w, packed;
  std::vector<int64_t> n;
  double flops_per_row = 0;
};

constexpr std::pair<int64_t, int64_t> kShapes[] = {
    {2304, 768}, {768, 768}, {3072, 768}, {768, 3072}};

// One layer's matrices, packed into `arena` where given (as the model packs all of its
// matrices into one), else each into its own.
Layer MakeLayer(PackedArena* arena = nullptr) {
  Layer l;
  for (const auto& [n, k] : kShapes) {
    l.w.push_back(at::randn({n, k}).to(at::kBFloat16));
    l.packed.push_back(CpuPacksBf16Weights() ? PackBf16(l.w.back(), arena) : at::Tensor());
    l.n.push_back(n);
    l.flops_per_row += 2.0 * static_cast<double>(n * k);
  }
  return l;
}

const Layer& Gpt2Layer() {
  static const Layer layer = [] {
    at::manual_seed(1);
    return MakeLayer();
  }();
  return layer;
}

// gpt2's 12 layers, each its own weights (81 MiB of packed bf16, in one arena as the
// model's): more than the L3 of these VMs, so every product reads its weights from
// memory, as a decode step does.
// One layer's 14 MiB stay in a 32 MiB L3 between iterations.
constexpr int kModelLayers = 12;
const std::vector<Layer>& Gpt2Layers() {
  static const std::vector<Layer> layers = [] {
    at::manual_seed(1);
    size_t bytes = 0;
    for (const auto& [n, k] : kShapes) bytes += PackedArena::Footprint(n, k) * kModelLayers;
    PackedArena arena(bytes);
    std::vector<Layer> all;
    for (int i = 0; i < kModelLayers; ++i) all.push_back(MakeLayer(&arena));
    return all;
  }();
  return layers;
}

enum class Path { kPacked, kPackedAvx512, kPackedAmx, kCpuLinear, kAten };

PackedKernel KernelOf(Path path) {
  return path == Path::kPackedAvx512 ? PackedKernel::kAvx512Bf16
         : path == Path::kPackedAmx  ? PackedKernel::kAmx
                                     : PackedKernel::kAuto;
}

void Run(benchmark::State& state, Path path) {
  const Layer& l = Gpt2Layer();
  const bool packed =
      path == Path::kPacked || path == Path::kPackedAvx512 || path == Path::kPackedAmx;
  if (packed && !CpuPacksBf16Weights()) {
    state.SkipWithError("no AVX512-BF16 packed product on this CPU");
    return;
  }
  if (path == Path::kPackedAmx && !CpuHasAmxBf16()) {
    state.SkipWithError("no AMX-BF16 on this CPU");
    return;
  }
  const int64_t rows = state.range(0);
  std::vector<at::Tensor> x;
  for (const at::Tensor& w : l.w) x.push_back(at::randn({rows, w.size(1)}));
  for (auto _ : state) {
    for (size_t i = 0; i < l.w.size(); ++i) {
      at::Tensor y = packed ? CpuLinearPackedBf16(x[i], l.packed[i], l.n[i], {}, KernelOf(path))
                     : path == Path::kCpuLinear ? CpuLinear(x[i], l.w[i], {})
                                                : at::mm(x[i].to(at::kBFloat16), l.w[i].t());
      benchmark::DoNotOptimize(y.data_ptr());
    }
  }
  // GFLOP per iteration, shown per second.
  state.counters["GFLOP"] = benchmark::Counter(l.flops_per_row * static_cast<double>(rows) * 1e-9,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

// The packed product (kernel as the model picks it) through all 12 layers' weights.
void BM_PackedModel(benchmark::State& state) {
  if (!CpuPacksBf16Weights()) {
    state.SkipWithError("no AVX512-BF16 packed product on this CPU");
    return;
  }
  const std::vector<Layer>& layers = Gpt2Layers();
  const int64_t rows = state.range(0);
  std::vector<at::Tensor> x;
  for (const at::Tensor& w : layers[0].w) x.push_back(at::randn({rows, w.size(1)}));
  for (auto _ : state) {
    for (const Layer& l : layers) {
      for (size_t i = 0; i < l.w.size(); ++i) {
        at::Tensor y = CpuLinearPackedBf16(x[i], l.packed[i], l.n[i], {});
        benchmark::DoNotOptimize(y.data_ptr());
      }
    }
  }
  state.counters["GFLOP"] =
      benchmark::Counter(layers[0].flops_per_row * kModelLayers * static_cast<double>(rows) * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Packed(benchmark::State& state) { Run(state, Path::kPacked); }
void BM_PackedAvx512(benchmark::State& state) { Run(state, Path::kPackedAvx512); }
void BM_PackedAmx(benchmark::State& state) { Run(state, Path::kPackedAmx); }
void BM_CpuLinear(benchmark::State& state) { Run(state, Path::kCpuLinear); }
void BM_Aten(benchmark::State& state) { Run(state, Path::kAten); }

#define ROWS                                                                               \
  ->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(128)->Arg(512)->Arg(2048)->Unit( \
      benchmark::kMillisecond)
BENCHMARK(BM_Packed) ROWS;
BENCHMARK(BM_PackedModel) ROWS;
BENCHMARK(BM_PackedAvx512) ROWS;
BENCHMARK(BM_PackedAmx) ROWS;
BENCHMARK(BM_CpuLinear) ROWS;
BENCHMARK(BM_Aten) ROWS;

}  // namespace
}  // namespace kvpool

int main(int argc, char** argv) {
  int threads = 2;
  if (argc > 2 && std::strcmp(argv[1], "--threads") == 0) {
    threads = std::atoi(argv[2]);
    argv[2] = argv[0];
    argc -= 2;
    argv += 2;
  }
  at::set_num_threads(threads);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
