// Dashboard routes and their JSON. See dashboard.h.
#include "cache_service/dashboard.h"

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/model_config.h"

namespace kvpool::manager {
namespace {

using Json = nlohmann::json;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

const char* ContentType(std::string_view path) {
  if (path.size() >= 5 && path.substr(path.size() - 5) == ".html")
    return "text/html; charset=utf-8";
  if (path.size() >= 4 && path.substr(path.size() - 4) == ".css") return "text/css; charset=utf-8";
  return "text/javascript; charset=utf-8";
}

int DtypeBits(v1::KvDtype dtype) {
  switch (dtype) {
    case v1::KV_DTYPE_FP16:
    case v1::KV_DTYPE_BF16:
      return 16;
    case v1::KV_DTYPE_INT8:
    case v1::KV_DTYPE_FP8_E4M3:
      return 8;
    default:
      return 32;
  }
}

Json LoadJson(const v1::WorkerLoad& l) {
  return {{"requests_running", l.requests_running()},
          {"requests_waiting", l.requests_waiting()},
          {"requests_finished_total", l.requests_finished_total()},
          {"requests_failed_total", l.requests_failed_total()},
          {"preemptions_total", l.preemptions_total()},
          {"prompt_tokens_total", l.prompt_tokens_total()},
          {"generated_tokens_total", l.generated_tokens_total()},
          {"ttft_sum_s", l.ttft_sum_s()},
          {"ttft_count", l.ttft_count()},
          {"itl_sum_s", l.itl_sum_s()},
          {"itl_count", l.itl_count()}};
}

}  // namespace

Dashboard::Dashboard(const CacheManager* core, const ManagerService* service,
                     const Authenticator* auth, v1::PoolDescriptor pool, std::string chart_js)
    : core_(core),
      service_(service),
      auth_(auth),
      pool_(std::move(pool)),
      chart_js_(std::move(chart_js)),
      started_at_(Clock::now()) {}

std::optional<HttpResponse> Dashboard::Serve(const HttpRequest& request) const {
  const std::string& target = request.target;
  if (target == "/api/stats" || target == "/api/prefix-index") {
    std::string error;
    const std::optional<Caller> caller = auth_->Authenticate(
        request.authorization.empty() ? std::nullopt : std::optional(request.authorization),
        &error);
    if (!caller) {
      return HttpResponse{401, "application/json",
                          Json({{"error", error + " (the manager has a token file: send "
                                                  "\"Authorization: Bearer TOKEN\")"}})
                              .dump()};
    }
    if (target == "/api/stats") return HttpResponse{200, "application/json", StatsJson(*caller)};
    if (!caller->Has(kRoleWorker)) {
      return HttpResponse{403, "application/json",
                          Json({{"error",
                                 "the prefix index lists every tenant's blocks: it "
                                 "needs an operator's (worker-role) token"}})
                              .dump()};
    }
    Json blocks = Json::array();
    for (const IndexedBlock& b : core_->PrefixIndexBlocks()) {
      blocks.push_back({{"tenant", b.tenant}, {"hash", b.hash}, {"in_use", b.in_use}});
    }
    return HttpResponse{200, "application/json", Json({{"blocks", blocks}}).dump()};
  }
  if (target == "/api/models") return HttpResponse{200, "application/json", ModelsJson()};
  if (target == "/chart.js") {
    if (chart_js_.empty()) {
      return HttpResponse{404, "text/plain; charset=utf-8",
                          "Chart.js not found: install Debian's libjs-chart.js, or start the "
                          "manager with --chart-js FILE\n"};
    }
    return HttpResponse{200, "text/javascript; charset=utf-8", chart_js_};
  }
  const std::string path = target == "/" ? "/index.html" : target;
  const std::string_view asset = DashboardAsset(path);
  if (asset.empty()) return std::nullopt;
  return HttpResponse{200, ContentType(path), std::string(asset)};
}

std::string Dashboard::StatsJson(const Caller& caller) const {
  const ManagerStats s = core_->Stats();
  const Clock::time_point now = Clock::now();
  // A client-only caller sees the pool and its own tenant, not the workers or others.
  const bool operator_view = caller.Has(kRoleWorker);
  Json tenants = Json::array();
  // The prefix counters: the node's for the operator, the caller's tenant's otherwise.
  int64_t queries = operator_view ? s.prefix_queries_tokens : 0;
  int64_t hits = operator_view ? s.prefix_hits_tokens : 0;
  for (const TenantStats& t : s.tenants) {
    if (!operator_view) {
      if (t.tenant != caller.tenant) continue;
      queries = t.prefix_queries_tokens;
      hits = t.prefix_hits_tokens;
    }
    tenants.push_back({{"tenant", t.tenant},
                       {"blocks_in_use", t.blocks_in_use},
                       {"max_blocks", t.max_blocks},
                       {"prefix_queries_tokens_total", t.prefix_queries_tokens},
                       {"prefix_hits_tokens_total", t.prefix_hits_tokens},
                       {"quota_rejections_total", t.quota_rejections},
                       {"pins", t.pins},
                       {"pinned_blocks", t.pinned_blocks},
                       {"max_pinned_blocks", t.max_pinned_blocks}});
  }
  Json workers = Json::array();
  Json totals = LoadJson(v1::WorkerLoad());
  for (const WorkerSnapshot& w :
       operator_view ? service_->Workers() : std::vector<WorkerSnapshot>{}) {
    const Json load = LoadJson(w.load);
    workers.push_back({{"id", w.id},
                       {"name", w.name},
                       {"tenant", w.tenant},
                       {"uptime_s", SecondsBetween(w.registered_at, now)},
                       {"last_heartbeat_age_s", SecondsBetween(w.last_heartbeat_at, now)},
                       {"load", load}});
    for (auto& [key, value] : totals.items()) {
      value = value.is_number_float() ? Json(value.get<double>() + load[key].get<double>())
                                      : Json(value.get<int64_t>() + load[key].get<int64_t>());
    }
  }
  const v1::HitRateCurves predicted = VisibleHitRateCurves(*core_, caller, now);
  Json curves = Json::array();
  for (const v1::HitRateCurve& c : predicted.curves()) {
    curves.push_back({{"tenant", c.tenant()},
                      {"window", c.window()},
                      {"query_tokens", c.query_tokens()},
                      {"knee_blocks", c.knee_blocks()},
                      {"hit_rate", std::vector<double>(c.hit_rate().begin(), c.hit_rate().end())}});
  }
  Json out = {{"time_s", SecondsBetween(started_at_, now)},
              {"pool",
               {{"model", pool_.model_name()},
                {"backend", pool_.backend()},
                {"num_blocks", s.num_blocks},
                {"block_size", pool_.block_size()},
                {"block_bytes", pool_.block_bytes()},
                {"pool_bytes", pool_.pool_bytes()},
                {"free_blocks", s.free_blocks},
                {"cached_blocks", s.cached_blocks},
                {"in_use_blocks", s.in_use_blocks},
                {"usage_ratio",
                 s.num_blocks > 0 ? static_cast<double>(s.in_use_blocks) / s.num_blocks : 0.0},
                {"bytes_reserved", s.bytes_reserved},
                {"bytes_used", s.bytes_used}}},
              {"prefix_cache", {{"queries_tokens_total", queries}, {"hits_tokens_total", hits}}},
              {"hit_rate_curves",
               {{"pool_blocks", predicted.pool_blocks()},
                {"exact_blocks", predicted.exact_blocks()},
                {"sample_rate", predicted.sample_rate()},
                {"window_seconds", predicted.window_seconds()},
                {"knee_min_gain", predicted.knee_min_gain()},
                {"cache_blocks", std::vector<int64_t>(predicted.cache_blocks().begin(),
                                                      predicted.cache_blocks().end())},
                {"curves", curves}}},
              {"viewer", {{"tenant", caller.tenant}, {"operator", operator_view}}},
              {"tenants", tenants},
              {"evictions_total", s.evictions},
              {"pins", operator_view ? s.pins : 0},
              {"pinned_blocks", operator_view ? s.pinned_blocks : 0},
              {"expired_leases_total", s.expired_leases},
              {"sequences", s.num_sequences},
              {"workers_live", s.num_workers},
              {"workers", workers},
              {"totals", totals}};
  return out.dump();
}

std::string Dashboard::ModelsJson() const {
  Json models = Json::array();
  // Published architectures for the memory calculator: GPT-2, GPT-3 and Llama families,
  // MHA and GQA (shapes from the one model list, common/model_config.cc).
  for (const char* name :
       {"gpt2", "gpt2-medium", "gpt3-175b", "llama-7b", "llama-13b", "llama-70b"}) {
    const StatusOr<ModelConfig> config = BuiltinModelConfig(name);
    if (!config.ok()) continue;
    const ModelConfig& m = *config;
    models.push_back({{"name", m.name},
                      {"num_layers", m.num_layers},
                      {"num_heads", m.num_heads},
                      {"num_kv_heads", m.num_kv_heads},
                      {"head_dim", m.head_dim},
                      {"max_position", m.max_position}});
  }
  Json out = {{"models", models},
              {"pool",
               {{"model", pool_.model_name()},
                {"num_layers", pool_.num_layers()},
                {"num_kv_heads", pool_.num_kv_heads()},
                {"head_dim", pool_.head_dim()},
                {"block_size", pool_.block_size()},
                {"num_blocks", pool_.num_blocks()},
                {"pool_bytes", pool_.pool_bytes()},
                {"dtype_bits", DtypeBits(pool_.dtype())}}}};
  return out.dump();
}

}  // namespace kvpool::manager
