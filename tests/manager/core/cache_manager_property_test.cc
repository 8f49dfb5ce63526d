// Randomized property test of CacheManager: fixed seeds, several workers and tenants
// (one with a small block quota), both modes, a mix of open / step (allocate + commit)
// / fork / close / heartbeat / clock advance + lease expiry / manager restart (a new
// instance: the old instance id is refused as MANAGER_RESTARTED, its worker ids are
// unknown and never handed out again). After every operation it runs CheckInvariants
// and compares the manager with a shadow model of the block tables, sequences, leases
// and per-tenant usage this test holds (in-use blocks == the union of the shadow
// tables; no tenant above its quota).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cache_service/cache_manager.h"

namespace kvpool::manager {
namespace {

using std::chrono::milliseconds;

constexpr int32_t kBlockSize = 4;
constexpr int64_t kNumBlocks = 48;
constexpr int64_t kMaxContext = 64;
constexpr int kOpsPerSeed = 25000;
constexpr int64_t kTenantMaxBlocks = 30;  // every tenant's quota but "a"'s
constexpr int64_t kTenantAMaxBlocks = 8;

struct ShadowSequence {
  WorkerId worker = 0;
  std::string tenant;
  KvMode mode = KvMode::kPaged;
  int64_t max_total = 0, num_tokens = 0, committed = 0;
  std::vector<int32_t> tokens;  // prompt, then generated tokens as they are committed
  std::vector<int32_t> table;
};


class PropertyRun {
 public:
  explicit PropertyRun(uint32_t seed)
      : rng_(seed), manager_(std::make_unique<CacheManager>(Options())) {
    // Shared prompt stems, so prompts hit each other's prefixes.
    for (int i = 0; i < 4; ++i) {
      std::vector<int32_t> stem(24);
      for (auto& t : stem) t = Rand(0, 15);
      stems_.push_back(stem);
    }
  }

  void Run(int ops) {
    for (int i = 0; i < ops && !::testing::Test::HasFatalFailure(); ++i) {
      const int op = Rand(0, 99);
      if (op < 3 || workers_.empty()) {
        if (Rand(0, 9) == 0) Restart();
        Register();
      } else if (op < 25) {
        Open();
      } else if (op < 60) {
        StepSome();
      } else if (op < 68) {
        Fork();
      } else if (op < 85) {
        Close();
      } else if (op < 92) {
        Heartbeat();
      } else {
        AdvanceAndExpire();
      }
      Check(op);
    }
    // The run must have exercised the interesting paths.
    const ManagerStats stats = manager_->Stats();
    EXPECT_GT(restarts_, 0);
    EXPECT_GT(quota_refusals_, 0);
    EXPECT_GT(earlier_hits_ + stats.prefix_hits_tokens, 0);
    EXPECT_GT(earlier_evictions_ + stats.evictions, 0);
    EXPECT_GT(earlier_expired_ + stats.expired_leases, 0);
    EXPECT_GT(forks_, 0);
    EXPECT_GT(exhausted_, 0);
    EXPECT_GT(contiguous_, 0);
    ::testing::Test::RecordProperty("ops", ops);
    printf(
        "seed run: hits %lld/%lld tokens, evictions %lld, expired %lld, forks %d, exhausted %d\n",
        static_cast<long long>(stats.prefix_hits_tokens),
        static_cast<long long>(stats.prefix_queries_tokens),
        static_cast<long long>(stats.evictions), static_cast<long long>(stats.expired_leases),
        forks_, exhausted_);
  }

 private:
  static CacheManagerOptions Options() {
    CacheManagerOptions o;
    o.geometry.num_layers = 1;
    o.geometry.num_kv_heads = 1;
    o.geometry.head_dim = 1;
    o.geometry.block_size = kBlockSize;
    o.geometry.num_blocks = kNumBlocks;
    o.lease_ttl = milliseconds(1000);
    o.max_context_tokens = kMaxContext;
    o.max_sequences_per_worker = 12;
    o.tenant_max_blocks = kTenantMaxBlocks;
    o.tenant_max_blocks_override["a"] = kTenantAMaxBlocks;
    return o;
  }

  int Rand(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  template <typename C>
  auto Pick(const C& c) {
    auto it = c.begin();
    std::advance(it, Rand(0, static_cast<int>(c.size()) - 1));
    return *it;
  }

  // A worker id: usually live, sometimes one that expired (its calls must be NOT_FOUND).
  WorkerId AnyWorker() {
    if (!dead_workers_.empty() && Rand(0, 9) == 0) return Pick(dead_workers_);
    return Pick(workers_).first;
  }
  bool Live(WorkerId w) const { return workers_.count(w) > 0; }
  void Heard(WorkerId w) { workers_[w] = now_; }

  void Register() {
    WorkerLease lease = manager_->RegisterWorker(now_);
    ASSERT_EQ(lease.ttl, milliseconds(1000));
    ASSERT_FALSE(Live(lease.worker_id));
    // Never an id of this or an earlier instance.
    ASSERT_TRUE(ever_registered_.insert(lease.worker_id).second) << lease.worker_id;
    Heard(lease.worker_id);
  }

  // The manager process restarts: a new instance with nothing in it. The workers of
  // the old one are strangers to it; its instance id is refused by reason.
  void Restart() {
    const std::string old_instance = manager_->instance_id();
    const ManagerStats before = manager_->Stats();
    earlier_hits_ += before.prefix_hits_tokens;
    earlier_evictions_ += before.evictions;
    earlier_expired_ += before.expired_leases;
    manager_ = std::make_unique<CacheManager>(Options());
    ++restarts_;
    ASSERT_NE(manager_->instance_id(), old_instance);
    ASSERT_TRUE(manager_->CheckInstance(manager_->instance_id()).ok());
    const Status stale = manager_->CheckInstance(old_instance);
    ASSERT_EQ(stale.code(), StatusCode::kFailedPrecondition);
    ASSERT_EQ(stale.reason(), reason::kManagerRestarted);
    ASSERT_EQ(manager_->CheckInstance("").code(), StatusCode::kInvalidArgument);
    for (const auto& [w, seen] : workers_) dead_workers_.push_back(w);
    workers_.clear();
    sequences_.clear();
    closed_.clear();  // sequence ids mean nothing across instances
    expired_total_ = 0;
  }

  void Heartbeat() {
    WorkerId w = AnyWorker();
    Status s = manager_->Heartbeat(w, now_);
    ASSERT_EQ(s.ok(), Live(w)) << s.ToString();
    if (!s.ok()) {
      ASSERT_EQ(s.code(), StatusCode::kNotFound);
      ASSERT_EQ(s.reason(), reason::kWorkerNotRegistered);
    }
    if (Live(w)) Heard(w);
  }

  void Open() {
    WorkerId w = AnyWorker();
    OpenRequest req;
    req.worker_id = w;
    req.tenant = std::string(1, static_cast<char>('a' + Rand(0, 2)));
    req.mode = Rand(0, 4) == 0 ? KvMode::kContiguous : KvMode::kPaged;
    const std::vector<int32_t>& stem = stems_[Rand(0, 3)];
    req.token_ids.assign(stem.begin(), stem.begin() + Rand(0, 24));
    for (int n = Rand(req.token_ids.empty() ? 1 : 0, 6); n > 0; --n)
      req.token_ids.push_back(Rand(0, 15));
    req.max_tokens = Rand(1, 16);
    auto r = manager_->OpenSequence(req, now_);
    if (!Live(w)) {
      ASSERT_EQ(r.status().code(), StatusCode::kNotFound);
      return;
    }
    Heard(w);
    const int64_t prompt = static_cast<int64_t>(req.token_ids.size());
    const int64_t cap = req.tenant == "a" ? kTenantAMaxBlocks : kTenantMaxBlocks;
    if (cap < kNumBlocks && CeilDiv(prompt + req.max_tokens, kBlockSize) > cap) {
      ASSERT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().ToString();
      return;
    }
    if (!r.ok()) {
      ASSERT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
      if (r.status().reason() == reason::kTenantQuotaExceeded) ++quota_refusals_;
      ++exhausted_;
      return;
    }
    ASSERT_FALSE(sequences_.count(r->sequence_id));
    if (req.mode == KvMode::kContiguous) ++contiguous_;
    ShadowSequence q;
    q.worker = w;
    q.tenant = req.tenant;
    q.mode = req.mode;
    q.max_total = prompt + req.max_tokens;
    q.num_tokens = prompt;
    q.committed = r->cached_tokens;
    q.tokens = req.token_ids;
    q.table = r->block_table;
    ASSERT_EQ(r->cached_tokens % kBlockSize, 0);
    ASSERT_LT(r->cached_tokens, prompt);  // at least one token is computed
    if (req.mode == KvMode::kContiguous) {
      ASSERT_EQ(r->cached_tokens, 0);
      ASSERT_EQ(static_cast<int64_t>(q.table.size()), CeilDiv(q.max_total, kBlockSize));
      for (size_t i = 1; i < q.table.size(); ++i) ASSERT_EQ(q.table[i], q.table[i - 1] + 1);
    } else {
      ASSERT_EQ(static_cast<int64_t>(q.table.size()), CeilDiv(prompt, kBlockSize));
    }
    sequences_[r->sequence_id] = q;
  }

  void StepSome() {
    WorkerId w = AnyWorker();
    std::vector<StepItem> items;
    std::vector<SequenceId> mine;
    for (const auto& [id, q] : sequences_) {
      if (q.worker == w) mine.push_back(id);
    }
    for (int n = Rand(1, 3); n > 0; --n) {
      StepItem item;
      if (mine.empty() || Rand(0, 19) == 0) {
        item.sequence_id = closed_.empty() ? 999999 : Pick(closed_);
        item.num_tokens = 1;
      } else {
        const size_t at = Rand(0, static_cast<int>(mine.size()) - 1);
        item.sequence_id = mine[at];  // each sequence at most once per step
        mine.erase(mine.begin() + at);
        ShadowSequence& q = sequences_[item.sequence_id];
        item.num_tokens = std::min<int64_t>(q.max_total, q.num_tokens + Rand(0, 5));
        if (Rand(0, 29) == 0) item.num_tokens = q.max_total + 1;  // invalid
        const int64_t room = std::max<int64_t>(q.num_tokens, item.num_tokens) - q.committed;
        const int64_t k = room > 0 ? Rand(0, static_cast<int>(room)) : 0;
        for (int64_t i = q.committed; i < q.committed + k; ++i) {
          if (i == static_cast<int64_t>(q.tokens.size())) q.tokens.push_back(Rand(0, 15));
          item.commit_token_ids.push_back(q.tokens[i]);
        }
      }
      items.push_back(item);
    }
    auto r = manager_->Step(w, items, now_);
    if (!Live(w)) {
      ASSERT_EQ(r.status().code(), StatusCode::kNotFound);
      return;
    }
    Heard(w);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->size(), items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      const StepItemResult& res = (*r)[i];
      ASSERT_EQ(res.sequence_id, items[i].sequence_id);
      auto it = sequences_.find(items[i].sequence_id);
      if (it == sequences_.end()) {
        ASSERT_EQ(res.status.code(), StatusCode::kNotFound);
        continue;
      }
      ShadowSequence& q = it->second;
      if (items[i].num_tokens > q.max_total) {
        ASSERT_EQ(res.status.code(), StatusCode::kInvalidArgument);
        continue;
      }
      const int64_t num_tokens = std::max(q.num_tokens, items[i].num_tokens);
      const int64_t want = q.mode == KvMode::kPaged ? CeilDiv(num_tokens, kBlockSize) -
                                                                static_cast<int64_t>(q.table.size())
                                                          : 0;
      if (!res.status.ok()) {
        ASSERT_EQ(res.status.code(), StatusCode::kResourceExhausted) << res.status.ToString();
        if (res.status.reason() == reason::kTenantQuotaExceeded) ++quota_refusals_;
        ASSERT_TRUE(res.new_blocks.empty());
        ASSERT_GT(want, 0);
        continue;
      }
      ASSERT_EQ(static_cast<int64_t>(res.new_blocks.size()), std::max<int64_t>(want, 0));
      q.table.insert(q.table.end(), res.new_blocks.begin(), res.new_blocks.end());
      q.num_tokens = num_tokens;
      q.committed += static_cast<int64_t>(items[i].commit_token_ids.size());
    }
  }

  void Fork() {
    std::vector<SequenceId> paged;
    for (const auto& [id, q] : sequences_) {
      if (q.mode == KvMode::kPaged) paged.push_back(id);
    }
    if (paged.empty()) return;
    const SequenceId parent_id = Pick(paged);
    const ShadowSequence parent = sequences_[parent_id];
    auto r = manager_->Fork(parent.worker, parent_id, now_);
    Heard(parent.worker);
    if (!r.ok()) {
      ASSERT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
      return;
    }
    const int64_t full = parent.committed / kBlockSize;
    std::vector<int32_t> expected(parent.table.begin(), parent.table.begin() + full);
    if (parent.committed % kBlockSize != 0) {
      ASSERT_EQ(r->copy_src_block, parent.table[full]);
      ASSERT_GE(r->copy_dst_block, 0);
      expected.push_back(r->copy_dst_block);
    } else {
      ASSERT_EQ(r->copy_src_block, -1);
      ASSERT_EQ(r->copy_dst_block, -1);
    }
    ASSERT_EQ(r->block_table, expected);
    ++forks_;
    ShadowSequence child = parent;
    child.num_tokens = parent.committed;
    child.tokens.resize(std::max<size_t>(parent.committed, 0));
    child.table = expected;
    sequences_[r->sequence_id] = child;
  }

  void Close() {
    if (!closed_.empty() && Rand(0, 9) == 0) {  // double close
      const WorkerId w = AnyWorker();
      Status s = manager_->CloseSequence(w, Pick(closed_), now_);
      ASSERT_EQ(s.code(), StatusCode::kNotFound);
      if (Live(w)) Heard(w);
      return;
    }
    if (sequences_.empty()) return;
    const SequenceId id = Pick(sequences_).first;
    const WorkerId owner = sequences_[id].worker;
    ASSERT_TRUE(manager_->CloseSequence(owner, id, now_).ok());
    Heard(owner);
    sequences_.erase(id);
    closed_.push_back(id);
  }

  void AdvanceAndExpire() {
    now_ += milliseconds(Rand(0, 300));
    std::vector<WorkerId> expected;
    for (const auto& [w, seen] : workers_) {
      if (now_ - seen > milliseconds(1000)) expected.push_back(w);
    }
    std::vector<WorkerId> expired = manager_->ExpireLeases(now_);
    ASSERT_EQ(expired, expected);
    for (WorkerId w : expired) {
      workers_.erase(w);
      dead_workers_.push_back(w);
      for (auto it = sequences_.begin(); it != sequences_.end();) {
        if (it->second.worker == w) {
          closed_.push_back(it->first);
          it = sequences_.erase(it);
        } else {
          ++it;
        }
      }
    }
    expired_total_ += static_cast<int64_t>(expired.size());
  }

  void Check(int op) {
    Status s = manager_->CheckInvariants();
    ASSERT_TRUE(s.ok()) << "after op " << op << ": " << s.ToString();
    std::set<int32_t> in_use;
    std::map<std::string, std::set<int32_t>> by_tenant;
    for (const auto& [id, q] : sequences_) {
      in_use.insert(q.table.begin(), q.table.end());
      by_tenant[q.tenant].insert(q.table.begin(), q.table.end());
    }
    ManagerStats stats = manager_->Stats();
    for (const TenantStats& t : stats.tenants) {
      const int64_t held = static_cast<int64_t>(by_tenant[t.tenant].size());
      ASSERT_EQ(t.blocks_in_use, held) << t.tenant;
      ASSERT_LE(held, t.tenant == "a" ? kTenantAMaxBlocks : kTenantMaxBlocks) << t.tenant;
    }
    ASSERT_EQ(stats.in_use_blocks, static_cast<int64_t>(in_use.size()));
    ASSERT_EQ(stats.free_blocks + stats.cached_blocks + stats.in_use_blocks, kNumBlocks);
    ASSERT_EQ(stats.num_sequences, static_cast<int64_t>(sequences_.size()));
    ASSERT_EQ(stats.num_workers, static_cast<int64_t>(workers_.size()));
    ASSERT_EQ(stats.expired_leases, expired_total_);
    ASSERT_LE(stats.prefix_hits_tokens, stats.prefix_queries_tokens);
  }

  std::mt19937 rng_;
  std::unique_ptr<CacheManager> manager_;
  std::set<WorkerId> ever_registered_;                                      // across every instance
  int64_t earlier_hits_ = 0, earlier_evictions_ = 0, earlier_expired_ = 0;  // of old instances
  Clock::time_point now_{};
  std::vector<std::vector<int32_t>> stems_;
  std::map<WorkerId, Clock::time_point> workers_;  // live, last heard
  std::vector<WorkerId> dead_workers_;
  std::map<SequenceId, ShadowSequence> sequences_;
  std::vector<SequenceId> closed_;
  int64_t expired_total_ = 0;
  int forks_ = 0, exhausted_ = 0, contiguous_ = 0, restarts_ = 0, quota_refusals_ = 0;
};

class CacheManagerPropertyTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(CacheManagerPropertyTest, InvariantsHoldAfterEveryOperation) {
  PropertyRun run(GetParam());
  run.Run(kOpsPerSeed);
}

INSTANTIATE_TEST_SUITE_P(Seeds, CacheManagerPropertyTest,
                         ::testing::Values(1u, 2u, 3u, 42u, 2024u));

}  // namespace
}  // namespace kvpool::manager
