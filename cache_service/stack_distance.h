// StackDistanceTracker: the LRU stack distance of each reference in a stream of 64-bit
// keys (Mattson et al., 1970): the number of distinct keys referenced since the key's
// previous reference, plus one. A reference with distance d hits in every LRU cache
// of d or more entries and misses in every smaller one, so one pass over a stream
// gives its hit rate at every cache size.
//
// It keeps each key's last reference time and a Fenwick tree over times that marks the
// times still some key's last reference; a distance is a prefix sum. Cost: O(log S)
// per reference (S = 2 * max_keys time slots), plus an O(S) renumbering once every
// S - max_keys references (amortized O(1)). Memory: O(max_keys). It follows only the
// max_keys most recently referenced distinct keys: an older key is forgotten, and its
// next reference reads as "farther than max_keys" (0), like a first reference.
// It never allocates per reference once max_keys keys are known.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace kvpool::manager {

class StackDistanceTracker {
 public:
  // max_keys >= 1: the deepest distance measured.
  explicit StackDistanceTracker(int64_t max_keys);

  // References `key` and returns its stack distance before this reference, in
  // [1, max_keys], or 0 when the key is not among the max_keys most recently
  // referenced distinct keys (never seen, or farther). `key` becomes the most recent.
  int64_t Reference(uint64_t key);

  int64_t max_keys() const { return max_keys_; }
  // Distinct keys followed now (<= max_keys).
  int64_t size() const { return live_; }

 private:
  void Add(int64_t slot, int32_t delta);
  int64_t PrefixSum(int64_t slot) const;  // marks in [0, slot]
  // Renumbers the live times 0..live-1 in order, and rebuilds the tree.
  void Compact();

  int64_t max_keys_;
  std::vector<int32_t> tree_;                        // Fenwick tree over time slots, 1-based inside
  std::vector<uint64_t> slot_key_;                   // the key referenced at each time slot
  std::vector<uint8_t> marked_;                      // slot is its key's last reference
  std::unordered_map<uint64_t, int64_t> last_slot_;  // key -> time slot of its last reference
  std::unordered_map<uint64_t, int64_t>::node_type spare_;  // a forgotten key's node, for reuse
  int64_t next_slot_ = 0;                                   // the next reference's time
  int64_t oldest_ = 0;                                      // no marked slot below this
  int64_t live_ = 0;                                        // marked slots == keys followed
};

}  // namespace kvpool::manager
