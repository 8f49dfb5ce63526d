// PrometheusText and Histogram. See prometheus.h.
#include "common/observability/prometheus.h"

#include <cmath>
#include <cstdio>

namespace kvpool {
namespace {

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

}  // namespace

void PrometheusText::Header(const std::string& name, const char* type, const std::string& help) {
  out_ << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

void PrometheusText::Sample(const std::string& name, const std::string& labels, double value) {
  out_ << name;
  if (!labels.empty()) out_ << '{' << labels << '}';
  out_ << ' ' << FormatValue(value) << '\n';
}

void PrometheusText::Metric(const std::string& name, const char* type, const std::string& help,
                            double value) {
  Header(name, type, help);
  Sample(name, "", value);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      counts_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double value) {
  size_t bucket = 0;
  while (bucket < upper_bounds_.size() && value > upper_bounds_[bucket]) ++bucket;
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_micro_.fetch_add(std::llround(value * 1e6), std::memory_order_relaxed);
}

uint64_t Histogram::count() const {
  uint64_t total = 0;
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) {
    total += counts_[i].load(std::memory_order_relaxed);
  }
  return total;
}

double Histogram::sum() const { return sum_micro_.load(std::memory_order_relaxed) * 1e-6; }

void Histogram::Render(PrometheusText& text, const std::string& name,
                       const std::string& labels) const {
  const std::string prefix = labels.empty() ? "" : labels + ",";
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= upper_bounds_.size(); ++b) {
    cumulative += counts_[b].load(std::memory_order_relaxed);
    const std::string le =
        b < upper_bounds_.size() ? FormatValue(upper_bounds_[b]) : std::string("+Inf");
    text.Sample(name + "_bucket", prefix + "le=\"" + le + "\"", static_cast<double>(cumulative));
  }
  text.Sample(name + "_sum", labels, sum());
  text.Sample(name + "_count", labels, static_cast<double>(cumulative));
}

std::vector<double> RequestLatencyBucketsS() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::vector<double> TokenLatencyBucketsS() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5};
}

}  // namespace kvpool
