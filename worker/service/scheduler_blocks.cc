// The Scheduler's blocks (see scheduler.h): Step rounds that grant the slots for the
// next tokens and commit full blocks (KvPolicy plans and sends them; this file applies
// the answers to the engine), preemption of the policy's victim (swap out or drop),
// retiring finished samples (their last full blocks published, their sequences closed,
// the job's summary streamed), and closes retried when one did not get through.
#include <algorithm>

#include "service/scheduler.h"
#include "service/scheduler_internal.h"
#include "service/sequence_progress.h"

namespace kvpool::worker {
namespace {

using scheduler_internal::Seconds;

}  // namespace

void Scheduler::Release(Sample& sample, bool close_at_manager) {
  if (sample.engine_id != 0 && engine_) engine_->Release(sample.engine_id);
  sample.engine_id = 0;
  if (sample.manager_id != 0 && close_at_manager && attachment_) {
    const Status status = manager_.Close(sample.manager_id);
    if (!status.ok() && status.code() != StatusCode::kNotFound) {
      // Its blocks stay held until a close gets through (or the lease ends).
      unclosed_.push_back(sample.manager_id);
    }
  }
  if (sample.manager_id != 0 && close_at_manager) policy_.Resume();  // blocks came back
  sample.manager_id = 0;
  sample.committed = 0;
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

StepRound Scheduler::StepRoundFor(const std::vector<Sample*>& samples, bool grant) {
  const int64_t block_size = engine_->geometry().block_size;
  std::vector<CommitProgress> progress;
  std::vector<const std::vector<int32_t>*> tokens;
  for (const Sample* s : samples) {
    const Sequence& q = engine_->sequence(s->engine_id);
    progress.push_back(ProgressOf(q, block_size, s->committed));
    tokens.push_back(&q.tokens);
  }
  return policy_.Step(samples, progress, tokens, grant);
}

std::vector<Sample*> Scheduler::GrantBlocks(std::vector<Sample*> samples) {
  for (;;) {
    // Commits are lazy and may wait: a call carries no more than the manager takes per
    // call, whole blocks at a time; the loop calls again until nothing is left.
    std::vector<Sample*> live;
    for (Sample* s : samples) {
      if (!s->dead && s->manager_id != 0) live.push_back(s);
    }
    StepRound round = StepRoundFor(live, /*grant=*/true);
    if (!round.called) break;
    if (!round.call_status.ok()) {
      if (IsLinkLoss(round.call_status)) {
        LinkLost(round.call_status.message());
        return {};
      }
      for (const StepOutcome& o : round.outcomes) FailJob(o.sample->job, round.call_status);
      break;
    }
    for (StepOutcome& o : round.outcomes) {
      if (o.status.ok()) {
        const Status appended = engine_->AppendBlocks(o.sample->engine_id, std::move(o.new_blocks));
        if (!appended.ok()) FailJob(o.sample->job, appended);
      } else if (o.status.code() != StatusCode::kResourceExhausted) {
        FailJob(o.sample->job, o.status);
      }
    }
    if (!round.exhausted) continue;  // commits left over the budget go in the next call
    // The pool is full: the newest sample goes. A tenant at its quota: its own newest
    // one, never another tenant's.
    Sample* victim = KvPolicy::Victim(running_, round.quota_tenant);
    if (victim == nullptr) break;
    Preempt(*victim, /*pause_admission=*/round.quota_tenant == nullptr);
    samples.erase(std::remove(samples.begin(), samples.end(), victim), samples.end());
  }
  std::vector<Sample*> ready;
  for (Sample* s : samples) {
    if (!s->dead && s->engine_id != 0) ready.push_back(s);
  }
  return ready;
}

void Scheduler::Preempt(Sample& sample, bool pause_admission) {
  const Sequence& q = engine_->sequence(sample.engine_id);
  sample.rng = q.rng;
  sample.generated_text = q.text;
  // Swap: copying the K/V out costs ~1 ms per 16 MB; recomputing it, a forward over
  // the whole prompt and what was generated.
  const PoolGeometry& g = engine_->geometry();
  const int64_t need =
      CeilDiv(q.num_kv_tokens, g.block_size) * static_cast<int64_t>(g.block_bytes());
  if (q.request.mode != KvMode::kNone && q.num_kv_tokens > 0 &&
      swap_bytes_ + need <= options_.swap_space_bytes) {
    StatusOr<SwappedKv> swapped = engine_->SwapOut(sample.engine_id);
    if (swapped.ok()) {
      swap_bytes_ += swapped->bytes();
      sample.swapped = std::make_shared<const SwappedKv>(std::move(*swapped));
    }
  }
  counters_.swap_bytes.store(swap_bytes_);
  Release(sample, /*close_at_manager=*/true);
  running_.erase(std::remove(running_.begin(), running_.end(), &sample), running_.end());
  waiting_.push_front(&sample);
  ++sample.job->preemptions;
  counters_.preemptions.fetch_add(1);
  if (pause_admission) policy_.Pause();
}

void Scheduler::DropSwap(Sample& sample) {
  if (!sample.swapped) return;
  swap_bytes_ -= sample.swapped->bytes();
  sample.swapped.reset();
  counters_.swap_bytes.store(swap_bytes_);
}

void Scheduler::Retire(std::vector<Sample*> samples) {
  if (samples.empty()) return;
  // Publish the blocks the samples filled since their last Step, so that later
  // prompts (on any worker) can reuse them: as few calls as the manager's cap allows.
  // Best effort: the jobs are done whatever the manager answers.
  Status lost = Status::Ok();
  for (bool more = true; more;) {
    std::vector<Sample*> live;
    for (Sample* s : samples) {
      if (!s->dead && s->manager_id != 0) live.push_back(s);
    }
    const StepRound round = StepRoundFor(live, /*grant=*/false);
    if (!round.called) break;
    if (!round.call_status.ok()) {
      if (IsLinkLoss(round.call_status)) lost = round.call_status;
      break;
    }
    more = round.more;
    for (const StepOutcome& o : round.outcomes) {
      if (!o.status.ok()) more = false;  // the manager refused a commit: do not loop on it
    }
  }
  for (Sample* s : samples) {
    if (s->dead) continue;
    Job& job = *s->job;
    if (job.pin_ttl_ms > 0 && !job.pin_tried && lost.ok() && s->manager_id != 0) {
      // While this sample still holds the prompt's blocks: nothing can evict them first.
      job.pin_tried = true;
      job.pin = manager_.Pin(job.request.prompt, job.pin_ttl_ms, job.retention_priority,
                             job.client_authorization);
      if (!job.pin.ok() && IsLinkLoss(job.pin.status())) lost = job.pin.status();
    }
    job.finish_reasons[s->index] = FinishReasonName(engine_->sequence(s->engine_id).finish);
    Release(*s, /*close_at_manager=*/lost.ok());
    s->dead = true;
    if (--job.samples_left > 0) continue;
    // Counted before the stream ends, so a client that scrapes after its call sees it.
    counters_.finished.fetch_add(1);
    counters_.e2e_s.Observe(Seconds(job.last_token_at - job.arrival));
    counters_.queue_s.Observe(Seconds(job.admitted_at - job.arrival));
    job.PushSummary();
    job.End(Status::Ok());
  }
  policy_.Resume();
  if (!lost.ok()) LinkLost(lost.message());
}

}  // namespace kvpool::worker
