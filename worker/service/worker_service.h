// WorkerService: the kvpool.v1.Worker gRPC service (synchronous API). It owns request
// validation (every bad field gets INVALID_ARGUMENT naming it, before anything is
// queued), turns a GenerateRequest into a Job for the Scheduler, streams the job's
// events back, and cancels the job when the client cancels, passes its deadline or
// goes away, so its sequence is freed at the next scheduler step. It holds no
// sequence state: that is the scheduler's. Its pin calls (PinPrompt prefills through
// the scheduler; ListPins and Unpin go straight to the manager) live in
// worker_service_pins.cc.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "common/model_config.h"
#include "engine/request_check.h"
#include "kvpool/v1/worker.grpc.pb.h"
#include "service/cancel_watch.h"
#include "service/job.h"
#include "service/manager_link.h"
#include "service/scheduler.h"

namespace kvpool {
class Tokenizer;
}

namespace kvpool::worker {

// What the worker says about itself in GetModelInfo.
struct ModelIdentity {
  std::string source;  // "built-in ..." or the folder
  std::string device = "cpu";
};

// Checks a GenerateRequest against the model and turns it into a job request;
// INVALID_ARGUMENT naming the field otherwise. `random_seed` is used when the request
// has none. `names`: how the calling API names the fields (default: this proto's).
StatusOr<std::shared_ptr<Job>> JobFromRequest(const v1::GenerateRequest& request,
                                              const ModelConfig& config, const Tokenizer* tokenizer,
                                              uint64_t random_seed,
                                              const RequestFieldNames* names = nullptr);

// With auth on (the link holds a token), asks the manager whose client credential
// `authorization` is ("Bearer TOKEN"): OK, UNAUTHENTICATED / PERMISSION_DENIED, or
// UNAVAILABLE while the worker is not attached. OK without auth.
Status AuthenticateCaller(ManagerLink* link, const std::string& authorization);

class WorkerService final : public v1::Worker::Service {
 public:
  // `scheduler` and `link` must outlive the service.
  WorkerService(Scheduler* scheduler, ManagerLink* link, std::shared_ptr<const Tokenizer> tokenizer,
                ModelIdentity identity);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::GetModelInfoResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetWorkerStatsRequest* request,
                        v1::GetWorkerStatsResponse* response) override;
  // Prefix pins (worker_service_pins.cc): the caller's tenant's, through the manager.
  grpc::Status PinPrompt(grpc::ServerContext* context, const v1::PinPromptRequest* request,
                         v1::PinPromptResponse* response) override;
  grpc::Status ListPins(grpc::ServerContext* context, const v1::ListPinsForClientRequest* request,
                        v1::ListPinsForClientResponse* response) override;
  grpc::Status Unpin(grpc::ServerContext* context, const v1::UnpinForClientRequest* request,
                     v1::UnpinForClientResponse* response) override;

 private:
  // Submits `job` (with the caller's credential) and hands each of its events to
  // `on_event` until it ends; false from `on_event` (the client went away), the
  // client's cancellation or its deadline cancel the job. UNAVAILABLE while detached.
  // `streamed`: on_event writes to the client, so a failed write tells of a departure
  // and the cancel watch need not ask about the call while events flow.
  grpc::Status Run(grpc::ServerContext* context, std::shared_ptr<Job> job,
                   const std::function<bool(const v1::GenerateResponse&)>& on_event, bool streamed);

  Scheduler* scheduler_;
  ManagerLink* link_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  ModelIdentity identity_;
  CancelWatch cancel_watch_;  // in-flight calls' cancellations and deadlines
};

}  // namespace kvpool::worker
