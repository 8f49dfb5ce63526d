// Next-token sampling: see sampler.h. Penalties, then greedy, temperature, top-k, top-p
// and min-p over one row of logits with the request's own generator; no state beyond
// that generator. Without penalties or bans the row is read in place (no copy).
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
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
  if (!(min_p >= 0 && min_p <= 1)) {
    return InvalidArgument(field_prefix + "min_p must be in [0, 1], got " + std::to_string(min_p));
  }
  for (const auto& [name, value] :
       {std::pair<const char*, double>{"presence_penalty", presence_penalty},
        {"frequency_penalty", frequency_penalty}}) {
    if (!(value >= -2 && value <= 2)) {
      return InvalidArgument(field_prefix + name + " must be in [-2, 2], got " +
                             std::to_string(value));
    }
  }
  if (!(repetition_penalty > 0 && repetition_penalty <= 2)) {
    return InvalidArgument(field_prefix + "repetition_penalty must be in (0, 2] (1 = off), got " +
                           std::to_string(repetition_penalty));
  }
  return Status::Ok();
}

int64_t ArgmaxLogit(const float* logits, int64_t vocab) {
  if (vocab <= 0) return 0;
  // Two passes that vectorize (std::max_element's loop does not: each step depends on
  // the last): the largest value, then the first index that holds it, a chunk at a time.
  // The ternary, not std::max, whose reference GCC 12 does not vectorize here (15x
  // slower). A NaN would lose the lanes' maxima (a lane's maximum becomes whatever
  // follows it), so the first pass also notes any.
  float best = -std::numeric_limits<float>::infinity();
  int nan = 0;
#pragma omp simd reduction(max : best) reduction(| : nan)
  for (int64_t i = 0; i < vocab; ++i) {
    best = best > logits[i] ? best : logits[i];
    nan |= logits[i] != logits[i] ? 1 : 0;
  }
  // With a NaN: the scalar answer, whatever it makes of the NaN.
  if (nan != 0) return std::max_element(logits, logits + vocab) - logits;
  constexpr int64_t kChunk = 256;
  for (int64_t begin = 0; begin < vocab; begin += kChunk) {
    const int64_t end = std::min(vocab, begin + kChunk);
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t i = begin; i < end; ++i) hit |= logits[i] == best ? 1 : 0;
    if (hit == 0) continue;
    for (int64_t i = begin; i < end; ++i) {
      if (logits[i] == best) return i;
    }
  }
  return 0;  // unreachable: some value equals the largest
}

namespace {

// The row with the penalties and bans applied (a copy: the row is the forward's).
std::vector<float> Penalized(const float* logits, int64_t vocab, const SamplingParams& p,
                             const SampleContext& c) {
  std::vector<float> out(logits, logits + vocab);
  if (c.tokens != nullptr && p.penalized()) {
    std::vector<int32_t> seen(static_cast<size_t>(vocab), 0);  // 1: in the prompt, 2+: generated
    std::vector<int32_t> generated(static_cast<size_t>(vocab), 0);
    std::vector<int32_t> touched;
    for (size_t i = 0; i < c.tokens->size(); ++i) {
      const int32_t t = (*c.tokens)[i];
      if (t < 0 || t >= vocab) continue;
      if (seen[t]++ == 0) touched.push_back(t);
      if (i >= c.first_generated) ++generated[t];
    }
    for (int32_t t : touched) {
      float& l = out[t];
      if (p.repetition_penalty != 1) {
        l = l > 0 ? static_cast<float>(l / p.repetition_penalty)
                  : static_cast<float>(l * p.repetition_penalty);
      }
      if (generated[t] > 0) {
        l -= static_cast<float>(p.frequency_penalty * generated[t] + p.presence_penalty);
      }
    }
  }
  for (int32_t t : c.banned) {
    if (t >= 0 && t < vocab) out[t] = -std::numeric_limits<float>::infinity();
  }
  return out;
}

}  // namespace

TokenLogprobs LogprobsOf(const float* l, int64_t vocab, int32_t token, int32_t k) {
  const float max = l[ArgmaxLogit(l, vocab)];
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(l[i] - max));
  const float lse = max + static_cast<float>(std::log(sum));
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const auto n = static_cast<std::ptrdiff_t>(std::min<int64_t>(k, vocab));
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                    [l](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  TokenLogprobs out;
  out.logprob = l[token] - lse;
  for (std::ptrdiff_t i = 0; i < n; ++i) out.top.emplace_back(ids[i], l[ids[i]] - lse);
  return out;
}

int32_t SampleToken(const float* row, int64_t vocab, const SamplingParams& params,
                    std::mt19937_64& rng, const SampleContext* context) {
  std::vector<float> adjusted;
  const float* logits = row;
  if (context != nullptr && (params.penalized() || !context->banned.empty())) {
    adjusted = Penalized(row, vocab, params, *context);
    logits = adjusted.data();
  }
  if (params.temperature == 0.0) {
    return static_cast<int32_t>(ArgmaxLogit(logits, vocab));
  }
  // Candidates: tokens within 30 nats (after temperature) of the best. What is left
  // out weighs under vocab * e^-30 (< 1e-8 for any real vocabulary) and would cost a
  // full sort of the vocabulary on every token.
  const float best = logits[ArgmaxLogit(logits, vocab)];
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
  // Min-p: only tokens at least min_p times as likely as the most likely one.
  if (params.min_p > 0) {
    const double floor = params.min_p * *std::max_element(probs.begin(), probs.begin() + keep);
    size_t kept = 0;
    for (size_t i = 0; i < keep; ++i) {
      if (probs[i] >= floor) {
        ids[kept] = ids[i];
        probs[kept++] = probs[i];
      }
    }
    keep = kept;
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
