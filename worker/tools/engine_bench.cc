// kvpool-engine-bench: in-process decode latency of the three KV modes, with the
// machine's memory-read bandwidth as the floor a decode step cannot beat (every
// weight is read once per step). Medians of timed single steps after warm-up.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>

#include "engine/engine.h"
#include "engine/model_loader.h"

namespace kvpool {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Best of several parallel sums over a buffer far larger than the caches: bytes/s.
double MeasureReadBandwidth(const std::string& device) {
  at::Tensor buf = at::ones({int64_t{1} << 28}, at::TensorOptions(at::kFloat).device(device));  // 1 GiB
  double best_s = 1e9;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float s = buf.sum().item<float>();
    (void)s;
    best_s = std::min(best_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(buf.numel() * sizeof(float)) / best_s;
}

// Median seconds of one decode step for a batch-1 sequence whose context starts at
// `context` tokens (it grows by one per step).
StatusOr<double> DecodeSecondsPerToken(Engine& engine, KvMode mode, int64_t context,
                                       int32_t warmup, int32_t steps) {
  GenerationRequest r;
  std::mt19937 rng(context);
  std::uniform_int_distribution<int32_t> dist(0, engine.config().vocab_size - 1);
  for (int64_t i = 0; i < context; ++i) r.prompt.push_back(dist(rng));
  r.max_tokens = warmup + steps + 1;
  r.mode = mode;
  r.ignore_eos = true;
  KVPOOL_ASSIGN_OR_RETURN(SequenceId id, engine.AddSequence(std::move(r)));
  Status st = engine.Prefill({id});
  std::vector<double> times;
  for (int32_t i = 0; st.ok() && i < warmup + steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    st = engine.Decode({id});
    if (i >= warmup) {
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  engine.Release(id);
  KVPOOL_RETURN_IF_ERROR(st);
  return Median(times);
}

int Main(int argc, char** argv) {
  CLI::App app{"In-process decode latency of kvpool's three KV modes"};
  std::string model = "gpt2", device = "cpu", dtype_name = "fp32";
  int threads = 2, steps = 20, warmup = 3, block_size = 16;
  bool json = false, quick = false, no_graphs = false;
  app.add_option("--model", model, "built-in name or Hugging Face folder");
  app.add_option("--threads", threads, "intra-op threads")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed decode steps per point (median)")->check(CLI::Range(1, 10000));
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::Range(0, 1000));
  app.add_option("--block-size", block_size, "tokens per KV block")->check(CLI::Range(1, 1024));
  app.add_option("--device", device, "cpu, cuda or cuda:N");
  app.add_option("--dtype", dtype_name, "weights and KV on CUDA: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  app.add_flag("--no-cuda-graphs", no_graphs, "CUDA: run decode steps eagerly");
  app.add_flag("--json", json, "print one JSON object");
  app.add_flag("--quick", quick, "fewer points (smoke test)");
  CLI11_PARSE(app, argc, argv);

  auto loaded = LoadModel(model);
  if (!loaded.ok()) {
    std::cerr << "kvpool-engine-bench: " << loaded.status().ToString() << "\n";
    return 2;
  }
  const at::ScalarType dtype = dtype_name == "fp16" ? at::kHalf
                              : dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  const int64_t weight_bytes =
      loaded->weights.ParameterBytes() / 4 * static_cast<int64_t>(c10::elementSize(dtype));
  const ModelConfig config = loaded->config;
  EngineOptions options;
  options.threads = threads;
  options.block_size = block_size;
  options.device = device;
  options.dtype = dtype;
  options.cuda_graphs = !no_graphs;
  auto engine_or = Engine::Create(loaded->config, std::move(loaded->weights), options);
  if (!engine_or.ok()) {
    std::cerr << "kvpool-engine-bench: " << engine_or.status().ToString() << "\n";
    return 2;
  }
  Engine& engine = **engine_or;
  const int64_t ctx_max = config.max_position - warmup - steps - 2;
  const int64_t ctx_small = std::min<int64_t>(200, ctx_max), ctx_large = std::min<int64_t>(1000, ctx_max);
  const int64_t ctx_none = std::min<int64_t>(512, ctx_max);

  nlohmann::json out;
  auto fail = [&](const Status& st) {
    std::cerr << "kvpool-engine-bench: " << st.ToString() << "\n";
    return 1;
  };
  auto measure = [&](KvMode mode, int64_t ctx, int32_t n) -> StatusOr<double> {
    if (!json) std::fprintf(stderr, "  %-10s context %5ld ...\n", KvModeName(mode), static_cast<long>(ctx));
    return DecodeSecondsPerToken(engine, mode, ctx, warmup, n);
  };
  nlohmann::json per_mode;
  for (KvMode mode : {KvMode::kNone, KvMode::kContiguous, KvMode::kPaged}) {
    auto s = measure(mode, ctx_small, steps);
    if (!s.ok()) return fail(s.status());
    per_mode[KvModeName(mode)] = *s * 1e3;
  }
  auto paged_large = measure(KvMode::kPaged, ctx_large, steps);
  if (!paged_large.ok()) return fail(paged_large.status());
  auto contiguous_large = measure(KvMode::kContiguous, ctx_large, steps);
  if (!contiguous_large.ok()) return fail(contiguous_large.status());
  auto none_512 = measure(KvMode::kNone, ctx_none, quick ? std::min(steps, 5) : steps);
  if (!none_512.ok()) return fail(none_512.status());
  nlohmann::json none_curve = nlohmann::json::array();
  if (!quick) {
    for (int64_t ctx : {32, 64, 128, 256}) {
      if (ctx > ctx_max) break;
      auto s = measure(KvMode::kNone, ctx, std::min(steps, 7));
      if (!s.ok()) return fail(s.status());
      none_curve.push_back({{"context", ctx}, {"ms_per_token", *s * 1e3}});
    }
  }
  none_curve.push_back({{"context", ctx_small}, {"ms_per_token", per_mode["none"]}});
  none_curve.push_back({{"context", ctx_none}, {"ms_per_token", *none_512 * 1e3}});
  const double bandwidth = MeasureReadBandwidth(device == "cpu" ? "cpu" : engine.runner().device());

  out["model"] = config.name;
  out["weights"] = loaded->source;
  out["threads"] = threads;
  out["device"] = engine.runner().device();
  out["dtype"] = dtype_name;
  out["cuda_graphs"] = device != "cpu" && !no_graphs;
  out["block_size"] = block_size;
  out["batch"] = 1;
  out["steps_per_point"] = steps;
  out["context"] = ctx_small;
  out["decode_ms_per_token"] = per_mode;
  out["paged_over_contiguous"] = per_mode["paged"].get<double>() / per_mode["contiguous"].get<double>();
  out["paged_ms_per_token_at_1000"] = *paged_large * 1e3;
  out["contiguous_ms_per_token_at_1000"] = *contiguous_large * 1e3;
  out["paged_growth_200_to_1000"] = *paged_large * 1e3 / per_mode["paged"].get<double>();
  out["none_ms_per_token_at_512"] = *none_512 * 1e3;
  out["none_curve"] = none_curve;
  out["weight_bytes"] = weight_bytes;
  out["kv_bytes_per_token"] = config.KvBytesPerToken();
  out["read_bandwidth_gb_per_s"] = bandwidth / 1e9;
  out["bandwidth_floor_ms_per_token"] = weight_bytes / bandwidth * 1e3;
  out["paged_over_floor"] = per_mode["paged"].get<double>() / out["bandwidth_floor_ms_per_token"].get<double>();
  out["contiguous_over_none_at_512"] = *none_512 / (per_mode["contiguous"].get<double>() / 1e3);
  if (json) {
    std::cout << out.dump(2) << std::endl;
    return 0;
  }
  std::printf("model %s (%s) on %s %s, %d threads, block size %d, batch 1, median of %d steps\n",
              config.name.c_str(), loaded->source.c_str(), engine.runner().device().c_str(),
              dtype_name.c_str(), threads, block_size, steps);
  std::printf("%-34s %10s\n", "measure", "ms/token");
  for (const char* m : {"none", "contiguous", "paged"}) {
    std::printf("%-34s %10.2f\n", (std::string(m) + " @ context " + std::to_string(ctx_small)).c_str(),
                per_mode[m].get<double>());
  }
  std::printf("%-34s %10.2f\n", ("contiguous @ context " + std::to_string(ctx_large)).c_str(), *contiguous_large * 1e3);
  std::printf("%-34s %10.2f\n", ("paged @ context " + std::to_string(ctx_large)).c_str(), *paged_large * 1e3);
  std::printf("%-34s %10.2f\n", ("none @ context " + std::to_string(ctx_none)).c_str(), *none_512 * 1e3);
  std::printf("%-34s %10.2f  (%.1f MB at %.1f GB/s)\n", "bandwidth floor",
              out["bandwidth_floor_ms_per_token"].get<double>(), weight_bytes / 1e6, bandwidth / 1e9);
  std::printf("paged / contiguous = %.3f, paged growth %ld->%ld = %.3f, paged / floor = %.2f\n",
              out["paged_over_contiguous"].get<double>(), static_cast<long>(ctx_small),
              static_cast<long>(ctx_large), out["paged_growth_200_to_1000"].get<double>(),
              out["paged_over_floor"].get<double>());
  return 0;
}

}  // namespace
}  // namespace kvpool

int main(int argc, char** argv) { return kvpool::Main(argc, argv); }
