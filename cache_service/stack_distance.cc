// StackDistanceTracker: see stack_distance.h.
#include "cache_service/stack_distance.h"

#include <algorithm>
#include <stdexcept>

namespace kvpool::manager {

StackDistanceTracker::StackDistanceTracker(int64_t max_keys) : max_keys_(max_keys) {
  if (max_keys < 1) throw std::invalid_argument("StackDistanceTracker: max_keys must be >= 1");
  const int64_t slots = 2 * max_keys + 2;
  tree_.assign(static_cast<size_t>(slots) + 1, 0);
  slot_key_.assign(static_cast<size_t>(slots), 0);
  marked_.assign(static_cast<size_t>(slots), 0);
  last_slot_.reserve(static_cast<size_t>(max_keys) + 1);
}

void StackDistanceTracker::Add(int64_t slot, int32_t delta) {
  const auto n = static_cast<int64_t>(tree_.size());
  for (int64_t i = slot + 1; i < n; i += i & -i) tree_[static_cast<size_t>(i)] += delta;
}

int64_t StackDistanceTracker::PrefixSum(int64_t slot) const {
  int64_t sum = 0;
  for (int64_t i = slot + 1; i > 0; i -= i & -i) sum += tree_[static_cast<size_t>(i)];
  return sum;
}

void StackDistanceTracker::Compact() {
  int64_t rank = 0;
  for (int64_t slot = oldest_; slot < next_slot_; ++slot) {
    if (!marked_[static_cast<size_t>(slot)]) continue;
    const uint64_t key = slot_key_[static_cast<size_t>(slot)];
    marked_[static_cast<size_t>(slot)] = 0;
    slot_key_[static_cast<size_t>(rank)] = key;
    marked_[static_cast<size_t>(rank)] = 1;
    last_slot_[key] = rank;
    ++rank;
  }
  std::fill(marked_.begin() + rank, marked_.end(), 0);
  // Linear Fenwick build: every slot below `rank` holds one mark.
  std::fill(tree_.begin(), tree_.end(), 0);
  const auto n = static_cast<int64_t>(tree_.size());
  for (int64_t i = 1; i < n; ++i) {
    tree_[static_cast<size_t>(i)] += (i <= rank) ? 1 : 0;
    const int64_t parent = i + (i & -i);
    if (parent < n) tree_[static_cast<size_t>(parent)] += tree_[static_cast<size_t>(i)];
  }
  oldest_ = 0;
  next_slot_ = rank;
}

int64_t StackDistanceTracker::Reference(uint64_t key) {
  int64_t distance = 0;
  auto it = last_slot_.find(key);
  if (it != last_slot_.end()) {
    const int64_t slot = it->second;
    // Keys referenced after `slot`, plus the key itself.
    distance = live_ - PrefixSum(slot) + 1;
    Add(slot, -1);
    marked_[static_cast<size_t>(slot)] = 0;
    --live_;
  } else if (live_ == max_keys_) {
    // Forget the least recently referenced key; its map node is reused for `key`.
    while (!marked_[static_cast<size_t>(oldest_)]) ++oldest_;
    Add(oldest_, -1);
    marked_[static_cast<size_t>(oldest_)] = 0;
    spare_ = last_slot_.extract(slot_key_[static_cast<size_t>(oldest_)]);
    --live_;
  }
  if (next_slot_ == static_cast<int64_t>(slot_key_.size())) Compact();
  const int64_t slot = next_slot_++;
  slot_key_[static_cast<size_t>(slot)] = key;
  marked_[static_cast<size_t>(slot)] = 1;
  Add(slot, +1);
  ++live_;
  if (it != last_slot_.end()) {
    it->second = slot;  // Compact assigns, never inserts: `it` is still valid
  } else if (!spare_.empty()) {
    spare_.key() = key;
    spare_.mapped() = slot;
    last_slot_.insert(std::move(spare_));
    spare_ = {};
  } else {
    last_slot_.emplace(key, slot);
  }
  return distance;
}

}  // namespace kvpool::manager
