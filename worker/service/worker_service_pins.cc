// WorkerService's prefix pins (see worker_service.h and worker.proto PrefixRetention):
// PinPrompt runs the prompt through the scheduler as a one-token paged job whose pin is
// made as it retires (while its sequence still holds the blocks) and returns that pin;
// ListPins and Unpin are the caller's tenant's, asked of the manager directly (a
// ManagerClient of the handler's own on the current attachment, as AuthenticateCaller
// does). The tenant is always the one the manager authenticates from the caller's token.
#include <random>

#include "common/grpc_status.h"
#include "common/metadata.h"
#include "service/manager_client.h"
#include "service/worker_service.h"

namespace kvpool::worker {
namespace {

using v1::ToGrpcStatus;

std::string AuthorizationOf(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(v1::kAuthorizationHeader);
  return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

void ToProto(const PinOutcome& pin, v1::PrefixPin* out) {
  out->set_pin_id(pin.pin_id);
  out->set_pinned_tokens(pin.pinned_tokens);
  out->set_expires_in_ms(pin.expires_in_ms);
  if (pin.priority >= 0) out->set_priority(pin.priority);
}

}  // namespace

grpc::Status WorkerService::PinPrompt(grpc::ServerContext* context,
                                      const v1::PinPromptRequest* request,
                                      v1::PinPromptResponse* response) {
  if (request->retention().pin_ttl_ms() <= 0) {
    return ToGrpcStatus(InvalidArgument("retention.pin_ttl_ms must be >= 1 for a pin, got " +
                                        std::to_string(request->retention().pin_ttl_ms())));
  }
  // The prompt's blocks come from a one-token greedy paged generation; its token is
  // dropped.
  v1::GenerateRequest generate;
  generate.set_prompt(request->prompt());
  generate.mutable_token_ids()->CopyFrom(request->token_ids());
  generate.set_max_tokens(1);
  generate.set_mode(v1::KV_MODE_PAGED);
  generate.set_ignore_eos(true);
  *generate.mutable_retention() = request->retention();
  StatusOr<std::shared_ptr<Job>> made =
      JobFromRequest(generate, scheduler_->config(), tokenizer_.get(), /*random_seed=*/0);
  if (!made.ok()) return ToGrpcStatus(made.status());
  std::shared_ptr<Job> job = *made;
  const grpc::Status ran = Run(
      context, job,
      [response](const v1::GenerateResponse& event) {
        if (event.has_summary())
          response->set_cached_tokens(event.summary().usage().cached_tokens());
        return true;
      },
      /*streamed=*/false);
  if (!ran.ok()) return ran;
  // The job has ended: the scheduler thread wrote its pin before End (under the
  // channel's mutex, which Wait took after it).
  if (!job->pin.ok()) return ToGrpcStatus(job->pin.status());
  ToProto(*job->pin, response->mutable_pin());
  response->set_prompt_tokens(static_cast<int64_t>(job->request.prompt.size()));
  return grpc::Status::OK;
}

grpc::Status WorkerService::ListPins(grpc::ServerContext* context,
                                     const v1::ListPinsForClientRequest*,
                                     v1::ListPinsForClientResponse* response) {
  ManagerClient manager(link_, /*on_call=*/{});
  manager.Attach(link_->current());
  StatusOr<std::vector<PinOutcome>> pins = manager.ListPins(AuthorizationOf(*context));
  if (!pins.ok()) return ToGrpcStatus(pins.status());
  for (const PinOutcome& pin : *pins) ToProto(pin, response->add_pins());
  return grpc::Status::OK;
}

grpc::Status WorkerService::Unpin(grpc::ServerContext* context,
                                  const v1::UnpinForClientRequest* request,
                                  v1::UnpinForClientResponse*) {
  ManagerClient manager(link_, /*on_call=*/{});
  manager.Attach(link_->current());
  return ToGrpcStatus(manager.Unpin(request->pin_id(), AuthorizationOf(*context)));
}

}  // namespace kvpool::worker
