// CacheManager's pins and prefix-cache reset (see cache_manager.h and pin_table.h): a
// pin holds one reference on each pinned block, through the same quota accounting as
// a sequence's, so pinned blocks are never evicted and count against their tenant.
#include <algorithm>
#include <string>
#include <vector>

#include "cache_service/cache_manager.h"
#include "cache_service/cache_manager_state.h"

namespace kvpool::manager {
StatusOr<PinInfo> CacheManager::PinPrefix(const PinRequest& request, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  const CacheManagerOptions& o = s.options;
  const auto prompt_tokens = static_cast<int64_t>(request.token_ids.size());
  if (prompt_tokens > o.max_tokens_per_call) {
    return InvalidArgument("token_ids has " + Str(prompt_tokens) +
                           " tokens, over max_tokens_per_call " + Str(o.max_tokens_per_call));
  }
  for (size_t i = 0; i < request.token_ids.size(); ++i) {
    if (request.token_ids[i] < 0) {
      return InvalidArgument("token_ids[" + Str(static_cast<int64_t>(i)) + "] = " +
                             Str(request.token_ids[i]) + " is negative: token ids are >= 0");
    }
  }
  if (request.ttl <= std::chrono::milliseconds(0) || request.ttl > o.max_pin_ttl) {
    return InvalidArgument("ttl_ms " + Str(request.ttl.count()) + " is outside 1 .. " +
                           Str(o.max_pin_ttl.count()) + " (the manager's max pin TTL)");
  }
  if (request.retention_priority < -1 || request.retention_priority > kMaxRetentionPriority) {
    return InvalidArgument("retention_priority " + Str(request.retention_priority) +
                           " is outside 0..100 (-1: none)");
  }
  const int32_t block_size = o.geometry.block_size;
  const int64_t full = prompt_tokens / block_size;
  if (full == 0) {
    return InvalidArgument("the prompt has " + Str(prompt_tokens) + " tokens, no full block of " +
                           Str(block_size) + ": nothing to pin");
  }
  const int32_t tenant = s.TenantOf(request.tenant);
  std::vector<BlockHash> hashes;
  HashFullBlocks(s.tenants[static_cast<size_t>(tenant)].salt, request.token_ids, block_size, 0,
                 static_cast<size_t>(full), &hashes);
  std::vector<int32_t> blocks;
  int64_t unreferenced = 0;
  for (const BlockHash& hash : hashes) {
    const auto block = s.pool.Lookup(hash);
    if (!block) break;
    blocks.push_back(*block);
    if (s.pool.block(*block).ref_cnt == 0) ++unreferenced;
  }
  if (blocks.empty()) {
    return FailedPrecondition("none of the prompt's " + Str(full) +
                              " full blocks is cached: prefill the prompt first (the worker's "
                              "Pin call does), then pin");
  }
  const auto deadline = now + request.ttl;
  if (PrefixPin* same = s.pins.FindSame(tenant, blocks)) {
    same->expires_at = std::max(same->expires_at, deadline);
    if (request.retention_priority >= 0) same->retention_priority = request.retention_priority;
    return s.InfoOf(*same, now);
  }
  State::TenantState& t = s.tenants[static_cast<size_t>(tenant)];
  const auto more = static_cast<int64_t>(blocks.size());
  if (s.pins.PinnedBlocks(tenant) + more > t.max_pinned_blocks) {
    return ResourceExhausted("tenant " + t.name + " pins " + Str(s.pins.PinnedBlocks(tenant)) +
                             " blocks and this pin needs " + Str(more) +
                             " more, over its pinned-block cap of " + Str(t.max_pinned_blocks) +
                             " (--tenant-max-pinned-blocks): unpin one or let one expire")
        .WithReason(reason::kPinnedBlocksExceeded);
  }
  KVPOOL_RETURN_IF_ERROR(s.CheckQuota(tenant, unreferenced));
  for (int32_t block : blocks) s.Take(tenant, block);
  PrefixPin pin;
  pin.tenant = tenant;
  pin.blocks = std::move(blocks);
  pin.expires_at = deadline;
  pin.retention_priority = request.retention_priority;
  return s.InfoOf(s.pins.Add(std::move(pin)), now);
}

std::vector<PinInfo> CacheManager::ListPins(const std::string& tenant, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  for (PinId id : s.pins.Expired(now)) s.EndPin(id);
  std::vector<PinInfo> out;
  s.pins.ForEach([&](const PrefixPin& pin) {
    if (tenant.empty() || s.tenants[static_cast<size_t>(pin.tenant)].name == tenant) {
      out.push_back(s.InfoOf(pin, now));
    }
  });
  return out;
}

Status CacheManager::Unpin(const std::string& tenant, PinId id, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  for (PinId expired : s.pins.Expired(now)) s.EndPin(expired);
  const PrefixPin* pin = s.pins.Find(id);
  // Another tenant's pin is as unknown as a missing one.
  if (pin == nullptr || s.tenants[static_cast<size_t>(pin->tenant)].name != tenant) {
    return NotFound("tenant " + tenant + " has no pin " + Str(id) +
                    " (never made, unpinned, expired, or another tenant's)");
  }
  s.EndPin(id);
  return Status::Ok();
}

int64_t CacheManager::ExpirePins(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  const std::vector<PinId> expired = s.pins.Expired(now);
  for (PinId id : expired) s.EndPin(id);
  return static_cast<int64_t>(expired.size());
}

ResetResult CacheManager::ResetPrefixCache(Clock::time_point) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  ResetResult result;
  std::vector<PinId> all;
  s.pins.ForEach([&](const PrefixPin& pin) { all.push_back(pin.id); });
  for (PinId id : all) s.EndPin(id);
  result.dropped_pins = static_cast<int64_t>(all.size());
  result.evicted_blocks = s.pool.EvictAllCached();
  return result;
}

}  // namespace kvpool::manager
