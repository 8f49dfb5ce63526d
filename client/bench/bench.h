// `kvpool bench`: the experiment "no KV cache vs KV cache vs PagedAttention", measured
// through the real services, and the scenarios that go past it. This header holds what
// the scenarios share: the options, the local node they run on (a `kvpool up` child,
// restarted when a scenario needs another pool), one measured request, and the
// scenario entry points; each fills its part of the report JSON (schema:
// docs/bench-report.md). Numbers come from the services' own timings and the client's
// clock; nothing here runs the model.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "common/subprocess.h"
#include "kvpool/client.h"

namespace kvpool::bench {

struct BenchOptions {
  std::string out_dir;
  std::string server;        // worker address(es); empty: start a local node
  std::string openai_url;    // an OpenAI-compatible server instead (openai_scenarios.cc)
  std::string openai_token;  // its bearer token, "" for none
  std::string manager;       // with --server: the manager's address (for its stats), optional
  std::string model = "gpt2";
  int threads = 0;  // worker threads (0: the machine's cores)
  bool quick = false;
  std::string baseline;  // "", "hf" or "vllm"
  // The local node's pool: its memory (shm, or cuda: the manager hosts it on a GPU and
  // the worker runs there) and K/V dtype; "" for the manager's defaults.
  std::string backend;
  std::string kv_cache_dtype;
  std::string prompt = "深度学习中的注意力机制是一种";
  int max_tokens = 50;
  uint32_t seed = 1;
  // Scenarios to run (original, context_sweep, prefix_sharing, bandwidth_floor,
  // workloads, cache_size, or all).
  std::vector<std::string> scenarios = {"all"};
  bool Wants(const std::string& name) const {
    for (const std::string& s : scenarios) {
      if (s == "all" || s == name) return true;
    }
    return false;
  }
  std::function<void(const std::string&)> progress;  // what the bench is doing now
  std::function<void()> progress_end;                // before the result is printed
  bool quiet = false;                                // no progress on stderr
};

// A `kvpool up` child with one worker; Restart gives it another pool.
class LocalNode {
 public:
  explicit LocalNode(const BenchOptions& options) : options_(options) {}
  ~LocalNode();
  // Starts (or restarts) the node with this pool; 0 = the manager's default. `extra`:
  // more `kvpool up` flags (e.g. the dtypes).
  Status Start(int64_t num_blocks, int32_t block_size, const std::vector<std::string>& extra = {});
  void Stop();
  const std::string& worker() const { return worker_; }
  const std::string& manager() const { return manager_; }

 private:
  const BenchOptions& options_;
  std::unique_ptr<Subprocess> up_;
  std::string worker_, manager_;
};

// One request's measurements from the client side plus the server's summary.
struct Measured {
  Status status;
  std::vector<double> step_s;        // per token, the server's step latency
  std::vector<double> arrival_s;     // per token, client clock
  std::vector<int64_t> kv_reserved;  // per token, the sequence's KV bytes after its step
  std::vector<int64_t> kv_used;
  v1::GenerateSummary summary;
  double client_ttft_s = 0, client_total_s = 0;
  int tokens = 0;
};

// Runs `params`; with `stop_after` > 0 the client cancels once that many tokens came
// (an EOS-like end before max_tokens; the result then counts as complete).
Measured Run(Client& client, const GenerateParams& params, int stop_after = 0);

// Samples a worker's stats every `period` on a thread while alive.
class StatsSampler {
 public:
  StatsSampler(Client& client, std::chrono::milliseconds period);
  ~StatsSampler();
  std::vector<v1::GetWorkerStatsResponse> Take();  // stops and returns the samples

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// One request of a load: its prompt, the tokens the client reads before it ends the
// request, and what it asks for (the reservation of a contiguous server).
struct WorkItem {
  std::vector<int32_t> prompt;
  int output = 0;
  int max_tokens = 0;
};

struct LoadResult {
  Status status;
  double wall_s = 0;
  int64_t tokens = 0, requests = 0;
  // The sustained window: from the start until the last request was issued, the time
  // during which exactly `concurrency` requests were in flight (a closed loop issues
  // only when one finishes); ramp-down after it is excluded. Tokens that arrived in it.
  double sustained_s = 0;
  int64_t sustained_tokens = 0;
  std::vector<double> ttft_s, itl_s;
  int64_t prompt_tokens = 0, cached_tokens = 0;
  std::vector<v1::GetWorkerStatsResponse> samples;
};

// Runs `items` with at most `concurrency` in flight (closed loop), sampling the
// worker's stats every 10 ms meanwhile unless `sample_stats` is false (a comparison
// with an engine that nothing polls).
LoadResult RunLoad(Client& client, const std::vector<WorkItem>& items, int concurrency,
                   const std::string& mode, bool sample_stats = true);

double Median(std::vector<double> values);
std::vector<int32_t> RandomTokens(int n, uint32_t seed, int vocab);

// Scenario a: the original experiment. Fills report["modes"] and report["original"].
Status RunOriginal(const BenchOptions& o, LocalNode* node, Client& client, nlohmann::json& report);
// b: decode latency vs context per mode.
Status RunContextSweep(const BenchOptions& o, Client& client, const v1::GetModelInfoResponse& info,
                       nlohmann::json& report);
// c + d: the mixed workload: KV utilisation and the largest batch per mode, then
// throughput vs concurrency. Needs its own pool, so a local node.
Status RunWorkloads(const BenchOptions& o, LocalNode* node, const v1::GetModelInfoResponse& info,
                    nlohmann::json& report);
// e: prefix sharing.
Status RunPrefixSharing(const BenchOptions& o, Client& client, const v1::GetModelInfoResponse& info,
                        nlohmann::json& report);
// f: hit rate and throughput vs pool size and block size (LRU eviction).
Status RunCacheSize(const BenchOptions& o, LocalNode* node, const v1::GetModelInfoResponse& info,
                    nlohmann::json& report);
// h: a shared system prompt under eviction pressure, with and without a pin
// (pinning_scenario.cc); and its section of report.md.
Status RunPinning(const BenchOptions& o, LocalNode* node, const v1::GetModelInfoResponse& info,
                  nlohmann::json& report);
void PinningMarkdown(const nlohmann::json& pinning, std::ostream& md);
// g: the machine's read bandwidth and the weights' floor per token.
void RunBandwidthFloor(const v1::GetModelInfoResponse& info, nlohmann::json& report);
// a, b and e against an OpenAI-compatible server (--openai-url), timed by the client:
// report["openai"]; and its section of report.md.
Status RunOpenAiScenarios(const BenchOptions& o, nlohmann::json& report);
void OpenAiMarkdown(const nlohmann::json& report, std::ostream& md);
// --baseline vllm: kvpool (bf16 weights and K/V, a 1 GiB pool) and vLLM's CPU engine
// (scripts/vllm-baseline.py with $KVPOOL_VLLM_PYTHON, on the weights in `hf_folder`)
// timed the same way, both loaded at once with their load rounds in turn:
// report["baseline"]["vllm"]; and its section of report.md.
Status RunVllmComparison(const BenchOptions& o, LocalNode* node, const std::string& hf_folder,
                         nlohmann::json& report);
void VllmMarkdown(const nlohmann::json& report, std::ostream& md);

}  // namespace kvpool::bench
