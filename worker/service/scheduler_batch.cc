// The Scheduler's batch (see scheduler.h): admitting what KvPolicy lets in (the
// samples join the engine with their manager block tables), the one forward per
// iteration over new prompts and decoding samples, forks of parallel samples after
// their prefill, and streaming each token through its Job. Block grants, preemption
// and retiring are in scheduler_blocks.cc; the decisions are KvPolicy's.
#include <algorithm>
#include <limits>
#include <map>

#include "service/scheduler.h"
#include "service/scheduler_internal.h"
#include "service/utf8.h"
#include "tokenizer/tokenizer.h"

namespace kvpool::worker {
namespace {

using scheduler_internal::Nanos;
using scheduler_internal::SampleSeed;
using scheduler_internal::Seconds;

}  // namespace

void Scheduler::Admit() {
  AdmissionResult result = policy_.Admit(waiting_, static_cast<int64_t>(running_.size()));
  for (AdmittedSample& a : result.admitted) a.sample->manager_id = a.opened.sequence_id;
  if (!result.link_lost.ok()) {
    LinkLost(result.link_lost.message());
    return;
  }
  for (AdmittedSample& a : result.admitted) {
    Sample& sample = *a.sample;
    const std::shared_ptr<Job>& job = sample.job;
    GenerationRequest request = job->request;
    request.prompt = std::move(a.prompt);
    request.max_tokens -= static_cast<int32_t>(sample.generated.size());
    request.generated_before = static_cast<int32_t>(sample.generated.size());
    request.min_tokens = std::max(0, request.min_tokens - request.generated_before);
    request.sampling.seed = sample.seed;
    request.rng = sample.rng;
    request.generated_text = sample.generated_text;
    request.swapped = sample.swapped;
    request.block_table = std::move(a.opened.block_table);
    request.cached_tokens = a.opened.cached_tokens;
    const auto prompt = static_cast<int64_t>(request.prompt.size());
    const int64_t cached = request.cached_tokens;
    StatusOr<SequenceId> id = engine_->AddSequence(std::move(request));
    if (!id.ok()) {
      FailJob(job, id.status());
      continue;
    }
    sample.engine_id = *id;
    sample.committed = cached;
    sample.resumed = !sample.generated.empty();
    // What the prefill computes: the prompt less the cached prefix and, for a sample
    // resumed from swap space, less what was written back.
    const int64_t have = engine_->sequence(sample.engine_id).num_kv_tokens;
    sample.prefill_tokens = prompt - have;
    if (sample.resumed) counters_.recomputed_tokens.fetch_add(prompt - have);
    counters_.swapped_tokens.fetch_add(have - cached);
    DropSwap(sample);
    if (!job->admitted) {
      job->admitted = true;
      job->admitted_at = Clock::now();
      job->cached_tokens = cached;
      counters_.prompt_tokens.fetch_add(static_cast<int64_t>(job->request.prompt.size()));
      counters_.cached_tokens.fetch_add(cached);
    }
    running_.push_back(&sample);
  }
  // After the admitted ones hold their manager sequences, so that failing a job
  // closes every sequence it opened.
  for (auto& [job, status] : result.failed) FailJob(job, status);
}

void Scheduler::Emit(Sample& sample, int32_t token, double step_s) {
  Job& job = *sample.job;
  const Clock::time_point now = Clock::now();
  sample.generated.push_back(token);
  ++job.completion_tokens;
  counters_.generated_tokens.fetch_add(1);
  if (job.first_token_at == Clock::time_point{}) {
    job.first_token_at = now;
    counters_.ttft_s.Observe(Seconds(now - job.arrival));
  }
  if (sample.has_token) {
    const double gap_s = Seconds(now - sample.last_token_at);
    counters_.itl_s.Observe(gap_s);
    job.gap_sum_s += gap_s;
    ++job.gaps;
  }
  sample.has_token = true;
  sample.last_token_at = now;
  job.last_token_at = now;
  if (tokenizer_) {
    try {
      sample.pending_utf8 += tokenizer_->TokenText(token);
    } catch (const std::exception&) {
      sample.pending_utf8 += "\xEF\xBF\xBD";  // a token the tokenizer does not know
    }
  }
  const Sequence& q = engine_->sequence(sample.engine_id);
  const PoolGeometry& g = engine_->geometry();
  job.PushToken(sample.index, token, TakeCompleteUtf8(sample.pending_utf8, /*flush=*/q.finished()),
                step_s,
                static_cast<int64_t>(q.block_table.size()) * static_cast<int64_t>(g.block_bytes()),
                q.num_kv_tokens * static_cast<int64_t>(g.token_bytes()),
                q.request.logprobs > 0 ? &q.last_logprobs : nullptr);
}

void Scheduler::Step() {
  auto gone = [](const Sample* s) { return s->dead || s->engine_id == 0; };
  // Running samples whose prompt is not (all) computed yet, in admission order: the
  // ones admitted just now and those a token budget cut short in earlier steps.
  auto unprefilled = [&] {
    std::vector<Sample*> out;
    for (Sample* s : running_) {
      if (!gone(s) && !engine_->sequence(s->engine_id).prefilled) out.push_back(s);
    }
    return out;
  };
  std::vector<Sample*> decode;
  for (Sample* s : running_) {
    if (gone(s)) continue;
    const Sequence& q = engine_->sequence(s->engine_id);
    if (q.prefilled && !q.finished()) decode.push_back(s);
  }
  if (!decode.empty()) {
    // Blocks for the decoding sequences' next tokens; preemption, if the pool is out
    // of them, takes the newest sequences first: prompts not prefilled yet lose nothing.
    decode = GrantBlocks(std::move(decode));
    if (!engine_) return;
  }
  // The step's token budget (vLLM's max_num_batched_tokens): one per decoding sequence,
  // the rest for prompts, oldest first, cut into chunks where they do not fit; mode none
  // recomputes its whole sequence and takes its prompt whole.
  int64_t budget = options_.max_num_batched_tokens > 0
                       ? options_.max_num_batched_tokens - static_cast<int64_t>(decode.size())
                       : std::numeric_limits<int64_t>::max();
  std::vector<Sample*> admitted;
  std::vector<int64_t> chunks, chunk_tokens;
  for (Sample* s : unprefilled()) {
    const Sequence& q = engine_->sequence(s->engine_id);
    const int64_t left = q.prompt_len() - (q.request.mode == KvMode::kNone ? 0 : q.num_kv_tokens);
    if (budget <= 0 && !(admitted.empty() && decode.empty())) break;
    const bool whole = q.request.mode == KvMode::kNone || left <= budget;
    const int64_t tokens = whole ? left : std::max<int64_t>(budget, 1);
    admitted.push_back(s);
    chunks.push_back(whole ? 0 : tokens);
    chunk_tokens.push_back(tokens);
    budget -= tokens;
  }
  if (admitted.empty() && decode.empty()) return;
  std::vector<SequenceId> prefill_ids, decode_ids;
  for (Sample* s : admitted) prefill_ids.push_back(s->engine_id);
  for (Sample* s : decode) decode_ids.push_back(s->engine_id);
  // One forward: the prompts' chunks and every running sequence's next token together.
  const auto t0 = Clock::now();
  const Status status = engine_->Step(prefill_ids, decode_ids, chunks);
  const Clock::duration took = Clock::now() - t0;
  const double step_s = Seconds(took);
  counters_.steps.fetch_add(1);
  // Its time goes to the phases by the tokens each computed.
  int64_t fresh_tokens = 0, resumed_tokens = 0;
  for (size_t i = 0; i < admitted.size(); ++i) {
    (admitted[i]->resumed ? resumed_tokens : fresh_tokens) += chunk_tokens[i];
  }
  const auto decode_tokens = static_cast<int64_t>(decode.size());
  const int64_t all_tokens = std::max<int64_t>(1, fresh_tokens + resumed_tokens + decode_tokens);
  const int64_t resumed_ns = Nanos(took) * resumed_tokens / all_tokens;
  const int64_t decode_ns = Nanos(took) * decode_tokens / all_tokens;
  counters_.phase_ns[static_cast<int>(SchedulerPhase::kRecompute)].fetch_add(resumed_ns);
  counters_.phase_ns[static_cast<int>(SchedulerPhase::kDecode)].fetch_add(decode_ns);
  counters_.phase_ns[static_cast<int>(SchedulerPhase::kPrefill)].fetch_add(Nanos(took) -
                                                                           resumed_ns - decode_ns);
  if (!status.ok()) {
    for (Sample* s : admitted) FailJob(s->job, Internal("prefill failed: " + status.ToString()));
    for (Sample* s : decode) FailJob(s->job, Internal("decode failed: " + status.ToString()));
    return;
  }
  // Prompts whose last chunk ran have their first token; the others go on next step.
  admitted.erase(
      std::remove_if(admitted.begin(), admitted.end(),
                     [&](const Sample* s) { return !engine_->sequence(s->engine_id).prefilled; }),
      admitted.end());
  for (Sample* s : admitted) Emit(*s, engine_->sequence(s->engine_id).tokens.back(), step_s);
  for (Sample* s : decode) Emit(*s, engine_->sequence(s->engine_id).tokens.back(), step_s);
  for (Sample* s : admitted) {
    if (!engine_) return;  // the manager was lost while forking: every Sample is gone
    if (s->fork_children && !s->dead) ForkChildren(*s, step_s);
  }
  if (!engine_) return;
  TrackJobPeaks();
  std::vector<Sample*> finished;
  for (Sample* s : running_) {
    if (!gone(s) && engine_->sequence(s->engine_id).finished()) finished.push_back(s);
  }
  Retire(finished);
}

void Scheduler::TrackJobPeaks() {
  std::map<Job*, std::pair<int64_t, int64_t>> per_job;  // reserved, used bytes
  const PoolGeometry& g = engine_->geometry();
  for (Sample* s : running_) {
    if (s->dead || s->engine_id == 0) continue;
    const Sequence& q = engine_->sequence(s->engine_id);
    auto& [reserved, used] = per_job[s->job.get()];
    reserved += static_cast<int64_t>(q.block_table.size()) * static_cast<int64_t>(g.block_bytes());
    used += q.num_kv_tokens * static_cast<int64_t>(g.token_bytes());
  }
  for (auto& [job, bytes] : per_job) {
    job->peak_reserved_bytes = std::max(job->peak_reserved_bytes, bytes.first);
    job->peak_used_bytes = std::max(job->peak_used_bytes, bytes.second);
  }
}

void Scheduler::ForkChildren(Sample& parent, double prefill_s) {
  parent.fork_children = false;
  const Sequence& p = engine_->sequence(parent.engine_id);
  // The manager forks what is committed: the whole prompt first.
  const Status committed = policy_.CommitAll(parent, p.tokens, p.num_kv_tokens);
  if (!committed.ok()) {
    if (IsLinkLoss(committed)) return LinkLost(committed.message());
    return FailJob(parent.job, Status(committed.code(),
                                      "committing the prompt before Fork: " + committed.message()));
  }
  for (int32_t i = 1; i < parent.job->n; ++i) {
    auto child = std::make_unique<Sample>();
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
      samples_.push_back(std::move(child));
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
    child->order = policy_.NextOrder();
    Sample& stored = *child;
    running_.push_back(child.get());
    samples_.push_back(std::move(child));
    Emit(stored, engine_->sequence(stored.engine_id).tokens.back(), prefill_s);
  }
}

}  // namespace kvpool::worker
