// Sample: one of a job's n samples as the scheduler tracks it across admission,
// preemption and resumption: which engine sequence and manager sequence it runs as
// now, how far the manager has committed its tokens (the one record of commit
// progress on the worker: the scheduling policy alone advances it), and what survives
// a preemption (generated tokens, sampler state, swapped K/V). The engine's Sequence
// is its K/V and tokens for the current admission only. Scheduler thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "service/job.h"

namespace kvpool::worker {

struct Sample {
  std::shared_ptr<Job> job;
  int32_t index = 0;  // which of the job's samples
  uint64_t seed = 0;
  std::vector<int32_t> generated;            // survives preemption
  std::string generated_text;                // for stop strings after a preemption
  std::optional<std::mt19937_64> rng;        // saved at preemption
  std::shared_ptr<const SwappedKv> swapped;  // its K/V, preempted with swap space free
  std::string pending_utf8;                  // token bytes that are not a whole character yet
  SequenceId engine_id = 0;                  // 0: not admitted
  int64_t manager_id = 0;                    // 0: none mode, or not open
  int64_t committed = 0;                     // tokens the manager counts as committed
  int64_t order = 0;                         // admission order; the newest is preempted first
  bool fork_children = false;                // paged n > 1: fork the other samples after prefill
  bool resumed = false;                      // admitted again after a preemption (recomputed)
  int64_t prefill_tokens = 0;                // tokens its prefill computes (prompt less cached)
  bool dead = false;                         // ended; dropped from every list this iteration
  bool has_token = false;
  std::chrono::steady_clock::time_point last_token_at;

  // What its next admission prefills: the job's prompt, then what it generated
  // before a preemption.
  std::vector<int32_t> PromptNow() const {
    std::vector<int32_t> prompt = job->request.prompt;
    prompt.insert(prompt.end(), generated.begin(), generated.end());
    return prompt;
  }
};

}  // namespace kvpool::worker
