// SequenceTable: see sequence_table.h. Keeps `by_worker_` in step with `sequences_`;
// never touches blocks.
#include "cache_service/sequence_table.h"

#include <utility>

namespace kvpool::manager {

Sequence& SequenceTable::Add(Sequence sequence) {
  sequence.id = next_id_++;
  by_worker_[sequence.worker].insert(sequence.id);
  auto [it, inserted] = sequences_.emplace(sequence.id, std::move(sequence));
  (void)inserted;
  return it->second;
}

Sequence* SequenceTable::Find(SequenceId id) {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? nullptr : &it->second;
}

const Sequence* SequenceTable::Find(SequenceId id) const {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? nullptr : &it->second;
}

void SequenceTable::Remove(SequenceId id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  auto owner = by_worker_.find(it->second.worker);
  if (owner != by_worker_.end()) {
    owner->second.erase(id);
    if (owner->second.empty()) by_worker_.erase(owner);
  }
  sequences_.erase(it);
}

std::vector<SequenceId> SequenceTable::SequencesOf(WorkerId worker) const {
  auto it = by_worker_.find(worker);
  if (it == by_worker_.end()) return {};
  return {it->second.begin(), it->second.end()};
}

int64_t SequenceTable::CountOf(WorkerId worker) const {
  auto it = by_worker_.find(worker);
  return it == by_worker_.end() ? 0 : static_cast<int64_t>(it->second.size());
}

}  // namespace kvpool::manager
