// libFuzzer target over the manager's request handlers: each input is a sequence of
// (method, length, bytes) records; the bytes are parsed as that method's protobuf
// request and handed to ManagerService directly (no network), and after every call
// the CacheManager's invariants must hold. A handler that crashes, or a request that
// breaks an invariant, is a finding. An odd length puts the live instance id into the
// request's manager_instance (so calls reach the sequence logic), an even one leaves
// the fuzzed bytes (stale or garbage instances); method 9 restarts the manager as a new
// instance, so ids of the previous one become stale. Run: scripts/fuzz-manager.sh SECONDS.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "cache_service/cache_manager.h"
#include "cache_service/grpc_service.h"

namespace {

using kvpool::manager::CacheManager;
using kvpool::manager::CacheManagerOptions;
using kvpool::manager::ManagerService;

template <typename Request, typename Response, typename Handler>
void Call(ManagerService& service, const std::string& instance, const uint8_t* data, size_t size,
          Handler handler) {
  Request request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  const google::protobuf::FieldDescriptor* field =
      request.GetDescriptor()->FindFieldByName("manager_instance");
  if (field != nullptr && size % 2 == 1) {
    request.GetReflection()->SetString(&request, field, instance);
  }
  Response response;
  grpc::ServerContext context;
  (service.*handler)(&context, &request, &response);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace v1 = kvpool::v1;
  CacheManagerOptions options;
  options.geometry.num_layers = 2;
  options.geometry.num_kv_heads = 2;
  options.geometry.head_dim = 16;
  options.geometry.block_size = 4;
  options.geometry.num_blocks = 32;
  options.lease_ttl = std::chrono::milliseconds(50);
  options.max_tokens_per_call = 4096;
  options.max_context_tokens = 512;
  kvpool::manager::Authenticator auth;
  kvpool::manager::ServiceMetrics metrics(ManagerService::MethodNames());
  v1::PoolDescriptor pool;
  std::unique_ptr<CacheManager> core;
  std::unique_ptr<ManagerService> service;
  int instances = 0;
  // A new manager instance (a restart): fixed ids, so runs are reproducible.
  auto start = [&] {
    ++instances;
    options.instance_id = "instance-" + std::to_string(instances);
    options.first_worker_id = instances * 1000;
    service.reset();
    core = std::make_unique<CacheManager>(options);
    service = std::make_unique<ManagerService>(core.get(), pool, &auth, &metrics);
    // Two workers exist from the start so that short inputs reach the sequence calls.
    for (int i = 0; i < 2; ++i) {
      v1::RegisterWorkerRequest request;
      v1::RegisterWorkerResponse response;
      grpc::ServerContext context;
      service->RegisterWorker(&context, &request, &response);
    }
  };
  start();
  size_t pos = 0;
  while (pos + 3 <= size) {
    const uint8_t method = data[pos];
    const size_t len = std::min<size_t>(size - pos - 3, data[pos + 1] | (data[pos + 2] << 8));
    const uint8_t* body = data + pos + 3;
    pos += 3 + len;
    const std::string& instance = core->instance_id();
    switch (method % 10) {
      case 0:
        Call<v1::RegisterWorkerRequest, v1::RegisterWorkerResponse>(
            *service, instance, body, len, &ManagerService::RegisterWorker);
        break;
      case 1:
        Call<v1::HeartbeatRequest, v1::HeartbeatResponse>(*service, instance, body, len,
                                                          &ManagerService::Heartbeat);
        break;
      case 2:
        Call<v1::OpenSequenceRequest, v1::OpenSequenceResponse>(*service, instance, body, len,
                                                                &ManagerService::OpenSequence);
        break;
      case 3:
        Call<v1::StepRequest, v1::StepResponse>(*service, instance, body, len,
                                                &ManagerService::Step);
        break;
      case 4:
        Call<v1::ForkRequest, v1::ForkResponse>(*service, instance, body, len,
                                                &ManagerService::Fork);
        break;
      case 5:
        Call<v1::CloseSequenceRequest, v1::CloseSequenceResponse>(*service, instance, body, len,
                                                                  &ManagerService::CloseSequence);
        break;
      case 6:
        Call<v1::GetStatsRequest, v1::GetStatsResponse>(*service, instance, body, len,
                                                        &ManagerService::GetStats);
        break;
      case 7:
        Call<v1::CheckInvariantsRequest, v1::CheckInvariantsResponse>(
            *service, instance, body, len, &ManagerService::CheckInvariants);
        break;
      case 8:
        service->ExpireLeases(kvpool::manager::Clock::now() + std::chrono::milliseconds(len));
        break;
      case 9:
        start();
        break;
    }
    const kvpool::Status invariants = core->CheckInvariants();
    if (!invariants.ok()) {
      std::fprintf(stderr, "invariant broken after method %d: %s\n", method % 10,
                   invariants.ToString().c_str());
      std::abort();
    }
  }
  return 0;
}
