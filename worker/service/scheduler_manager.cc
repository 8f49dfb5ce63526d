// The Scheduler's side of the manager protocol, through ManagerClient (never its
// protobufs): the batched Step that grants blocks and publishes committed full blocks
// (within the manager's per-call cap), preemption on RESOURCE_EXHAUSTED, Fork for
// parallel samples, closing sequences (retried when a close does not get through), and
// retiring finished sequences with their summary. The loop, admission, prefill and
// decode are in scheduler.cc.
#include <algorithm>
#include <iostream>

#include "service/scheduler.h"
#include "service/scheduler_internal.h"

namespace kvpool::worker {
namespace {

using scheduler_internal::SampleSeed;
using scheduler_internal::Seconds;

}  // namespace

void Scheduler::Release(Seq& seq, bool close_at_manager) {
  if (seq.engine_id != 0 && engine_) engine_->Release(seq.engine_id);
  seq.engine_id = 0;
  if (seq.manager_id != 0 && close_at_manager && attachment_) {
    const Status status = manager_.Close(seq.manager_id);
    if (!status.ok() && status.code() != StatusCode::kNotFound) {
      // Its blocks stay held until a close gets through (or the lease ends).
      unclosed_.push_back(seq.manager_id);
    }
  }
  if (seq.manager_id != 0 && close_at_manager) admission_paused_ = false;  // blocks came back
  seq.manager_id = 0;
  seq.committed = 0;
}

void Scheduler::RetryCloses() {
  std::vector<int64_t> ids;
  ids.swap(unclosed_);
  for (int64_t id : ids) {
    const Status status = manager_.Close(id);
    if (status.ok() || status.code() == StatusCode::kNotFound) continue;
    if (IsLinkLoss(status)) return LinkLost(status.message());
    unclosed_.push_back(id);
  }
}

void Scheduler::ForkChildren(Seq& parent, double prefill_s) {
  parent.fork_children = false;
  const Sequence& p = engine_->sequence(parent.engine_id);
  // The manager forks what is committed: the whole prompt first.
  if (parent.committed < p.num_kv_tokens) {
    StepItemRequest item;
    item.sequence_id = parent.manager_id;
    item.num_tokens = p.num_kv_tokens;
    item.commit_token_ids.assign(p.tokens.begin() + parent.committed,
                                 p.tokens.begin() + p.num_kv_tokens);
    StatusOr<std::vector<StepItemOutcome>> stepped = manager_.Step({item});
    if (!stepped.ok()) {
      if (IsLinkLoss(stepped.status())) return LinkLost(stepped.status().message());
      return FailJob(parent.job,
                     Status(stepped.status().code(),
                            "committing the prompt before Fork: " + stepped.status().message()));
    }
    if (!(*stepped)[0].status.ok()) return FailJob(parent.job, (*stepped)[0].status);
    parent.committed = p.num_kv_tokens;
  }
  for (int32_t i = 1; i < parent.job->n; ++i) {
    auto child = std::make_unique<Seq>();
    child->job = parent.job;
    child->index = i;
    child->seed = SampleSeed(parent.job->request.sampling.seed, i);
    StatusOr<ForkedSequence> forked = manager_.Fork(parent.manager_id);
    if (!forked.ok()) {
      if (IsLinkLoss(forked.status())) return LinkLost(forked.status().message());
      if (forked.status().code() != StatusCode::kResourceExhausted) {
        return FailJob(parent.job, forked.status());
      }
      // No block for the copy: the sample runs on its own later (the prompt's blocks
      // are cached, so its prefill is mostly a prefix hit).
      waiting_.push_back(child.get());
      seqs_.push_back(std::move(child));
      continue;
    }
    StatusOr<SequenceId> id =
        engine_->Fork(parent.engine_id, std::move(forked->block_table), forked->copy_src_block,
                      forked->copy_dst_block, child->seed);
    child->manager_id = forked->sequence_id;
    if (!id.ok()) {
      Release(*child, /*close_at_manager=*/true);
      return FailJob(parent.job, id.status());
    }
    child->engine_id = *id;
    child->committed = parent.committed;
    child->order = next_order_++;
    Seq& stored = *child;
    running_.push_back(child.get());
    seqs_.push_back(std::move(child));
    Emit(stored, engine_->sequence(stored.engine_id).tokens.back(), prefill_s);
  }
}

std::vector<CommitProgress> Scheduler::Progress(const std::vector<Seq*>& seqs) const {
  const int64_t block_size = engine_->geometry().block_size;
  std::vector<CommitProgress> progress;
  progress.reserve(seqs.size());
  for (const Seq* s : seqs) {
    const Sequence& q = engine_->sequence(s->engine_id);
    CommitProgress& p = progress.emplace_back();
    p.slots = static_cast<int64_t>(q.tokens.size());
    p.held_slots = static_cast<int64_t>(q.block_table.size()) * block_size;
    p.written = q.num_kv_tokens;
    p.committed = s->committed;
    p.publishes = q.request.mode == KvMode::kPaged;
  }
  return progress;
}

StepItemRequest Scheduler::StepItemFor(const Seq& seq, const PlannedItem& planned) const {
  const Sequence& q = engine_->sequence(seq.engine_id);
  StepItemRequest item;
  item.sequence_id = seq.manager_id;
  item.num_tokens = planned.num_tokens;
  item.commit_token_ids.assign(q.tokens.begin() + seq.committed,
                               q.tokens.begin() + planned.commit_to);
  return item;
}

std::vector<Scheduler::Seq*> Scheduler::GrantBlocks(std::vector<Seq*> seqs) {
  const int32_t block_size = engine_->geometry().block_size;
  for (;;) {
    // Commits are lazy and may wait: a call carries no more than the manager takes per
    // call, whole blocks at a time; the loop calls again until nothing is left.
    std::vector<Seq*> live;
    for (Seq* s : seqs) {
      if (!s->dead && s->manager_id != 0) live.push_back(s);
    }
    const StepPlan plan =
        PlanStep(Progress(live), block_size, manager_.CommitBudget(), /*grant=*/true);
    std::vector<StepItemRequest> items;
    std::vector<Seq*> asked;
    std::vector<int64_t> commit_to;
    for (const PlannedItem& planned : plan.items) {
      Seq* s = live[planned.index];
      items.push_back(StepItemFor(*s, planned));
      asked.push_back(s);
      commit_to.push_back(planned.commit_to);
    }
    if (asked.empty()) break;
    StatusOr<std::vector<StepItemOutcome>> stepped = manager_.Step(items);
    if (!stepped.ok()) {
      if (IsLinkLoss(stepped.status())) {
        LinkLost(stepped.status().message());
        return {};
      }
      for (Seq* s : asked) FailJob(s->job, stepped.status());
      break;
    }
    bool exhausted = false;
    const std::string* quota_tenant = nullptr;  // a tenant at its quota: preempt its own
    for (size_t i = 0; i < asked.size(); ++i) {
      StepItemOutcome& outcome = (*stepped)[i];
      Seq& s = *asked[i];
      if (outcome.status.ok()) {
        const Status appended = engine_->AppendBlocks(s.engine_id, std::move(outcome.new_blocks));
        if (!appended.ok()) FailJob(s.job, appended);
        s.committed = commit_to[i];
      } else if (outcome.status.code() == StatusCode::kResourceExhausted) {
        exhausted = true;
        if (outcome.status.reason() == reason::kTenantQuotaExceeded && quota_tenant == nullptr) {
          quota_tenant = &s.job->tenant;
        }
      } else {
        FailJob(s.job, outcome.status);
      }
    }
    if (!exhausted) continue;  // commits left over the budget go in the next call
    // The pool is full: the newest sequence goes. A tenant at its quota: its own
    // newest one, never another tenant's.
    Seq* victim = NewestRunning(quota_tenant);
    if (victim == nullptr) break;
    Preempt(*victim, /*pause_admission=*/quota_tenant == nullptr);
    seqs.erase(std::remove(seqs.begin(), seqs.end(), victim), seqs.end());
  }
  std::vector<Seq*> ready;
  for (Seq* s : seqs) {
    if (!s->dead && s->engine_id != 0) ready.push_back(s);
  }
  return ready;
}

void Scheduler::Preempt(Seq& seq, bool pause_admission) {
  const Sequence& q = engine_->sequence(seq.engine_id);
  seq.rng = q.rng;
  seq.generated_text = q.text;
  // Swap: copying the K/V out costs ~1 ms per 16 MB; recomputing it, a forward over
  // the whole prompt and what was generated.
  const PoolGeometry& g = engine_->geometry();
  const int64_t need =
      CeilDiv(q.num_kv_tokens, g.block_size) * static_cast<int64_t>(g.block_bytes());
  if (q.request.mode != KvMode::kNone && q.num_kv_tokens > 0 &&
      swap_bytes_ + need <= options_.swap_space_bytes) {
    StatusOr<SwappedKv> swapped = engine_->SwapOut(seq.engine_id);
    if (swapped.ok()) {
      swap_bytes_ += swapped->bytes();
      seq.swapped = std::make_shared<const SwappedKv>(std::move(*swapped));
    }
  }
  counters_.swap_bytes.store(swap_bytes_);
  Release(seq, /*close_at_manager=*/true);
  running_.erase(std::remove(running_.begin(), running_.end(), &seq), running_.end());
  waiting_.push_front(&seq);
  ++seq.job->preemptions;
  counters_.preemptions.fetch_add(1);
  if (pause_admission) admission_paused_ = true;
}

void Scheduler::DropSwap(Seq& seq) {
  if (!seq.swapped) return;
  swap_bytes_ -= seq.swapped->bytes();
  seq.swapped.reset();
  counters_.swap_bytes.store(swap_bytes_);
}

void Scheduler::Retire(std::vector<Seq*> seqs) {
  if (seqs.empty()) return;
  const int32_t block_size = engine_->geometry().block_size;
  // Publish the blocks the sequences filled since their last Step, so that later
  // prompts (on any worker) can reuse them: as few calls as the manager's cap allows.
  // Best effort: the jobs are done whatever the manager answers.
  bool lost = false;
  std::string lost_why;
  for (bool more = true; more && !lost;) {
    std::vector<Seq*> live;
    for (Seq* s : seqs) {
      if (!s->dead && s->manager_id != 0) live.push_back(s);
    }
    const StepPlan plan =
        PlanStep(Progress(live), block_size, manager_.CommitBudget(), /*grant=*/false);
    more = plan.more;
    std::vector<StepItemRequest> items;
    std::vector<std::pair<Seq*, int64_t>> committing;
    for (const PlannedItem& planned : plan.items) {
      Seq* s = live[planned.index];
      items.push_back(StepItemFor(*s, planned));
      committing.emplace_back(s, planned.commit_to);
    }
    if (committing.empty()) break;
    StatusOr<std::vector<StepItemOutcome>> stepped = manager_.Step(items);
    if (!stepped.ok()) {
      lost = IsLinkLoss(stepped.status());
      lost_why = stepped.status().message();
      break;
    }
    for (size_t i = 0; i < committing.size(); ++i) {
      if (!(*stepped)[i].status.ok()) {
        more = false;  // the manager refused a sequence's commit: do not loop on it
        continue;
      }
      committing[i].first->committed = committing[i].second;
    }
  }
  for (Seq* s : seqs) {
    if (s->dead) continue;
    Job& job = *s->job;
    job.finish_reasons[s->index] = FinishReasonName(engine_->sequence(s->engine_id).finish);
    Release(*s, /*close_at_manager=*/!lost);
    s->dead = true;
    if (--job.samples_left > 0) continue;
    v1::GenerateResponse event;
    v1::GenerateSummary* summary = event.mutable_summary();
    summary->mutable_usage()->set_prompt_tokens(static_cast<int64_t>(job.request.prompt.size()));
    summary->mutable_usage()->set_cached_tokens(job.cached_tokens);
    summary->mutable_usage()->set_completion_tokens(job.completion_tokens);
    summary->set_ttft_s(Seconds(job.first_token_at - job.arrival));
    summary->set_time_per_output_token_s(job.gaps > 0 ? job.gap_sum_s / job.gaps : 0.0);
    summary->set_total_s(Seconds(job.last_token_at - job.arrival));
    summary->set_queue_s(Seconds(job.admitted_at - job.arrival));
    summary->set_kv_bytes_reserved(job.peak_reserved_bytes);
    summary->set_kv_bytes_used(job.peak_used_bytes);
    for (const std::string& reason : job.finish_reasons) summary->add_finish_reasons(reason);
    summary->set_preemptions(job.preemptions);
    // Counted before the stream ends, so a client that scrapes after its call sees it.
    counters_.finished.fetch_add(1);
    counters_.e2e_s.Observe(Seconds(job.last_token_at - job.arrival));
    counters_.queue_s.Observe(Seconds(job.admitted_at - job.arrival));
    job.Push(std::move(event));
    job.End(Status::Ok());
  }
  admission_paused_ = false;
  if (lost) LinkLost(lost_why);
}

}  // namespace kvpool::worker
