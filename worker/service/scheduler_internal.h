// Small helpers the Scheduler's three files share (scheduler.cc, scheduler_batch.cc,
// scheduler_blocks.cc): durations, the phase timer, sample seeds. Internal to
// worker/service; include nowhere else.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

#include "service/scheduler.h"

namespace kvpool::worker {

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
