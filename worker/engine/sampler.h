// Next-token selection from one row of logits: repetition, presence and frequency
// penalties over the sequence so far (as vLLM and Hugging Face apply them), then greedy
// (temperature 0), or temperature with top-k, top-p (nucleus) and min-p filtering,
// drawn from a per-request generator so that a seed reproduces a run.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace kvpool {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy
  int32_t top_k = 0;         // 0 = no limit
  double top_p = 1.0;        // in (0, 1]
  uint64_t seed = 0;
  double min_p = 0.0;               // [0, 1]: drop tokens under min_p x the top probability
  double presence_penalty = 0.0;    // [-2, 2]: off each generated token's logit, once
  double frequency_penalty = 0.0;   // [-2, 2]: off it per time it was generated
  double repetition_penalty = 1.0;  // (0, 2]: prompt and generated tokens' logits / it
                                    // (positive) or x it (negative); 1 = off

  bool penalized() const {
    return presence_penalty != 0 || frequency_penalty != 0 || repetition_penalty != 1;
  }
  // INVALID_ARGUMENT naming the field, as `field_prefix` + its name.
  Status Validate(const std::string& field_prefix = "") const;
};

// What the penalties and bans read: the sequence's tokens (prompt, then generated),
// where its generated tokens start, and ids that must not be drawn (EOS and stop
// token ids before min_tokens).
struct SampleContext {
  const std::vector<int32_t>* tokens = nullptr;
  size_t first_generated = 0;
  std::vector<int32_t> banned;
};

// The log-probabilities of one sampled token under the raw logits (log-softmax).
struct TokenLogprobs {
  float logprob = 0;                           // of the sampled token
  std::vector<std::pair<int32_t, float>> top;  // the most likely tokens, best first
};

// `token`'s log-probability and the `k` most likely tokens' (ties: lower id first).
TokenLogprobs LogprobsOf(const float* logits, int64_t vocab, int32_t token, int32_t k);

// The first index of the largest of `vocab` logits: std::max_element's answer (ties:
// the lowest index), vectorized.
int64_t ArgmaxLogit(const float* logits, int64_t vocab);

// Returns the chosen token id. `logits` has `vocab` entries.
int32_t SampleToken(const float* logits, int64_t vocab, const SamplingParams& params,
                    std::mt19937_64& rng, const SampleContext* context = nullptr);

}  // namespace kvpool
