// ServiceMetrics: histogram recording and Prometheus text rendering. See metrics.h.
#include "cache_service/metrics.h"

namespace kvpool::manager {
namespace {

// A Prometheus label value: backslash, quote and newline escaped.
std::string LabelValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

ServiceMetrics::ServiceMetrics(std::vector<std::string> methods) : methods_(std::move(methods)) {
  for (size_t i = 0; i < methods_.size(); ++i) {
    rpc_latency_s_.push_back(std::make_unique<Histogram>(std::vector<double>{
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0}));
  }
}

void ServiceMetrics::ObserveRpc(size_t method_index, double seconds) {
  if (method_index < rpc_latency_s_.size()) rpc_latency_s_[method_index]->Observe(seconds);
}

std::string ServiceMetrics::Render(const ManagerStats& s, const HitRateCurves& predicted) const {
  PrometheusText out;
  out.Metric("kvpool_kv_cache_usage_ratio", "gauge",
             "Fraction of pool blocks in use by sequences (0..1).",
             s.num_blocks > 0 ? static_cast<double>(s.in_use_blocks) / s.num_blocks : 0.0);
  out.Header("kvpool_blocks", "gauge", "Pool blocks by state.");
  out.Sample("kvpool_blocks", "state=\"free\"", static_cast<double>(s.free_blocks));
  out.Sample("kvpool_blocks", "state=\"cached\"", static_cast<double>(s.cached_blocks));
  out.Sample("kvpool_blocks", "state=\"in_use\"", static_cast<double>(s.in_use_blocks));
  const struct {
    const char* name;
    const char* type;
    const char* help;
    int64_t value;
  } samples[] = {
      {"kvpool_sequences", "gauge", "Open sequences.", s.num_sequences},
      {"kvpool_workers", "gauge", "Workers holding a live lease.", s.num_workers},
      {"kvpool_kv_cache_reserved_bytes", "gauge", "Bytes of blocks held by sequences.",
       s.bytes_reserved},
      {"kvpool_kv_cache_used_bytes", "gauge",
       "Bytes of held blocks that hold committed tokens' K/V.", s.bytes_used},
      {"kvpool_prefix_cache_queries_tokens_total", "counter",
       "Prompt tokens looked up in the prefix cache.", s.prefix_queries_tokens},
      {"kvpool_prefix_cache_hits_tokens_total", "counter",
       "Prompt tokens found in the prefix cache.", s.prefix_hits_tokens},
      {"kvpool_evictions_total", "counter", "Cached blocks evicted for new data.", s.evictions},
      {"kvpool_prefix_pins", "gauge", "Prefix pins held now.", s.pins},
      {"kvpool_prefix_pinned_blocks", "gauge",
       "Blocks held by prefix pins (summed over pins: a block in two counts twice).",
       s.pinned_blocks},
      {"kvpool_expired_leases_total", "counter",
       "Workers whose lease expired (their sequences were freed).", s.expired_leases},
  };
  for (const auto& m : samples) out.Metric(m.name, m.type, m.help, static_cast<double>(m.value));

  // The overall curves at a few multiples of this pool (the full curves are on GetStats
  // and /api/stats).
  out.Header("kvpool_prefix_cache_predicted_hit_rate", "gauge",
             "Token hit rate an LRU prefix cache of pool_scale times this pool would have had on "
             "the same lookups (since start, or over the sliding window).");
  for (const HitRateCurve& curve : predicted.curves) {
    if (!curve.tenant.empty()) continue;
    for (const char* scale : {"0.5", "1", "2", "4"}) {
      out.Sample("kvpool_prefix_cache_predicted_hit_rate",
                 std::string("pool_scale=\"") + scale + "\",over=\"" +
                     (curve.window ? "window" : "start") + "\"",
                 predicted.HitRateAt(
                     curve, std::stod(scale) * static_cast<double>(predicted.pool_blocks)));
    }
  }

  // Per tenant (operator-facing, like all of /metrics).
  const struct {
    const char* name;
    const char* type;
    const char* help;
    int64_t TenantStats::*field;
  } per_tenant[] = {
      {"kvpool_tenant_blocks_in_use", "gauge", "Blocks the tenant's sequences hold in use.",
       &TenantStats::blocks_in_use},
      {"kvpool_tenant_max_blocks", "gauge", "The tenant's block quota.", &TenantStats::max_blocks},
      {"kvpool_tenant_prefix_cache_hits_tokens_total", "counter",
       "The tenant's prompt tokens found in the prefix cache.", &TenantStats::prefix_hits_tokens},
      {"kvpool_tenant_prefix_cache_queries_tokens_total", "counter",
       "The tenant's prompt tokens looked up in the prefix cache.",
       &TenantStats::prefix_queries_tokens},
      {"kvpool_tenant_quota_rejections_total", "counter",
       "Calls refused because the tenant held its whole quota.", &TenantStats::quota_rejections},
      {"kvpool_tenant_pinned_blocks", "gauge", "Blocks the tenant's prefix pins hold.",
       &TenantStats::pinned_blocks},
      {"kvpool_tenant_max_pinned_blocks", "gauge", "The tenant's pinned-block cap.",
       &TenantStats::max_pinned_blocks},
  };
  for (const auto& m : per_tenant) {
    out.Header(m.name, m.type, m.help);
    for (const TenantStats& t : s.tenants) {
      out.Sample(m.name, "tenant=\"" + LabelValue(t.tenant) + "\"",
                 static_cast<double>(t.*m.field));
    }
  }

  out.Header("kvpool_rpc_latency_seconds", "histogram",
             "Manager RPC handling time by method, seconds.");
  for (size_t m = 0; m < methods_.size(); ++m) {
    rpc_latency_s_[m]->Render(out, "kvpool_rpc_latency_seconds", "method=\"" + methods_[m] + "\"");
  }
  return out.str();
}

}  // namespace kvpool::manager
