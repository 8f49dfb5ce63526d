// CacheManager: the manager's RPCs as plain C++ calls over the block pool, the sequence
// table and the lease tracker, all behind mu_. See cache_manager.h for the semantics.
// Every public call either succeeds or leaves the state as it found it (per item for
// Step). It never touches KV bytes, never reads a clock (`now` comes in) and never
// includes gRPC.
#include "cache_service/cache_manager.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "cache_service/block_hash.h"
#include "cache_service/block_pool.h"
#include "cache_service/cache_manager_state.h"
#include "cache_service/lease_tracker.h"
#include "cache_service/sequence_table.h"

namespace kvpool::manager {
namespace {

Status WorkerNotFound(WorkerId worker) {
  return NotFound("worker " + Str(worker) +
                  " is not registered (or its lease expired): register again")
      .WithReason(reason::kWorkerNotRegistered);
}

// Fills the identity options left empty from std::random_device: 128 bits of instance
// id, and a first worker id in [1, 2^52) (exact in a JSON double, so the dashboard
// shows it right; 2^52 registrations from any base fit an int64).
CacheManagerOptions WithIdentity(CacheManagerOptions o) {
  std::random_device random;
  auto draw64 = [&] { return (static_cast<uint64_t>(random()) << 32) ^ random(); };
  if (o.instance_id.empty()) {
    char hex[33];
    std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(draw64()),
                  static_cast<unsigned long long>(draw64()));
    o.instance_id = hex;
  }
  if (o.first_worker_id <= 0) o.first_worker_id = static_cast<WorkerId>((draw64() >> 12) | 1);
  return o;
}

Status CheckTokenIds(const std::vector<int32_t>& ids, const char* field) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0) {
      return InvalidArgument(std::string(field) + "[" + Str(static_cast<int64_t>(i)) +
                             "] = " + Str(ids[i]) + " is negative: token ids are >= 0");
    }
  }
  return Status::Ok();
}

}  // namespace

CacheManager::CacheManager(CacheManagerOptions options) {
  const PoolGeometry& g = options.geometry;
  if (g.block_size <= 0 || g.num_blocks < 0 || g.num_blocks > INT32_MAX) {
    throw std::invalid_argument("CacheManager: block_size must be > 0 and num_blocks in [0, 2^31)");
  }
  state_ = std::make_unique<State>(WithIdentity(std::move(options)));
}

CacheManager::~CacheManager() = default;

const CacheManagerOptions& CacheManager::options() const { return state_->options; }

const std::string& CacheManager::instance_id() const { return state_->options.instance_id; }

Status CacheManager::CheckInstance(const std::string& instance) const {
  // options is const after construction: no lock needed.
  if (instance == state_->options.instance_id) return Status::Ok();
  if (instance.empty()) {
    return InvalidArgument(
        "manager_instance is empty: send the manager_instance RegisterWorker returned");
  }
  return FailedPrecondition("manager restarted: this call names manager instance " +
                            instance.substr(0, 64) + " but this is instance " +
                            state_->options.instance_id + "; register again and map the new pool")
      .WithReason(reason::kManagerRestarted);
}

WorkerLease CacheManager::RegisterWorker(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  return WorkerLease{state_->leases.Register(now), state_->options.lease_ttl};
}

Status CacheManager::Heartbeat(WorkerId worker, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!state_->leases.Renew(worker, now)) return WorkerNotFound(worker);
  return Status::Ok();
}

StatusOr<OpenResult> CacheManager::OpenSequence(const OpenRequest& request, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  const CacheManagerOptions& o = s.options;
  if (!s.leases.Renew(request.worker_id, now)) return WorkerNotFound(request.worker_id);
  if (request.mode == KvMode::kNone) {
    return InvalidArgument("mode none keeps no K/V in the pool: it never opens a sequence");
  }

  const auto prompt_tokens = static_cast<int64_t>(request.token_ids.size());
  if (prompt_tokens == 0) return InvalidArgument("token_ids is empty: the prompt needs a token");
  if (prompt_tokens > o.max_tokens_per_call) {
    return InvalidArgument("token_ids has " + Str(prompt_tokens) +
                           " tokens, over max_tokens_per_call " + Str(o.max_tokens_per_call));
  }
  KVPOOL_RETURN_IF_ERROR(CheckTokenIds(request.token_ids, "token_ids"));
  if (request.max_tokens <= 0) {
    return InvalidArgument("max_tokens must be > 0, got " + Str(request.max_tokens));
  }
  if (request.max_tokens > o.max_context_tokens - prompt_tokens) {
    return InvalidArgument("prompt (" + Str(prompt_tokens) + " tokens) + max_tokens (" +
                           Str(request.max_tokens) + ") exceeds max_context_tokens " +
                           Str(o.max_context_tokens));
  }
  // A sequence its tenant's quota could never hold fails for good, before any
  // transient limit (one larger than the pool itself is the pool's RESOURCE_EXHAUSTED).
  const int64_t cap = s.MaxBlocks(request.tenant);
  const int64_t most_blocks = CeilDiv(prompt_tokens + request.max_tokens, o.geometry.block_size);
  if (cap < s.pool.num_blocks() && most_blocks > cap) {
    return FailedPrecondition("the sequence may need " + Str(most_blocks) +
                              " blocks (prompt + max_tokens) but tenant " + request.tenant +
                              "'s quota is " + Str(cap) +
                              " blocks: lower max_tokens or raise the tenant's max_blocks");
  }
  KVPOOL_RETURN_IF_ERROR(s.CheckSequenceLimit(request.worker_id));
  if (request.retention_priority < -1 || request.retention_priority > kMaxRetentionPriority) {
    return InvalidArgument("retention_priority " + Str(request.retention_priority) +
                           " is outside 0..100 (-1: none)");
  }

  const int32_t block_size = o.geometry.block_size;
  const int32_t tenant = s.TenantOf(request.tenant);
  Sequence sequence;
  sequence.worker = request.worker_id;
  sequence.tenant = tenant;
  sequence.mode = request.mode;
  sequence.max_total_tokens = prompt_tokens + request.max_tokens;
  sequence.num_tokens = prompt_tokens;
  sequence.prompt_tokens = prompt_tokens;
  sequence.retention_priority = request.retention_priority;
  int64_t hit_blocks = 0;

  if (request.mode == KvMode::kContiguous) {
    const int64_t reserve = CeilDiv(sequence.max_total_tokens, block_size);
    KVPOOL_RETURN_IF_ERROR(s.CheckQuota(tenant, reserve));
    KVPOOL_RETURN_IF_ERROR(s.pool.AllocateContiguous(reserve, &sequence.block_table));
    s.tenants[static_cast<size_t>(tenant)].blocks_in_use += reserve;
  } else {
    sequence.salt = s.tenants[static_cast<size_t>(tenant)].salt;
    // Longest cached run of the prompt's full blocks, leaving at least one token to
    // compute (the last position's logits are needed).
    const int64_t max_hit = (prompt_tokens - 1) / block_size;
    std::vector<BlockHash> hashes;
    HashFullBlocks(sequence.salt, request.token_ids, block_size, 0, max_hit, &hashes);
    std::vector<int32_t> hits;
    int64_t hits_in_free_queue = 0;
    for (const BlockHash& hash : hashes) {
      auto block = s.pool.Lookup(hash);
      if (!block) break;
      hits.push_back(*block);
      if (s.pool.block(*block).ref_cnt == 0) ++hits_in_free_queue;
    }
    hit_blocks = static_cast<int64_t>(hits.size());
    const int64_t need = CeilDiv(prompt_tokens, block_size) - hit_blocks;
    const int64_t available = s.pool.num_allocatable() - hits_in_free_queue;
    KVPOOL_RETURN_IF_ERROR(s.CheckQuota(tenant, need + hits_in_free_queue));
    if (need > available) {
      return ResourceExhausted("out of KV blocks: the prompt needs " + Str(need) + " new blocks (" +
                               Str(hit_blocks) + " cached), " + Str(available) +
                               " free or evictable of " + Str(s.pool.num_blocks()));
    }
    // Take the hits first so the allocation cannot evict them.
    for (int32_t block : hits) s.Take(tenant, block);
    sequence.block_table = hits;
    const Status allocated = s.Allocate(tenant, need, &sequence.block_table);
    (void)allocated;  // cannot fail: checked above
    sequence.block_hashes.assign(hashes.begin(), hashes.begin() + hit_blocks);
    sequence.committed_token_ids.assign(request.token_ids.begin(),
                                        request.token_ids.begin() + hit_blocks * block_size);
    s.hit_rates.RecordLookup(tenant, hashes, prompt_tokens, now);
    s.prefix_queries_tokens += prompt_tokens;
    s.prefix_hits_tokens += hit_blocks * block_size;
    State::TenantState& t = s.tenants[static_cast<size_t>(tenant)];
    t.prefix_queries_tokens += prompt_tokens;
    t.prefix_hits_tokens += hit_blocks * block_size;
  }

  Sequence& stored = s.sequences.Add(std::move(sequence));
  OpenResult result;
  result.sequence_id = stored.id;
  result.block_table = stored.block_table;
  result.cached_tokens = hit_blocks * block_size;
  result.allocatable_blocks = s.pool.num_allocatable();
  return result;
}

StepItemResult CacheManager::State::StepOne(WorkerId worker, const StepItem& item) {
  StepItemResult result;
  result.sequence_id = item.sequence_id;
  auto found = OwnedSequence(worker, item.sequence_id);
  if (!found.ok()) {
    result.status = found.status();
    return result;
  }
  Sequence* sequence = *found;
  const std::string name = "sequence " + Str(sequence->id) + ": ";
  if (item.num_tokens < 0 || item.num_tokens > sequence->max_total_tokens) {
    result.status = InvalidArgument(
        name + "num_tokens " + Str(item.num_tokens) +
        " is outside [0, prompt + max_tokens = " + Str(sequence->max_total_tokens) + "]");
    return result;
  }
  result.status = CheckTokenIds(item.commit_token_ids, "commit_token_ids");
  if (!result.status.ok()) return result;
  const int64_t num_tokens = std::max(sequence->num_tokens, item.num_tokens);
  const auto committed = static_cast<int64_t>(sequence->committed_token_ids.size());
  const auto committing = static_cast<int64_t>(item.commit_token_ids.size());
  if (committed + committing > num_tokens) {
    result.status = InvalidArgument(name + "committing " + Str(committing) + " tokens after " +
                                    Str(committed) + " exceeds the " + Str(num_tokens) +
                                    " slots it holds: raise num_tokens first");
    return result;
  }
  if (sequence->mode == KvMode::kPaged) {
    const int64_t need = CeilDiv(num_tokens, options.geometry.block_size) -
                         static_cast<int64_t>(sequence->block_table.size());
    if (need > 0) {
      Status allocated = CheckQuota(sequence->tenant, need);
      if (allocated.ok()) allocated = Allocate(sequence->tenant, need, &result.new_blocks);
      if (!allocated.ok()) {
        result.status = Status(allocated.code(), name + allocated.message())
                            .WithReason(allocated.reason().data());
        return result;
      }
      sequence->block_table.insert(sequence->block_table.end(), result.new_blocks.begin(),
                                   result.new_blocks.end());
    }
  }
  sequence->num_tokens = num_tokens;
  sequence->committed_token_ids.insert(sequence->committed_token_ids.end(),
                                       item.commit_token_ids.begin(), item.commit_token_ids.end());
  if (sequence->mode == KvMode::kPaged) PublishFullBlocks(sequence);
  return result;
}

StatusOr<std::vector<StepItemResult>> CacheManager::Step(WorkerId worker,
                                                         const std::vector<StepItem>& items,
                                                         Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  if (!s.leases.Renew(worker, now)) return WorkerNotFound(worker);
  int64_t committing = 0;
  for (const StepItem& item : items)
    committing += static_cast<int64_t>(item.commit_token_ids.size());
  if (committing > s.options.max_tokens_per_call) {
    return InvalidArgument("the step commits " + Str(committing) +
                           " tokens, over max_tokens_per_call " +
                           Str(s.options.max_tokens_per_call) + ": split it");
  }
  std::vector<StepItemResult> results;
  results.reserve(items.size());
  for (const StepItem& item : items) results.push_back(s.StepOne(worker, item));
  return results;
}

StatusOr<ForkResult> CacheManager::Fork(WorkerId worker, SequenceId parent_id,
                                        Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  const State::EventFlush flush{s};
  if (!s.leases.Renew(worker, now)) return WorkerNotFound(worker);
  KVPOOL_ASSIGN_OR_RETURN(Sequence * parent, s.OwnedSequence(worker, parent_id));
  if (parent->mode != KvMode::kPaged) {
    return FailedPrecondition("sequence " + Str(parent_id) +
                              " is contiguous: only paged sequences can be forked");
  }
  KVPOOL_RETURN_IF_ERROR(s.CheckSequenceLimit(worker));
  const int32_t block_size = s.options.geometry.block_size;
  const auto committed = static_cast<int64_t>(parent->committed_token_ids.size());
  const int64_t full = committed / block_size;

  ForkResult result;
  Sequence child;
  if (committed % block_size != 0) {
    std::vector<int32_t> fresh;
    KVPOOL_RETURN_IF_ERROR(s.CheckQuota(parent->tenant, 1));
    KVPOOL_RETURN_IF_ERROR(s.Allocate(parent->tenant, 1, &fresh));
    result.copy_src_block = parent->block_table[full];
    result.copy_dst_block = fresh[0];
  }
  child.worker = worker;
  child.tenant = parent->tenant;
  child.mode = KvMode::kPaged;
  child.salt = parent->salt;
  child.max_total_tokens = parent->max_total_tokens;
  child.num_tokens = committed;
  child.committed_token_ids = parent->committed_token_ids;
  child.block_hashes = parent->block_hashes;
  child.block_table.assign(parent->block_table.begin(), parent->block_table.begin() + full);
  for (int32_t block : child.block_table) s.Take(child.tenant, block);
  if (result.copy_dst_block >= 0) child.block_table.push_back(result.copy_dst_block);

  Sequence& stored = s.sequences.Add(std::move(child));
  result.sequence_id = stored.id;
  result.block_table = stored.block_table;
  return result;
}

Status CacheManager::CloseSequence(WorkerId worker, SequenceId sequence, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  if (!s.leases.Renew(worker, now)) return WorkerNotFound(worker);
  KVPOOL_ASSIGN_OR_RETURN(Sequence * found, s.OwnedSequence(worker, sequence));
  s.Release(found->id);
  return Status::Ok();
}

std::vector<WorkerId> CacheManager::ExpireLeases(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = *state_;
  std::vector<WorkerId> expired = s.leases.TakeExpired(now);
  for (WorkerId worker : expired) {
    std::vector<SequenceId> ids = s.sequences.SequencesOf(worker);
    std::sort(ids.begin(), ids.end());
    for (SequenceId id : ids) s.Release(id);
  }
  s.expired_leases += static_cast<int64_t>(expired.size());
  return expired;
}

}  // namespace kvpool::manager
