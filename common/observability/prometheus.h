// Prometheus text exposition (format 0.0.4) shared by the services' /metrics: a
// writer for HELP/TYPE headers and samples, and a fixed-bucket histogram whose
// Observe() is a few relaxed atomic adds, so it can sit on an RPC or decode path
// without a lock. Names follow Prometheus conventions: unit suffixes (`_seconds`,
// `_bytes`), `_total` on counters.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace kvpool {

class PrometheusText {
 public:
  // "# HELP" and "# TYPE" lines; `type` is counter, gauge or histogram.
  void Header(const std::string& name, const char* type, const std::string& help);
  // One sample line; `labels` is empty or `key="value",...` without braces.
  void Sample(const std::string& name, const std::string& labels, double value);
  // Header and a single unlabelled sample.
  void Metric(const std::string& name, const char* type, const std::string& help, double value);
  std::string str() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

// A histogram with fixed upper bounds (ascending) and an implicit +Inf bucket.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);

  void Observe(double value);
  // The _bucket (cumulative), _sum and _count lines under `name`, with `labels`
  // (empty or `key="value",...`) on each; the caller writes the header once.
  void Render(PrometheusText& text, const std::string& name, const std::string& labels) const;
  uint64_t count() const;
  double sum() const;

 private:
  std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // upper_bounds_.size() + 1
  std::atomic<int64_t> sum_micro_{0};                // sum in millionths, for atomic adds
};

// Bounds for request-level latencies (time to first token, end to end): 5 ms .. 60 s.
std::vector<double> RequestLatencyBucketsS();
// Bounds for per-token latencies (inter-token, decode step): 1 ms .. 5 s.
std::vector<double> TokenLatencyBucketsS();

}  // namespace kvpool
