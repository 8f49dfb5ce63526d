// Fair admission across tenants: which waiting sequence the scheduler admits next.
// Tenants take turns (round robin, as SGLang's and vLLM's fair policies do per client):
// among the tenants with a sequence waiting, the one admitted least recently goes
// first, and within a tenant the queue order holds (a preempted sequence is at its
// tenant's front). So one tenant's long queue never delays another tenant's request
// past the first iteration in which a slot frees. Pure and header-only, for tests.
#pragma once

#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace kvpool::worker {

// `waiting` holds the tenant of each waiting sequence in queue order; `last_admitted`
// the admission counter at each tenant's latest admission (absent: never admitted);
// `blocked` the tenants that cannot take more blocks now (at their quota). Returns the
// index in `waiting` to admit next, or waiting.size() when every tenant is blocked.
inline size_t NextToAdmit(const std::vector<const std::string*>& waiting,
                          const std::unordered_map<std::string, int64_t>& last_admitted,
                          const std::set<std::string>& blocked) {
  size_t best = waiting.size();
  int64_t best_turn = std::numeric_limits<int64_t>::max();
  std::set<std::string> seen;
  for (size_t i = 0; i < waiting.size(); ++i) {
    const std::string& tenant = *waiting[i];
    if (blocked.count(tenant) > 0 || !seen.insert(tenant).second) continue;
    const auto it = last_admitted.find(tenant);
    const int64_t turn = it == last_admitted.end() ? -1 : it->second;
    if (turn < best_turn) {
      best_turn = turn;
      best = i;
    }
  }
  return best;
}

}  // namespace kvpool::worker
