// WorkerService: see worker_service.h. Request validation at the edge, Job submission,
// streaming the job's events, cancellation; the scheduler owns everything after Submit.
#include "service/worker_service.h"

#include <cstdlib>
#include <fstream>

#include "common/grpc_status.h"
#include "common/metadata.h"
#include "common/text_field.h"
#include "engine/request_check.h"
#include "service/manager_client.h"
#include "tokenizer/tokenizer.h"

namespace kvpool::worker {
namespace {

using v1::ToGrpcStatus;

// The bounds of a GenerateRequest (listed in docs/design.md and worker.proto).
constexpr int32_t kMaxSamples = 64;
constexpr size_t kMaxPromptBytes = size_t{1} << 20;
constexpr int kMaxStopStrings = 32;
constexpr size_t kMaxStopBytes = 256;

StatusOr<KvMode> ModeFromProto(v1::KvMode mode) {
  switch (mode) {
    case v1::KV_MODE_UNSPECIFIED:
    case v1::KV_MODE_PAGED:
      return KvMode::kPaged;
    case v1::KV_MODE_NONE:
      return KvMode::kNone;
    case v1::KV_MODE_CONTIGUOUS:
      return KvMode::kContiguous;
    default:
      return InvalidArgument("mode " + std::to_string(static_cast<int>(mode)) +
                             " is not a KvMode (KV_MODE_NONE = 1, KV_MODE_CONTIGUOUS = 2, "
                             "KV_MODE_PAGED = 3)");
  }
}

// Resident and peak resident bytes of this process (VmRSS, VmHWM in /proc/self/status).
std::pair<int64_t, int64_t> ProcessMemory() {
  std::ifstream status("/proc/self/status");
  std::string line;
  int64_t rss = 0, peak = 0;
  while (std::getline(status, line)) {
    const auto kib = [&] { return std::atoll(line.c_str() + line.find(':') + 1) * 1024; };
    if (line.rfind("VmRSS:", 0) == 0) rss = kib();
    if (line.rfind("VmHWM:", 0) == 0) peak = kib();
  }
  return {rss, peak};
}

}  // namespace

StatusOr<std::shared_ptr<Job>> JobFromRequest(const v1::GenerateRequest& r,
                                              const ModelConfig& config, const Tokenizer* tokenizer,
                                              uint64_t random_seed,
                                              const RequestFieldNames* api_names) {
  auto job = std::make_shared<Job>();
  GenerationRequest& g = job->request;
  if (!r.prompt().empty() && r.token_ids_size() > 0) {
    return InvalidArgument("give prompt or token_ids, not both");
  }
  if (r.prompt().empty() && r.token_ids_size() == 0) {
    return InvalidArgument("prompt and token_ids are both empty: give at least one token");
  }
  KVPOOL_RETURN_IF_ERROR(v1::CheckTextField(r.prompt(), "prompt", kMaxPromptBytes));
  if (r.stop_size() > kMaxStopStrings) {
    return InvalidArgument("stop has " + std::to_string(r.stop_size()) +
                           " strings, over the limit of " + std::to_string(kMaxStopStrings));
  }
  for (int i = 0; i < r.stop_size(); ++i) {
    const std::string field = "stop[" + std::to_string(i) + "]";
    KVPOOL_RETURN_IF_ERROR(v1::CheckTextField(r.stop(i), field, kMaxStopBytes));
    if (r.stop(i).empty()) return InvalidArgument(field + " is empty");
  }
  if (!r.prompt().empty()) {
    if (tokenizer == nullptr) {
      return InvalidArgument("prompt: this worker's model has no tokenizer; send token_ids");
    }
    g.prompt = tokenizer->Encode(r.prompt());
  } else {
    g.prompt.assign(r.token_ids().begin(), r.token_ids().end());
  }
  g.max_tokens = r.max_tokens();
  KVPOOL_ASSIGN_OR_RETURN(g.mode, ModeFromProto(r.mode()));
  const v1::SamplingParams& s = r.sampling();
  g.sampling.temperature = s.temperature();
  g.sampling.top_p = s.has_top_p() ? s.top_p() : 1.0;
  g.sampling.top_k = s.top_k();
  g.sampling.seed = s.has_seed() ? s.seed() : random_seed;
  g.sampling.min_p = s.min_p();
  g.sampling.presence_penalty = s.presence_penalty();
  g.sampling.frequency_penalty = s.frequency_penalty();
  g.sampling.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0;
  g.min_tokens = r.min_tokens();
  g.logprobs = r.logprobs();
  g.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  const v1::PrefixRetention& retention = r.retention();
  if (retention.pin_ttl_ms() < 0) {
    return InvalidArgument("retention.pin_ttl_ms must be >= 0 (0: no pin), got " +
                           std::to_string(retention.pin_ttl_ms()));
  }
  if (retention.has_priority() && (retention.priority() < 0 || retention.priority() > 100)) {
    return InvalidArgument("retention.priority must be in 0..100, got " +
                           std::to_string(retention.priority()));
  }
  if ((retention.pin_ttl_ms() > 0 || retention.has_priority()) && g.mode != KvMode::kPaged) {
    return InvalidArgument(
        "retention needs mode paged: only paged sequences keep their prompt's blocks for "
        "later requests");
  }
  job->pin_ttl_ms = retention.pin_ttl_ms();
  job->retention_priority = retention.has_priority() ? retention.priority() : -1;
  if (r.n() < 0 || r.n() > kMaxSamples) {
    return InvalidArgument("n must be in [1, " + std::to_string(kMaxSamples) +
                           "] (0 means 1), got " + std::to_string(r.n()));
  }
  job->n = r.n() == 0 ? 1 : r.n();
  g.stop.assign(r.stop().begin(), r.stop().end());
  g.ignore_eos = r.ignore_eos();
  // What the model can generate: the one check every API makes (request_check.h).
  RequestFieldNames names;
  names.prompt = r.prompt().empty() ? "token_ids" : "prompt";
  names.sampling = "sampling.";
  KVPOOL_RETURN_IF_ERROR(
      CheckGeneration(g, config, tokenizer != nullptr, api_names ? *api_names : names));
  return job;
}

Status AuthenticateCaller(ManagerLink* link, const std::string& authorization) {
  if (!link->has_token()) return Status::Ok();
  const std::shared_ptr<const Attachment> attached = link->current();
  if (!attached) {
    return Unavailable("the worker is not attached to its cache manager (" + link->address() +
                       "), which authenticates callers: retry shortly");
  }
  ManagerClient manager(link, /*on_call=*/{});
  manager.Attach(attached);
  StatusOr<std::string> tenant = manager.AuthenticateClient(authorization);
  return tenant.ok() ? Status::Ok() : tenant.status();
}

WorkerService::WorkerService(Scheduler* scheduler, ManagerLink* link,
                             std::shared_ptr<const Tokenizer> tokenizer, ModelIdentity identity)
    : scheduler_(scheduler),
      link_(link),
      tokenizer_(std::move(tokenizer)),
      identity_(std::move(identity)),
      cancel_watch_([scheduler] { scheduler->Wake(); }) {}

grpc::Status WorkerService::Run(grpc::ServerContext* context, std::shared_ptr<Job> job,
                                const std::function<bool(const v1::GenerateResponse&)>& on_event,
                                bool streamed) {
  if (!scheduler_->serving()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the worker is not attached to a cache manager (" + link_->address() +
                            "); retry shortly or use another worker");
  }
  const auto& metadata = context->client_metadata();
  if (const auto it = metadata.find(v1::kAuthorizationHeader); it != metadata.end()) {
    job->client_authorization.assign(it->second.data(), it->second.size());
  }
  // The client's cancellation or deadline reaches the job through the watch, which
  // cancels it and so wakes this handler; or, while events flow, through a failed write.
  const auto watched = cancel_watch_.Watch(job, [context] { return context->IsCancelled(); });
  scheduler_->Submit(job);
  std::vector<v1::GenerateResponse> events;
  Status outcome;
  for (;;) {
    const bool done = job->Wait(&events, &outcome);  // each event, the end, or a cancel
    for (const v1::GenerateResponse& event : events) {
      if (!on_event(event)) {
        job->Cancel();
        scheduler_->Wake();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    if (streamed && !events.empty()) watched->Delivered();
    if (done) return ToGrpcStatus(outcome);
    if (job->cancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "the request was cancelled or passed its deadline");
    }
  }
}

grpc::Status WorkerService::Generate(grpc::ServerContext* context,
                                     const v1::GenerateRequest* request,
                                     grpc::ServerWriter<v1::GenerateResponse>* writer) {
  thread_local std::mt19937_64 seeds{std::random_device{}()};
  StatusOr<std::shared_ptr<Job>> made =
      JobFromRequest(*request, scheduler_->config(), tokenizer_.get(), seeds());
  if (!made.ok()) return ToGrpcStatus(made.status());
  return Run(
      context, *made, [writer](const v1::GenerateResponse& event) { return writer->Write(event); },
      /*streamed=*/true);
}

grpc::Status WorkerService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                         v1::GetModelInfoResponse* response) {
  const ModelConfig& c = scheduler_->config();
  response->set_model_name(c.name);
  response->set_source(identity_.source);
  response->set_architecture(c.arch == Architecture::kLlama ? "llama" : "gpt2");
  response->set_num_layers(static_cast<int32_t>(c.num_layers));
  response->set_num_heads(static_cast<int32_t>(c.num_heads));
  response->set_num_kv_heads(static_cast<int32_t>(c.num_kv_heads));
  response->set_head_dim(static_cast<int32_t>(c.head_dim));
  response->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  response->set_max_context(static_cast<int32_t>(c.max_position));
  response->set_block_size(scheduler_->block_size());
  response->set_num_blocks(scheduler_->num_blocks());
  const std::shared_ptr<const Attachment> attachment = link_->current();
  response->set_kv_dtype(attachment ? KvDtypeName(attachment->geometry.dtype) : "");
  response->set_device(attachment ? attachment->device : identity_.device);
  response->set_has_tokenizer(tokenizer_ != nullptr);
  response->set_eos_token_id(static_cast<int32_t>(c.eos_token_id));
  response->set_num_parameters(c.NumParameters());
  // CUDA: weights in the pool's dtype; the CPU: per --weight-dtype, whatever the KV dtype.
  const bool on_cuda = attachment && attachment->device.rfind("cuda", 0) == 0;
  response->set_weight_bytes(
      on_cuda ? c.NumParameters() * static_cast<int64_t>(KvDtypeBytes(attachment->geometry.dtype))
              : scheduler_->CpuWeightBytes());
  return grpc::Status::OK;
}

grpc::Status WorkerService::GetStats(grpc::ServerContext* context, const v1::GetWorkerStatsRequest*,
                                     v1::GetWorkerStatsResponse* response) {
  // With auth on, only a caller the manager knows may read the worker's counters.
  std::string authorization;
  const auto& metadata = context->client_metadata();
  if (const auto it = metadata.find(v1::kAuthorizationHeader); it != metadata.end()) {
    authorization.assign(it->second.data(), it->second.size());
  }
  if (Status caller = AuthenticateCaller(link_, authorization); !caller.ok()) {
    return ToGrpcStatus(caller);
  }
  const std::shared_ptr<const Attachment> attachment = link_->current();
  const WorkerCounters& c = scheduler_->counters();
  response->set_attached(attachment != nullptr && scheduler_->serving());
  response->set_worker_id(attachment ? attachment->worker_id : 0);
  response->set_manager_address(link_->address());
  response->set_requests_running(c.running.load());
  response->set_requests_waiting(c.waiting.load());
  response->set_requests_finished_total(c.finished.load());
  response->set_requests_failed_total(c.failed.load());
  response->set_preemptions_total(c.preemptions.load());
  response->set_prompt_tokens_total(c.prompt_tokens.load());
  response->set_cached_tokens_total(c.cached_tokens.load());
  response->set_generated_tokens_total(c.generated_tokens.load());
  response->set_scheduler_steps_total(c.steps.load());
  response->set_manager_calls_total(c.manager_calls.load());
  response->set_reattachments_total(link_->reattachments());
  response->set_kv_blocks_held(c.blocks_held.load());
  response->set_kv_bytes_reserved(c.bytes_reserved.load());
  response->set_kv_bytes_used(c.bytes_used.load());
  response->set_recomputed_tokens_total(c.recomputed_tokens.load());
  response->set_swapped_tokens_total(c.swapped_tokens.load());
  response->set_swap_space_used_bytes(c.swap_bytes.load());
  for (int p = 0; p < static_cast<int>(SchedulerPhase::kCount); ++p) {
    (*response
          ->mutable_scheduler_seconds_total())[SchedulerPhaseName(static_cast<SchedulerPhase>(p))] =
        static_cast<double>(c.phase_ns[p].load()) * 1e-9;
  }
  const auto [rss, peak] = ProcessMemory();
  response->set_rss_bytes(rss);
  response->set_peak_rss_bytes(peak);
  return grpc::Status::OK;
}

}  // namespace kvpool::worker
