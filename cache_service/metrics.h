// ServiceMetrics: the manager's Prometheus text exposition. Pool, prefix-cache and
// lease numbers are read from CacheManager::Stats() at scrape time (one source of
// truth: the core's counters); the service itself only records per-method RPC latency
// in fixed-bucket histograms with atomic counters, so recording never takes a lock
// on the RPC path. Never touches the pool memory.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cache_service/cache_manager.h"
#include "common/observability/prometheus.h"

namespace kvpool::manager {

class ServiceMetrics {
 public:
  // `methods` are the RPC names the histogram is labelled by (fixed at start).
  explicit ServiceMetrics(std::vector<std::string> methods);

  // Records one call of methods[method_index] that took `seconds`.
  void ObserveRpc(size_t method_index, double seconds);

  // The whole exposition (text format 0.0.4) for a scrape.
  std::string Render(const ManagerStats& stats, const HitRateCurves& predicted) const;

 private:
  std::vector<std::string> methods_;
  std::vector<std::unique_ptr<Histogram>> rpc_latency_s_;  // one per method
};

}  // namespace kvpool::manager
