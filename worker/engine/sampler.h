// Next-token selection from one row of logits: greedy (temperature 0), or
// temperature with top-k and top-p (nucleus) filtering, drawn from a per-request
// generator so that a seed reproduces a run.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "common/status.h"

namespace kvpool {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy
  int32_t top_k = 0;         // 0 = no limit
  double top_p = 1.0;        // in (0, 1]
  uint64_t seed = 0;

  // INVALID_ARGUMENT naming the field, as `field_prefix` + its name.
  Status Validate(const std::string& field_prefix = "") const;
};

// Returns the chosen token id. `logits` has `vocab` entries.
int32_t SampleToken(const float* logits, int64_t vocab, const SamplingParams& params,
                    std::mt19937_64& rng);

}  // namespace kvpool
