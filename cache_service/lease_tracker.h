// LeaseTracker: the registered workers and when each was last heard from. It owns
// worker ids (from first_id, +1 each, never reused) and the expiry rule (silent for longer than the
// TTL). It never reads a clock (`now` is passed in, so tests control time) and never
// frees sequences: the cache manager does that for the workers it reports expired.
#pragma once

#include <chrono>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "cache_service/cache_manager.h"

namespace kvpool::manager {

class LeaseTracker {
 public:
  LeaseTracker(std::chrono::milliseconds ttl, WorkerId first_id) : ttl_(ttl), next_id_(first_id) {}

  std::chrono::milliseconds ttl() const { return ttl_; }
  WorkerId Register(Clock::time_point now);
  // Records that `worker` was heard from; false if it is not registered.
  bool Renew(WorkerId worker, Clock::time_point now);
  bool Contains(WorkerId worker) const { return last_seen_.count(worker) > 0; }
  // Forgets and returns (ascending) every worker silent for longer than the TTL.
  std::vector<WorkerId> TakeExpired(Clock::time_point now);
  int64_t size() const { return static_cast<int64_t>(last_seen_.size()); }

 private:
  std::chrono::milliseconds ttl_;
  WorkerId next_id_;
  std::unordered_map<WorkerId, Clock::time_point> last_seen_;
};

}  // namespace kvpool::manager
