// LeaseTracker: see lease_tracker.h. A lease lasts until a sweep finds it silent for
// longer than the TTL; between sweeps a late call still renews it.
#include "cache_service/lease_tracker.h"

#include <algorithm>

namespace kvpool::manager {

WorkerId LeaseTracker::Register(Clock::time_point now) {
  const WorkerId id = next_id_++;
  last_seen_[id] = now;
  return id;
}

bool LeaseTracker::Renew(WorkerId worker, Clock::time_point now) {
  auto it = last_seen_.find(worker);
  if (it == last_seen_.end()) return false;
  it->second = std::max(it->second, now);
  return true;
}

std::vector<WorkerId> LeaseTracker::TakeExpired(Clock::time_point now) {
  std::vector<WorkerId> expired;
  for (auto it = last_seen_.begin(); it != last_seen_.end();) {
    if (now - it->second > ttl_) {
      expired.push_back(it->first);
      it = last_seen_.erase(it);
    } else {
      ++it;
    }
  }
  std::sort(expired.begin(), expired.end());
  return expired;
}

}  // namespace kvpool::manager
