// FakeWorker: an in-process kvpool.v1.Worker on a free loopback port whose Generate runs
// a test's script, so client tests can pin down streaming behaviour without a model.
// WriteToken/WriteSummary write the stream's two kinds of message.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "kvpool/v1/worker.grpc.pb.h"

namespace kvpool::testing {

inline void WriteToken(grpc::ServerWriter<v1::GenerateResponse>* writer, int index, int32_t id,
                       const std::string& text) {
  v1::GenerateResponse response;
  v1::GeneratedToken* token = response.mutable_token();
  token->set_index(index);
  token->set_token_id(id);
  token->set_text(text);
  token->set_step_latency_s(0.001);
  writer->Write(response);
}

inline void WriteSummary(grpc::ServerWriter<v1::GenerateResponse>* writer,
                         int64_t completion_tokens, int64_t cached_tokens = 0) {
  v1::GenerateResponse response;
  v1::GenerateSummary* summary = response.mutable_summary();
  summary->mutable_usage()->set_completion_tokens(completion_tokens);
  summary->mutable_usage()->set_cached_tokens(cached_tokens);
  summary->add_finish_reasons("length");
  writer->Write(response);
}

class FakeWorker final : public v1::Worker::Service {
 public:
  using Writer = grpc::ServerWriter<v1::GenerateResponse>;
  using Script =
      std::function<grpc::Status(grpc::ServerContext*, const v1::GenerateRequest&, Writer*)>;

  explicit FakeWorker(Script script) : script_(std::move(script)) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  ~FakeWorker() override { server_->Shutdown(std::chrono::system_clock::now()); }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        Writer* writer) override {
    ++calls_;
    return script_(context, *request, writer);
  }

  const std::string& address() const { return address_; }
  int calls() const { return calls_.load(); }

 private:
  Script script_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::atomic<int> calls_{0};
};

}  // namespace kvpool::testing
