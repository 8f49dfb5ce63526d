// ServiceMetrics: histogram recording and Prometheus text rendering. See metrics.h.
#include "cache_service/metrics.h"

#include <cstdio>
#include <sstream>

namespace kvpool::manager {
namespace {

void Metric(std::ostringstream& out, const char* name, const char* type, const char* help) {
  out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

std::string Double(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

}  // namespace

ServiceMetrics::ServiceMetrics(std::vector<std::string> methods)
    : methods_(std::move(methods)), histograms_(new Histogram[methods_.size()]) {}

void ServiceMetrics::ObserveRpc(size_t method_index, double seconds) {
  if (method_index >= methods_.size()) return;
  Histogram& h = histograms_[method_index];
  size_t bucket = 0;
  while (bucket < kBucketsS.size() && seconds > kBucketsS[bucket]) ++bucket;
  h.counts[bucket].fetch_add(1, std::memory_order_relaxed);
  h.sum_ns.fetch_add(static_cast<uint64_t>(seconds * 1e9), std::memory_order_relaxed);
}

std::string ServiceMetrics::Render(const ManagerStats& s) const {
  std::ostringstream out;
  auto sample = [&](const char* name, const char* type, const char* help,
                    const std::string& value) {
    Metric(out, name, type, help);
    out << name << ' ' << value << '\n';
  };
  sample("kvpool_kv_cache_usage_ratio", "gauge",
         "Fraction of pool blocks in use by sequences (0..1).",
         Double(s.num_blocks > 0 ? static_cast<double>(s.in_use_blocks) / s.num_blocks : 0.0));
  Metric(out, "kvpool_blocks", "gauge", "Pool blocks by state.");
  out << "kvpool_blocks{state=\"free\"} " << s.free_blocks << '\n'
      << "kvpool_blocks{state=\"cached\"} " << s.cached_blocks << '\n'
      << "kvpool_blocks{state=\"in_use\"} " << s.in_use_blocks << '\n';
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
      {"kvpool_expired_leases_total", "counter",
       "Workers whose lease expired (their sequences were freed).", s.expired_leases},
  };
  for (const auto& m : samples) sample(m.name, m.type, m.help, std::to_string(m.value));

  Metric(out, "kvpool_rpc_latency_seconds", "histogram",
         "Manager RPC handling time by method, seconds.");
  for (size_t m = 0; m < methods_.size(); ++m) {
    const Histogram& h = histograms_[m];
    uint64_t cumulative = 0;
    const std::string label = "method=\"" + methods_[m] + "\"";
    for (size_t b = 0; b <= kBucketsS.size(); ++b) {
      cumulative += h.counts[b].load(std::memory_order_relaxed);
      out << "kvpool_rpc_latency_seconds_bucket{" << label << ",le=\""
          << (b < kBucketsS.size() ? Double(kBucketsS[b]) : "+Inf") << "\"} " << cumulative << '\n';
    }
    out << "kvpool_rpc_latency_seconds_sum{" << label << "} "
        << Double(h.sum_ns.load(std::memory_order_relaxed) * 1e-9) << '\n'
        << "kvpool_rpc_latency_seconds_count{" << label << "} " << cumulative << '\n';
  }
  return out.str();
}

}  // namespace kvpool::manager
