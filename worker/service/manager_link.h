// ManagerLink: the worker's connection to its node's kvpool-manager. It owns the
// stub, the worker's own credential, the registration (worker id, lease) and the
// mapping of the manager's pool, and a thread that registers, heartbeats and, when the
// manager goes away (a failed heartbeat, or the scheduler reporting a failed call),
// registers again with backoff until a manager answers. Each registration is an
// Attachment with a new epoch and the manager instance that granted it; every call
// names that instance, and a manager that is another instance (it restarted) answers
// FAILED_PRECONDITION with reason MANAGER_RESTARTED, which IsLinkLoss recognises by
// code and reason (never by message text). Sequences opened under an older epoch are
// gone (the old manager's pool is unmapped once the scheduler drops its engine). The
// link never runs the model and holds no sequence state.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "engine/kv_pool.h"
#include "common/model_config.h"
#include "service/manager_api.h"
#include "kvpool/v1/manager.grpc.pb.h"
#include "common/status.h"

namespace kvpool::worker {

// One registration with a manager and the pool it hosts.
struct Attachment {
  int64_t epoch = 0;  // 1 for the first registration, +1 for each later one
  int64_t worker_id = 0;
  std::string manager_instance;  // the instance that registered us: sent in every call
  std::chrono::milliseconds lease_ttl{0};
  int64_t max_tokens_per_call = 0;  // the manager's cap on commits per Step (0: unknown)
  v1::PoolDescriptor descriptor;
  PoolGeometry geometry;
  // The mapped pool (shm or CUDA IPC); keeps the mapping alive while an engine uses it.
  std::shared_ptr<void> mapping;
  void* base = nullptr;
  std::string device = "cpu";  // where the pool lives: cpu, cuda:N
};

struct ManagerLinkOptions {
  std::string address;      // host:port of the manager
  std::string token;        // this worker's bearer token ("" when the manager has no auth)
  std::string worker_name;  // for the manager's logs
  // Of the channel to the manager (TLS, a client certificate); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::chrono::milliseconds call_timeout{5000};
  std::chrono::milliseconds max_backoff{1000};
  // Fills each heartbeat's load (for the manager's dashboard); none when unset.
  std::function<void(v1::WorkerLoad*)> report_load;
};

// IsLinkLoss (manager_api.h) for a gRPC status.
bool IsLinkLoss(const grpc::Status& status);

class ManagerLink {
 public:
  // `model` is what the pool must hold (layers, K/V heads, head dim); `on_change` runs
  // on the link's thread after every attach and every loss (keep it short).
  ManagerLink(ManagerLinkOptions options, ModelConfig model, std::function<void()> on_change);
  ~ManagerLink();  // stops the thread
  ManagerLink(const ManagerLink&) = delete;
  ManagerLink& operator=(const ManagerLink&) = delete;

  void Start();
  // Stops the thread (no more callbacks); the stub stays usable.
  void Stop();
  // The current attachment, or null while detached.
  std::shared_ptr<const Attachment> current() const;
  // The scheduler saw the manager fail a call of attachment `epoch` (UNAVAILABLE, or
  // this worker unknown): drop it and register again.
  void ReportLost(int64_t epoch, const std::string& why);
  // A fatal configuration error (the pool does not fit the model), or "" if none.
  std::string fatal_error() const;
  // The attached pool cannot be used (the engine refused it): as fatal as a mismatch.
  void ReportFatal(const std::string& why);

  // This worker presents a token to its manager, so the manager has auth on.
  bool has_token() const { return !options_.token.empty(); }

  v1::CacheManager::Stub& stub() { return *stub_; }
  // A context with this worker's credential and the call timeout.
  std::unique_ptr<grpc::ClientContext> NewContext() const;
  int64_t reattachments() const { return reattachments_.load(); }
  const std::string& address() const { return options_.address; }

 private:
  void Run();
  StatusOr<std::shared_ptr<Attachment>> Register(int64_t epoch);
  void SetCurrent(std::shared_ptr<const Attachment> attachment);

  const ManagerLinkOptions options_;
  const ModelConfig model_;
  std::function<void()> on_change_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CacheManager::Stub> stub_;
  std::atomic<int64_t> reattachments_{0};

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::shared_ptr<const Attachment> current_;  // GUARDED_BY(mu_)
  int64_t last_epoch_ = 0;                     // GUARDED_BY(mu_)
  std::string fatal_error_;                    // GUARDED_BY(mu_)
  bool stop_ = false;                          // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace kvpool::worker
