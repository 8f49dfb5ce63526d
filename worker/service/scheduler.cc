// The Scheduler's loop (see scheduler.h): taking jobs, following the manager
// attachment, admission (OpenSequence with headroom), prefill, decode, streaming the
// tokens and the counters. The manager protocol (Step grants and commits, preemption,
// Fork, close, retire) is in scheduler_manager.cc; their shared state in
// scheduler_internal.h.
#include "service/scheduler.h"

#include <algorithm>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "service/fair_admission.h"
#include "service/scheduler_internal.h"
#include "service/utf8.h"
#include "tokenizer/tokenizer.h"

namespace kvpool::worker {
namespace {

using scheduler_internal::Nanos;
using scheduler_internal::PhaseTimer;
using scheduler_internal::SampleSeed;
using scheduler_internal::Seconds;

at::ScalarType TorchDtype(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat16:
      return at::kHalf;
    case KvDtype::kBFloat16:
      return at::kBFloat16;
    default:
      return at::kFloat;
  }
}

}  // namespace

const char* SchedulerPhaseName(SchedulerPhase phase) {
  switch (phase) {
    case SchedulerPhase::kPrefill:
      return "prefill";
    case SchedulerPhase::kRecompute:
      return "recompute";
    case SchedulerPhase::kDecode:
      return "decode";
    case SchedulerPhase::kManager:
      return "manager";
    case SchedulerPhase::kIdle:
      return "idle";
    default:
      return "other";
  }
}

Scheduler::Scheduler(SchedulerOptions options, ModelConfig config, ModelWeights weights,
                     std::shared_ptr<const Tokenizer> tokenizer, ManagerLink* link,
                     std::function<void(bool)> on_serving)
    : options_(options),
      config_(std::move(config)),
      weights_(std::move(weights)),
      tokenizer_(std::move(tokenizer)),
      link_(link),
      manager_(link,
               [this](std::chrono::nanoseconds took) {
                 counters_.manager_calls.fetch_add(1);
                 counters_.phase_ns[static_cast<int>(SchedulerPhase::kManager)].fetch_add(
                     took.count(), std::memory_order_relaxed);
               }),
      on_serving_(std::move(on_serving)) {}

void Scheduler::SetServing(bool serving) {
  if (serving_.exchange(serving) == serving) return;
  if (on_serving_) on_serving_(serving);
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& job : incoming_) job->End(Unavailable("the worker is shutting down"));
  incoming_.clear();
}

void Scheduler::Start() {
  thread_ = std::thread([this] { Run(); });
}

void Scheduler::Submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming_.push_back(std::move(job));
  }
  wake_.notify_all();
}

void Scheduler::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    woken_ = true;
  }
  wake_.notify_all();
}

void Scheduler::Run() {
  for (;;) {
    std::deque<std::shared_ptr<Job>> jobs;
    {
      const PhaseTimer idle(counters_, SchedulerPhase::kIdle);
      std::unique_lock<std::mutex> lock(mu_);
      auto ready = [&] { return stop_ || woken_ || !incoming_.empty(); };
      if (running_.empty()) {
        if (waiting_.empty() && unclosed_.empty()) {
          wake_.wait(lock, ready);
        } else if (waiting_.empty()) {
          wake_.wait_for(lock, std::chrono::milliseconds(200), ready);
        } else if (retry_soon_) {
          wake_.wait_for(lock, std::chrono::milliseconds(5), ready);
        }
      }
      if (stop_) break;
      woken_ = false;
      jobs.swap(incoming_);
    }
    const Clock::time_point busy_start = Clock::now();
    const int64_t timed_before = TimedNs();
    SyncAttachment();
    for (std::shared_ptr<Job>& job : jobs) {
      if (!engine_) {
        job->End(Unavailable("the worker is not attached to a cache manager; retry shortly"));
        counters_.failed.fetch_add(1);
        continue;
      }
      StatusOr<std::string> tenant = ResolveTenant(*job);
      if (!tenant.ok()) {
        job->End(tenant.status());
        counters_.failed.fetch_add(1);
        continue;
      }
      job->tenant = *std::move(tenant);
      job->samples_left = job->n;
      job->finish_reasons.assign(job->n, "");
      // Paged samples share the prompt through Fork; the other modes run n sequences.
      const bool fork = job->request.mode == KvMode::kPaged && job->n > 1;
      for (int32_t i = 0; i < (fork ? 1 : job->n); ++i) {
        auto seq = std::make_unique<Seq>();
        seq->job = job;
        seq->index = i;
        seq->seed = SampleSeed(job->request.sampling.seed, i);
        seq->fork_children = fork;
        waiting_.push_back(seq.get());
        seqs_.push_back(std::move(seq));
      }
    }
    if (!engine_) continue;
    try {
      RetryCloses();
      DropCancelled();
      std::vector<Seq*> admitted = Admit();
      if (engine_) Step(std::move(admitted));
    } catch (const std::exception& e) {
      // A bug or a device error (e.g. out of memory) in the model: the jobs in flight
      // end INTERNAL, the worker keeps serving.
      std::cerr << "kvpool-worker: scheduler step failed: " << e.what() << "\n";
      FailAll(Internal(std::string("the worker's scheduler step failed: ") + e.what()),
              /*close_at_manager=*/true);
    }
    RemoveDeadSeqs();
    UpdateUsage();
    counters_.phase_ns[static_cast<int>(SchedulerPhase::kOther)].fetch_add(
        Nanos(Clock::now() - busy_start) - (TimedNs() - timed_before), std::memory_order_relaxed);
  }
  FailAll(Unavailable("the worker is shutting down"), /*close_at_manager=*/true);
}

int64_t Scheduler::TimedNs() const {
  int64_t sum = 0;
  for (SchedulerPhase p : {SchedulerPhase::kPrefill, SchedulerPhase::kRecompute,
                           SchedulerPhase::kDecode, SchedulerPhase::kManager}) {
    sum += counters_.phase_ns[static_cast<int>(p)].load(std::memory_order_relaxed);
  }
  return sum;
}

void Scheduler::SyncAttachment() {
  std::shared_ptr<const Attachment> current = link_->current();
  if (current == attachment_) return;
  if (attachment_ || engine_) {
    FailAll(Unavailable("the worker lost its cache manager (" + link_->address() +
                        ") mid-request; retry"));
  }
  engine_.reset();
  attachment_ = current;
  manager_.Attach(current);
  tenant_of_credential_.clear();  // another manager may map tokens differently
  SetServing(false);
  block_size_.store(0);
  num_blocks_.store(0);
  if (!current) return;
  EngineOptions options;
  options.device = current->device;
  options.dtype = TorchDtype(current->geometry.dtype);
  options.block_size = current->geometry.block_size;
  options.num_blocks = current->geometry.num_blocks;
  options.threads = options_.threads;
  options.external_blocks = true;
  KvPool pool = KvPool::Adopt(current->geometry, current->base, current->mapping);
  auto engine = Engine::Create(config_, weights_, options, tokenizer_, std::move(pool));
  if (!engine.ok()) {
    link_->ReportFatal("cannot run on the manager's pool: " + engine.status().ToString());
    return;
  }
  engine_ = std::move(*engine);
  block_size_.store(current->geometry.block_size);
  num_blocks_.store(current->geometry.num_blocks);
  SetServing(true);
  // Scripts and tests wait for this line: from here requests are served.
  std::cout << "kvpool-worker attached to " << link_->address() << " as worker "
            << current->worker_id << std::endl;
}

void Scheduler::FailAll(const Status& status, bool close_at_manager) {
  for (auto& seq : seqs_) {
    Release(*seq, close_at_manager);
    if (!seq->job->ended()) {
      seq->job->End(status);
      counters_.failed.fetch_add(1);
    }
  }
  for (auto& seq : seqs_) DropSwap(*seq);
  seqs_.clear();
  waiting_.clear();
  running_.clear();
  if (!close_at_manager) unclosed_.clear();  // the manager is gone: nothing to close
  admission_paused_ = false;
  retry_soon_ = false;
  UpdateUsage();
}

StatusOr<std::string> Scheduler::ResolveTenant(const Job& job) {
  const auto known = tenant_of_credential_.find(job.client_authorization);
  if (known != tenant_of_credential_.end()) return known->second;
  StatusOr<std::string> tenant = manager_.AuthenticateClient(job.client_authorization);
  if (!tenant.ok()) {
    if (!IsLinkLoss(tenant.status())) return tenant.status();
    LinkLost(tenant.status().message());
    return Unavailable("the worker lost its cache manager; retry");
  }
  // Credentials are few (a token file's); a flood of bad ones never gets here.
  constexpr size_t kMaxCachedCredentials = 4096;
  if (tenant_of_credential_.size() >= kMaxCachedCredentials) tenant_of_credential_.clear();
  tenant_of_credential_.emplace(job.client_authorization, *tenant);
  return tenant;
}

Scheduler::Seq* Scheduler::NewestRunning(const std::string* tenant) const {
  Seq* newest = nullptr;
  for (Seq* s : running_) {
    if (s->dead || s->manager_id == 0) continue;
    if (tenant != nullptr && s->job->tenant != *tenant) continue;
    if (newest == nullptr || s->order > newest->order) newest = s;
  }
  return newest;
}

void Scheduler::LinkLost(const std::string& why) {
  if (attachment_) link_->ReportLost(attachment_->epoch, why);
  FailAll(Unavailable("the worker lost its cache manager (" + link_->address() + "): " + why));
  engine_.reset();
  attachment_.reset();
  SetServing(false);
}

void Scheduler::FailJob(const std::shared_ptr<Job>& job, const Status& status) {
  for (auto& seq : seqs_) {
    if (seq->job != job || seq->dead) continue;
    Release(*seq, /*close_at_manager=*/true);
    seq->dead = true;
  }
  if (!job->ended()) {
    job->End(status);
    counters_.failed.fetch_add(1);
  }
}

void Scheduler::DropCancelled() {
  for (auto& seq : seqs_) {
    if (seq->dead || !seq->job->cancelled()) continue;
    FailJob(seq->job, Cancelled("the client cancelled the request"));
  }
}

void Scheduler::RemoveDeadSeqs() {
  auto dead = [](const Seq* s) { return s->dead; };
  for (auto& seq : seqs_) {
    if (seq->dead) DropSwap(*seq);
  }
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), dead), waiting_.end());
  running_.erase(std::remove_if(running_.begin(), running_.end(), dead), running_.end());
  seqs_.remove_if([](const std::unique_ptr<Seq>& s) { return s->dead; });
}

std::vector<Scheduler::Seq*> Scheduler::Admit() {
  std::vector<Seq*> admitted;
  retry_soon_ = false;
  if (admission_paused_ && !running_.empty()) return admitted;
  admission_paused_ = false;
  const int32_t block_size = engine_->geometry().block_size;
  const int64_t num_blocks = engine_->geometry().num_blocks;
  int64_t prefill_tokens = 0;
  std::set<std::string> at_quota;  // tenants the manager refused for their quota
  std::vector<const std::string*> waiting_tenants;
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running) {
    waiting_.erase(
        std::remove_if(waiting_.begin(), waiting_.end(), [](const Seq* s) { return s->dead; }),
        waiting_.end());
    waiting_tenants.clear();
    for (const Seq* s : waiting_) waiting_tenants.push_back(&s->job->tenant);
    const size_t next = NextToAdmit(waiting_tenants, last_admitted_, at_quota);
    if (next >= waiting_.size()) break;
    const auto at = waiting_.begin() + static_cast<std::ptrdiff_t>(next);
    Seq& seq = **at;
    // Takes `seq` off the waiting queue (before anything that can change the queue).
    auto take = [&] { waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &seq)); };
    const std::shared_ptr<Job>& job = seq.job;
    GenerationRequest request = job->request;
    request.prompt.insert(request.prompt.end(), seq.generated.begin(), seq.generated.end());
    request.max_tokens -= static_cast<int32_t>(seq.generated.size());
    request.sampling.seed = seq.seed;
    request.rng = seq.rng;
    request.generated_text = seq.generated_text;
    request.swapped = seq.swapped;
    const auto prompt = static_cast<int64_t>(request.prompt.size());
    if (!admitted.empty() && prefill_tokens + prompt > options_.max_prefill_tokens) break;
    int64_t manager_id = 0;
    bool stop_after_this = false;
    if (request.mode != KvMode::kNone) {
      const int64_t total =
          static_cast<int64_t>(job->request.prompt.size()) + job->request.max_tokens;
      const int64_t need = CeilDiv(total, block_size);
      if (need > num_blocks) {
        take();
        FailJob(job, ResourceExhausted(
                         "the request needs " + std::to_string(need) + " KV blocks of " +
                         std::to_string(block_size) + " tokens (prompt " +
                         std::to_string(job->request.prompt.size()) + " + max_tokens " +
                         std::to_string(job->request.max_tokens) + ") but the whole pool has " +
                         std::to_string(num_blocks) +
                         ": lower max_tokens or give the manager more blocks (--num-blocks)"));
        continue;
      }
      StatusOr<OpenedSequence> opened = manager_.Open(
          request.prompt, request.mode, request.max_tokens, job->client_authorization);
      if (!opened.ok()) {
        const Status& status = opened.status();
        if (IsLinkLoss(status)) {
          LinkLost(status.message());
          return {};
        }
        if (status.code() == StatusCode::kResourceExhausted) {
          // Ask again when a sequence has left (or shortly, if none runs here).
          retry_soon_ = retry_soon_ || running_.empty();
          if (status.reason() == reason::kTenantQuotaExceeded) {
            at_quota.insert(job->tenant);  // its own sequences must leave; others go on
            continue;
          }
          admission_paused_ = true;
          break;
        }
        take();
        FailJob(job, status);
        continue;
      }
      manager_id = opened->sequence_id;
      request.block_table = std::move(opened->block_table);
      request.cached_tokens = opened->cached_tokens;
      // Headroom: every running sequence needs blocks within the next steps; when the
      // pool has less left, admitting more would only preempt someone soon.
      const auto running = static_cast<int64_t>(running_.size()) + 1;
      if (opened->allocatable_blocks < options_.headroom_blocks * running) {
        stop_after_this = true;
      }
    }
    // (Mode none holds no blocks; its client was authenticated at intake.)
    const int64_t cached = request.cached_tokens;
    StatusOr<SequenceId> id = engine_->AddSequence(std::move(request));
    take();
    seq.manager_id = manager_id;
    if (!id.ok()) {
      FailJob(job, id.status());
      continue;
    }
    seq.engine_id = *id;
    seq.committed = cached;
    seq.resumed = !seq.generated.empty();
    // What the prefill computes: the prompt less the cached prefix and, for a sequence
    // resumed from swap space, less what was written back.
    const int64_t have = engine_->sequence(seq.engine_id).num_kv_tokens;
    seq.prefill_tokens = prompt - have;
    if (seq.resumed) counters_.recomputed_tokens.fetch_add(prompt - have);
    counters_.swapped_tokens.fetch_add(have - cached);
    DropSwap(seq);
    seq.order = next_order_++;
    last_admitted_[job->tenant] = seq.order;
    if (!job->admitted) {
      job->admitted = true;
      job->admitted_at = Clock::now();
      job->cached_tokens = cached;
      counters_.prompt_tokens.fetch_add(static_cast<int64_t>(job->request.prompt.size()));
      counters_.cached_tokens.fetch_add(cached);
    }
    running_.push_back(&seq);
    admitted.push_back(&seq);
    prefill_tokens += prompt - cached;
    if (stop_after_this) {
      admission_paused_ = true;  // until a sequence leaves
      break;
    }
  }
  return admitted;
}

void Scheduler::Emit(Seq& seq, int32_t token, double step_s) {
  Job& job = *seq.job;
  const Clock::time_point now = Clock::now();
  seq.generated.push_back(token);
  ++job.completion_tokens;
  counters_.generated_tokens.fetch_add(1);
  if (job.first_token_at == Clock::time_point{}) {
    job.first_token_at = now;
    counters_.ttft_s.Observe(Seconds(now - job.arrival));
  }
  if (seq.has_token) {
    const double gap_s = Seconds(now - seq.last_token_at);
    counters_.itl_s.Observe(gap_s);
    job.gap_sum_s += gap_s;
    ++job.gaps;
  }
  seq.has_token = true;
  seq.last_token_at = now;
  job.last_token_at = now;
  if (tokenizer_) {
    try {
      seq.pending_utf8 += tokenizer_->TokenText(token);
    } catch (const std::exception&) {
      seq.pending_utf8 += "\xEF\xBF\xBD";  // a token the tokenizer does not know
    }
  }
  const bool last = engine_->sequence(seq.engine_id).finished();
  v1::GenerateResponse event;
  v1::GeneratedToken* out = event.mutable_token();
  out->set_index(seq.index);
  out->set_token_id(token);
  out->set_text(TakeCompleteUtf8(seq.pending_utf8, /*flush=*/last));
  out->set_step_latency_s(step_s);
  const Sequence& q = engine_->sequence(seq.engine_id);
  const PoolGeometry& g = engine_->geometry();
  out->set_kv_bytes_reserved(static_cast<int64_t>(q.block_table.size()) *
                             static_cast<int64_t>(g.block_bytes()));
  out->set_kv_bytes_used(q.num_kv_tokens * static_cast<int64_t>(g.token_bytes()));
  job.Push(std::move(event));
}

void Scheduler::Step(std::vector<Seq*> admitted) {
  auto gone = [](const Seq* s) { return s->dead || s->engine_id == 0; };
  // A job failed during admission may have left admitted samples behind.
  admitted.erase(std::remove_if(admitted.begin(), admitted.end(), gone), admitted.end());
  std::vector<Seq*> decode;
  for (Seq* s : running_) {
    if (gone(s) || std::find(admitted.begin(), admitted.end(), s) != admitted.end()) continue;
    if (!engine_->sequence(s->engine_id).finished()) decode.push_back(s);
  }
  if (!decode.empty()) {
    // Blocks for the decoding sequences' next tokens; preemption, if the pool is out
    // of them, takes the newest sequences first: prompts not prefilled yet lose nothing.
    decode = GrantBlocks(std::move(decode));
    if (!engine_) return;
    admitted.erase(std::remove_if(admitted.begin(), admitted.end(), gone), admitted.end());
  }
  if (admitted.empty() && decode.empty()) return;
  std::vector<SequenceId> prefill_ids, decode_ids;
  for (Seq* s : admitted) prefill_ids.push_back(s->engine_id);
  for (Seq* s : decode) decode_ids.push_back(s->engine_id);
  // One forward: the new prompts and every running sequence's next token together.
  const auto t0 = Clock::now();
  const Status status = engine_->Step(prefill_ids, decode_ids);
  const Clock::duration took = Clock::now() - t0;
  const double step_s = Seconds(took);
  counters_.steps.fetch_add(1);
  // Its time goes to the phases by the tokens each computed.
  int64_t fresh_tokens = 0, resumed_tokens = 0;
  for (const Seq* s : admitted) (s->resumed ? resumed_tokens : fresh_tokens) += s->prefill_tokens;
  const auto decode_tokens = static_cast<int64_t>(decode.size());
  const int64_t all_tokens = std::max<int64_t>(1, fresh_tokens + resumed_tokens + decode_tokens);
  const int64_t resumed_ns = Nanos(took) * resumed_tokens / all_tokens;
  const int64_t decode_ns = Nanos(took) * decode_tokens / all_tokens;
  counters_.phase_ns[static_cast<int>(SchedulerPhase::kRecompute)].fetch_add(resumed_ns);
  counters_.phase_ns[static_cast<int>(SchedulerPhase::kDecode)].fetch_add(decode_ns);
  counters_.phase_ns[static_cast<int>(SchedulerPhase::kPrefill)].fetch_add(Nanos(took) -
                                                                           resumed_ns - decode_ns);
  if (!status.ok()) {
    for (Seq* s : admitted) FailJob(s->job, Internal("prefill failed: " + status.ToString()));
    for (Seq* s : decode) FailJob(s->job, Internal("decode failed: " + status.ToString()));
    return;
  }
  for (Seq* s : admitted) Emit(*s, engine_->sequence(s->engine_id).tokens.back(), step_s);
  for (Seq* s : decode) Emit(*s, engine_->sequence(s->engine_id).tokens.back(), step_s);
  for (Seq* s : admitted) {
    if (!engine_) return;  // the manager was lost while forking: every Seq is gone
    if (s->fork_children && !s->dead) ForkChildren(*s, step_s);
  }
  if (!engine_) return;
  TrackJobPeaks();
  std::vector<Seq*> finished;
  for (Seq* s : running_) {
    if (!gone(s) && engine_->sequence(s->engine_id).finished()) finished.push_back(s);
  }
  Retire(finished);
}

void Scheduler::TrackJobPeaks() {
  std::map<Job*, std::pair<int64_t, int64_t>> per_job;  // reserved, used bytes
  const PoolGeometry& g = engine_->geometry();
  for (Seq* s : running_) {
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

void Scheduler::UpdateUsage() {
  int64_t running = 0;
  for (Seq* s : running_) running += (!s->dead && s->engine_id != 0) ? 1 : 0;
  if (engine_) {
    const KvUsage usage = engine_->Usage();
    counters_.blocks_held.store(usage.blocks_in_use);
    counters_.bytes_reserved.store(usage.bytes_reserved);
    counters_.bytes_used.store(usage.bytes_used);
  } else {
    counters_.blocks_held.store(0);
    counters_.bytes_reserved.store(0);
    counters_.bytes_used.store(0);
  }
  counters_.running.store(running);
  counters_.waiting.store(static_cast<int64_t>(waiting_.size()));
}

}  // namespace kvpool::worker
