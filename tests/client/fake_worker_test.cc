// Client::Generate and GenerateStream against scripted in-process Worker services on
// loopback, so the SDK's streaming rules are pinned down without a model: results
// assembled per sample with client timings, metadata and deadline on the call, the
// callback's cancel, retry on UNAVAILABLE only before the first token, server messages
// kept verbatim, and protocol errors (no summary, a bad sample index) reported.
#include "tests/client/fake_worker.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "kvpool/client.h"

namespace kvpool {
namespace {

using ::kvpool::testing::FakeWorker;
using ::kvpool::testing::WriteSummary;
using ::kvpool::testing::WriteToken;
using ::testing::ElementsAre;
using Writer = FakeWorker::Writer;

ClientOptions Options(std::vector<std::string> addresses) {
  ClientOptions options;
  options.addresses = std::move(addresses);
  options.deadline = std::chrono::seconds(10);
  options.retry_backoff = std::chrono::milliseconds(10);
  return options;
}

GenerateParams Prompt() {
  GenerateParams params;
  params.prompt = "Hello";
  params.max_tokens = 2;
  return params;
}

TEST(FakeWorkerTest, AssemblesSamplesAndSendsTokenAndDeadline) {
  // Written on the server's thread, read here: gRPC's own synchronisation is not
  // visible to TSan, so the test's shared state takes a mutex.
  std::mutex mu;
  std::string authorization;
  bool has_deadline = false;
  FakeWorker worker([&](grpc::ServerContext* context, const v1::GenerateRequest& request,
                        Writer* writer) {
    {
      std::lock_guard<std::mutex> lock(mu);
      const auto it = context->client_metadata().find("authorization");
      if (it != context->client_metadata().end()) {
        authorization.assign(it->second.data(), it->second.size());
      }
      has_deadline =
          context->deadline() < std::chrono::system_clock::now() + std::chrono::hours(1);
    }
    EXPECT_EQ(request.mode(), v1::KV_MODE_PAGED);
    EXPECT_EQ(request.n(), 2);
    WriteToken(writer, 0, 10, "Hel");
    WriteToken(writer, 1, 20, "Wor");
    WriteToken(writer, 0, 11, "lo");
    WriteToken(writer, 1, 21, "ld");
    WriteSummary(writer, 4);
    return grpc::Status::OK;
  });
  ClientOptions options = Options({worker.address()});
  options.token = "tok-1";
  Client client(options);
  GenerateParams params = Prompt();
  params.mode = "paged";
  params.n = 2;
  std::vector<int> indices;
  const StatusOr<GenerateResult> result = client.Generate(params, [&](const TokenEvent& event) {
    indices.push_back(event.index);
    return true;
  });
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(authorization, "Bearer tok-1");
    EXPECT_TRUE(has_deadline);
  }
  EXPECT_THAT(indices, ElementsAre(0, 1, 0, 1));
  EXPECT_THAT(result->tokens, ElementsAre(ElementsAre(10, 11), ElementsAre(20, 21)));
  EXPECT_THAT(result->text, ElementsAre("Hello", "World"));
  EXPECT_EQ(result->summary.usage().completion_tokens(), 4);
  EXPECT_THAT(result->summary.finish_reasons(), ElementsAre("length"));
  EXPECT_EQ(result->server, worker.address());
  ASSERT_EQ(result->token_arrival_s.size(), 4u);
  EXPECT_TRUE(std::is_sorted(result->token_arrival_s.begin(), result->token_arrival_s.end()));
  EXPECT_EQ(result->client_ttft_s, result->token_arrival_s.front());
  EXPECT_GE(result->client_total_s, result->token_arrival_s.back());
}

TEST(FakeWorkerTest, IteratorFormYieldsTheSameTokens) {
  FakeWorker worker([](grpc::ServerContext*, const v1::GenerateRequest&, Writer* writer) {
    WriteToken(writer, 0, 7, "a");
    WriteToken(writer, 0, 8, "b");
    WriteSummary(writer, 2);
    return grpc::Status::OK;
  });
  Client client(Options({worker.address()}));
  StatusOr<std::unique_ptr<GenerateStream>> stream = client.Stream(Prompt());
  ASSERT_TRUE(stream.ok());
  std::vector<int32_t> ids;
  TokenEvent event;
  while ((*stream)->Next(&event)) ids.push_back(event.token_id);
  EXPECT_THAT(ids, ElementsAre(7, 8));
  const StatusOr<GenerateResult> result = (*stream)->Finish();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->text[0], "ab");
  EXPECT_EQ((*stream)->Finish().status().code(), StatusCode::kFailedPrecondition);
}

// Writes a token every 5 ms until the client goes away.
grpc::Status EndlessTokens(grpc::ServerContext* context, const v1::GenerateRequest&,
                           Writer* writer) {
  for (int i = 0; !context->IsCancelled() && i < 2000; ++i) {
    WriteToken(writer, 0, i, "x");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return grpc::Status::OK;
}

TEST(FakeWorkerTest, CallbackReturningFalseCancels) {
  FakeWorker worker(EndlessTokens);
  Client client(Options({worker.address()}));
  int seen = 0;
  const StatusOr<GenerateResult> result =
      client.Generate(Prompt(), [&](const TokenEvent&) { return ++seen < 3; });
  EXPECT_EQ(result.status().code(), StatusCode::kCancelled);
  EXPECT_EQ(seen, 3);
}

TEST(FakeWorkerTest, DestroyingAStreamCancelsTheCall) {
  std::atomic<bool> server_saw_cancel{false};
  FakeWorker worker(
      [&](grpc::ServerContext* context, const v1::GenerateRequest& request, Writer* writer) {
        const grpc::Status status = EndlessTokens(context, request, writer);
        server_saw_cancel = context->IsCancelled();
        return status;
      });
  Client client(Options({worker.address()}));
  {
    StatusOr<std::unique_ptr<GenerateStream>> stream = client.Stream(Prompt());
    ASSERT_TRUE(stream.ok());
    TokenEvent event;
    ASSERT_TRUE((*stream)->Next(&event));
  }
  for (int i = 0; i < 200 && !server_saw_cancel; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(server_saw_cancel);
}

TEST(FakeWorkerTest, RetriesUnavailableBeforeTheFirstToken) {
  FakeWorker detached([](grpc::ServerContext*, const v1::GenerateRequest&, Writer*) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "not attached to a cache manager");
  });
  FakeWorker serving([](grpc::ServerContext*, const v1::GenerateRequest&, Writer* writer) {
    WriteToken(writer, 0, 1, "ok");
    WriteSummary(writer, 1);
    return grpc::Status::OK;
  });
  Client client(Options({detached.address(), serving.address()}));
  for (int call = 0; call < 2; ++call) {
    const StatusOr<GenerateResult> result = client.Generate(Prompt());
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(result->server, serving.address());
  }
  EXPECT_EQ(detached.calls(), 1);  // round-robin started one call there
  EXPECT_EQ(serving.calls(), 2);
}

TEST(FakeWorkerTest, NeverRetriesAfterATokenArrived) {
  FakeWorker lost([](grpc::ServerContext*, const v1::GenerateRequest&, Writer* writer) {
    WriteToken(writer, 0, 1, "half");
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost the cache manager mid-request");
  });
  FakeWorker serving([](grpc::ServerContext*, const v1::GenerateRequest&, Writer* writer) {
    WriteSummary(writer, 0);
    return grpc::Status::OK;
  });
  Client client(Options({lost.address(), serving.address()}));
  int tokens = 0;
  // A new Client's first call goes to the first address.
  const StatusOr<GenerateResult> result = client.Generate(Prompt(), [&](const TokenEvent&) {
    ++tokens;
    return true;
  });
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(result.status().message(), "lost the cache manager mid-request");
  EXPECT_EQ(tokens, 1);
  EXPECT_EQ(serving.calls(), 0);
}

TEST(FakeWorkerTest, RawRequestReachesTheServerAndItsErrorIsKept) {
  FakeWorker worker([](grpc::ServerContext*, const v1::GenerateRequest& request, Writer*) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "max_tokens must be >= 1, got " + std::to_string(request.max_tokens()));
  });
  Client client(Options({worker.address()}));
  v1::GenerateRequest request;
  request.set_prompt("x");
  request.set_max_tokens(-3);
  const StatusOr<GenerateResult> result = client.Generate(request);
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(result.status().message(), "max_tokens must be >= 1, got -3");
  EXPECT_EQ(worker.calls(), 1);
}

TEST(FakeWorkerTest, DeadlineEndsASlowCall) {
  FakeWorker worker(EndlessTokens);
  ClientOptions options = Options({worker.address()});
  options.deadline = std::chrono::milliseconds(200);
  Client client(options);
  const auto start = std::chrono::steady_clock::now();
  const StatusOr<GenerateResult> result = client.Generate(Prompt());
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
}

TEST(FakeWorkerTest, ProtocolErrorsAreInternal) {
  FakeWorker no_summary([](grpc::ServerContext*, const v1::GenerateRequest&, Writer* writer) {
    WriteToken(writer, 0, 1, "a");
    return grpc::Status::OK;
  });
  FakeWorker bad_index([](grpc::ServerContext*, const v1::GenerateRequest&, Writer* writer) {
    WriteToken(writer, 5, 1, "a");
    WriteSummary(writer, 1);
    return grpc::Status::OK;
  });
  const StatusOr<GenerateResult> missing =
      Client(Options({no_summary.address()})).Generate(Prompt());
  EXPECT_EQ(missing.status().code(), StatusCode::kInternal);
  EXPECT_EQ(missing.status().message(), "the stream ended without a summary");
  const StatusOr<GenerateResult> out_of_range =
      Client(Options({bad_index.address()})).Generate(Prompt());
  EXPECT_EQ(out_of_range.status().code(), StatusCode::kInternal);
  EXPECT_THAT(out_of_range.status().message(), ::testing::HasSubstr("sample 5"));
}

}  // namespace
}  // namespace kvpool
