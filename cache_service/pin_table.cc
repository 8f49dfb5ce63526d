// PinTable: see pin_table.h.
#include "cache_service/pin_table.h"

#include <utility>

namespace kvpool::manager {

PrefixPin& PinTable::Add(PrefixPin pin) {
  pin.id = next_id_++;
  if (static_cast<size_t>(pin.tenant) >= pinned_blocks_.size()) {
    pinned_blocks_.resize(static_cast<size_t>(pin.tenant) + 1, 0);
  }
  pinned_blocks_[static_cast<size_t>(pin.tenant)] += static_cast<int64_t>(pin.blocks.size());
  const PinId id = pin.id;
  return pins_.emplace(id, std::move(pin)).first->second;
}

PrefixPin* PinTable::Find(PinId id) {
  const auto it = pins_.find(id);
  return it == pins_.end() ? nullptr : &it->second;
}

PrefixPin* PinTable::FindSame(int32_t tenant, const std::vector<int32_t>& blocks) {
  for (auto& [id, pin] : pins_) {
    if (pin.tenant == tenant && pin.blocks == blocks) return &pin;
  }
  return nullptr;
}

void PinTable::Remove(PinId id) {
  const auto it = pins_.find(id);
  if (it == pins_.end()) return;
  pinned_blocks_[static_cast<size_t>(it->second.tenant)] -=
      static_cast<int64_t>(it->second.blocks.size());
  pins_.erase(it);
}

std::vector<PinId> PinTable::Expired(std::chrono::steady_clock::time_point now) const {
  std::vector<PinId> out;
  for (const auto& [id, pin] : pins_) {
    if (pin.expires_at <= now) out.push_back(id);
  }
  return out;
}

int64_t PinTable::PinnedBlocks(int32_t tenant) const {
  return static_cast<size_t>(tenant) < pinned_blocks_.size()
             ? pinned_blocks_[static_cast<size_t>(tenant)]
             : 0;
}

}  // namespace kvpool::manager
