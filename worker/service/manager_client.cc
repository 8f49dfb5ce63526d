// ManagerClient: the protobuf side of the worker's manager calls. See manager_client.h.
#include "service/manager_client.h"

#include <algorithm>

#include "common/grpc_status.h"
#include "common/metadata.h"

namespace kvpool::worker {
namespace {

// Tokens committed in one Step call at most, below the manager's own cap.
constexpr int64_t kMaxCommitTokensPerStep = 1 << 16;

v1::SequenceMode ToProto(KvMode mode) {
  return mode == KvMode::kContiguous ? v1::SEQUENCE_MODE_CONTIGUOUS : v1::SEQUENCE_MODE_PAGED;
}

}  // namespace

ManagerClient::ManagerClient(ManagerLink* link,
                             std::function<void(std::chrono::nanoseconds)> on_call)
    : link_(link), on_call_(std::move(on_call)) {}

int64_t ManagerClient::CommitBudget() const {
  const int64_t cap = attachment_ ? attachment_->max_tokens_per_call : 0;
  return cap > 0 ? std::min(cap, kMaxCommitTokensPerStep) : kMaxCommitTokensPerStep;
}

template <typename Request, typename Response>
Status ManagerClient::Call(Rpc<Request, Response> rpc, Request& request, Response* response,
                           const char* what, const std::string* client_authorization) {
  if (!attachment_) return Unavailable("the worker is not attached to a cache manager; retry");
  request.set_worker_id(attachment_->worker_id);
  request.set_manager_instance(attachment_->manager_instance);
  auto context = link_->NewContext();
  if (client_authorization != nullptr) {
    // Always sent: a client without a token is anonymous, never the worker's tenant.
    context->AddMetadata(v1::kClientAuthorizationHeader, *client_authorization);
  }
  const auto start = std::chrono::steady_clock::now();
  const grpc::Status status = (link_->stub().*rpc)(context.get(), request, response);
  if (on_call_) on_call_(std::chrono::steady_clock::now() - start);
  return v1::FromGrpcStatus(status, what);
}

StatusOr<std::string> ManagerClient::AuthenticateClient(const std::string& client_authorization) {
  v1::AuthenticateClientRequest request;
  v1::AuthenticateClientResponse response;
  KVPOOL_RETURN_IF_ERROR(Call(&v1::CacheManager::Stub::AuthenticateClient, request, &response,
                              "the cache manager refused the client", &client_authorization));
  return response.tenant();
}

StatusOr<OpenedSequence> ManagerClient::Open(const std::vector<int32_t>& prompt, KvMode mode,
                                             int64_t max_tokens, int32_t retention_priority,
                                             const std::string& client_authorization) {
  v1::OpenSequenceRequest request;
  request.mutable_token_ids()->Add(prompt.begin(), prompt.end());
  request.set_mode(ToProto(mode));
  request.set_max_tokens(max_tokens);
  if (retention_priority >= 0) request.set_retention_priority(retention_priority);
  v1::OpenSequenceResponse response;
  KVPOOL_RETURN_IF_ERROR(Call(&v1::CacheManager::Stub::OpenSequence, request, &response,
                              "the cache manager refused the sequence", &client_authorization));
  OpenedSequence opened;
  opened.sequence_id = response.sequence_id();
  opened.block_table.assign(response.block_table().begin(), response.block_table().end());
  opened.cached_tokens = response.cached_tokens();
  opened.allocatable_blocks = response.allocatable_blocks();
  return opened;
}

StatusOr<std::vector<StepItemOutcome>> ManagerClient::Step(
    const std::vector<StepItemRequest>& items) {
  v1::StepRequest request;
  for (const StepItemRequest& item : items) {
    v1::StepItem* out = request.add_items();
    out->set_sequence_id(item.sequence_id);
    out->set_num_tokens(item.num_tokens);
    out->mutable_commit_token_ids()->Add(item.commit_token_ids.begin(),
                                         item.commit_token_ids.end());
  }
  v1::StepResponse response;
  KVPOOL_RETURN_IF_ERROR(Call(&v1::CacheManager::Stub::Step, request, &response, "Step"));
  if (response.results_size() != static_cast<int>(items.size())) {
    return Internal("the cache manager answered " + std::to_string(response.results_size()) +
                    " Step results for " + std::to_string(items.size()) + " items");
  }
  std::vector<StepItemOutcome> outcomes(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const v1::StepItemResult& result = response.results(static_cast<int>(i));
    outcomes[i].new_blocks.assign(result.new_blocks().begin(), result.new_blocks().end());
    if (result.code() == 0) continue;
    // The reasons this version knows (FromGrpcStatus does the same for whole calls).
    Status item(static_cast<StatusCode>(result.code()), result.message());
    if (result.reason() == reason::kTenantQuotaExceeded) {
      item = std::move(item).WithReason(reason::kTenantQuotaExceeded);
    }
    outcomes[i].status = std::move(item);
  }
  return outcomes;
}

StatusOr<ForkedSequence> ManagerClient::Fork(int64_t parent_sequence_id) {
  v1::ForkRequest request;
  request.set_sequence_id(parent_sequence_id);
  v1::ForkResponse response;
  KVPOOL_RETURN_IF_ERROR(Call(&v1::CacheManager::Stub::Fork, request, &response, "Fork"));
  ForkedSequence forked;
  forked.sequence_id = response.sequence_id();
  forked.block_table.assign(response.block_table().begin(), response.block_table().end());
  forked.copy_src_block = response.copy_src_block();
  forked.copy_dst_block = response.copy_dst_block();
  return forked;
}

Status ManagerClient::Close(int64_t sequence_id) {
  v1::CloseSequenceRequest request;
  request.set_sequence_id(sequence_id);
  v1::CloseSequenceResponse response;
  return Call(&v1::CacheManager::Stub::CloseSequence, request, &response, "CloseSequence");
}

namespace {

PinOutcome FromProto(const v1::PinInfo& pin) {
  PinOutcome out;
  out.pin_id = pin.pin_id();
  out.pinned_tokens = pin.pinned_tokens();
  out.expires_in_ms = pin.expires_in_ms();
  out.priority = pin.has_retention_priority() ? pin.retention_priority() : -1;
  return out;
}

}  // namespace

StatusOr<PinOutcome> ManagerClient::Pin(const std::vector<int32_t>& prompt, int64_t ttl_ms,
                                        int32_t retention_priority,
                                        const std::string& client_authorization) {
  v1::PinPrefixRequest request;
  request.mutable_token_ids()->Add(prompt.begin(), prompt.end());
  request.set_ttl_ms(ttl_ms);
  if (retention_priority >= 0) request.set_retention_priority(retention_priority);
  v1::PinPrefixResponse response;
  KVPOOL_RETURN_IF_ERROR(Call(&v1::CacheManager::Stub::PinPrefix, request, &response,
                              "the cache manager refused the pin", &client_authorization));
  return FromProto(response.pin());
}

StatusOr<std::vector<PinOutcome>> ManagerClient::ListPins(const std::string& client_authorization) {
  v1::ListPinsRequest request;
  v1::ListPinsResponse response;
  KVPOOL_RETURN_IF_ERROR(Call(&v1::CacheManager::Stub::ListPins, request, &response, "ListPins",
                              &client_authorization));
  std::vector<PinOutcome> out;
  for (const v1::PinInfo& pin : response.pins()) out.push_back(FromProto(pin));
  return out;
}

Status ManagerClient::Unpin(int64_t pin_id, const std::string& client_authorization) {
  v1::UnpinRequest request;
  request.set_pin_id(pin_id);
  v1::UnpinResponse response;
  return Call(&v1::CacheManager::Stub::Unpin, request, &response, "Unpin", &client_authorization);
}

}  // namespace kvpool::worker
