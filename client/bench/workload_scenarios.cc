// Bench scenarios under load, each on its own pool (a restarted local node): KV
// utilisation and the largest batch per mode on a mixed workload (c), throughput vs
// concurrency in a pool where reservations limit the batch (d), and hit rate and
// throughput vs pool size and block size under LRU eviction (f).
//
// The mixed workload is shaped like ShareGPT conversations, scaled to the model's
// context: prompt and output lengths are log-normal (medians context/5, or context/10
// with --quick; sigma 0.7; clipped so prompt + output fits), drawn with a fixed seed. Every request
// asks for max_tokens = context - prompt, the most the model could produce, which is
// what a reservation-based server must reserve; the client ends it after its drawn
// output length (as an EOS would), so contiguous reserves for the maximum and paged
// holds what is really there.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "cache_service/hit_rate_curve.h"
#include "client/bench/bench.h"
#include "client/cli/cli_util.h"

namespace kvpool::bench {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::vector<WorkItem> ShareGptLike(int n, uint32_t seed, int context, int vocab,
                                   double median_fraction) {
  std::mt19937 rng(seed);
  std::lognormal_distribution<double> prompt_len(std::log(context * median_fraction), 0.7);
  std::lognormal_distribution<double> output_len(std::log(context * median_fraction), 0.7);
  std::vector<WorkItem> items;
  for (int i = 0; i < n; ++i) {
    WorkItem w;
    const int prompt = std::clamp(static_cast<int>(prompt_len(rng)), 4, context / 2);
    w.output = std::clamp(static_cast<int>(output_len(rng)), 4, context - prompt - 1);
    w.max_tokens = context - prompt;
    w.prompt = RandomTokens(prompt, seed * 1000003u + static_cast<uint32_t>(i), vocab);
    items.push_back(std::move(w));
  }
  return items;
}

// What the worker did during a run: its counters' change from the first stats
// sample to the last (both taken during the run, 10 ms apart at most from its ends).
Json WorkerDelta(const std::vector<v1::GetWorkerStatsResponse>& samples) {
  if (samples.size() < 2) return Json::object();
  const v1::GetWorkerStatsResponse& a = samples.front();
  const v1::GetWorkerStatsResponse& b = samples.back();
  Json seconds = Json::object();
  for (const auto& [phase, total] : b.scheduler_seconds_total()) {
    const auto before = a.scheduler_seconds_total().find(phase);
    seconds[phase] = total - (before == a.scheduler_seconds_total().end() ? 0.0 : before->second);
  }
  return {{"scheduler_seconds", seconds},
          {"scheduler_steps", b.scheduler_steps_total() - a.scheduler_steps_total()},
          {"generated_tokens", b.generated_tokens_total() - a.generated_tokens_total()},
          {"preemptions", b.preemptions_total() - a.preemptions_total()},
          {"recomputed_tokens", b.recomputed_tokens_total() - a.recomputed_tokens_total()}};
}

Json LoadJson(const LoadResult& r) {
  return {{"worker", WorkerDelta(r.samples)},
          {"wall_s", r.wall_s},
          {"requests", r.requests},
          {"tokens", r.tokens},
          {"tokens_per_s", r.tokens / r.wall_s},
          {"sustained_s", r.sustained_s},
          {"sustained_tokens_per_s", r.sustained_s > 0 ? r.sustained_tokens / r.sustained_s : 0.0},
          {"requests_per_s", r.requests / r.wall_s},
          {"ttft_p50_s", cli::Percentile(r.ttft_s, 0.5)},
          {"ttft_p99_s", cli::Percentile(r.ttft_s, 0.99)},
          {"itl_p50_s", cli::Percentile(r.itl_s, 0.5)},
          {"itl_p99_s", cli::Percentile(r.itl_s, 0.99)}};
}

// Bytes holding tokens over bytes reserved, summed over the samples taken while
// sequences held blocks; and the most sequences that ran at once.
std::pair<double, int64_t> Utilisation(const std::vector<v1::GetWorkerStatsResponse>& samples) {
  double used = 0, reserved = 0;
  int64_t peak_running = 0;
  for (const auto& s : samples) {
    used += static_cast<double>(s.kv_bytes_used());
    reserved += static_cast<double>(s.kv_bytes_reserved());
    peak_running = std::max(peak_running, s.requests_running());
  }
  return {reserved > 0 ? used / reserved : 0.0, peak_running};
}

StatusOr<std::unique_ptr<Client>> Connect(const LocalNode& node) {
  ClientOptions options;
  options.addresses = {node.worker()};
  options.deadline = std::chrono::minutes(10);
  return std::make_unique<Client>(options);
}

}  // namespace

LoadResult RunLoad(Client& client, const std::vector<WorkItem>& items, int concurrency,
                   const std::string& mode, bool sample_stats) {
  LoadResult r;
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::optional<StatsSampler> sampler;
  if (sample_stats) sampler.emplace(client, std::chrono::milliseconds(10));
  const auto t0 = Clock::now();
  auto since_start = [&t0] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  std::vector<std::pair<double, std::vector<double>>> arrivals;  // request start, token times
  double last_issue_s = 0;
  std::vector<std::thread> threads;
  for (int c = 0; c < concurrency; ++c) {
    threads.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < items.size();) {
        const double start_s = since_start();
        if (i + 1 == items.size()) {
          std::lock_guard<std::mutex> lock(mu);
          last_issue_s = start_s;
        }
        GenerateParams p;
        p.token_ids = items[i].prompt;
        p.max_tokens = items[i].max_tokens;
        p.mode = mode;
        p.ignore_eos = true;
        Measured m = Run(client, p, items[i].output);
        std::lock_guard<std::mutex> lock(mu);
        if (!m.status.ok()) {
          if (r.status.ok()) r.status = m.status;
          continue;
        }
        ++r.requests;
        r.tokens += m.tokens;
        r.ttft_s.push_back(m.client_ttft_s);
        for (size_t t = 1; t < m.arrival_s.size(); ++t) {
          r.itl_s.push_back(m.arrival_s[t] - m.arrival_s[t - 1]);
        }
        r.prompt_tokens += static_cast<int64_t>(items[i].prompt.size());
        r.cached_tokens += m.summary.usage().cached_tokens();
        arrivals.emplace_back(start_s, std::move(m.arrival_s));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  r.wall_s = since_start();
  if (sampler) r.samples = sampler->Take();
  if (items.size() > static_cast<size_t>(concurrency)) {
    r.sustained_s = last_issue_s;
    for (const auto& [start_s, times] : arrivals) {
      for (double t : times) r.sustained_tokens += start_s + t < last_issue_s ? 1 : 0;
    }
  }
  return r;
}

Status RunWorkloads(const BenchOptions& o, LocalNode* node, const v1::GetModelInfoResponse& info,
                    Json& report) {
  const int context = info.max_context();
  const int block_size = 16;
  // A pool for 2 full-context sequences: like an accelerator whose memory, after the
  // weights, holds a couple of maximum-length reservations (a 24 GB GPU serving a 13B
  // fp16 model: ~26 GB of weights on two, ~6 GB of KV = two 4k-token reservations), so
  // reservations rather than compute limit a contiguous server's batch.
  constexpr int kReservationsInSmallPool = 2;
  const int64_t blocks_per_context = (context + block_size - 1) / block_size;
  const int64_t small_pool = kReservationsInSmallPool * blocks_per_context;
  const int n = o.quick ? 32 : 64;
  // Medians of context/5 (ShareGPT's proportions); --quick halves them to stay short.
  const double median_fraction = o.quick ? 0.1 : 0.2;
  const std::vector<WorkItem> items =
      ShareGptLike(n, o.seed + 17, context, info.vocab_size(), median_fraction);
  Json lengths = Json::array();
  for (const WorkItem& w : items) lengths.push_back({w.prompt.size(), w.output});

  // c: utilisation in a pool large enough for the whole load, and the largest batch in
  // the small pool.
  Json efficiency = {{"requests", n},
                     {"lengths", lengths},
                     {"median_length_fraction_of_context", median_fraction},
                     {"small_pool_blocks", small_pool},
                     {"small_pool_full_context_reservations", kReservationsInSmallPool}};
  for (const char* mode : {"contiguous", "paged"}) {
    o.progress(std::string("memory efficiency: ") + mode);
    KVPOOL_RETURN_IF_ERROR(node->Start(16 * blocks_per_context, block_size));
    KVPOOL_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Connect(*node));
    LoadResult big = RunLoad(*client, items, 16, mode);
    KVPOOL_RETURN_IF_ERROR(big.status);
    const auto [utilisation, unused] = Utilisation(big.samples);
    (void)unused;
    o.progress(std::string("largest batch: ") + mode);
    KVPOOL_RETURN_IF_ERROR(node->Start(small_pool, block_size));
    KVPOOL_ASSIGN_OR_RETURN(client, Connect(*node));
    LoadResult small = RunLoad(*client, items, 32, mode);
    KVPOOL_RETURN_IF_ERROR(small.status);
    efficiency[mode] = {{"kv_utilisation", utilisation},
                        {"largest_batch_in_small_pool", Utilisation(small.samples).second}};
  }
  report["scenarios"]["memory_efficiency"] = efficiency;

  // d: throughput vs concurrency in the small pool (none: recompute, only at 1).
  Json throughput = {{"pool_blocks", small_pool}, {"points", Json::array()}};
  KVPOOL_RETURN_IF_ERROR(node->Start(small_pool, block_size));
  KVPOOL_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Connect(*node));
  // Three requests per slot (two with --quick; four at least), so that most of each run
  // is sustained load at that concurrency; their own prompts, so nothing hits the other
  // runs' prefixes.
  const int requests_per_slot = o.quick ? 2 : 3;
  // Repeats with the modes interleaved (contiguous, paged, contiguous, ...), each repeat
  // on prompts of its own so that paged never hits an earlier repeat's prefixes; each
  // mode's point is its median-throughput repeat (the lower middle of an even count).
  const int repeats = o.quick ? 2 : 3;
  std::vector<std::vector<WorkItem>> load_items;
  for (int r = 0; r < repeats; ++r) {
    load_items.push_back(ShareGptLike(requests_per_slot * 32,
                                      o.seed + 29 + 1000 * static_cast<uint32_t>(r), context,
                                      info.vocab_size(), median_fraction));
  }
  for (int concurrency : {1, 4, 16, 32}) {
    Json row = {{"concurrency", concurrency}, {"repeats", repeats}, {"noisy", Json::array()}};
    const size_t count = std::min(
        load_items[0].size(), static_cast<size_t>(std::max(4, requests_per_slot * concurrency)));
    std::map<std::string, std::vector<Json>> runs;
    for (int r = 0; r < repeats; ++r) {
      for (const char* mode : {"none", "contiguous", "paged"}) {
        const bool none = std::string(mode) == "none";
        if (none && (concurrency > 1 || r > 0)) continue;  // recompute: one short sample
        o.progress("throughput: " + std::string(mode) + " at concurrency " +
                   std::to_string(concurrency) + " (" + std::to_string(r + 1) + "/" +
                   std::to_string(repeats) + ")");
        std::vector<WorkItem> work(
            load_items[static_cast<size_t>(r)].begin(),
            load_items[static_cast<size_t>(r)].begin() + static_cast<long>(count));
        if (none) {  // recompute is O(n^2): a short sample of it
          work.resize(std::min<size_t>(work.size(), 2));
          for (WorkItem& w : work) w.output = std::min(w.output, 16);
        }
        LoadResult result = RunLoad(*client, work, concurrency, mode);
        KVPOOL_RETURN_IF_ERROR(result.status);
        runs[mode].push_back(LoadJson(result));
      }
    }
    for (auto& [mode, all] : runs) {
      auto rate = [](const Json& j) {
        return j["sustained_tokens_per_s"].get<double>() > 0
                   ? j["sustained_tokens_per_s"].get<double>()
                   : j["tokens_per_s"].get<double>();
      };
      std::sort(all.begin(), all.end(),
                [&](const Json& a, const Json& b) { return rate(a) < rate(b); });
      Json chosen = all[(all.size() - 1) / 2];
      chosen["tokens_per_s_min"] = rate(all.front());
      chosen["tokens_per_s_max"] = rate(all.back());
      const bool noisy = rate(all.back()) - rate(all.front()) > 0.2 * rate(chosen);
      chosen["noisy"] = noisy;
      if (noisy) row["noisy"].push_back(mode);
      row[mode] = chosen;
    }
    throughput["points"].push_back(row);
  }
  report["scenarios"]["throughput"] = throughput;
  return Status::Ok();
}

Status RunCacheSize(const BenchOptions& o, LocalNode* node, const v1::GetModelInfoResponse& info,
                    Json& report) {
  const int context = info.max_context();
  const int documents = 8;
  const int doc_tokens = std::min(256, context / 4);
  const int requests = o.quick ? 24 : 64;
  std::mt19937 rng(o.seed + 99);
  std::uniform_int_distribution<int> pick(0, documents - 1);
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < documents; ++d) {
    docs.push_back(
        RandomTokens(doc_tokens, o.seed * 31 + static_cast<uint32_t>(d), info.vocab_size()));
  }
  std::vector<WorkItem> items;
  for (int i = 0; i < requests; ++i) {
    WorkItem w;
    w.prompt = docs[static_cast<size_t>(pick(rng))];
    for (int32_t t : RandomTokens(16, o.seed + 7 * static_cast<uint32_t>(i), info.vocab_size())) {
      w.prompt.push_back(t);
    }
    w.output = 8;
    w.max_tokens = 8;
    items.push_back(std::move(w));
  }
  const int64_t working_set_tokens = static_cast<int64_t>(documents) * doc_tokens;
  Json pool_points = Json::array();
  auto run_point = [&](int64_t pool_tokens, int block_size, int concurrency) -> StatusOr<Json> {
    // At least room for the requests in flight.
    const int64_t blocks = std::max<int64_t>(pool_tokens / block_size,
                                             concurrency * ((doc_tokens + 40) / block_size + 1));
    o.progress("cache size: " + std::to_string(blocks) + " blocks of " +
               std::to_string(block_size));
    KVPOOL_RETURN_IF_ERROR(node->Start(blocks, block_size));
    KVPOOL_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Connect(*node));
    LoadResult r = RunLoad(*client, items, concurrency, "paged");
    KVPOOL_RETURN_IF_ERROR(r.status);
    Json row = LoadJson(r);
    row["pool_blocks"] = blocks;
    row["block_size"] = block_size;
    row["pool_tokens"] = blocks * block_size;
    row["pool_over_working_set"] =
        static_cast<double>(blocks * block_size) / static_cast<double>(working_set_tokens);
    row["hit_rate"] = static_cast<double>(r.cached_tokens) / static_cast<double>(r.prompt_tokens);
    return row;
  };
  // The manager's predicted hit-rate curve, recorded by one serial run at the largest
  // pool, then checked by serial runs at smaller pools (no pins, one request at a time:
  // what the curve models).
  const double largest = 2.0;
  KVPOOL_ASSIGN_OR_RETURN(Json top,
                          run_point(static_cast<int64_t>(largest * working_set_tokens), 16, 1));
  ClientOptions on_manager;
  on_manager.addresses = {node->manager()};
  on_manager.deadline = std::chrono::minutes(1);
  KVPOOL_ASSIGN_OR_RETURN(const v1::GetStatsResponse stats, Client(on_manager).ManagerStats());
  const v1::HitRateCurves& curves = stats.hit_rate_curves();
  const v1::HitRateCurve* curve = nullptr;
  for (const v1::HitRateCurve& c : curves.curves()) {
    if (c.tenant().empty() && !c.window()) curve = &c;
  }
  if (curve == nullptr || curve->hit_rate_size() != curves.cache_blocks_size()) {
    return Internal("the manager gave no overall hit-rate curve");
  }
  // The manager's own interpolation (hit_rate_curve.h) over the curve it sent.
  manager::HitRateCurves model;
  model.cache_blocks.assign(curves.cache_blocks().begin(), curves.cache_blocks().end());
  manager::HitRateCurve overall;
  overall.hit_rate.assign(curve->hit_rate().begin(), curve->hit_rate().end());
  auto predicted_at = [&](double blocks) { return model.HitRateAt(overall, blocks); };
  Json drawn = {{"pool_blocks", curves.pool_blocks()},
                {"exact_blocks", curves.exact_blocks()},
                {"knee_blocks", curve->knee_blocks()},
                {"cache_blocks", Json::array()},
                {"hit_rate", Json::array()}};
  for (int i = 0; i < curves.cache_blocks_size(); ++i) {
    if (curves.cache_blocks(i) > 2 * curves.pool_blocks()) break;
    drawn["cache_blocks"].push_back(curves.cache_blocks(i));
    drawn["hit_rate"].push_back(curve->hit_rate(i));
  }
  const std::vector<double> smaller = o.quick ? std::vector<double>{0.25, 0.5, 0.75, 1}
                                              : std::vector<double>{0.25, 0.5, 0.75, 1, 1.25, 1.5};
  double worst_error = 0;
  for (double f : smaller) {
    KVPOOL_ASSIGN_OR_RETURN(Json row,
                            run_point(static_cast<int64_t>(f * working_set_tokens), 16, 1));
    row["predicted_hit_rate"] = predicted_at(row["pool_blocks"].get<double>());
    worst_error = std::max(worst_error, std::abs(row["predicted_hit_rate"].get<double>() -
                                                 row["hit_rate"].get<double>()));
    pool_points.push_back(row);
  }
  top["predicted_hit_rate"] = predicted_at(top["pool_blocks"].get<double>());
  pool_points.push_back(top);
  Json block_points = Json::array();
  for (int block_size : {8, 16, 32}) {
    KVPOOL_ASSIGN_OR_RETURN(Json row, run_point(2 * working_set_tokens, block_size, 4));
    block_points.push_back(row);
  }
  report["scenarios"]["cache_size"] = {
      {"documents", documents},     {"document_tokens", doc_tokens},
      {"requests", requests},       {"pool_sizes", pool_points},
      {"predicted_curve", drawn},   {"worst_prediction_error", worst_error},
      {"block_sizes", block_points}};
  return Status::Ok();
}

}  // namespace kvpool::bench
