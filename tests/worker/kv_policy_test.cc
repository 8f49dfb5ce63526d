// KvPolicy against an in-memory manager (no processes, no model): which sample is
// admitted, when admission pauses, which blocks one Step commits at the per-call
// budget's edge, which sample is preempted; then against the manager's real core
// linked in process (InProcessManager): real blocks, prefix hits, quotas.
#include "service/kv_policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <deque>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cache_service/cache_manager.h"
#include "service/in_process_manager.h"

namespace kvpool::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Records every call; answers Open from `open_answers` by tenant (the client
// credential is the tenant's name here) and Step from `step_answer`.
class FakeManager final : public ManagerApi {
 public:
  int64_t budget = 1 << 16;
  int64_t allocatable = 1000;                   // Open's allocatable_blocks
  std::map<std::string, Status> open_refusals;  // by credential
  Status step_call_status = Status::Ok();
  std::map<int64_t, Status> step_refusals;  // by sequence id
  std::vector<std::vector<int32_t>> opened_prompts;
  std::vector<std::vector<StepItemRequest>> steps;
  int64_t next_id = 100;

  int64_t CommitBudget() const override { return budget; }
  StatusOr<std::string> AuthenticateClient(const std::string& credential) override {
    return credential;
  }
  StatusOr<OpenedSequence> Open(const std::vector<int32_t>& prompt, KvMode, int64_t, int32_t,
                                const std::string& credential) override {
    opened_prompts.push_back(prompt);
    if (auto it = open_refusals.find(credential); it != open_refusals.end()) return it->second;
    OpenedSequence opened;
    opened.sequence_id = next_id++;
    opened.block_table = {1, 2};
    opened.allocatable_blocks = allocatable;
    return opened;
  }
  StatusOr<std::vector<StepItemOutcome>> Step(const std::vector<StepItemRequest>& items) override {
    steps.push_back(items);
    if (!step_call_status.ok()) return step_call_status;
    std::vector<StepItemOutcome> outcomes(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      if (auto it = step_refusals.find(items[i].sequence_id); it != step_refusals.end()) {
        outcomes[i].status = it->second;
      } else {
        outcomes[i].new_blocks = {7};
      }
    }
    return outcomes;
  }
  StatusOr<ForkedSequence> Fork(int64_t) override {
    return Status(StatusCode::kUnimplemented, "not used");
  }
  Status Close(int64_t) override { return Status::Ok(); }
};

// Samples and the waiting queue, for a policy against any manager.
class PolicyFixture : public ::testing::Test {
 protected:
  static KvPolicyOptions Options() {
    KvPolicyOptions options;
    options.max_running = 8;
    options.max_prefill_tokens = 4096;
    options.headroom_blocks = 4;
    return options;
  }

  // A waiting sample of a new job for `tenant` with a `prompt_len`-token prompt.
  Sample* Waiting(const std::string& tenant, int prompt_len, int max_tokens = 4,
                  KvMode mode = KvMode::kPaged) {
    auto job = std::make_shared<Job>();
    job->tenant = tenant;
    job->client_authorization = tenant;
    job->request.mode = mode;
    job->request.max_tokens = max_tokens;
    for (int i = 0; i < prompt_len; ++i) job->request.prompt.push_back(1000 + i);
    samples_.emplace_back();
    Sample& s = samples_.back();
    s.job = job;
    waiting_.push_back(&s);
    return &s;
  }

  // A running sample that holds manager sequence `id`.
  Sample* Running(const std::string& tenant, int64_t id, int64_t order) {
    Sample* s = Waiting(tenant, 4);
    waiting_.pop_back();
    s->manager_id = id;
    s->order = order;
    return s;
  }

  static std::vector<std::string> Tenants(const AdmissionResult& r) {
    std::vector<std::string> out;
    for (const AdmittedSample& a : r.admitted) out.push_back(a.sample->job->tenant);
    return out;
  }

  std::list<Sample> samples_;
  std::deque<Sample*> waiting_;
};

class KvPolicyTest : public PolicyFixture {
 protected:
  KvPolicyTest() : policy_(Options(), &manager_) {
    policy_.Reset(/*block_size=*/4, /*num_blocks=*/64);
  }

  FakeManager manager_;
  KvPolicy policy_;
};

TEST_F(KvPolicyTest, TenantsTakeTurnsAndEachAdmissionOpensItsSequence) {
  Waiting("a", 4);
  Waiting("a", 4);
  Waiting("b", 4);
  const AdmissionResult r = policy_.Admit(waiting_, /*num_running=*/0);
  EXPECT_THAT(Tenants(r), ElementsAre("a", "b", "a"));
  EXPECT_EQ(r.admitted[0].opened.sequence_id, 100);
  EXPECT_EQ(r.admitted[1].opened.sequence_id, 101);
  EXPECT_LT(r.admitted[0].sample->order, r.admitted[1].sample->order);
  EXPECT_THAT(waiting_, IsEmpty());
  EXPECT_FALSE(policy_.paused());
}

TEST_F(KvPolicyTest, AResumedSampleOpensWithWhatItGenerated) {
  Sample* s = Waiting("a", 3, /*max_tokens=*/10);
  s->generated = {7, 8};
  const AdmissionResult r = policy_.Admit(waiting_, 0);
  ASSERT_EQ(r.admitted.size(), 1u);
  EXPECT_THAT(r.admitted[0].prompt, ElementsAre(1000, 1001, 1002, 7, 8));
  EXPECT_THAT(manager_.opened_prompts[0], ElementsAre(1000, 1001, 1002, 7, 8));
}

TEST_F(KvPolicyTest, BelowTheHeadroomAdmissionStopsAfterThisOneAndWaitsForALeaver) {
  manager_.allocatable = 4 * 2 - 1;  // less than headroom 4 x (1 running + this one)
  Waiting("a", 4);
  Waiting("a", 4);
  AdmissionResult r = policy_.Admit(waiting_, /*num_running=*/1);
  EXPECT_EQ(r.admitted.size(), 1u);
  EXPECT_TRUE(policy_.paused());
  r = policy_.Admit(waiting_, /*num_running=*/2);  // paused while others run
  EXPECT_THAT(r.admitted, IsEmpty());
  policy_.Resume();  // a sample left
  manager_.allocatable = 1000;
  r = policy_.Admit(waiting_, 1);
  EXPECT_EQ(r.admitted.size(), 1u);
}

TEST_F(KvPolicyTest, AFullPoolPausesAdmissionAndPollsWhenNothingRunsHere) {
  manager_.open_refusals["a"] = ResourceExhausted("pool full");
  Waiting("a", 4);
  AdmissionResult r = policy_.Admit(waiting_, /*num_running=*/0);
  EXPECT_THAT(r.admitted, IsEmpty());
  EXPECT_TRUE(r.failed.empty());
  EXPECT_EQ(waiting_.size(), 1u);  // it waits, it does not fail
  EXPECT_TRUE(policy_.paused());
  EXPECT_TRUE(policy_.retry_soon());
  r = policy_.Admit(waiting_, /*num_running=*/3);
  EXPECT_FALSE(policy_.retry_soon());  // (paused: someone here will leave)
}

TEST_F(KvPolicyTest, ATenantAtItsQuotaWaitsWhileOthersAreAdmitted) {
  manager_.open_refusals["a"] = ResourceExhausted("quota").WithReason(reason::kTenantQuotaExceeded);
  Sample* a = Waiting("a", 4);
  Waiting("b", 4);
  Waiting("b", 4);
  const AdmissionResult r = policy_.Admit(waiting_, 0);
  EXPECT_THAT(Tenants(r), ElementsAre("b", "b"));
  EXPECT_THAT(waiting_, ElementsAre(a));
  EXPECT_FALSE(policy_.paused());
  EXPECT_EQ(manager_.opened_prompts.size(), 3u);  // a asked once, not again in this pass
}

TEST_F(KvPolicyTest, ARequestLargerThanThePoolFailsWithItsOtherSamplesAndNeverOpens) {
  Sample* big = Waiting("a", 250, /*max_tokens=*/10);  // 65 blocks of 4 > 64
  samples_.emplace_back();
  Sample& sibling = samples_.back();
  sibling.job = big->job;
  sibling.index = 1;
  waiting_.push_back(&sibling);
  Waiting("b", 4);
  const AdmissionResult r = policy_.Admit(waiting_, 0);
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_EQ(r.failed[0].first, big->job);
  EXPECT_EQ(r.failed[0].second.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(r.failed[0].second.message(), HasSubstr("needs 65 KV blocks"));
  EXPECT_THAT(Tenants(r), ElementsAre("b"));
  EXPECT_THAT(waiting_, IsEmpty());
  EXPECT_EQ(manager_.opened_prompts.size(), 1u);  // only b's
}

TEST_F(KvPolicyTest, ARefusalFailsTheJobAndALostLinkStopsAdmission) {
  manager_.open_refusals["bad"] = InvalidArgument("no");
  manager_.open_refusals["gone"] = Unavailable("manager down");
  Waiting("bad", 4);
  AdmissionResult r = policy_.Admit(waiting_, 0);
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_EQ(r.failed[0].second.code(), StatusCode::kInvalidArgument);
  Waiting("gone", 4);
  r = policy_.Admit(waiting_, 0);
  EXPECT_EQ(r.link_lost.code(), StatusCode::kUnavailable);
}

TEST_F(KvPolicyTest, ThePrefillBudgetCountsWhatIsNotCached) {
  KvPolicyOptions options = Options();
  options.max_prefill_tokens = 10;
  KvPolicy policy(options, &manager_);
  policy.Reset(4, 64);
  Waiting("a", 8);
  Waiting("a", 8);
  AdmissionResult r = policy.Admit(waiting_, 0);
  EXPECT_EQ(r.admitted.size(), 1u);  // 8 + 8 > 10: the second waits for the next pass
  EXPECT_EQ(waiting_.size(), 1u);
  // A lone prompt over the budget still goes (the budget is at least one prompt).
  Waiting("b", 20);
  r = policy.Admit(waiting_, 1);
  EXPECT_EQ(r.admitted.size(), 1u);
}

TEST_F(KvPolicyTest, NoneModeOpensNothing) {
  Waiting("a", 4, 4, KvMode::kNone);
  const AdmissionResult r = policy_.Admit(waiting_, 0);
  ASSERT_EQ(r.admitted.size(), 1u);
  EXPECT_EQ(r.admitted[0].opened.sequence_id, 0);
  EXPECT_THAT(manager_.opened_prompts, IsEmpty());
}

// Block size 4, budget 8 tokens: the first sample commits two of its three full
// blocks; the second only gets its slot, its commits wait for the next call.
TEST_F(KvPolicyTest, AStepCommitsWholeBlocksUpToTheBudgetAndGrantsEverySlot) {
  manager_.budget = 8;
  Sample* a = Running("a", 1, 0);
  Sample* b = Running("b", 2, 1);
  std::vector<int32_t> tokens(13);
  for (int i = 0; i < 13; ++i) tokens[i] = i;
  const CommitProgress p{/*slots=*/13, /*held_slots=*/12, /*written=*/12, /*committed=*/0, true};
  StepRound round = policy_.Step({a, b}, {p, p}, {&tokens, &tokens}, /*grant=*/true);
  ASSERT_TRUE(round.called);
  EXPECT_TRUE(round.more);
  ASSERT_EQ(manager_.steps.size(), 1u);
  const std::vector<StepItemRequest>& items = manager_.steps[0];
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].sequence_id, 1);
  EXPECT_EQ(items[0].num_tokens, 13);
  EXPECT_THAT(items[0].commit_token_ids, ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
  EXPECT_EQ(items[1].sequence_id, 2);
  EXPECT_EQ(items[1].num_tokens, 13);
  EXPECT_THAT(items[1].commit_token_ids, IsEmpty());
  EXPECT_EQ(a->committed, 8);
  EXPECT_EQ(b->committed, 0);
  ASSERT_EQ(round.outcomes.size(), 2u);
  EXPECT_THAT(round.outcomes[0].new_blocks, ElementsAre(7));

  // Publishing after they end: the rest, within the budget again.
  CommitProgress pa = p, pb = p;
  pa.committed = 8;
  round = policy_.Step({a, b}, {pa, pb}, {&tokens, &tokens}, /*grant=*/false);
  ASSERT_EQ(manager_.steps.size(), 2u);
  EXPECT_THAT(manager_.steps[1][0].commit_token_ids, ElementsAre(8, 9, 10, 11));
  EXPECT_THAT(manager_.steps[1][1].commit_token_ids, ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(a->committed, 12);
  EXPECT_EQ(b->committed, 4);
  EXPECT_TRUE(round.more);
}

TEST_F(KvPolicyTest, ARefusedItemKeepsItsProgressAndNamesTheTenantAtQuota) {
  Sample* a = Running("a", 1, 0);
  Sample* b = Running("b", 2, 1);
  manager_.step_refusals[2] = ResourceExhausted("quota").WithReason(reason::kTenantQuotaExceeded);
  std::vector<int32_t> tokens(9, 5);
  const CommitProgress p{9, 8, 8, 0, true};
  const StepRound round = policy_.Step({a, b}, {p, p}, {&tokens, &tokens}, true);
  EXPECT_TRUE(round.exhausted);
  ASSERT_NE(round.quota_tenant, nullptr);
  EXPECT_EQ(*round.quota_tenant, "b");
  EXPECT_EQ(a->committed, 8);
  EXPECT_EQ(b->committed, 0);
  EXPECT_EQ(round.outcomes[1].status.code(), StatusCode::kResourceExhausted);
}

TEST_F(KvPolicyTest, AFailedCallReportsItForEverySampleItCarried) {
  Sample* a = Running("a", 1, 0);
  manager_.step_call_status = Unavailable("gone");
  std::vector<int32_t> tokens(5, 1);
  const StepRound round = policy_.Step({a}, {CommitProgress{5, 4, 4, 0, true}}, {&tokens}, true);
  EXPECT_EQ(round.call_status.code(), StatusCode::kUnavailable);
  ASSERT_EQ(round.outcomes.size(), 1u);
  EXPECT_EQ(round.outcomes[0].sample, a);
  EXPECT_EQ(a->committed, 0);
}

TEST_F(KvPolicyTest, NothingToAskMakesNoCall) {
  Sample* a = Running("a", 1, 0);
  std::vector<int32_t> tokens(5, 1);
  // Contiguous: slots held, nothing to publish.
  const StepRound round =
      policy_.Step({a}, {CommitProgress{5, 8, 4, 0, false}}, {&tokens}, /*grant=*/true);
  EXPECT_FALSE(round.called);
  EXPECT_THAT(manager_.steps, IsEmpty());
}

TEST_F(KvPolicyTest, CommitAllCommitsThePartialBlockBeforeAFork) {
  Sample* a = Running("a", 1, 0);
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(policy_.CommitAll(*a, tokens, 6).ok());
  EXPECT_THAT(manager_.steps[0][0].commit_token_ids, ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_EQ(a->committed, 6);
  ASSERT_TRUE(policy_.CommitAll(*a, tokens, 6).ok());
  EXPECT_EQ(manager_.steps.size(), 1u);  // nothing new: no call
}

TEST_F(KvPolicyTest, TheVictimIsTheNewestAndAtQuotaTheTenantsOwnNewest) {
  Sample* a_old = Running("a", 1, 0);
  Sample* b_old = Running("b", 2, 1);
  Sample* a_new = Running("a", 3, 2);
  Sample* b_new = Running("b", 4, 3);
  Sample* none_mode = Running("b", 0, 4);  // holds no manager sequence: never a victim
  const std::vector<Sample*> running = {a_old, b_old, a_new, b_new, none_mode};
  EXPECT_EQ(KvPolicy::Victim(running, nullptr), b_new);
  const std::string a = "a";
  EXPECT_EQ(KvPolicy::Victim(running, &a), a_new);
  a_new->dead = true;
  EXPECT_EQ(KvPolicy::Victim(running, &a), a_old);
  const std::string c = "c";
  EXPECT_EQ(KvPolicy::Victim(running, &c), nullptr);
}

// The same policy against the manager's real core in process: real block accounting,
// LRU, quotas (a pool of 4-token blocks).
class KvPolicyCoreTest : public PolicyFixture {
 protected:
  static manager::CacheManagerOptions CoreOptions(int64_t num_blocks) {
    manager::CacheManagerOptions o;
    o.geometry.num_layers = 1;
    o.geometry.num_kv_heads = 1;
    o.geometry.head_dim = 4;
    o.geometry.block_size = 4;
    o.geometry.num_blocks = num_blocks;
    o.instance_id = "kv-policy-core-test";
    o.first_worker_id = 1;
    o.tenant_max_blocks_override = {{"capped", 3}};
    return o;
  }

  // Progress of samples whose prompts are prefilled and whose first token is sampled:
  // the next step writes one more token.
  static std::vector<CommitProgress> AfterPrefill(const std::vector<Sample*>& samples,
                                                  const std::vector<std::vector<int32_t>>& tokens,
                                                  const std::vector<int64_t>& held_blocks) {
    std::vector<CommitProgress> progress;
    for (size_t i = 0; i < samples.size(); ++i) {
      CommitProgress& p = progress.emplace_back();
      p.slots = static_cast<int64_t>(tokens[i].size());
      p.held_slots = held_blocks[i] * 4;
      p.written = p.slots - 1;
      p.committed = samples[i]->committed;
    }
    return progress;
  }

  // A policy on `manager` over a pool of `num_blocks` 4-token blocks.
  static KvPolicy Policy(ManagerApi* manager, int64_t headroom_blocks, int64_t num_blocks) {
    KvPolicyOptions options = Options();
    options.headroom_blocks = headroom_blocks;
    KvPolicy policy(options, manager);
    policy.Reset(4, num_blocks);
    return policy;
  }

  // The admitted samples as running, each with its prompt and a first sampled token.
  static void StartRunning(const AdmissionResult& r, std::vector<Sample*>* samples,
                           std::vector<std::vector<int32_t>>* tokens) {
    for (const AdmittedSample& a : r.admitted) {
      a.sample->manager_id = a.opened.sequence_id;
      samples->push_back(a.sample);
      tokens->push_back(a.prompt);
      tokens->back().push_back(7);
    }
  }
};

TEST_F(KvPolicyCoreTest, GrantsAndCommitsAgainstTheRealAllocator) {
  manager::CacheManager core(CoreOptions(16));
  InProcessManager manager(&core);
  KvPolicy policy = Policy(&manager, 1, 16);
  Waiting("a", 8, 8);
  Waiting("a", 8, 8);
  const AdmissionResult r = policy.Admit(waiting_, 0);
  ASSERT_EQ(r.admitted.size(), 2u);
  EXPECT_EQ(r.admitted[0].opened.block_table.size(), 2u);
  EXPECT_EQ(core.Stats().in_use_blocks, 4);
  std::vector<Sample*> samples;
  std::vector<std::vector<int32_t>> tokens;
  StartRunning(r, &samples, &tokens);
  const StepRound round = policy.Step(samples, AfterPrefill(samples, tokens, {2, 2}),
                                      {&tokens[0], &tokens[1]}, /*grant=*/true);
  ASSERT_TRUE(round.call_status.ok()) << round.call_status.ToString();
  ASSERT_EQ(round.outcomes.size(), 2u);
  for (const StepOutcome& o : round.outcomes) {
    EXPECT_TRUE(o.status.ok()) << o.status.ToString();
    EXPECT_EQ(o.new_blocks.size(), 1u);
    EXPECT_EQ(o.sample->committed, 8);  // both prompt blocks published
  }
  const manager::ManagerStats stats = core.Stats();
  EXPECT_EQ(stats.in_use_blocks, 6);
  EXPECT_TRUE(core.CheckInvariants().ok());
  // The prompts are equal, but the second opened before the first committed: no hit.
  EXPECT_EQ(r.admitted[1].opened.cached_tokens, 0);
  // Now the committed blocks are a hit for the same tenant (all but the block holding
  // the last prompt token, which the prefill computes), and for no other tenant.
  Waiting("a", 8, 8);
  Waiting("b", 8, 8);
  const AdmissionResult again = policy.Admit(waiting_, 2);
  ASSERT_EQ(again.admitted.size(), 2u);
  EXPECT_THAT(Tenants(again), ElementsAre("b", "a"));  // b has not had a turn yet
  EXPECT_EQ(again.admitted[0].opened.cached_tokens, 0);
  EXPECT_EQ(again.admitted[1].opened.cached_tokens, 4);
  EXPECT_TRUE(core.CheckInvariants().ok());
}

TEST_F(KvPolicyCoreTest, AFullPoolNamesTheNewestAsVictimAndItsCloseLetsTheOtherGrow) {
  manager::CacheManager core(CoreOptions(4));
  InProcessManager manager(&core);
  KvPolicy policy = Policy(&manager, 0, 4);
  Waiting("a", 8, 8);
  Waiting("b", 8, 8);
  const AdmissionResult r = policy.Admit(waiting_, 0);
  ASSERT_EQ(r.admitted.size(), 2u);
  EXPECT_EQ(r.admitted[1].opened.allocatable_blocks, 0);
  std::vector<Sample*> samples;
  std::vector<std::vector<int32_t>> tokens;
  StartRunning(r, &samples, &tokens);
  StepRound round = policy.Step(samples, AfterPrefill(samples, tokens, {2, 2}),
                                {&tokens[0], &tokens[1]}, /*grant=*/true);
  EXPECT_TRUE(round.exhausted);
  EXPECT_EQ(round.quota_tenant, nullptr);
  Sample* victim = KvPolicy::Victim(samples, nullptr);
  ASSERT_EQ(victim, samples[1]);
  ASSERT_TRUE(manager.Close(victim->manager_id).ok());
  // Its committed prompt blocks stay cached (evictable), so the other can grow.
  round = policy.Step({samples[0]}, AfterPrefill({samples[0]}, {tokens[0]}, {2}), {&tokens[0]},
                      /*grant=*/true);
  ASSERT_EQ(round.outcomes.size(), 1u);
  EXPECT_TRUE(round.outcomes[0].status.ok()) << round.outcomes[0].status.ToString();
  EXPECT_EQ(round.outcomes[0].new_blocks.size(), 1u);
  EXPECT_TRUE(core.CheckInvariants().ok());
}

TEST_F(KvPolicyCoreTest, ATenantAtItsRealQuotaWaitsWhileAnotherIsAdmitted) {
  manager::CacheManager core(CoreOptions(16));
  InProcessManager manager(&core);
  KvPolicy policy = Policy(&manager, 0, 16);
  Waiting("capped", 8, 4);
  Sample* second = Waiting("capped", 8, 4);
  Waiting("free", 8, 4);
  const AdmissionResult r = policy.Admit(waiting_, 0);
  EXPECT_THAT(Tenants(r), ElementsAre("capped", "free"));
  EXPECT_THAT(waiting_, ElementsAre(second));
  EXPECT_FALSE(policy.paused());
  EXPECT_TRUE(r.failed.empty());
  EXPECT_TRUE(core.CheckInvariants().ok());
}

}  // namespace
}  // namespace kvpool::worker
