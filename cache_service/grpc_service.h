// ManagerService: the kvpool.v1.CacheManager gRPC service (synchronous API) over a
// CacheManager. It owns the request-shape checks (every bad input gets a code and a
// message a person can act on, never a crash; every input has a bound, the kMax*
// constants of grpc_service.cc), authentication and roles (the tenant and roles come
// from the bearer token via Authenticator, never from the request; only `worker`
// tokens make worker calls), the manager-instance check on every worker call, the table of live
// workers (tenant, which keeps one tenant from using another's worker id; name; the
// load each last reported, for the dashboard), RPC latency metrics, and
// the one mapping from kvpool::Status to grpc::Status. It holds no cache state of its
// own: every fact about blocks and sequences is the CacheManager's.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache_service/auth.h"
#include "cache_service/cache_manager.h"
#include "cache_service/metrics.h"
#include "cache_service/pool_host.h"
#include "kvpool/v1/manager.grpc.pb.h"

namespace kvpool::manager {

// A live worker as the manager knows it, for the dashboard.
struct WorkerSnapshot {
  WorkerId id = 0;
  std::string name;
  std::string tenant;
  v1::WorkerLoad load;  // as of its latest heartbeat (empty before the first)
  Clock::time_point registered_at, last_heartbeat_at;
};

// The attach information a worker gets from RegisterWorker.
v1::PoolDescriptor DescribePool(const PoolHost& host, const PoolGeometry& geometry,
                                const std::string& model_name);

// The predicted hit-rate curves `caller` may see (an operator: all; a client: its own
// tenant's), each with its knee at kKneeMinGain.
v1::HitRateCurves VisibleHitRateCurves(const CacheManager& core, const Caller& caller,
                                       Clock::time_point now);

class ManagerService final : public v1::CacheManager::Service {
 public:
  // Indices into MethodNames(), for the latency histogram.
  enum Method {
    kRegisterWorker,
    kHeartbeat,
    kOpenSequence,
    kStep,
    kFork,
    kCloseSequence,
    kGetStats,
    kCheckInvariants,
    kAuthenticateClient,
    kPinPrefix,
    kListPins,
    kUnpin,
    kResetPrefixCache,
    kNumMethods
  };
  static std::vector<std::string> MethodNames();

  // `core`, `auth` and `metrics` must outlive the service.
  ManagerService(CacheManager* core, v1::PoolDescriptor pool, const Authenticator* auth,
                 ServiceMetrics* metrics);

  grpc::Status RegisterWorker(grpc::ServerContext* context,
                              const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status OpenSequence(grpc::ServerContext* context, const v1::OpenSequenceRequest* request,
                            v1::OpenSequenceResponse* response) override;
  grpc::Status Step(grpc::ServerContext* context, const v1::StepRequest* request,
                    v1::StepResponse* response) override;
  grpc::Status Fork(grpc::ServerContext* context, const v1::ForkRequest* request,
                    v1::ForkResponse* response) override;
  grpc::Status CloseSequence(grpc::ServerContext* context, const v1::CloseSequenceRequest* request,
                             v1::CloseSequenceResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;
  grpc::Status AuthenticateClient(grpc::ServerContext* context,
                                  const v1::AuthenticateClientRequest* request,
                                  v1::AuthenticateClientResponse* response) override;
  grpc::Status CheckInvariants(grpc::ServerContext* context,
                               const v1::CheckInvariantsRequest* request,
                               v1::CheckInvariantsResponse* response) override;
  grpc::Status PinPrefix(grpc::ServerContext* context, const v1::PinPrefixRequest* request,
                         v1::PinPrefixResponse* response) override;
  grpc::Status ListPins(grpc::ServerContext* context, const v1::ListPinsRequest* request,
                        v1::ListPinsResponse* response) override;
  grpc::Status Unpin(grpc::ServerContext* context, const v1::UnpinRequest* request,
                     v1::UnpinResponse* response) override;
  grpc::Status ResetPrefixCache(grpc::ServerContext* context,
                                const v1::ResetPrefixCacheRequest* request,
                                v1::ResetPrefixCacheResponse* response) override;

  // Runs the core's lease expiry and forgets the expired workers' tenants. Called by
  // the lease timer.
  void ExpireLeases(Clock::time_point now);

  // The workers holding a lease, by id.
  std::vector<WorkerSnapshot> Workers() const;

 private:
  // Authenticates, runs `body` with the caller's tenant, records latency, maps errors;
  // an exception from `body` becomes INTERNAL rather than a crash.
  // Worker calls (every method but GetStats and CheckInvariants) need the `worker` role:
  // PERMISSION_DENIED otherwise.
  grpc::Status Serve(Method method, const grpc::ServerContext* context,
                     const std::function<Status(const Caller& caller)>& body);
  // The tenant of the end client whose token a worker forwarded in `context`, or
  // `worker_tenant` when none was forwarded; UNAUTHENTICATED for a bad token,
  // PERMISSION_DENIED for a token without the `client` role.
  StatusOr<std::string> ClientTenant(const grpc::ServerContext* context,
                                     const std::string& worker_tenant) const;
  // FAILED_PRECONDITION (MANAGER_RESTARTED) unless `instance` is this manager's;
  // INVALID_ARGUMENT for a non-positive id; NOT_FOUND (WORKER_NOT_REGISTERED) unless
  // `tenant` registered it with this instance.
  Status CheckWorker(const std::string& tenant, const std::string& instance,
                     int64_t worker_id) const;

  CacheManager* core_;
  const v1::PoolDescriptor pool_;
  const Authenticator* auth_;
  ServiceMetrics* metrics_;

  mutable std::mutex mu_;
  std::unordered_map<WorkerId, WorkerSnapshot> workers_;  // GUARDED_BY(mu_)
};

}  // namespace kvpool::manager
