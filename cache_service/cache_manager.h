// CacheManager: every fact about the KV pool, behind one mutex. It owns the block
// pool (free / cached / in-use blocks and the LRU of evictable cached blocks), the
// prefix index, the sequence table and the worker leases, and answers the manager's
// RPCs as plain C++ calls (grpc_service.cc maps them to gRPC). It never touches KV
// bytes and never runs the model: the pool memory belongs to the pool host.
//
// Block states (after vLLM v1's block_pool.py):
//   free    no hash, ref_cnt 0, in the free queue
//   cached  hash set, ref_cnt 0, in the free queue (evictable, least recent first)
//   in use  ref_cnt >= 1, not in the free queue
// A block gets a hash only when it is full and a worker has committed its K/V.
// Allocation pops the free queue's head; if that block is cached its hash leaves the
// prefix index in the same step (eviction).
//
// Semantics decided here (the service relies on them):
//   - paged OpenSequence reuses the longest cached run of the prompt's full blocks,
//     capped so that at least one prompt token is computed; those cached tokens count
//     as committed, so the worker's first commit_token_ids start at cached_tokens;
//   - contiguous sequences neither look up nor publish prefix blocks (cached_tokens 0)
//     and cannot be forked (FAILED_PRECONDITION);
//   - this object is one manager instance: its instance_id() (128 random bits) and
//     its worker ids (from a random base below 2^52, then +1 per registration) never
//     repeat across instances, so a worker of a previous instance can never be taken
//     for one of this instance's; CheckInstance refuses a call naming another
//     instance (FAILED_PRECONDITION, reason MANAGER_RESTARTED);
//   - a call by an unknown or expired worker is NOT_FOUND (reason
//     WORKER_NOT_REGISTERED); a sequence id that is not
//     open is NOT_FOUND; another worker's sequence is FAILED_PRECONDITION;
//   - a lease expires only when ExpireLeases finds it silent for longer than the TTL;
//     every call by the worker renews it;
//   - tenant quota: the blocks a tenant's sequences hold in use (ref_cnt >= 1; cached
//     blocks with no reference do not count) never exceed its max_blocks. Blocks are
//     only ever shared within one tenant (prefix hashes are salted by tenant, forks
//     stay in it), so each in-use block counts against exactly one tenant. A call that
//     would pass the cap fails RESOURCE_EXHAUSTED with reason TENANT_QUOTA_EXCEEDED and
//     changes nothing; a sequence that could never fit the cap (prompt + max_tokens)
//     fails FAILED_PRECONDITION at OpenSequence.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cache_service/hit_rate_curve.h"
#include "cache_service/kv_events.h"
#include "cache_service/pin_table.h"
#include "common/kv_layout.h"
#include "common/kv_mode.h"
#include "common/status.h"

namespace kvpool::manager {

using Clock = std::chrono::steady_clock;
using WorkerId = int64_t;
using SequenceId = int64_t;

struct CacheManagerOptions {
  PoolGeometry geometry;                       // num_blocks, block_size, ... of the pool
  std::chrono::milliseconds lease_ttl{10000};  // a silent worker loses its sequences after this
  int64_t max_tokens_per_call = 1 << 20;       // prompt tokens + committed tokens in one call
  int64_t max_sequences_per_worker = 4096;
  int64_t max_context_tokens = 1 << 20;  // prompt + max_tokens of one sequence
  // This instance's identity; empty / 0: drawn from std::random_device (tests fix them).
  std::string instance_id;
  WorkerId first_worker_id = 0;
  // Blocks a tenant's sequences (and pins) may hold in use at once; per-tenant overrides.
  int64_t tenant_max_blocks = INT64_MAX;
  // Blocks a tenant's pins may hold (within its quota); a block in two pins counts twice.
  int64_t tenant_max_pinned_blocks = INT64_MAX;
  std::chrono::milliseconds max_pin_ttl{86400000};
  std::map<std::string, int64_t> tenant_max_blocks_override;
  // Told of what the prefix cache gains and loses (kv_events.h); null: nothing is
  // recorded. Outlives the manager.
  KvEventSink* event_sink = nullptr;
  // The predicted hit-rate curves (hit_rate_curve.h): their sliding window, and the
  // SHARDS sampling rate beyond the exact bound (0: the default).
  std::chrono::milliseconds hit_rate_window{300000};
  double hit_rate_sample_rate = 0;
};

struct WorkerLease {
  WorkerId worker_id = 0;
  std::chrono::milliseconds ttl{0};
};

struct OpenRequest {
  WorkerId worker_id = 0;
  std::string tenant;              // from the authenticated caller, never the request body
  std::vector<int32_t> token_ids;  // the prompt
  KvMode mode = KvMode::kPaged;
  int64_t max_tokens = 0;  // new tokens the sequence may generate
  // The retention priority its prompt's full blocks get when it closes
  // ([kMinRetentionPriority, kMaxRetentionPriority]); -1: they keep theirs.
  int32_t retention_priority = -1;
};

// A pin of a prompt's full blocks (pin_table.h): every leading full block of
// `token_ids` that is cached or in use now stays resident for `ttl`.
struct PinRequest {
  std::string tenant;  // from the authenticated caller
  std::vector<int32_t> token_ids;
  std::chrono::milliseconds ttl{0};
  int32_t retention_priority = -1;  // the blocks' priority when the pin ends; -1: as is
};

struct PinInfo {
  PinId pin_id = 0;
  std::string tenant;
  int64_t pinned_blocks = 0, pinned_tokens = 0;
  std::chrono::milliseconds expires_in{0};
  int32_t retention_priority = -1;
};

struct ResetResult {
  int64_t evicted_blocks = 0;  // cached blocks whose hashes left the index
  int64_t dropped_pins = 0;
};

struct OpenResult {
  SequenceId sequence_id = 0;
  std::vector<int32_t> block_table;  // covers the prompt (contiguous: prompt + max_tokens)
  int64_t cached_tokens = 0;         // prompt tokens whose K/V are already in the pool
  int64_t allocatable_blocks = 0;    // free or evictable blocks left after this call
};

// One sequence's part of a batched step.
struct StepItem {
  SequenceId sequence_id = 0;
  // Slots the sequence needs after this step (tokens it will hold); the manager
  // appends blocks until the table covers them (paged), or checks the reservation.
  int64_t num_tokens = 0;
  // Token ids whose K/V the worker has now written, in order, following those already
  // committed. Blocks they fill become cached (hashed, shareable).
  std::vector<int32_t> commit_token_ids;
};

struct StepItemResult {
  SequenceId sequence_id = 0;
  Status status;                    // per sequence: RESOURCE_EXHAUSTED means preempt it
  std::vector<int32_t> new_blocks;  // appended to the sequence's table by this step
};

struct ForkResult {
  SequenceId sequence_id = 0;        // the child
  std::vector<int32_t> block_table;  // shared full blocks + a fresh last block
  // Copy on write: the worker copies K/V of src_block into dst_block (both in every
  // layer) before the child writes; -1 when the parent's last block was full.
  int32_t copy_src_block = -1, copy_dst_block = -1;
};

struct TenantStats {
  std::string tenant;
  int64_t blocks_in_use = 0;  // referenced by the tenant's sequences
  int64_t max_blocks = 0;     // its quota (blocks)
  int64_t prefix_queries_tokens = 0, prefix_hits_tokens = 0;
  int64_t quota_rejections = 0;  // calls refused at the quota
  int64_t pins = 0, pinned_blocks = 0, max_pinned_blocks = 0;
};

// One block of the prefix index: whose it is, its hash as the KV events carry it
// (BlockHash::lo), and whether a sequence holds it (else it is cached, evictable).
struct IndexedBlock {
  std::string tenant;
  uint64_t hash = 0;
  bool in_use = false;
};

struct ManagerStats {
  int64_t num_blocks = 0, free_blocks = 0, cached_blocks = 0, in_use_blocks = 0;
  int64_t num_sequences = 0, num_workers = 0;
  int64_t prefix_queries_tokens = 0, prefix_hits_tokens = 0;
  int64_t evictions = 0, expired_leases = 0;
  int64_t pins = 0, pinned_blocks = 0;             // pinned_blocks: summed over pins
  std::vector<int64_t> cached_blocks_by_priority;  // [0..100]
  int64_t bytes_reserved = 0;                      // blocks held by sequences
  int64_t bytes_used = 0;                          // of those, bytes holding committed tokens' K/V
  std::vector<TenantStats> tenants;                // every tenant seen, by name
};

class CacheManager {
 public:
  // Throws std::invalid_argument unless geometry.block_size > 0 and num_blocks fits
  // in [0, 2^31).
  explicit CacheManager(CacheManagerOptions options);
  ~CacheManager();
  CacheManager(const CacheManager&) = delete;
  CacheManager& operator=(const CacheManager&) = delete;

  const CacheManagerOptions& options() const;
  // 32 hex digits, never repeated across instances.
  const std::string& instance_id() const;
  // OK when `instance` names this instance; FAILED_PRECONDITION (reason
  // MANAGER_RESTARTED) for another one, INVALID_ARGUMENT when empty.
  Status CheckInstance(const std::string& instance) const;

  WorkerLease RegisterWorker(Clock::time_point now);
  // NOT_FOUND for an unknown or expired worker (it must register anew).
  Status Heartbeat(WorkerId worker, Clock::time_point now);

  StatusOr<OpenResult> OpenSequence(const OpenRequest& request, Clock::time_point now);
  // One call per scheduler step for many sequences. The call fails as a whole only
  // for a bad worker or an oversized request; per-sequence problems are in the results.
  StatusOr<std::vector<StepItemResult>> Step(WorkerId worker, const std::vector<StepItem>& items,
                                             Clock::time_point now);
  StatusOr<ForkResult> Fork(WorkerId worker, SequenceId parent, Clock::time_point now);
  // Committed full blocks stay cached; the rest return to the free queue.
  Status CloseSequence(WorkerId worker, SequenceId sequence, Clock::time_point now);

  // Frees every sequence of every worker silent for longer than the TTL; returns the
  // workers expired.
  std::vector<WorkerId> ExpireLeases(Clock::time_point now);

  // Pins the longest run of the prompt's leading full blocks that is cached or in use
  // (every full block, not capped like a lookup). The same tenant pinning the same
  // blocks again renews that pin (the later deadline, the new priority). Errors:
  // INVALID_ARGUMENT (bad ids, ttl outside (0, max_pin_ttl], priority outside 0..100),
  // FAILED_PRECONDITION when no leading block is cached (prefill the prompt first),
  // RESOURCE_EXHAUSTED naming the cap (reason PINNED_BLOCKS_EXCEEDED) or the quota.
  StatusOr<PinInfo> PinPrefix(const PinRequest& request, Clock::time_point now);
  // `tenant`'s pins (empty: every tenant's), by id; expired ones are gone first.
  std::vector<PinInfo> ListPins(const std::string& tenant, Clock::time_point now);
  // Ends a pin of `tenant`'s: its blocks drop to the cached queues (at the pin's
  // priority, if it set one). NOT_FOUND for an unknown pin or another tenant's.
  Status Unpin(const std::string& tenant, PinId pin, Clock::time_point now);
  // Ends every pin past its deadline; returns how many.
  int64_t ExpirePins(Clock::time_point now);
  // vLLM's reset_prefix_cache: ends every pin, then evicts every cached block nobody
  // holds (blocks of running sequences keep their hashes).
  ResetResult ResetPrefixCache(Clock::time_point now);

  ManagerStats Stats() const;
  // The prefix cache's predicted token hit rate at other pool sizes (LRU stack
  // distances of the live lookups; hit_rate_curve.h says what the model leaves out):
  // overall and per tenant, since start and over the sliding window ending at `now`.
  HitRateCurves PredictedHitRates(Clock::time_point now) const;
  // Every block the prefix index holds, by block id (what the KV events describe).
  std::vector<IndexedBlock> PrefixIndexBlocks() const;
  // The quota a tenant gets (the override, else the default), in blocks.
  int64_t TenantMaxBlocks(const std::string& tenant) const;
  // free + cached + in-use == total; every refcount equals the references held by
  // sequences; every hash in the index points at a cached or in-use block that holds
  // it; no block is in the free queue twice. INTERNAL naming the first violation.
  Status CheckInvariants() const;

 private:
  struct State;
  mutable std::mutex mu_;
  std::unique_ptr<State> state_;  // GUARDED_BY(mu_)
};

}  // namespace kvpool::manager
