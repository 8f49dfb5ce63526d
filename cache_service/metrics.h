// ServiceMetrics: the manager's Prometheus text exposition. Pool, prefix-cache and
// lease numbers are read from CacheManager::Stats() at scrape time (one source of
// truth: the core's counters); the service itself only records per-method RPC latency
// in a fixed-bucket histogram with atomic counters, so recording never takes a lock
// on the RPC path. Never touches the pool memory.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cache_service/cache_manager.h"

namespace kvpool::manager {

class ServiceMetrics {
 public:
  // `methods` are the RPC names the histogram is labelled by (fixed at start).
  explicit ServiceMetrics(std::vector<std::string> methods);

  // Records one call of methods[method_index] that took `seconds`.
  void ObserveRpc(size_t method_index, double seconds);

  // The whole exposition (text format 0.0.4) for a scrape.
  std::string Render(const ManagerStats& stats) const;

 private:
  static constexpr std::array<double, 12> kBucketsS = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0};
  struct Histogram {
    std::array<std::atomic<uint64_t>, kBucketsS.size() + 1> counts{};  // last: +Inf
    std::atomic<uint64_t> sum_ns{0};
  };
  std::vector<std::string> methods_;
  std::unique_ptr<Histogram[]> histograms_;
};

}  // namespace kvpool::manager
