// Client's unary calls (worker stats, model info, manager stats, health) on top of
// Channels; Generate and Stream live in generate_stream.cc.
#include "kvpool/client.h"

#include "client/channels.h"

namespace kvpool {

Client::Client(ClientOptions options)
    : channels_(std::make_shared<client_internal::Channels>(std::move(options))) {}

Client::~Client() = default;

const ClientOptions& Client::options() const { return channels_->options(); }

StatusOr<v1::GetWorkerStatsResponse> Client::WorkerStats(size_t address_index) {
  return channels_->Unary<v1::GetWorkerStatsResponse>(
      address_index, [this](size_t index, grpc::ClientContext* context, auto* response) {
        return channels_->worker(index).GetStats(context, {}, response);
      });
}

StatusOr<v1::GetModelInfoResponse> Client::ModelInfo(size_t address_index) {
  return channels_->Unary<v1::GetModelInfoResponse>(
      address_index, [this](size_t index, grpc::ClientContext* context, auto* response) {
        return channels_->worker(index).GetModelInfo(context, {}, response);
      });
}

StatusOr<v1::GetStatsResponse> Client::ManagerStats(size_t address_index) {
  return channels_->Unary<v1::GetStatsResponse>(
      address_index, [this](size_t index, grpc::ClientContext* context, auto* response) {
        return channels_->manager(index).GetStats(context, {}, response);
      });
}

StatusOr<v1::PinPromptResponse> Client::PinPrompt(const v1::PinPromptRequest& request,
                                                  size_t address_index) {
  return channels_->Unary<v1::PinPromptResponse>(
      address_index, [this, &request](size_t index, grpc::ClientContext* context, auto* response) {
        return channels_->worker(index).PinPrompt(context, request, response);
      });
}

StatusOr<v1::ListPinsForClientResponse> Client::ListPins(size_t address_index) {
  return channels_->Unary<v1::ListPinsForClientResponse>(
      address_index, [this](size_t index, grpc::ClientContext* context, auto* response) {
        return channels_->worker(index).ListPins(context, {}, response);
      });
}

Status Client::Unpin(int64_t pin_id, size_t address_index) {
  v1::UnpinForClientRequest request;
  request.set_pin_id(pin_id);
  return channels_
      ->Unary<v1::UnpinForClientResponse>(
          address_index,
          [this, &request](size_t index, grpc::ClientContext* context, auto* response) {
            return channels_->worker(index).Unpin(context, request, response);
          })
      .status();
}

StatusOr<v1::ResetPrefixCacheResponse> Client::ResetPrefixCache(size_t address_index) {
  return channels_->Unary<v1::ResetPrefixCacheResponse>(
      address_index, [this](size_t index, grpc::ClientContext* context, auto* response) {
        return channels_->manager(index).ResetPrefixCache(context, {}, response);
      });
}

StatusOr<bool> Client::Healthy(size_t address_index) {
  using grpc::health::v1::HealthCheckResponse;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("");
  KVPOOL_ASSIGN_OR_RETURN(
      const HealthCheckResponse response,
      channels_->Unary<HealthCheckResponse>(
          address_index, [&](size_t index, grpc::ClientContext* context, auto* response) {
            return channels_->health(index).Check(context, request, response);
          }));
  return response.status() == HealthCheckResponse::SERVING;
}

}  // namespace kvpool
