// kvpool-engine-bench: in-process decode latency of the three KV modes, with the
// machine's memory-read bandwidth as the floor a decode step cannot beat (every
// weight is read once per step). Medians of timed single steps after warm-up. Blocks
// come from the cache manager's allocator linked in process (OfflineEngine), so a timed
// decode step includes its in-process grant call, as a served step includes its Step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/cpu_linear.h"
#include "engine/engine.h"
#include "engine/model_loader.h"
#include "service/offline_engine.h"
#include "tools/cpu_dtype_flags.h"
#include "tools/engine_timing.h"

namespace kvpool {
namespace {

// Best of several parallel sums over a buffer far larger than the caches: bytes/s.
double MeasureReadBandwidth(const std::string& device) {
  at::Tensor buf =
      at::ones({int64_t{1} << 28}, at::TensorOptions(at::kFloat).device(device));  // 1 GiB
  double best_s = 1e9;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float s = buf.sum().item<float>();
    (void)s;
    best_s = std::min(best_s,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(buf.numel() * sizeof(float)) / best_s;
}

// Median seconds of one paged decode step of `batch` sequences that start at
// `context` tokens: how a step's cost grows with the batch (per-token cost falls
// while the weights, read once per step, dominate).
StatusOr<double> BatchStepSeconds(OfflineEngine& engine, int64_t batch, int64_t context,
                                  int32_t warmup, int32_t steps) {
  std::vector<SequenceId> ids;
  auto release = [&] {
    for (SequenceId id : ids) (void)engine.Release(id);
  };
  for (int64_t b = 0; b < batch; ++b) {
    auto id = AddTimed(engine, context, KvMode::kPaged, warmup + steps,
                       static_cast<uint32_t>(batch * 1000 + b));
    if (!id.ok()) {
      release();
      return id.status();
    }
    ids.push_back(*id);
  }
  Status st = engine.Prefill(ids);
  std::vector<double> times;
  for (int32_t i = 0; st.ok() && i < warmup + steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    st = engine.Decode(ids);
    if (i >= warmup) {
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  release();
  if (!st.ok()) return st;
  return Median(times);
}

int Main(int argc, char** argv) {
  CLI::App app{"In-process decode latency of kvpool's three KV modes"};
  std::string model = "gpt2", device = "cpu", dtype_name = "fp32";
  int threads = 2, steps = 20, warmup = 3, block_size = 16;
  bool json = false, quick = false, no_graphs = false, batches_only = false;
  std::vector<int64_t> batches = {1, 2, 4, 8, 16, 32};
  std::vector<int64_t> prefill_tokens;
  int64_t batch_context = 100;
  app.add_option("--model", model, "built-in name or Hugging Face folder");
  app.add_option("--threads", threads, "intra-op threads")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed decode steps per point (median)")
      ->check(CLI::Range(1, 10000));
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::Range(0, 1000));
  app.add_option("--block-size", block_size, "tokens per KV block")->check(CLI::Range(1, 1024));
  app.add_option("--device", device, "cpu, cuda or cuda:N");
  app.add_option("--dtype", dtype_name, "weights and KV on CUDA: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  app.add_flag("--no-cuda-graphs", no_graphs, "CUDA: run decode steps eagerly");
  app.add_option("--batches", batches, "paged decode batch sizes to time (context 100)")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  app.add_option("--batch-context", batch_context, "context of the sequences in --batches")
      ->check(CLI::Range(1, 100000));
  app.add_option("--prefill-tokens", prefill_tokens,
                 "with --batches-only: also time the prefill of prompts of these lengths")
      ->delimiter(',')
      ->check(CLI::Range(1, 100000));
  app.add_flag("--batches-only", batches_only,
               "time only the --batches points (e.g. to profile a decode step)");
  app.add_flag("--json", json, "print one JSON object");
  app.add_flag("--quick", quick, "fewer points (smoke test)");
  CpuDtypeFlags cpu_dtypes;
  cpu_dtypes.Add(app);
  CLI11_PARSE(app, argc, argv);
  EngineOptions options;
  if (Status s = cpu_dtypes.Apply(&options); !s.ok()) {
    std::cerr << "kvpool-engine-bench: " << s.message() << "\n";
    return 2;
  }

  auto loaded = LoadModel(model);
  if (!loaded.ok()) {
    std::cerr << "kvpool-engine-bench: " << loaded.status().ToString() << "\n";
    return 2;
  }
  cpu_dtypes.FitToWeights(loaded->weights, &options);
  const at::ScalarType dtype = dtype_name == "fp16"   ? at::kHalf
                               : dtype_name == "bf16" ? at::kBFloat16
                                                      : at::kFloat;
  const int64_t weight_bytes =
      loaded->weights.ParameterBytes() / 4 * static_cast<int64_t>(c10::elementSize(dtype));
  const ModelConfig config = loaded->config;
  options.threads = threads;
  options.block_size = block_size;
  options.device = device;
  options.dtype = dtype;
  options.cuda_graphs = !no_graphs;
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());
  const int64_t blocks_per_batch_seq = (batch_context + warmup + steps + block_size) / block_size;
  options.num_blocks =
      std::max<int64_t>(4 * ((loaded->config.max_position + block_size - 1) / block_size),
                        max_batch * blocks_per_batch_seq);
  auto engine_or =
      worker::OfflineEngine::Create(loaded->config, std::move(loaded->weights), options);
  if (!engine_or.ok()) {
    std::cerr << "kvpool-engine-bench: " << engine_or.status().ToString() << "\n";
    return 2;
  }
  worker::OfflineEngine& engine = **engine_or;
  if (batch_context + warmup + steps >= config.max_position) {
    std::cerr << "kvpool-engine-bench: --batch-context + --warmup + --steps must stay below "
              << config.max_position << " (the model's context)\n";
    return 2;
  }
  auto fail = [&](const Status& st) {
    std::cerr << "kvpool-engine-bench: " << st.ToString() << "\n";
    return 1;
  };
  const int point_steps = quick ? std::min(steps, 5) : steps;
  nlohmann::json batch_decode = nlohmann::json::array();
  auto time_batches = [&]() -> Status {
    for (int64_t batch : batches) {
      KVPOOL_ASSIGN_OR_RETURN(double step,
                              BatchStepSeconds(engine, batch, batch_context, warmup, point_steps));
      batch_decode.push_back({{"batch", batch},
                              {"step_ms", step * 1e3},
                              {"tokens_per_s", static_cast<double>(batch) / step}});
    }
    return Status::Ok();
  };
  auto print_batches = [&](const std::string& linear) {
    std::printf("paged decode at context %ld by batch (linear layers: %s):\n",
                static_cast<long>(batch_context), linear.c_str());
    std::printf("%8s %10s %10s\n", "batch", "step ms", "tokens/s");
    for (const auto& row : batch_decode) {
      std::printf("%8ld %10.2f %10.1f\n", static_cast<long>(row["batch"].get<int64_t>()),
                  row["step_ms"].get<double>(), row["tokens_per_s"].get<double>());
    }
  };
  const char* blas_core = std::getenv("OPENBLAS_CORETYPE");
  const std::string cpu_linear = device != "cpu" ? std::string("cuda")
                                 : CpuLinearUsesKernel(2)
                                     ? std::string("kvpool ") + CpuLinearKernelName() +
                                           " kernel for " + (CpuLinearUsesKernel(1) ? "1-" : "2-") +
                                           std::to_string(kCpuLinearMaxRows) +
                                           " rows, BLAS otherwise (OPENBLAS_CORETYPE " +
                                           (blas_core ? blas_core : "unset") + ")"
                                     : std::string("BLAS");
  if (batches_only) {
    if (Status st = time_batches(); !st.ok()) return fail(st);
    nlohmann::json prefill = nlohmann::json::array();
    for (int64_t tokens : prefill_tokens) {
      if (tokens >= config.max_position) {
        std::cerr << "kvpool-engine-bench: --prefill-tokens must stay below " << config.max_position
                  << "\n";
        return 2;
      }
      auto took = PrefillSeconds(engine, tokens, warmup, point_steps);
      if (!took.ok()) return fail(took.status());
      prefill.push_back({{"tokens", tokens}, {"prefill_ms", *took * 1e3}});
    }
    if (json) {
      std::cout << nlohmann::json{{"model", config.name},
                                  {"threads", threads},
                                  {"device", engine.engine().runner().device()},
                                  {"batch_context", batch_context},
                                  {"cpu_linear", cpu_linear},
                                  {"batch_decode", batch_decode},
                                  {"prefill", prefill}}
                       .dump(2)
                << std::endl;
    } else {
      print_batches(cpu_linear);
      for (const auto& row : prefill) {
        std::printf("prefill of %ld tokens: %.2f ms\n",
                    static_cast<long>(row["tokens"].get<int64_t>()),
                    row["prefill_ms"].get<double>());
      }
    }
    return 0;
  }
  const int64_t ctx_max = config.max_position - warmup - steps - 2;
  const int64_t ctx_small = std::min<int64_t>(200, ctx_max),
                ctx_large = std::min<int64_t>(1000, ctx_max);
  const int64_t ctx_none = std::min<int64_t>(512, ctx_max);

  nlohmann::json out;
  if (!json)
    std::fprintf(stderr, "measuring contiguous and paged at %ld and %ld tokens ...\n",
                 static_cast<long>(ctx_small), static_cast<long>(ctx_large));
  auto cached = DecodeSecondsPerToken(engine,
                                      {{KvMode::kContiguous, ctx_small},
                                       {KvMode::kPaged, ctx_small},
                                       {KvMode::kContiguous, ctx_large},
                                       {KvMode::kPaged, ctx_large},
                                       {KvMode::kContiguous, ctx_none}},
                                      warmup, steps);
  if (!cached.ok()) return fail(cached.status());
  if (!json) std::fprintf(stderr, "measuring none (recompute) ...\n");
  std::vector<int64_t> none_contexts = {ctx_small, ctx_none};
  if (!quick) none_contexts.insert(none_contexts.begin(), {32, 64, 128, 256});
  std::vector<Point> none_points;
  for (int64_t ctx : none_contexts) {
    if (ctx <= ctx_max) none_points.push_back({KvMode::kNone, ctx});
  }
  auto none = DecodeSecondsPerToken(engine, none_points, 1, quick ? std::min(steps, 5) : steps);
  if (!none.ok()) return fail(none.status());
  nlohmann::json per_mode;
  per_mode["contiguous"] = (*cached)[0] * 1e3;
  per_mode["paged"] = (*cached)[1] * 1e3;
  per_mode["none"] = (*none)[none_points.size() - 2] * 1e3;
  const double contiguous_large = (*cached)[2], paged_large = (*cached)[3];
  const double none_512 = none->back();
  nlohmann::json none_curve = nlohmann::json::array();
  for (size_t i = 0; i < none_points.size(); ++i) {
    none_curve.push_back({{"context", none_points[i].context}, {"ms_per_token", (*none)[i] * 1e3}});
  }
  if (!json) std::fprintf(stderr, "measuring paged decode steps by batch size ...\n");
  if (Status st = time_batches(); !st.ok()) return fail(st);
  const double bandwidth =
      MeasureReadBandwidth(device == "cpu" ? "cpu" : engine.engine().runner().device());

  out["model"] = config.name;
  out["weights"] = loaded->source;
  out["threads"] = threads;
  out["device"] = engine.engine().runner().device();
  out["dtype"] = dtype_name;
  out["cpu_weight_dtype"] = cpu_dtypes.weight_why;
  out["cpu_kv_cache_dtype"] = KvDtypeName(options.cpu_kv_dtype);
  out["cuda_graphs"] = device != "cpu" && !no_graphs;
  out["block_size"] = block_size;
  out["batch"] = 1;
  out["steps_per_point"] = steps;
  out["context"] = ctx_small;
  out["context_large"] = ctx_large;
  out["method"] =
      "batch 1; median of timed single decode steps after warm-up; the points of "
      "each group (contiguous/paged at both contexts; none at every context) interleaved";
  out["decode_ms_per_token"] = per_mode;
  out["paged_over_contiguous"] =
      per_mode["paged"].get<double>() / per_mode["contiguous"].get<double>();
  out["paged_ms_per_token_at_1000"] = paged_large * 1e3;
  out["contiguous_ms_per_token_at_1000"] = contiguous_large * 1e3;
  out["paged_growth_200_to_1000"] = paged_large * 1e3 / per_mode["paged"].get<double>();
  out["none_ms_per_token_at_512"] = none_512 * 1e3;
  out["none_curve"] = none_curve;
  out["weight_bytes"] = weight_bytes;
  out["kv_bytes_per_token"] = static_cast<int64_t>(engine.engine().geometry().token_bytes());
  out["read_bandwidth_gb_per_s"] = bandwidth / 1e9;
  out["bandwidth_floor_ms_per_token"] = weight_bytes / bandwidth * 1e3;
  out["paged_over_floor"] =
      per_mode["paged"].get<double>() / out["bandwidth_floor_ms_per_token"].get<double>();
  out["contiguous_ms_per_token_at_512"] = (*cached)[4] * 1e3;
  out["batch_context"] = batch_context;
  out["batch_decode"] = batch_decode;
  out["cpu_linear"] = cpu_linear;
  out["contiguous_over_none_at_512"] = none_512 / (*cached)[4];
  if (json) {
    std::cout << out.dump(2) << std::endl;
    return 0;
  }
  std::printf("model %s (%s) on %s %s, %d threads, block size %d, batch 1, median of %d steps\n",
              config.name.c_str(), loaded->source.c_str(),
              engine.engine().runner().device().c_str(), dtype_name.c_str(), threads, block_size,
              steps);
  std::printf("%-34s %10s\n", "measure", "ms/token");
  for (const char* m : {"none", "contiguous", "paged"}) {
    std::printf("%-34s %10.2f\n",
                (std::string(m) + " @ context " + std::to_string(ctx_small)).c_str(),
                per_mode[m].get<double>());
  }
  std::printf("%-34s %10.2f\n", ("contiguous @ context " + std::to_string(ctx_large)).c_str(),
              contiguous_large * 1e3);
  std::printf("%-34s %10.2f\n", ("paged @ context " + std::to_string(ctx_large)).c_str(),
              paged_large * 1e3);
  std::printf("%-34s %10.2f\n", ("none @ context " + std::to_string(ctx_none)).c_str(),
              none_512 * 1e3);
  std::printf("%-34s %10.2f  (%.1f MB at %.1f GB/s)\n", "bandwidth floor",
              out["bandwidth_floor_ms_per_token"].get<double>(), weight_bytes / 1e6,
              bandwidth / 1e9);
  std::printf("paged / contiguous = %.3f, paged growth %ld->%ld = %.3f, paged / floor = %.2f\n",
              out["paged_over_contiguous"].get<double>(), static_cast<long>(ctx_small),
              static_cast<long>(ctx_large), out["paged_growth_200_to_1000"].get<double>(),
              out["paged_over_floor"].get<double>());
  print_batches(cpu_linear);
  return 0;
}

}  // namespace
}  // namespace kvpool

int main(int argc, char** argv) {
  kvpool::KeepLargeAllocations();
  return kvpool::Main(argc, argv);
}
