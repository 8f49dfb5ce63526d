// kvpool-manager-test-client: a stand-in worker for the lease test. Registers with the
// manager at argv[1], opens argv[2] paged sequences, prints "ready <worker_id>", then
// heartbeats every lease_ttl/4 until it is killed. The test SIGKILLs it and checks that
// the manager gives its blocks back once the lease runs out.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "kvpool/v1/manager.grpc.pb.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s HOST:PORT NUM_SEQUENCES\n", argv[0]);
    return 2;
  }
  auto stub = kvpool::v1::CacheManager::NewStub(
      grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials()));
  grpc::ClientContext reg_ctx;
  kvpool::v1::RegisterWorkerResponse worker;
  if (!stub->RegisterWorker(&reg_ctx, {}, &worker).ok()) return 1;
  for (int s = 0; s < std::stoi(argv[2]); ++s) {
    kvpool::v1::OpenSequenceRequest open;
    open.set_worker_id(worker.worker_id());
    open.set_manager_instance(worker.manager_instance());
    for (int i = 0; i < 40; ++i) open.add_token_ids(s * 100 + i);
    open.set_max_tokens(8);
    open.set_mode(s % 2 ? kvpool::v1::SEQUENCE_MODE_CONTIGUOUS : kvpool::v1::SEQUENCE_MODE_PAGED);
    grpc::ClientContext ctx;
    kvpool::v1::OpenSequenceResponse opened;
    const grpc::Status status = stub->OpenSequence(&ctx, open, &opened);
    if (!status.ok()) {
      std::fprintf(stderr, "open: %s\n", status.error_message().c_str());
      return 1;
    }
  }
  std::printf("ready %lld\n", static_cast<long long>(worker.worker_id()));
  std::fflush(stdout);
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(worker.lease_ttl_ms() / 4));
    grpc::ClientContext ctx;
    kvpool::v1::HeartbeatRequest beat;
    beat.set_worker_id(worker.worker_id());
    beat.set_manager_instance(worker.manager_instance());
    kvpool::v1::HeartbeatResponse response;
    stub->Heartbeat(&ctx, beat, &response);
  }
}
