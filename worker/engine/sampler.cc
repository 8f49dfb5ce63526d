// Next-token sampling: see sampler.h. Greedy, temperature, top-k and top-p over one row
// of logits with the request's own generator; no state beyond that generator.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace kvpool {

Status SamplingParams::Validate(const std::string& field_prefix) const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return InvalidArgument(field_prefix +
                           "temperature must be a finite number >= 0 (0 = greedy), got " +
                           std::to_string(temperature));
  }
  if (!(top_p > 0.0 && top_p <= 1.0)) {
    return InvalidArgument(field_prefix + "top_p must be in (0, 1], got " + std::to_string(top_p));
  }
  if (top_k < 0) {
    return InvalidArgument(field_prefix + "top_k must be >= 0 (0 = off), got " +
                           std::to_string(top_k));
  }
  return Status::Ok();
}

int32_t SampleToken(const float* logits, int64_t vocab, const SamplingParams& params,
                    std::mt19937_64& rng) {
  if (params.temperature == 0.0) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  // Candidates: tokens within 30 nats (after temperature) of the best. What is left
  // out weighs under vocab * e^-30 (< 1e-8 for any real vocabulary) and would cost a
  // full sort of the vocabulary on every token.
  const float best = *std::max_element(logits, logits + vocab);
  const float cutoff = best - static_cast<float>(30.0 * params.temperature);
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < vocab; ++i) {
    if (logits[i] >= cutoff) ids.push_back(static_cast<int32_t>(i));
  }
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b]; };
  const size_t k = params.top_k > 0 ? std::min<size_t>(params.top_k, ids.size()) : ids.size();
  if (k < ids.size()) {
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), by_logit);
    ids.resize(k);
  } else if (params.top_p < 1.0) {
    std::sort(ids.begin(), ids.end(), by_logit);
  }
  std::vector<double> probs(ids.size());
  const double max_logit = best;
  double sum = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    probs[i] = std::exp((logits[ids[i]] - max_logit) / params.temperature);
    sum += probs[i];
  }
  // Nucleus: the smallest prefix whose mass reaches top_p (at least one token).
  size_t keep = ids.size();
  if (params.top_p < 1.0) {
    double mass = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      mass += probs[i] / sum;
      if (mass >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  const double kept_sum = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * kept_sum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace kvpool
