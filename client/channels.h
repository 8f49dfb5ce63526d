// client_internal::Channels: what every Client call shares. It owns the options, one
// gRPC channel (plaintext or TLS) and stub set per address, and the round-robin counter; it
// prepares each ClientContext (deadline, bearer token) and runs unary calls with the retry rule
// (UNAVAILABLE: back off, try again, moving to the next address when the caller did not
// pin one). Immutable after construction except the atomic counter, so it is safe to
// share across threads; streams hold it by shared_ptr.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "kvpool/client.h"
#include "kvpool/v1/manager.grpc.pb.h"
#include "kvpool/v1/worker.grpc.pb.h"

namespace kvpool::client_internal {

using Deadline = std::optional<std::chrono::system_clock::time_point>;

class Channels {
 public:
  explicit Channels(ClientOptions options);

  const ClientOptions& options() const { return options_; }
  size_t size() const { return stubs_.size(); }
  const std::string& address(size_t index) const { return options_.addresses[index]; }
  v1::Worker::Stub& worker(size_t index) const { return *stubs_[index].worker; }
  v1::CacheManager::Stub& manager(size_t index) const { return *stubs_[index].manager; }
  grpc::health::v1::Health::Stub& health(size_t index) const { return *stubs_[index].health; }

  // Attempts allowed per call (max_attempts, at least 1).
  int max_attempts() const;
  // The deadline of a call starting now, or nullopt when options.deadline is 0.
  Deadline NewDeadline() const;
  // Sets the deadline and the authorization metadata on `context`.
  void Prepare(const Deadline& deadline, grpc::ClientContext* context) const;
  // The address of the next round-robin call.
  size_t PickAddress();
  // OK, or INVALID_ARGUMENT when the TLS files could not be read, there is no address
  // or `index` is out of range (Client::kAnyAddress is always in range).
  Status CheckAddress(size_t index) const;

  // Runs `call(address_index, context, &response)` (returning grpc::Status) with the
  // retry rule; the response of the attempt that succeeded, or the last error.
  template <typename Response, typename Call>
  StatusOr<Response> Unary(size_t address_index, Call&& call);

 private:
  struct Stubs {
    std::unique_ptr<v1::Worker::Stub> worker;
    std::unique_ptr<v1::CacheManager::Stub> manager;
    std::unique_ptr<grpc::health::v1::Health::Stub> health;
  };

  const ClientOptions options_;
  Status tls_error_;  // why the TLS credentials could not be made; OK otherwise
  std::vector<Stubs> stubs_;
  std::atomic<size_t> next_address_{0};
};

template <typename Response, typename Call>
StatusOr<Response> Channels::Unary(size_t address_index, Call&& call) {
  KVPOOL_RETURN_IF_ERROR(CheckAddress(address_index));
  const bool pinned = address_index != Client::kAnyAddress;
  size_t index = pinned ? address_index : PickAddress();
  const Deadline deadline = NewDeadline();
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    Prepare(deadline, &context);
    Response response;
    const grpc::Status status = call(index, &context, &response);
    if (status.ok()) return response;
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= max_attempts()) {
      return FromGrpcStatus(status);
    }
    std::this_thread::sleep_for(options_.retry_backoff);
    if (!pinned) index = (index + 1) % size();
  }
}

}  // namespace kvpool::client_internal
