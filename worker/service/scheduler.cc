#include "service/scheduler.h"

#include <algorithm>
#include <iostream>
#include <map>
#include <optional>
#include <random>

#include "kvpool/v1/metadata.h"
#include "service/utf8.h"
#include "tokenizer/tokenizer.h"

namespace kvpool::worker {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of headroom per running sequence below which admission stops (each will need
// a new block every block_size tokens; admitting into a full pool only preempts).
constexpr int64_t kHeadroomBlocks = 4;

// Tokens committed in one Step call at most, below the manager's own cap.
constexpr int64_t kMaxCommitTokensPerStep = 1 << 16;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Sample i's seed: distinct streams from one request seed.
uint64_t SampleSeed(uint64_t seed, int32_t index) {
  if (index == 0) return seed;
  std::seed_seq mix{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(index)};
  std::mt19937_64 rng(mix);
  return rng();
}

Status FromGrpc(const grpc::Status& status, const std::string& what) {
  return Status(static_cast<StatusCode>(status.error_code()),
                what + ": " + status.error_message());
}

v1::SequenceMode ToProto(KvMode mode) {
  return mode == KvMode::kContiguous ? v1::SEQUENCE_MODE_CONTIGUOUS : v1::SEQUENCE_MODE_PAGED;
}

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

struct Scheduler::Seq {
  std::shared_ptr<Job> job;
  int32_t index = 0;  // sample
  uint64_t seed = 0;
  std::vector<int32_t> generated;      // survives preemption
  std::string generated_text;          // for stop strings after a preemption
  std::optional<std::mt19937_64> rng;  // saved at preemption
  std::string pending_utf8;            // token bytes that are not a whole character yet
  SequenceId engine_id = 0;            // 0: not admitted
  int64_t manager_id = 0;              // 0: none mode, or not open
  int64_t committed = 0;               // tokens the manager counts as committed
  int64_t order = 0;                   // admission order; the newest is preempted first
  bool fork_children = false;          // paged n > 1: fork the other samples after prefill
  bool fresh = false;                  // prefilled in this iteration
  bool dead = false;                   // ended; dropped from every list this iteration
  bool has_token = false;
  Clock::time_point last_token_at;
};

Scheduler::Scheduler(SchedulerOptions options, ModelConfig config, ModelWeights weights,
                     std::shared_ptr<const Tokenizer> tokenizer, ManagerLink* link,
                     std::function<void(bool)> on_serving)
    : options_(options),
      config_(std::move(config)),
      weights_(std::move(weights)),
      tokenizer_(std::move(tokenizer)),
      link_(link),
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

void Scheduler::Start() { thread_ = std::thread([this] { Run(); }); }

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
    SyncAttachment();
    for (std::shared_ptr<Job>& job : jobs) {
      if (!engine_) {
        job->End(Unavailable("the worker is not attached to a cache manager; retry shortly"));
        counters_.failed.fetch_add(1);
        continue;
      }
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
      if (!admitted.empty()) Prefill(admitted);
      if (engine_) Decode();
    } catch (const std::exception& e) {
      // A bug or a device error (e.g. out of memory) in the model: the jobs in flight
      // end INTERNAL, the worker keeps serving.
      std::cerr << "kvpool-worker: scheduler step failed: " << e.what() << "\n";
      FailAll(Internal(std::string("the worker's scheduler step failed: ") + e.what()),
              /*close_at_manager=*/true);
    }
    RemoveDeadSeqs();
    UpdateUsage();
  }
  FailAll(Unavailable("the worker is shutting down"), /*close_at_manager=*/true);
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
  seqs_.clear();
  waiting_.clear();
  running_.clear();
  if (!close_at_manager) unclosed_.clear();  // the manager is gone: nothing to close
  admission_paused_ = false;
  retry_soon_ = false;
  UpdateUsage();
}

bool Scheduler::IsLinkLoss(const grpc::Status& status) const {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return true;
  }
  // The manager forgot this worker (its lease ran out, or it restarted).
  return status.error_code() == grpc::StatusCode::NOT_FOUND &&
         status.error_message().find("egister") != std::string::npos;
}

void Scheduler::LinkLost(const std::string& why) {
  if (attachment_) link_->ReportLost(attachment_->epoch, why);
  FailAll(Unavailable("the worker lost its cache manager (" + link_->address() + "): " + why));
  engine_.reset();
  attachment_.reset();
  SetServing(false);
}

void Scheduler::Release(Seq& seq, bool close_at_manager) {
  if (seq.engine_id != 0 && engine_) engine_->Release(seq.engine_id);
  seq.engine_id = 0;
  if (seq.manager_id != 0 && close_at_manager && attachment_) {
    v1::CloseSequenceRequest request;
    request.set_worker_id(attachment_->worker_id);
    request.set_sequence_id(seq.manager_id);
    v1::CloseSequenceResponse response;
    auto context = link_->NewContext();
    counters_.manager_calls.fetch_add(1);
    const grpc::Status status = link_->stub().CloseSequence(context.get(), request, &response);
    if (!status.ok() && status.error_code() != grpc::StatusCode::NOT_FOUND) {
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
    v1::CloseSequenceRequest request;
    request.set_worker_id(attachment_->worker_id);
    request.set_sequence_id(id);
    v1::CloseSequenceResponse response;
    auto context = link_->NewContext();
    counters_.manager_calls.fetch_add(1);
    const grpc::Status status = link_->stub().CloseSequence(context.get(), request, &response);
    if (status.ok() || status.error_code() == grpc::StatusCode::NOT_FOUND) continue;
    if (IsLinkLoss(status)) return LinkLost("CloseSequence: " + status.error_message());
    unclosed_.push_back(id);
  }
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
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running) {
    Seq& seq = *waiting_.front();
    if (seq.dead) {
      waiting_.pop_front();
      continue;
    }
    const std::shared_ptr<Job>& job = seq.job;
    GenerationRequest request = job->request;
    request.prompt.insert(request.prompt.end(), seq.generated.begin(), seq.generated.end());
    request.max_tokens -= static_cast<int32_t>(seq.generated.size());
    request.sampling.seed = seq.seed;
    request.rng = seq.rng;
    request.generated_text = seq.generated_text;
    const auto prompt = static_cast<int64_t>(request.prompt.size());
    if (!admitted.empty() && prefill_tokens + prompt > options_.max_prefill_tokens) break;
    int64_t manager_id = 0;
    bool stop_after_this = false;
    if (request.mode != KvMode::kNone) {
      const int64_t total = static_cast<int64_t>(job->request.prompt.size()) +
                            job->request.max_tokens;
      const int64_t need = CeilDiv(total, block_size);
      if (need > num_blocks) {
        waiting_.pop_front();
        FailJob(job, ResourceExhausted(
                         "the request needs " + std::to_string(need) + " KV blocks of " +
                         std::to_string(block_size) + " tokens (prompt " +
                         std::to_string(job->request.prompt.size()) + " + max_tokens " +
                         std::to_string(job->request.max_tokens) + ") but the whole pool has " +
                         std::to_string(num_blocks) +
                         ": lower max_tokens or give the manager more blocks (--num-blocks)"));
        continue;
      }
      v1::OpenSequenceRequest open;
      open.set_worker_id(attachment_->worker_id);
      open.mutable_token_ids()->Add(request.prompt.begin(), request.prompt.end());
      open.set_mode(ToProto(request.mode));
      open.set_max_tokens(request.max_tokens);
      v1::OpenSequenceResponse opened;
      auto context = link_->NewContext();
      // Always sent: a client without a token is anonymous, never the worker's tenant.
      context->AddMetadata(v1::kClientAuthorizationHeader, job->client_authorization);
      counters_.manager_calls.fetch_add(1);
      const grpc::Status status = link_->stub().OpenSequence(context.get(), open, &opened);
      if (!status.ok()) {
        if (IsLinkLoss(status)) {
          LinkLost("OpenSequence: " + status.error_message());
          return {};
        }
        if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          // Ask again when a sequence has left (or shortly, if none runs here).
          retry_soon_ = running_.empty();
          admission_paused_ = true;
          break;
        }
        waiting_.pop_front();
        FailJob(job, FromGrpc(status, "the cache manager refused the sequence"));
        continue;
      }
      manager_id = opened.sequence_id();
      request.block_table.assign(opened.block_table().begin(), opened.block_table().end());
      request.cached_tokens = opened.cached_tokens();
      // Headroom: every running sequence needs blocks within the next steps; when the
      // pool has less left, admitting more would only preempt someone soon.
      const auto running = static_cast<int64_t>(running_.size()) + 1;
      if (opened.allocatable_blocks() < kHeadroomBlocks * running) stop_after_this = true;
    }
    const int64_t cached = request.cached_tokens;
    StatusOr<SequenceId> id = engine_->AddSequence(std::move(request));
    waiting_.pop_front();
    seq.manager_id = manager_id;
    if (!id.ok()) {
      FailJob(job, id.status());
      continue;
    }
    seq.engine_id = *id;
    seq.committed = cached;
    seq.order = next_order_++;
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
  if (job.first_token_at == Clock::time_point{}) job.first_token_at = now;
  if (seq.has_token) {
    job.gap_sum_s += Seconds(now - seq.last_token_at);
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

void Scheduler::Prefill(std::vector<Seq*> seqs) {
  // A job failed during admission may have left admitted samples behind.
  seqs.erase(std::remove_if(seqs.begin(), seqs.end(), [](const Seq* s) { return s->dead; }),
             seqs.end());
  if (seqs.empty()) return;
  std::vector<SequenceId> ids;
  for (Seq* s : seqs) ids.push_back(s->engine_id);
  const auto t0 = Clock::now();
  const Status status = engine_->Prefill(ids);
  const double step_s = Seconds(Clock::now() - t0);
  counters_.steps.fetch_add(1);
  if (!status.ok()) {
    for (Seq* s : seqs) FailJob(s->job, Internal("prefill failed: " + status.ToString()));
    return;
  }
  for (Seq* s : seqs) {
    s->fresh = true;
    Emit(*s, engine_->sequence(s->engine_id).tokens.back(), step_s);
  }
  for (Seq* s : seqs) {
    if (!engine_) return;  // the manager was lost while forking: every Seq is gone
    if (s->fork_children && !s->dead) ForkChildren(*s, step_s);
  }
  if (!engine_) return;
  TrackJobPeaks();
  std::vector<Seq*> finished;
  for (Seq* s : running_) {
    if (!s->dead && s->engine_id != 0 && engine_->sequence(s->engine_id).finished()) {
      finished.push_back(s);
    }
  }
  Retire(finished);
}

void Scheduler::ForkChildren(Seq& parent, double prefill_s) {
  parent.fork_children = false;
  const Sequence& p = engine_->sequence(parent.engine_id);
  // The manager forks what is committed: the whole prompt first.
  if (parent.committed < p.num_kv_tokens) {
    v1::StepRequest request;
    request.set_worker_id(attachment_->worker_id);
    v1::StepItem* item = request.add_items();
    item->set_sequence_id(parent.manager_id);
    item->set_num_tokens(p.num_kv_tokens);
    item->mutable_commit_token_ids()->Add(p.tokens.begin() + parent.committed,
                                          p.tokens.begin() + p.num_kv_tokens);
    v1::StepResponse response;
    auto context = link_->NewContext();
    counters_.manager_calls.fetch_add(1);
    const grpc::Status status = link_->stub().Step(context.get(), request, &response);
    if (!status.ok()) {
      if (IsLinkLoss(status)) return LinkLost("Step: " + status.error_message());
      return FailJob(parent.job, FromGrpc(status, "committing the prompt before Fork"));
    }
    if (response.results(0).code() != 0) {
      return FailJob(parent.job, Status(static_cast<StatusCode>(response.results(0).code()),
                                        response.results(0).message()));
    }
    parent.committed = p.num_kv_tokens;
  }
  for (int32_t i = 1; i < parent.job->n; ++i) {
    auto child = std::make_unique<Seq>();
    child->job = parent.job;
    child->index = i;
    child->seed = SampleSeed(parent.job->request.sampling.seed, i);
    v1::ForkRequest request;
    request.set_worker_id(attachment_->worker_id);
    request.set_sequence_id(parent.manager_id);
    v1::ForkResponse forked;
    auto context = link_->NewContext();
    counters_.manager_calls.fetch_add(1);
    const grpc::Status status = link_->stub().Fork(context.get(), request, &forked);
    if (!status.ok()) {
      if (IsLinkLoss(status)) return LinkLost("Fork: " + status.error_message());
      if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
        return FailJob(parent.job, FromGrpc(status, "Fork"));
      }
      // No block for the copy: the sample runs on its own later (the prompt's blocks
      // are cached, so its prefill is mostly a prefix hit).
      waiting_.push_back(child.get());
      seqs_.push_back(std::move(child));
      continue;
    }
    StatusOr<SequenceId> id = engine_->Fork(
        parent.engine_id, std::vector<int32_t>(forked.block_table().begin(),
                                               forked.block_table().end()),
        forked.copy_src_block(), forked.copy_dst_block(), child->seed);
    child->manager_id = forked.sequence_id();
    if (!id.ok()) {
      Release(*child, /*close_at_manager=*/true);
      return FailJob(parent.job, id.status());
    }
    child->engine_id = *id;
    child->committed = parent.committed;
    child->order = next_order_++;
    child->fresh = true;
    Seq& stored = *child;
    running_.push_back(child.get());
    seqs_.push_back(std::move(child));
    Emit(stored, engine_->sequence(stored.engine_id).tokens.back(), prefill_s);
  }
}

std::vector<Scheduler::Seq*> Scheduler::GrantBlocks(std::vector<Seq*> seqs) {
  const int32_t block_size = engine_->geometry().block_size;
  for (;;) {
    v1::StepRequest request;
    request.set_worker_id(attachment_->worker_id);
    std::vector<Seq*> asked;
    std::vector<int64_t> commit_to;
    // Commits are lazy and may wait: a call carries no more than the manager takes per
    // call, whole blocks at a time.
    int64_t commit_budget = CommitBudget();
    for (Seq* s : seqs) {
      if (s->dead || s->manager_id == 0) continue;
      const Sequence& q = engine_->sequence(s->engine_id);
      const auto slots = static_cast<int64_t>(q.tokens.size());
      const int64_t have = static_cast<int64_t>(q.block_table.size()) * block_size;
      // Full blocks become shareable; contiguous sequences publish nothing.
      int64_t full = q.request.mode == KvMode::kPaged
                         ? q.num_kv_tokens / block_size * block_size
                         : s->committed;
      full = std::max(s->committed,
                      std::min(full, s->committed + commit_budget / block_size * block_size));
      if (slots <= have && s->committed >= full) continue;
      commit_budget -= full - s->committed;
      v1::StepItem* item = request.add_items();
      item->set_sequence_id(s->manager_id);
      item->set_num_tokens(slots);
      item->mutable_commit_token_ids()->Add(q.tokens.begin() + s->committed,
                                            q.tokens.begin() + full);
      asked.push_back(s);
      commit_to.push_back(full);
    }
    if (asked.empty()) break;
    v1::StepResponse response;
    auto context = link_->NewContext();
    counters_.manager_calls.fetch_add(1);
    const grpc::Status status = link_->stub().Step(context.get(), request, &response);
    if (!status.ok()) {
      if (IsLinkLoss(status)) {
        LinkLost("Step: " + status.error_message());
        return {};
      }
      for (Seq* s : asked) FailJob(s->job, FromGrpc(status, "Step"));
      break;
    }
    bool exhausted = false;
    for (size_t i = 0; i < asked.size() && i < static_cast<size_t>(response.results_size());
         ++i) {
      const v1::StepItemResult& result = response.results(static_cast<int>(i));
      Seq& s = *asked[i];
      if (result.code() == 0) {
        const Status appended = engine_->AppendBlocks(
            s.engine_id,
            std::vector<int32_t>(result.new_blocks().begin(), result.new_blocks().end()));
        if (!appended.ok()) FailJob(s.job, appended);
        s.committed = commit_to[i];
      } else if (result.code() == static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED)) {
        exhausted = true;
      } else {
        FailJob(s.job, Status(static_cast<StatusCode>(result.code()), result.message()));
      }
    }
    if (!exhausted) continue;  // commits left over the budget go in the next call
    Seq* victim = nullptr;
    for (Seq* s : running_) {
      if (!s->dead && s->manager_id != 0 && (victim == nullptr || s->order > victim->order)) {
        victim = s;
      }
    }
    if (victim == nullptr) break;
    Preempt(*victim);
    seqs.erase(std::remove(seqs.begin(), seqs.end(), victim), seqs.end());
  }
  std::vector<Seq*> ready;
  for (Seq* s : seqs) {
    if (!s->dead && s->engine_id != 0) ready.push_back(s);
  }
  return ready;
}

int64_t Scheduler::CommitBudget() const {
  const int64_t cap = attachment_->max_tokens_per_call;
  return cap > 0 ? std::min(cap, kMaxCommitTokensPerStep) : kMaxCommitTokensPerStep;
}

void Scheduler::Preempt(Seq& seq) {
  const Sequence& q = engine_->sequence(seq.engine_id);
  seq.rng = q.rng;
  seq.generated_text = q.text;
  Release(seq, /*close_at_manager=*/true);
  running_.erase(std::remove(running_.begin(), running_.end(), &seq), running_.end());
  waiting_.push_front(&seq);
  ++seq.job->preemptions;
  counters_.preemptions.fetch_add(1);
  admission_paused_ = true;
}

void Scheduler::Decode() {
  std::vector<Seq*> batch;
  for (Seq* s : running_) {
    if (!s->dead && !s->fresh && !engine_->sequence(s->engine_id).finished()) batch.push_back(s);
    s->fresh = false;
  }
  if (batch.empty()) return;
  batch = GrantBlocks(std::move(batch));
  if (!engine_ || batch.empty()) return;
  std::vector<SequenceId> ids;
  for (Seq* s : batch) ids.push_back(s->engine_id);
  const auto t0 = Clock::now();
  const Status status = engine_->Decode(ids);
  const double step_s = Seconds(Clock::now() - t0);
  counters_.steps.fetch_add(1);
  if (!status.ok()) {
    for (Seq* s : batch) FailJob(s->job, Internal("decode failed: " + status.ToString()));
    return;
  }
  TrackJobPeaks();
  std::vector<Seq*> finished;
  for (Seq* s : batch) {
    Emit(*s, engine_->sequence(s->engine_id).tokens.back(), step_s);
    if (engine_->sequence(s->engine_id).finished()) finished.push_back(s);
  }
  Retire(finished);
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
    more = false;
    v1::StepRequest request;
    request.set_worker_id(attachment_->worker_id);
    std::vector<std::pair<Seq*, int64_t>> committing;
    int64_t commit_budget = CommitBudget();
    for (Seq* s : seqs) {
      if (s->dead || s->manager_id == 0) continue;
      const Sequence& q = engine_->sequence(s->engine_id);
      if (q.request.mode != KvMode::kPaged) continue;
      const int64_t all = q.num_kv_tokens / block_size * block_size;
      const int64_t full =
          std::min(all, s->committed + commit_budget / block_size * block_size);
      if (s->committed >= full) {
        more = more || s->committed < all;
        continue;
      }
      commit_budget -= full - s->committed;
      more = more || full < all;
      v1::StepItem* item = request.add_items();
      item->set_sequence_id(s->manager_id);
      item->set_num_tokens(q.num_kv_tokens);
      item->mutable_commit_token_ids()->Add(q.tokens.begin() + s->committed,
                                            q.tokens.begin() + full);
      committing.emplace_back(s, full);
    }
    if (committing.empty()) break;
    v1::StepResponse response;
    auto context = link_->NewContext();
    counters_.manager_calls.fetch_add(1);
    const grpc::Status status = link_->stub().Step(context.get(), request, &response);
    if (!status.ok()) {
      lost = IsLinkLoss(status);
      lost_why = status.error_message();
      break;
    }
    for (size_t i = 0; i < committing.size() && i < static_cast<size_t>(response.results_size());
         ++i) {
      if (response.results(static_cast<int>(i)).code() != 0) {
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
    job.Push(std::move(event));
    job.End(Status::Ok());
    counters_.finished.fetch_add(1);
  }
  admission_paused_ = false;
  if (lost) LinkLost("Step: " + lost_why);
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
