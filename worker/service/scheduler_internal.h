// What the two halves of the Scheduler share (scheduler.cc: the loop, admission,
// prefill and decode; scheduler_manager.cc: the manager protocol): the per-sequence
// state and small helpers. Internal to worker/service; include nowhere else.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "service/scheduler.h"

namespace kvpool::worker {

// One sample of a job: a sequence that may be admitted, preempted and admitted again.
struct Scheduler::Seq {
  std::shared_ptr<Job> job;
  int32_t index = 0;  // sample
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
  Clock::time_point last_token_at;
};

namespace scheduler_internal {

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

inline int64_t Nanos(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

// Adds the time between its construction and destruction to one phase's counter.
class PhaseTimer {
 public:
  PhaseTimer(WorkerCounters& counters, SchedulerPhase phase)
      : ns_(counters.phase_ns[static_cast<int>(phase)]), start_(Clock::now()) {}
  ~PhaseTimer() { ns_.fetch_add(Nanos(Clock::now() - start_), std::memory_order_relaxed); }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  std::atomic<int64_t>& ns_;
  const Clock::time_point start_;
};

// Sample i's seed: distinct streams from one request seed.
inline uint64_t SampleSeed(uint64_t seed, int32_t index) {
  if (index == 0) return seed;
  std::seed_seq mix{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(index)};
  std::mt19937_64 rng(mix);
  return rng();
}

}  // namespace scheduler_internal
}  // namespace kvpool::worker
