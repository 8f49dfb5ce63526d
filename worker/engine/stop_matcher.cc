// StopMatcher: Aho-Corasick construction (trie, then failure links breadth first) and
// the streaming match. See stop_matcher.h.
#include "engine/stop_matcher.h"

#include <algorithm>
#include <deque>

namespace kvpool {

StopMatcher::StopMatcher(const std::vector<std::string>& stops) : nodes_(1) {
  for (const std::string& stop : stops) {
    if (stop.empty()) continue;
    State node = kStart;
    for (const char c : stop) {
      const auto byte = static_cast<uint8_t>(c);
      State child = Child(node, byte);
      if (child < 0) {
        child = static_cast<State>(nodes_.size());
        nodes_.emplace_back();
        auto& next = nodes_[node].next;
        next.insert(std::lower_bound(next.begin(), next.end(), std::make_pair(byte, State{0})),
                    {byte, child});
      }
      node = child;
    }
    nodes_[node].ends_stop = true;
  }
  // Failure links: the longest proper suffix of a node's path that is also a path.
  std::deque<State> queue;
  for (const auto& [byte, child] : nodes_[kStart].next) queue.push_back(child);
  while (!queue.empty()) {
    const State node = queue.front();
    queue.pop_front();
    for (const auto& [byte, child] : nodes_[node].next) {
      State f = nodes_[node].fail;
      while (f != kStart && Child(f, byte) < 0) f = nodes_[f].fail;
      const State g = Child(f, byte);
      nodes_[child].fail = (g >= 0 && g != child) ? g : kStart;
      nodes_[child].ends_stop = nodes_[child].ends_stop || nodes_[nodes_[child].fail].ends_stop;
      queue.push_back(child);
    }
  }
}

StopMatcher::State StopMatcher::Child(State node, uint8_t byte) const {
  const auto& next = nodes_[node].next;
  const auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(byte, State{0}));
  return it != next.end() && it->first == byte ? it->second : -1;
}

bool StopMatcher::Feed(State& state, std::string_view text) const {
  for (const char c : text) {
    const auto byte = static_cast<uint8_t>(c);
    State child = Child(state, byte);
    while (child < 0 && state != kStart) {
      state = nodes_[state].fail;
      ++transitions_;
      child = Child(state, byte);
    }
    state = child < 0 ? kStart : child;
    ++transitions_;
    if (nodes_[state].ends_stop) return true;
  }
  return false;
}

}  // namespace kvpool
