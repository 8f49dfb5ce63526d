// What the bench scenarios share: the local node, one measured request, the stats
// sampler and small statistics. See bench.h.
#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <random>
#include <thread>

#include "client/bench/bench.h"
#include "client/cli/cli_util.h"

namespace kvpool::bench {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

LocalNode::~LocalNode() { Stop(); }

void LocalNode::Stop() {
  if (!up_) return;
  up_->Signal(SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (!up_->Exited() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  up_.reset();  // SIGKILLs it if it is still there
  worker_.clear();
  manager_.clear();
}

Status LocalNode::Start(int64_t num_blocks, int32_t block_size,
                        const std::vector<std::string>& extra) {
  Stop();
  std::vector<std::string> argv = {
      cli::BinaryDirectory() + "/kvpool", "up", "--workers", "1", "--model", options_.model};
  const int threads = options_.threads > 0 ? options_.threads
                                           : static_cast<int>(std::thread::hardware_concurrency());
  argv.insert(argv.end(), {"--threads", std::to_string(std::max(1, threads))});
  if (num_blocks > 0) argv.insert(argv.end(), {"--num-blocks", std::to_string(num_blocks)});
  if (block_size > 0) argv.insert(argv.end(), {"--block-size", std::to_string(block_size)});
  // The run's pool flags, unless this start names its own.
  const auto named = [&](const std::string& flag) {
    return std::find(extra.begin(), extra.end(), flag) != extra.end();
  };
  if (!options_.backend.empty()) argv.insert(argv.end(), {"--backend", options_.backend});
  if (!options_.kv_cache_dtype.empty() && !named("--kv-cache-dtype")) {
    argv.insert(argv.end(), {"--kv-cache-dtype", options_.kv_cache_dtype});
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  sigset_t mask;
  pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  SubprocessOptions up_options;
  up_options.name = "kvpool up";
  up_options.own_process_group = true;
  up_options.die_with_parent = true;
  up_options.signal_mask = mask;
  KVPOOL_ASSIGN_OR_RETURN(up_, Subprocess::Start(argv, std::move(up_options)));
  const auto deadline = Clock::now() + std::chrono::seconds(180);
  while (Clock::now() < deadline) {
    bool eof = false;
    const std::optional<std::string> line = up_->ReadLine(std::chrono::milliseconds(200), &eof);
    if (eof) return Unavailable("kvpool up exited while starting (see its messages above)");
    if (!line) continue;
    if (line->rfind("manager ", 0) == 0) manager_ = line->substr(8);
    if (line->rfind("worker ", 0) == 0) worker_ = line->substr(7);
    if (*line == "ready") {
      up_->DrainToStderr();
      return Status::Ok();
    }
  }
  return Status(StatusCode::kDeadlineExceeded, "kvpool up did not get ready in 180 s");
}

Measured Run(Client& client, const GenerateParams& params, int stop_after) {
  Measured m;
  StatusOr<GenerateResult> result = client.Generate(params, [&](const TokenEvent& e) {
    m.step_s.push_back(e.step_latency_s);
    m.arrival_s.push_back(e.arrival_s);
    m.kv_reserved.push_back(e.kv_bytes_reserved);
    m.kv_used.push_back(e.kv_bytes_used);
    ++m.tokens;
    return stop_after <= 0 || stop_after >= params.max_tokens || m.tokens < stop_after;
  });
  if (result.ok()) {
    m.summary = result->summary;
    m.client_ttft_s = result->client_ttft_s;
    m.client_total_s = result->client_total_s;
  } else if (stop_after > 0 && m.tokens >= stop_after &&
             result.status().code() == StatusCode::kCancelled) {
    m.client_ttft_s = m.arrival_s.empty() ? 0 : m.arrival_s.front();
    m.client_total_s = m.arrival_s.empty() ? 0 : m.arrival_s.back();
  } else {
    m.status = result.status();
  }
  return m;
}

struct StatsSampler::State {
  Client* client;
  std::chrono::milliseconds period;
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<v1::GetWorkerStatsResponse> samples;  // GUARDED_BY(mu)
  std::thread thread;
};

StatsSampler::StatsSampler(Client& client, std::chrono::milliseconds period)
    : state_(std::make_unique<State>()) {
  state_->client = &client;
  state_->period = period;
  State* s = state_.get();
  s->thread = std::thread([s] {
    while (!s->stop.load()) {
      StatusOr<v1::GetWorkerStatsResponse> stats = s->client->WorkerStats();
      if (stats.ok()) {
        std::lock_guard<std::mutex> lock(s->mu);
        s->samples.push_back(*stats);
      }
      std::this_thread::sleep_for(s->period);
    }
  });
}

StatsSampler::~StatsSampler() { Take(); }

std::vector<v1::GetWorkerStatsResponse> StatsSampler::Take() {
  state_->stop.store(true);
  if (state_->thread.joinable()) state_->thread.join();
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->samples;
}

double Median(std::vector<double> values) { return cli::Percentile(std::move(values), 0.5); }

std::vector<int32_t> RandomTokens(int n, uint32_t seed, int vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(std::max(0, n)));
  for (int32_t& t : tokens) t = pick(rng);
  return tokens;
}

}  // namespace kvpool::bench
