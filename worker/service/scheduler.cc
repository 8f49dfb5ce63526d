// The Scheduler's loop and lifecycle (see scheduler.h): taking jobs (the tenant
// resolved at intake, one Sample per sample), following the manager attachment (a
// fresh engine and policy state per attachment), failing and cancelling jobs, and the
// counters. It never decides admission or preemption (KvPolicy) and never builds a
// protobuf (Job writes the stream, ManagerClient speaks to the manager).
#include "service/scheduler.h"

#include <algorithm>
#include <iostream>

#include "service/scheduler_internal.h"

namespace kvpool::worker {
namespace {

using scheduler_internal::Nanos;
using scheduler_internal::PhaseTimer;
using scheduler_internal::SampleSeed;
using scheduler_internal::Seconds;

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
      policy_(KvPolicyOptions{options_.max_running, options_.max_prefill_tokens,
                              options_.headroom_blocks},
              &manager_),
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
        } else if (policy_.retry_soon()) {
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
        auto sample = std::make_unique<Sample>();
        sample->job = job;
        sample->index = i;
        sample->seed = SampleSeed(job->request.sampling.seed, i);
        sample->fork_children = fork;
        waiting_.push_back(sample.get());
        samples_.push_back(std::move(sample));
      }
    }
    if (!engine_) continue;
    try {
      RetryCloses();
      DropCancelled();
      Admit();
      if (engine_) Step();
    } catch (const std::exception& e) {
      // A bug or a device error (e.g. out of memory) in the model: the jobs in flight
      // end INTERNAL, the worker keeps serving.
      std::cerr << "kvpool-worker: scheduler step failed: " << e.what() << "\n";
      FailAll(Internal(std::string("the worker's scheduler step failed: ") + e.what()),
              /*close_at_manager=*/true);
    }
    RemoveDeadSamples();
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

int64_t Scheduler::CpuWeightBytes() const {
  int64_t bytes = weights_.ParameterBytes();
  if (options_.cpu_weight_dtype != at::kFloat) {  // bf16 or fp16: 2 bytes of 4
    for (const LayerWeights& l : weights_.layers) {
      for (const at::Tensor* w : {&l.qkv_w, &l.o_w, &l.up_w, &l.down_w}) {
        if (w->defined()) bytes -= w->numel() * 2;
      }
    }
  }
  return bytes;
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
  const KvDtype pool_dtype = current->geometry.dtype;
  if (options_.kv_cache_dtype && *options_.kv_cache_dtype != pool_dtype) {
    link_->ReportFatal(std::string("this worker was started with --kv-cache-dtype ") +
                       KvDtypeName(*options_.kv_cache_dtype) + " but the manager's pool holds " +
                       KvDtypeName(pool_dtype) +
                       " K/V: start both with the same --kv-cache-dtype " +
                       "(or the worker with auto)");
    return;
  }
  EngineOptions options;
  options.device = current->device;
  // CUDA: weights and KV in the pool's dtype (an int8/fp8 pool is then refused by the
  // engine, naming both); the CPU: weights per --weight-dtype, KV as the pool holds it.
  options.dtype = KvDtypeScaled(pool_dtype) ? at::kHalf : TorchDtypeOf(pool_dtype);
  options.cpu_kv_dtype = pool_dtype;
  options.block_size = current->geometry.block_size;
  options.num_blocks = current->geometry.num_blocks;
  options.threads = options_.threads;
  options.cpu_weight_dtype = options_.cpu_weight_dtype;
  KvPool pool = KvPool::Adopt(current->geometry, current->base, current->mapping);
  auto engine = Engine::Create(config_, weights_, options, tokenizer_, std::move(pool));
  if (!engine.ok()) {
    link_->ReportFatal("cannot run on the manager's pool: " + engine.status().ToString());
    return;
  }
  engine_ = std::move(*engine);
  policy_.Reset(current->geometry.block_size, current->geometry.num_blocks);
  block_size_.store(current->geometry.block_size);
  num_blocks_.store(current->geometry.num_blocks);
  SetServing(true);
  // Scripts and tests wait for this line: from here requests are served.
  std::cout << "kvpool-worker attached to " << link_->address() << " as worker "
            << current->worker_id << std::endl;
}

void Scheduler::FailAll(const Status& status, bool close_at_manager) {
  for (auto& sample : samples_) {
    Release(*sample, close_at_manager);
    if (!sample->job->ended()) {
      sample->job->End(status);
      counters_.failed.fetch_add(1);
    }
  }
  for (auto& sample : samples_) DropSwap(*sample);
  samples_.clear();
  waiting_.clear();
  running_.clear();
  if (!close_at_manager) unclosed_.clear();  // the manager is gone: nothing to close
  policy_.Resume();
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

void Scheduler::LinkLost(const std::string& why) {
  if (attachment_) link_->ReportLost(attachment_->epoch, why);
  FailAll(Unavailable("the worker lost its cache manager (" + link_->address() + "): " + why));
  engine_.reset();
  attachment_.reset();
  SetServing(false);
}

void Scheduler::FailJob(const std::shared_ptr<Job>& job, const Status& status) {
  for (auto& sample : samples_) {
    if (sample->job != job || sample->dead) continue;
    Release(*sample, /*close_at_manager=*/true);
    sample->dead = true;
  }
  if (!job->ended()) {
    job->End(status);
    counters_.failed.fetch_add(1);
  }
}

void Scheduler::DropCancelled() {
  for (auto& sample : samples_) {
    if (sample->dead || !sample->job->cancelled()) continue;
    FailJob(sample->job, Cancelled("the client cancelled the request"));
  }
}

void Scheduler::RemoveDeadSamples() {
  auto dead = [](const Sample* s) { return s->dead; };
  for (auto& sample : samples_) {
    if (sample->dead) DropSwap(*sample);
  }
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), dead), waiting_.end());
  running_.erase(std::remove_if(running_.begin(), running_.end(), dead), running_.end());
  samples_.remove_if([](const std::unique_ptr<Sample>& s) { return s->dead; });
}

void Scheduler::UpdateUsage() {
  int64_t running = 0;
  for (Sample* s : running_) running += (!s->dead && s->engine_id != 0) ? 1 : 0;
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
