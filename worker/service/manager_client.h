// ManagerClient: ManagerApi over gRPC, the worker's typed client of the cache manager's
// sequence protocol (manager.proto: AuthenticateClient, OpenSequence, Step, Fork,
// CloseSequence; PinPrefix, ListPins, Unpin). It is the only code in the worker that builds or
// reads those protobufs: every call names the attachment's worker id and manager instance, carries
// the worker's credential (and the end client's where the manager authenticates one),
// reports its duration to the caller's counter, and returns plain values or a Status
// with the manager's code and reason (IsLinkLoss says when the attachment is gone).
// Registration and heartbeats stay with ManagerLink. It holds no sequence state, never
// runs the model, and is used from the scheduler thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "service/manager_api.h"
#include "service/manager_link.h"

namespace kvpool::worker {

class ManagerClient final : public ManagerApi {
 public:
  // `on_call` runs after every call with its duration (the worker's counters).
  ManagerClient(ManagerLink* link, std::function<void(std::chrono::nanoseconds)> on_call);

  // The attachment the calls go to (null: none; calls then fail UNAVAILABLE).
  void Attach(std::shared_ptr<const Attachment> attachment) { attachment_ = std::move(attachment); }
  // The manager's per-call cap, at most 2^16.
  int64_t CommitBudget() const override;
  StatusOr<std::string> AuthenticateClient(const std::string& client_authorization) override;
  StatusOr<OpenedSequence> Open(const std::vector<int32_t>& prompt, KvMode mode, int64_t max_tokens,
                                int32_t retention_priority,
                                const std::string& client_authorization) override;
  StatusOr<std::vector<StepItemOutcome>> Step(const std::vector<StepItemRequest>& items) override;
  StatusOr<ForkedSequence> Fork(int64_t parent_sequence_id) override;
  Status Close(int64_t sequence_id) override;
  StatusOr<PinOutcome> Pin(const std::vector<int32_t>& prompt, int64_t ttl_ms,
                           int32_t retention_priority,
                           const std::string& client_authorization) override;
  // That client's tenant's pins, by id; ends one of them (the worker's Pin handlers).
  StatusOr<std::vector<PinOutcome>> ListPins(const std::string& client_authorization);
  Status Unpin(int64_t pin_id, const std::string& client_authorization);

 private:
  template <typename Request, typename Response>
  using Rpc = grpc::Status (v1::CacheManager::Stub::*)(grpc::ClientContext*, const Request&,
                                                       Response*);
  // One call: names this attachment's worker and manager instance, forwards the end
  // client's credential when given, reports its duration; `what` prefixes the error.
  template <typename Request, typename Response>
  Status Call(Rpc<Request, Response> rpc, Request& request, Response* response, const char* what,
              const std::string* client_authorization = nullptr);

  ManagerLink* const link_;
  const std::function<void(std::chrono::nanoseconds)> on_call_;
  std::shared_ptr<const Attachment> attachment_;
};

}  // namespace kvpool::worker
