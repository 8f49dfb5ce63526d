// CacheManager's read side: the statistics every endpoint shows (Stats, per tenant) and
// CheckInvariants, which recomputes every count from scratch and compares (the property
// and fuzz tests call it after every operation). Nothing here changes the state.
#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache_service/cache_manager.h"
#include "cache_service/cache_manager_state.h"

namespace kvpool::manager {

std::vector<IndexedBlock> CacheManager::PrefixIndexBlocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  const State& s = *state_;
  std::vector<IndexedBlock> out;
  for (int64_t id = 0; id < s.pool.num_blocks(); ++id) {
    const KvBlock& b = s.pool.block(static_cast<int32_t>(id));
    if (!b.has_hash) continue;
    out.push_back({s.tenants[static_cast<size_t>(b.tag)].name, b.hash.lo, b.ref_cnt > 0});
  }
  return out;
}

ManagerStats CacheManager::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  const State& s = *state_;
  const PoolGeometry& g = s.options.geometry;
  ManagerStats stats;
  stats.num_blocks = s.pool.num_blocks();
  stats.free_blocks = s.pool.num_free();
  stats.cached_blocks = s.pool.num_cached();
  stats.in_use_blocks = s.pool.num_in_use();
  stats.num_sequences = s.sequences.size();
  stats.num_workers = s.leases.size();
  stats.prefix_queries_tokens = s.prefix_queries_tokens;
  stats.prefix_hits_tokens = s.prefix_hits_tokens;
  stats.evictions = s.pool.evictions();
  stats.expired_leases = s.expired_leases;
  stats.pins = s.pins.size();
  s.pins.ForEach([&](const PrefixPin& pin) {
    stats.pinned_blocks += static_cast<int64_t>(pin.blocks.size());
  });
  for (int32_t p = kMinRetentionPriority; p <= kMaxRetentionPriority; ++p) {
    stats.cached_blocks_by_priority.push_back(s.pool.num_cached_at(p));
  }
  stats.bytes_reserved = stats.in_use_blocks * static_cast<int64_t>(g.block_bytes());
  // A shared block counts once, with the most committed slots any holder has in it.
  // O(num_blocks + table entries): Stats is not on the per-token path.
  std::vector<int32_t> filled(static_cast<size_t>(stats.num_blocks), 0);
  s.sequences.ForEach([&](const Sequence& sequence) {
    const auto committed = static_cast<int64_t>(sequence.committed_token_ids.size());
    for (size_t i = 0; i < sequence.block_table.size(); ++i) {
      const int64_t in_block =
          std::clamp<int64_t>(committed - static_cast<int64_t>(i) * g.block_size, 0, g.block_size);
      int32_t& slot = filled[sequence.block_table[i]];
      slot = std::max(slot, static_cast<int32_t>(in_block));
    }
  });
  int64_t used_tokens = 0;
  for (int32_t f : filled) used_tokens += f;
  stats.bytes_used = used_tokens * static_cast<int64_t>(g.token_bytes());
  for (const State::TenantState& t : s.tenants) {
    TenantStats& out = stats.tenants.emplace_back();
    out.tenant = t.name;
    out.blocks_in_use = t.blocks_in_use;
    out.max_blocks = std::min(t.max_blocks, stats.num_blocks);
    out.prefix_queries_tokens = t.prefix_queries_tokens;
    out.prefix_hits_tokens = t.prefix_hits_tokens;
    out.quota_rejections = t.quota_rejections;
    const auto index = static_cast<int32_t>(&t - s.tenants.data());
    out.pinned_blocks = s.pins.PinnedBlocks(index);
    s.pins.ForEach([&](const PrefixPin& pin) { out.pins += pin.tenant == index ? 1 : 0; });
    out.max_pinned_blocks = std::min(t.max_pinned_blocks, stats.num_blocks);
  }
  std::sort(stats.tenants.begin(), stats.tenants.end(),
            [](const TenantStats& a, const TenantStats& b) { return a.tenant < b.tenant; });
  return stats;
}

HitRateCurves CacheManager::PredictedHitRates(Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  const State& s = *state_;
  std::vector<std::string> names;
  names.reserve(s.tenants.size());
  for (const State::TenantState& t : s.tenants) names.push_back(t.name);
  return s.hit_rates.Curves(names, now);
}

int64_t CacheManager::TenantMaxBlocks(const std::string& tenant) const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_->MaxBlocks(tenant);
}

Status CacheManager::CheckInvariants() const {
  std::lock_guard<std::mutex> lock(mu_);
  const State& s = *state_;
  const int32_t block_size = s.options.geometry.block_size;
  std::vector<int32_t> refs(static_cast<size_t>(s.pool.num_blocks()), 0);
  // Each referenced block's tenant (-1 until seen); a second tenant breaks the quota's
  // accounting (and tenant isolation).
  std::vector<int32_t> block_tenant(static_cast<size_t>(s.pool.num_blocks()), -1);
  std::vector<int64_t> tenant_blocks(s.tenants.size(), 0);
  std::unordered_map<WorkerId, int64_t> per_worker;
  Status status;
  s.sequences.ForEach([&](const Sequence& q) {
    if (!status.ok()) return;
    const std::string name = "sequence " + Str(q.id) + ": ";
    auto fail = [&](const std::string& what) { status = Internal(name + what); };
    ++per_worker[q.worker];
    const auto committed = static_cast<int64_t>(q.committed_token_ids.size());
    const auto table = static_cast<int64_t>(q.block_table.size());
    if (!s.leases.Contains(q.worker))
      return fail("owner worker " + Str(q.worker) + " unregistered");
    if (committed > q.num_tokens || q.num_tokens > q.max_total_tokens) {
      return fail("committed " + Str(committed) + " <= num_tokens " + Str(q.num_tokens) +
                  " <= max_total " + Str(q.max_total_tokens) + " broken");
    }
    for (int32_t b : q.block_table) {
      if (b < 0 || b >= s.pool.num_blocks()) return fail("block id " + Str(b) + " out of range");
      ++refs[b];
      if (q.tenant < 0 || static_cast<size_t>(q.tenant) >= s.tenants.size()) {
        return fail("unknown tenant index " + Str(q.tenant));
      }
      if (block_tenant[b] < 0) {
        block_tenant[b] = q.tenant;
        ++tenant_blocks[static_cast<size_t>(q.tenant)];
      } else if (block_tenant[b] != q.tenant) {
        return fail("block " + Str(b) + " shared by tenants " +
                    s.tenants[static_cast<size_t>(block_tenant[b])].name + " and " +
                    s.tenants[static_cast<size_t>(q.tenant)].name);
      }
    }
    if (q.mode == KvMode::kContiguous) {
      if (table != CeilDiv(q.max_total_tokens, block_size)) return fail("reservation size wrong");
      for (int64_t i = 1; i < table; ++i) {
        if (q.block_table[i] != q.block_table[i - 1] + 1) return fail("reservation not contiguous");
      }
      if (!q.block_hashes.empty()) return fail("contiguous sequence has block hashes");
    } else {
      if (table != CeilDiv(q.num_tokens, block_size)) {
        return fail(Str(table) + " blocks for " + Str(q.num_tokens) + " tokens");
      }
      if (static_cast<int64_t>(q.block_hashes.size()) != committed / block_size) {
        return fail(Str(q.block_hashes.size()) + " hashes for " + Str(committed) + " committed");
      }
    }
    // A block that is not full and committed belongs to this sequence alone, unhashed; a
    // hashed full block holds exactly the content this sequence committed there.
    for (int64_t i = 0; i < table; ++i) {
      const KvBlock& block = s.pool.block(q.block_table[i]);
      const bool full_committed =
          q.mode == KvMode::kPaged && i < static_cast<int64_t>(q.block_hashes.size());
      if (!full_committed && (block.ref_cnt != 1 || block.has_hash)) {
        return fail("block " + Str(block.block_id) +
                    " (partial or uncommitted) is shared or hashed");
      }
      if (full_committed && block.has_hash && block.hash != q.block_hashes[i]) {
        return fail("block " + Str(block.block_id) + " holds another content's hash");
      }
    }
  });
  KVPOOL_RETURN_IF_ERROR(status);
  // Pins: one reference per pinned block, in the pin's tenant; the table's per-tenant
  // counts add up.
  std::vector<int64_t> pinned(s.tenants.size(), 0);
  s.pins.ForEach([&](const PrefixPin& pin) {
    if (!status.ok()) return;
    pinned[static_cast<size_t>(pin.tenant)] += static_cast<int64_t>(pin.blocks.size());
    for (int32_t b : pin.blocks) {
      if (b < 0 || b >= s.pool.num_blocks() || !s.pool.block(b).has_hash) {
        status = Internal("pin " + Str(pin.id) + " holds block " + Str(b) + ", not a cached block");
        return;
      }
      ++refs[b];
      if (block_tenant[b] < 0) {
        block_tenant[b] = pin.tenant;
        ++tenant_blocks[static_cast<size_t>(pin.tenant)];
      } else if (block_tenant[b] != pin.tenant) {
        status = Internal("pin " + Str(pin.id) + " holds block " + Str(b) + " of another tenant");
        return;
      }
    }
  });
  KVPOOL_RETURN_IF_ERROR(status);
  for (size_t i = 0; i < s.tenants.size(); ++i) {
    if (s.pins.PinnedBlocks(static_cast<int32_t>(i)) != pinned[i]) {
      return Internal("tenant " + s.tenants[i].name + " counted " +
                      Str(s.pins.PinnedBlocks(static_cast<int32_t>(i))) +
                      " pinned blocks, its pins hold " + Str(pinned[i]));
    }
  }
  for (size_t i = 0; i < s.tenants.size(); ++i) {
    const State::TenantState& t = s.tenants[i];
    const int64_t held = tenant_blocks[i];
    if (t.blocks_in_use != held) {
      return Internal("tenant " + t.name + " counted " + Str(t.blocks_in_use) +
                      " blocks in use, its sequences hold " + Str(held));
    }
    if (held > t.max_blocks) {
      return Internal("tenant " + t.name + " holds " + Str(held) + " blocks, over its quota " +
                      Str(t.max_blocks));
    }
  }
  for (const auto& [worker, count] : per_worker) {
    if (s.sequences.CountOf(worker) != count) {
      return Internal("worker " + Str(worker) + " indexed with " +
                      Str(s.sequences.CountOf(worker)) + " sequences, holds " + Str(count));
    }
  }
  return s.pool.CheckInvariants(refs);
}

}  // namespace kvpool::manager
