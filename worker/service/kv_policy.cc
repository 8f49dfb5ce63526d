// KvPolicy: see kv_policy.h.
#include "service/kv_policy.h"

#include <algorithm>

#include "common/kv_layout.h"
#include "service/fair_admission.h"

namespace kvpool::worker {

KvPolicy::KvPolicy(KvPolicyOptions options, ManagerApi* manager)
    : options_(options), manager_(manager) {}

void KvPolicy::Reset(int32_t block_size, int64_t num_blocks) {
  block_size_ = block_size;
  num_blocks_ = num_blocks;
  paused_ = false;
  retry_soon_ = false;
  last_admitted_.clear();
}

AdmissionResult KvPolicy::Admit(std::deque<Sample*>& waiting, int64_t num_running) {
  AdmissionResult result;
  retry_soon_ = false;
  if (paused_ && num_running > 0) return result;
  paused_ = false;
  int64_t prefill_tokens = 0;
  std::set<std::string> at_quota;  // tenants the manager refused for their quota
  std::set<const Job*> failed;     // jobs that can never run: their samples leave too
  std::vector<const std::string*> tenants;
  auto running = [&] { return num_running + static_cast<int64_t>(result.admitted.size()); };
  while (!waiting.empty() && running() < options_.max_running) {
    waiting.erase(std::remove_if(waiting.begin(), waiting.end(),
                                 [&](const Sample* s) {
                                   return s->dead || failed.count(s->job.get()) > 0;
                                 }),
                  waiting.end());
    tenants.clear();
    for (const Sample* s : waiting) tenants.push_back(&s->job->tenant);
    const size_t next = NextToAdmit(tenants, last_admitted_, at_quota);
    if (next >= waiting.size()) break;
    Sample& sample = *waiting[next];
    const Job& job = *sample.job;
    auto fail = [&](Status status) {
      waiting.erase(waiting.begin() + static_cast<std::ptrdiff_t>(next));
      failed.insert(&job);
      result.failed.emplace_back(sample.job, std::move(status));
    };
    AdmittedSample admitted{&sample, sample.PromptNow(), {}};
    const auto prompt = static_cast<int64_t>(admitted.prompt.size());
    if (!result.admitted.empty() && prefill_tokens + prompt > options_.max_prefill_tokens) break;
    bool stop_after_this = false;
    if (job.request.mode != KvMode::kNone) {
      const int64_t total = static_cast<int64_t>(job.request.prompt.size()) + job.request.max_tokens;
      const int64_t need = CeilDiv(total, int64_t{block_size_});
      if (need > num_blocks_) {
        fail(ResourceExhausted(
            "the request needs " + std::to_string(need) + " KV blocks of " +
            std::to_string(block_size_) + " tokens (prompt " +
            std::to_string(job.request.prompt.size()) + " + max_tokens " +
            std::to_string(job.request.max_tokens) + ") but the whole pool has " +
            std::to_string(num_blocks_) +
            ": lower max_tokens or give the manager more blocks (--num-blocks)"));
        continue;
      }
      const int64_t max_tokens =
          job.request.max_tokens - static_cast<int64_t>(sample.generated.size());
      StatusOr<OpenedSequence> opened =
          manager_->Open(admitted.prompt, job.request.mode, max_tokens, job.retention_priority,
                         job.client_authorization);
      if (!opened.ok()) {
        const Status& status = opened.status();
        if (IsLinkLoss(status)) {
          result.link_lost = status;
          return result;
        }
        if (status.code() == StatusCode::kResourceExhausted) {
          // Ask again when a sample has left (or shortly, if none runs here).
          retry_soon_ = retry_soon_ || running() == 0;
          if (status.reason() == reason::kTenantQuotaExceeded) {
            at_quota.insert(job.tenant);  // its own samples must leave; others go on
            continue;
          }
          paused_ = true;
          break;
        }
        fail(status);
        continue;
      }
      admitted.opened = *std::move(opened);
      // Headroom: every running sample needs blocks within the next steps; when the
      // pool has less left, admitting more would only preempt someone soon.
      if (admitted.opened.allocatable_blocks < options_.headroom_blocks * (running() + 1)) {
        stop_after_this = true;
      }
    }
    // (Mode none holds no blocks; its client was authenticated at intake.)
    waiting.erase(waiting.begin() + static_cast<std::ptrdiff_t>(next));
    sample.order = next_order_++;
    last_admitted_[job.tenant] = sample.order;
    prefill_tokens += prompt - admitted.opened.cached_tokens;
    result.admitted.push_back(std::move(admitted));
    if (stop_after_this) {
      paused_ = true;  // until a sample leaves
      break;
    }
  }
  return result;
}

StepRound KvPolicy::Step(const std::vector<Sample*>& samples,
                         const std::vector<CommitProgress>& progress,
                         const std::vector<const std::vector<int32_t>*>& tokens, bool grant) {
  StepRound round;
  const StepPlan plan = PlanStep(progress, block_size_, manager_->CommitBudget(), grant);
  round.more = plan.more;
  if (plan.items.empty()) return round;
  std::vector<StepItemRequest> items;
  for (const PlannedItem& planned : plan.items) {
    const Sample& s = *samples[planned.index];
    const std::vector<int32_t>& t = *tokens[planned.index];
    StepItemRequest& item = items.emplace_back();
    item.sequence_id = s.manager_id;
    item.num_tokens = planned.num_tokens;
    item.commit_token_ids.assign(t.begin() + s.committed, t.begin() + planned.commit_to);
  }
  round.called = true;
  StatusOr<std::vector<StepItemOutcome>> stepped = manager_->Step(items);
  if (!stepped.ok()) {
    round.call_status = stepped.status();
    for (const PlannedItem& planned : plan.items) {
      round.outcomes.push_back({samples[planned.index], stepped.status(), {}});
    }
    return round;
  }
  for (size_t i = 0; i < plan.items.size(); ++i) {
    StepItemOutcome& outcome = (*stepped)[i];
    Sample* s = samples[plan.items[i].index];
    if (outcome.status.ok()) {
      s->committed = plan.items[i].commit_to;
    } else if (outcome.status.code() == StatusCode::kResourceExhausted) {
      round.exhausted = true;
      if (outcome.status.reason() == reason::kTenantQuotaExceeded &&
          round.quota_tenant == nullptr) {
        round.quota_tenant = &s->job->tenant;
      }
    }
    round.outcomes.push_back({s, std::move(outcome.status), std::move(outcome.new_blocks)});
  }
  return round;
}

Status KvPolicy::CommitAll(Sample& sample, const std::vector<int32_t>& tokens, int64_t written) {
  if (sample.committed >= written) return Status::Ok();
  StepItemRequest item;
  item.sequence_id = sample.manager_id;
  item.num_tokens = written;
  item.commit_token_ids.assign(tokens.begin() + sample.committed, tokens.begin() + written);
  StatusOr<std::vector<StepItemOutcome>> stepped = manager_->Step({item});
  if (!stepped.ok()) return stepped.status();
  if (!(*stepped)[0].status.ok()) return (*stepped)[0].status;
  sample.committed = written;
  return Status::Ok();
}

Sample* KvPolicy::Victim(const std::vector<Sample*>& running, const std::string* tenant) {
  Sample* newest = nullptr;
  for (Sample* s : running) {
    if (s->dead || s->manager_id == 0) continue;
    if (tenant != nullptr && s->job->tenant != *tenant) continue;
    if (newest == nullptr || s->order > newest->order) newest = s;
  }
  return newest;
}

}  // namespace kvpool::worker
