// CacheManager::State: everything the manager knows (the block pool with its prefix
// index, the sequence table, the leases, the tenants), as the two files of CacheManager
// share it: cache_manager.cc (the RPCs) and cache_manager_stats.cc (statistics and the
// invariant check). Guarded by CacheManager's mutex; include nowhere else.
#pragma once

#include <algorithm>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache_service/block_hash.h"
#include "cache_service/block_pool.h"
#include "cache_service/cache_manager.h"
#include "cache_service/hit_rate_curve.h"
#include "cache_service/lease_tracker.h"
#include "cache_service/pin_table.h"
#include "cache_service/sequence_table.h"

namespace kvpool::manager {

// Numbers in messages.
inline std::string Str(int64_t v) { return std::to_string(v); }

struct CacheManager::State : EvictionListener {
  explicit State(CacheManagerOptions o)
      : options(std::move(o)),
        pool(options.geometry.num_blocks),
        leases(options.lease_ttl, options.first_worker_id),
        hit_rates(HitRateOptions(options)) {
    if (options.event_sink != nullptr) pool.set_eviction_listener(this);
  }
  static HitRateCurveOptions HitRateOptions(const CacheManagerOptions& o) {
    HitRateCurveOptions h;
    h.pool_blocks = o.geometry.num_blocks;
    h.block_size = o.geometry.block_size;
    h.window = o.hit_rate_window;
    h.sample_rate = o.hit_rate_sample_rate;
    return h;
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // KV events (kv_events.h), recorded in order while a call runs and handed to the
  // sink when it ends (EventFlush). Consecutive removals of one tenant share an event.
  void OnEvicted(const BlockHash& hash, int32_t tag) override {
    const std::string& tenant = tenants[static_cast<size_t>(tag)].name;
    if (pending_events.empty() || pending_events.back().kind != KvEvent::Kind::kBlockRemoved ||
        pending_events.back().tenant != tenant) {
      KvEvent& e = pending_events.emplace_back();
      e.kind = KvEvent::Kind::kBlockRemoved;
      e.tenant = tenant;
    }
    pending_events.back().block_hashes.push_back(hash.lo);
  }
  void FlushEvents() {
    if (pending_events.empty()) return;
    options.event_sink->Publish(std::move(pending_events));
    pending_events.clear();
  }
  // Publishes what the call recorded when it ends, however it returns.
  struct EventFlush {
    State& state;
    ~EventFlush() { state.FlushEvents(); }
  };

  // Looks up `id` for `worker`: NOT_FOUND if no such sequence is open,
  // FAILED_PRECONDITION if another worker owns it.
  StatusOr<Sequence*> OwnedSequence(WorkerId worker, SequenceId id) {
    Sequence* sequence = sequences.Find(id);
    if (sequence == nullptr) {
      return NotFound("sequence " + Str(id) +
                      " is not open (never opened, closed, or its worker's lease expired)");
    }
    if (sequence->worker != worker) {
      // Same answer as for an unknown id: another worker's ids are none of its business.
      return NotFound("sequence " + Str(id) + " is not open for worker " + Str(worker));
    }
    return sequence;
  }

  Status CheckSequenceLimit(WorkerId worker) const {
    if (sequences.CountOf(worker) >= options.max_sequences_per_worker) {
      return ResourceExhausted("worker " + Str(worker) + " already holds " +
                               Str(sequences.CountOf(worker)) +
                               " sequences, the max_sequences_per_worker limit: close some first");
    }
    return Status::Ok();
  }

  // Drops the sequence's references, last block first (its tail is evicted before its
  // prefix), and forgets it.
  void Release(SequenceId id) {
    Sequence* sequence = sequences.Find(id);
    for (auto it = sequence->block_hashes.rbegin(); it != sequence->block_hashes.rend(); ++it) {
      hit_rates.Touch(*it);
    }
    if (sequence->retention_priority >= 0) {
      const auto prompt_blocks = std::min<size_t>(
          sequence->block_table.size(),
          static_cast<size_t>(sequence->prompt_tokens / options.geometry.block_size));
      for (size_t i = 0; i < prompt_blocks; ++i) {
        pool.SetRetentionPriority(sequence->block_table[i], sequence->retention_priority);
      }
    }
    FreeBlocks(sequence->tenant, sequence->block_table);
    sequences.Remove(id);
  }

  // Drops one reference on each of `blocks`, last first, for tenant `t`.
  void FreeBlocks(int32_t t, const std::vector<int32_t>& blocks) {
    TenantState& tenant = tenants[static_cast<size_t>(t)];
    for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
      pool.Free(*it);
      if (pool.block(*it).ref_cnt == 0) --tenant.blocks_in_use;
    }
  }

  PinInfo InfoOf(const PrefixPin& pin, Clock::time_point now) const {
    PinInfo info;
    info.pin_id = pin.id;
    info.tenant = tenants[static_cast<size_t>(pin.tenant)].name;
    info.pinned_blocks = static_cast<int64_t>(pin.blocks.size());
    info.pinned_tokens = info.pinned_blocks * options.geometry.block_size;
    info.expires_in =
        std::max(std::chrono::milliseconds(0),
                 std::chrono::duration_cast<std::chrono::milliseconds>(pin.expires_at - now));
    info.retention_priority = pin.retention_priority;
    return info;
  }

  // Ends a pin: its blocks get its priority (if it set one), lose its references (last
  // first) and move up the model's LRU.
  void EndPin(PinId id) {
    PrefixPin* pin = pins.Find(id);
    for (auto it = pin->blocks.rbegin(); it != pin->blocks.rend(); ++it) {
      const KvBlock& block = pool.block(*it);
      if (block.has_hash) hit_rates.Touch(block.hash);
      if (pin->retention_priority >= 0) pool.SetRetentionPriority(*it, pin->retention_priority);
    }
    FreeBlocks(pin->tenant, pin->blocks);
    pins.Remove(id);
  }

  int64_t MaxBlocks(const std::string& tenant) const {
    const auto it = options.tenant_max_blocks_override.find(tenant);
    return it != options.tenant_max_blocks_override.end() ? it->second : options.tenant_max_blocks;
  }

  // The index of `name` in the tenant table, added on first sight (its salt and quota
  // computed once, not per call).
  int32_t TenantOf(const std::string& name) {
    const auto it = tenant_index.find(name);
    if (it != tenant_index.end()) return it->second;
    const auto index = static_cast<int32_t>(tenants.size());
    TenantState& t = tenants.emplace_back();
    t.name = name;
    t.salt = TenantSalt(name);
    t.max_blocks = MaxBlocks(name);
    t.max_pinned_blocks = std::min(options.tenant_max_pinned_blocks, t.max_blocks);
    tenant_index.emplace(name, index);
    return index;
  }

  // OK when tenant `t` may take `more` blocks into use; RESOURCE_EXHAUSTED (reason
  // TENANT_QUOTA_EXCEEDED) otherwise.
  Status CheckQuota(int32_t t, int64_t more) {
    TenantState& tenant = tenants[static_cast<size_t>(t)];
    if (more <= 0 || tenant.blocks_in_use + more <= tenant.max_blocks) return Status::Ok();
    ++tenant.quota_rejections;
    return ResourceExhausted("tenant " + tenant.name + " holds " + Str(tenant.blocks_in_use) +
                             " of its " + Str(tenant.max_blocks) + "-block quota and needs " +
                             Str(more) + " more: its own sequences must finish first")
        .WithReason(reason::kTenantQuotaExceeded);
  }

  // New blocks (ref_cnt 1) and hits taken from the free queue now count against the
  // tenant.
  void Take(int32_t t, int32_t block) {
    if (pool.block(block).ref_cnt == 0) ++tenants[static_cast<size_t>(t)].blocks_in_use;
    pool.Touch(block);
  }
  Status Allocate(int32_t t, int64_t n, std::vector<int32_t>* out) {
    KVPOOL_RETURN_IF_ERROR(pool.Allocate(n, out));
    tenants[static_cast<size_t>(t)].blocks_in_use += n;
    return Status::Ok();
  }

  // Hashes the blocks that the committed tokens have filled since the last call and
  // registers each in the prefix index unless a block with that hash is there already
  // (with events on: one BlockStored per run of blocks it registered).
  void PublishFullBlocks(Sequence* sequence) {
    const int32_t block_size = options.geometry.block_size;
    const size_t full = sequence->committed_token_ids.size() / block_size;
    const size_t known = sequence->block_hashes.size();
    if (full <= known) return;
    HashFullBlocks(sequence->salt, sequence->committed_token_ids, block_size, known, full - known,
                   &sequence->block_hashes);
    KvEvent* run = nullptr;
    for (size_t i = known; i < full; ++i) {
      hit_rates.Touch(sequence->block_hashes[i]);
      const bool cached = pool.CacheFullBlock(sequence->block_table[i], sequence->block_hashes[i],
                                              sequence->tenant);
      if (options.event_sink == nullptr) continue;
      if (!cached) {
        run = nullptr;
        continue;
      }
      if (run == nullptr) {
        run = &pending_events.emplace_back();
        run->kind = KvEvent::Kind::kBlockStored;
        run->tenant = tenants[static_cast<size_t>(sequence->tenant)].name;
        if (i > 0) run->parent_block_hash = sequence->block_hashes[i - 1].lo;
      }
      run->block_hashes.push_back(sequence->block_hashes[i].lo);
      const auto first = sequence->committed_token_ids.begin() + i * block_size;
      run->token_ids.insert(run->token_ids.end(), first, first + block_size);
    }
  }

  StepItemResult StepOne(WorkerId worker, const StepItem& item);

  const CacheManagerOptions options;
  BlockPool pool;
  SequenceTable sequences;
  LeaseTracker leases;
  PinTable pins;
  HitRateCurveRecorder hit_rates;  // the lookups, publishes and releases, as the LRU sees them
  int64_t prefix_queries_tokens = 0;
  int64_t prefix_hits_tokens = 0;
  int64_t expired_leases = 0;
  std::vector<KvEvent> pending_events;  // this call's, until EventFlush
  struct TenantState {
    std::string name;
    BlockHash salt;                 // TenantSalt(name)
    int64_t max_blocks = 0;         // its quota
    int64_t max_pinned_blocks = 0;  // its pinned-block cap (within the quota)
    int64_t blocks_in_use = 0;
    int64_t prefix_queries_tokens = 0, prefix_hits_tokens = 0;
    int64_t quota_rejections = 0;
  };
  // Every tenant that opened a sequence, by index (Sequence::tenant); bounded by the
  // token file's tenants (only authenticated tenants get here), or "default" without one.
  std::vector<TenantState> tenants;
  std::unordered_map<std::string, int32_t> tenant_index;
};

}  // namespace kvpool::manager
