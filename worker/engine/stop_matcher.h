// StopMatcher: finds any of a request's stop strings in its generated text as the text
// grows, with an Aho-Corasick automaton over bytes. Each new byte costs amortised O(1)
// transitions whatever the number of stop strings (a byte deepens the match by at most
// one level, and every failure link followed undoes one), so a request with many stop
// strings cannot slow the scheduler thread that all requests share. Built once per
// sequence (cost linear in the stops' total length, which the worker's validator
// bounds); immutable afterwards and shared by forks, each sequence keeping its own
// state.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvpool {

class StopMatcher {
 public:
  using State = int32_t;
  static constexpr State kStart = 0;

  // Empty strings are ignored (they would match everything).
  explicit StopMatcher(const std::vector<std::string>& stops);

  bool empty() const { return nodes_.size() == 1; }
  // Feeds `text` from `state`; true when some stop string ends within it. `state` is
  // left after the last byte fed (it stops at the first match).
  bool Feed(State& state, std::string_view text) const;
  // Automaton transitions followed so far (goto and failure links), for tests that
  // check the cost per byte.
  int64_t transitions() const { return transitions_; }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, State>> next;  // sorted by byte
    State fail = kStart;
    bool ends_stop = false;  // some stop string is a suffix of this node's path
  };
  State Child(State node, uint8_t byte) const;  // -1 when none

  std::vector<Node> nodes_;
  mutable int64_t transitions_ = 0;  // diagnostic only
};

}  // namespace kvpool
