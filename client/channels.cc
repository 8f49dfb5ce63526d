// Channels: see channels.h.
#include "client/channels.h"

#include <algorithm>

#include "common/metadata.h"
#include "common/tls.h"

namespace kvpool::client_internal {

Channels::Channels(ClientOptions options) : options_(std::move(options)) {
  TlsFiles tls;
  tls.ca = options_.tls_ca_file;
  tls.cert = options_.tls_cert_file;
  tls.key = options_.tls_key_file;
  tls.ca_flag = "ClientOptions.tls_ca_file";
  tls.cert_flag = "ClientOptions.tls_cert_file";
  tls.key_flag = "ClientOptions.tls_key_file";
  StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = TlsChannelCredentials(tls);
  if (!credentials.ok()) {
    tls_error_ = credentials.status();  // no channels: every call returns it
    return;
  }
  for (const std::string& address : options_.addresses) {
    std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(address, *credentials);
    stubs_.push_back(Stubs{v1::Worker::NewStub(channel), v1::CacheManager::NewStub(channel),
                           grpc::health::v1::Health::NewStub(channel)});
  }
}

int Channels::max_attempts() const { return std::max(1, options_.max_attempts); }

Deadline Channels::NewDeadline() const {
  if (options_.deadline.count() <= 0) return std::nullopt;
  return std::chrono::system_clock::now() + options_.deadline;
}

void Channels::Prepare(const Deadline& deadline, grpc::ClientContext* context) const {
  if (deadline) context->set_deadline(*deadline);
  if (!options_.token.empty()) {
    context->AddMetadata(v1::kAuthorizationHeader, "Bearer " + options_.token);
  }
}

size_t Channels::PickAddress() {
  return next_address_.fetch_add(1, std::memory_order_relaxed) % size();
}

Status Channels::CheckAddress(size_t index) const {
  if (!tls_error_.ok()) return tls_error_;
  if (stubs_.empty()) return InvalidArgument("ClientOptions.addresses is empty");
  if (index != Client::kAnyAddress && index >= size()) {
    return InvalidArgument("address index " + std::to_string(index) +
                           " out of range: " + std::to_string(size()) + " addresses");
  }
  return Status::Ok();
}

}  // namespace kvpool::client_internal
