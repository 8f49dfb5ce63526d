// Client SDK pieces that need no server: GenerateParams to v1::GenerateRequest and its
// client-side errors, KvMode names, grpc::Status mapping, argument checks of Client
// calls (TLS files included), the CLI's TLS flags and its percentile.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "client/cli/cli_util.h"
#include "kvpool/client.h"

namespace kvpool {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

GenerateParams Valid() {
  GenerateParams params;
  params.prompt = "Hello";
  params.max_tokens = 4;
  return params;
}

TEST(GenerateRequestTest, CopiesEveryField) {
  GenerateParams params;
  params.token_ids = {1, 2, 3};
  params.max_tokens = 7;
  params.mode = "contiguous";
  params.temperature = 0.5f;
  params.top_p = 0.9f;
  params.top_k = 40;
  params.seed = 1234;
  params.stop = {"\n", "END"};
  params.ignore_eos = true;
  params.n = 3;
  params.min_p = 0.05f;
  params.presence_penalty = 0.5f;
  params.frequency_penalty = -0.25f;
  params.repetition_penalty = 1.2f;
  params.min_tokens = 2;
  params.stop_token_ids = {50256, 13};
  const StatusOr<v1::GenerateRequest> request = ToGenerateRequest(params);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->prompt(), "");
  EXPECT_THAT(request->token_ids(), ElementsAre(1, 2, 3));
  EXPECT_EQ(request->max_tokens(), 7);
  EXPECT_EQ(request->mode(), v1::KV_MODE_CONTIGUOUS);
  EXPECT_FLOAT_EQ(request->sampling().temperature(), 0.5f);
  ASSERT_TRUE(request->sampling().has_top_p());
  EXPECT_FLOAT_EQ(request->sampling().top_p(), 0.9f);
  EXPECT_EQ(request->sampling().top_k(), 40);
  ASSERT_TRUE(request->sampling().has_seed());
  EXPECT_EQ(request->sampling().seed(), 1234u);
  EXPECT_THAT(request->stop(), ElementsAre("\n", "END"));
  EXPECT_TRUE(request->ignore_eos());
  EXPECT_EQ(request->n(), 3);
  EXPECT_FLOAT_EQ(request->sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(request->sampling().presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(request->sampling().frequency_penalty(), -0.25f);
  ASSERT_TRUE(request->sampling().has_repetition_penalty());
  EXPECT_FLOAT_EQ(request->sampling().repetition_penalty(), 1.2f);
  EXPECT_EQ(request->min_tokens(), 2);
  EXPECT_THAT(request->stop_token_ids(), ElementsAre(50256, 13));
}

TEST(GenerateRequestTest, UnsetOptionalsStayUnset) {
  const StatusOr<v1::GenerateRequest> request = ToGenerateRequest(Valid());
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->prompt(), "Hello");
  EXPECT_EQ(request->mode(), v1::KV_MODE_UNSPECIFIED);
  EXPECT_FALSE(request->sampling().has_top_p());
  EXPECT_FALSE(request->sampling().has_seed());
  EXPECT_FALSE(request->sampling().has_repetition_penalty());
}

TEST(GenerateRequestTest, UnknownModeIsInvalidArgument) {
  GenerateParams params = Valid();
  params.mode = "Paged";
  const StatusOr<v1::GenerateRequest> request = ToGenerateRequest(params);
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(request.status().message(), "mode must be none, contiguous or paged, got \"Paged\"");
}

// Each case breaks one field; the error must name it.
TEST(GenerateRequestTest, RejectsValuesNoWorkerAccepts) {
  struct Case {
    const char* field;
    void (*mutate)(GenerateParams&);
  };
  const Case cases[] = {
      {"prompt", [](GenerateParams& p) { p.prompt.clear(); }},
      {"prompt", [](GenerateParams& p) { p.token_ids = {1}; }},
      {"token_ids[1]",
       [](GenerateParams& p) {
         p.prompt.clear();
         p.token_ids = {5, -1};
       }},
      {"max_tokens", [](GenerateParams& p) { p.max_tokens = 0; }},
      {"temperature", [](GenerateParams& p) { p.temperature = -0.1f; }},
      {"temperature",
       [](GenerateParams& p) { p.temperature = std::numeric_limits<float>::quiet_NaN(); }},
      {"top_p", [](GenerateParams& p) { p.top_p = 0.0f; }},
      {"top_p", [](GenerateParams& p) { p.top_p = 1.5f; }},
      {"top_k", [](GenerateParams& p) { p.top_k = -1; }},
      {"n", [](GenerateParams& p) { p.n = -2; }},
  };
  for (const Case& c : cases) {
    GenerateParams params = Valid();
    c.mutate(params);
    const StatusOr<v1::GenerateRequest> request = ToGenerateRequest(params);
    ASSERT_FALSE(request.ok()) << c.field;
    EXPECT_EQ(request.status().code(), StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(request.status().message(), HasSubstr(c.field));
  }
}

TEST(GenerateRequestTest, ModeNamesRoundTrip) {
  for (const char* name : {"", "none", "contiguous", "paged"}) {
    const StatusOr<v1::KvMode> mode = ParseKvMode(name);
    ASSERT_TRUE(mode.ok()) << name;
    EXPECT_EQ(KvModeName(*mode), name);
  }
  EXPECT_EQ(ParseKvMode("PAGED").status().code(), StatusCode::kInvalidArgument);
}

TEST(StatusMappingTest, KeepsCodeAndServerMessage) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  for (int code = 1; code <= 16; ++code) {
    const Status status =
        FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "from the server"));
    EXPECT_EQ(static_cast<int>(status.code()), code);
    EXPECT_EQ(status.message(), "from the server");
  }
  // A code outside gRPC's numbering is UNKNOWN, not a value past the enum.
  EXPECT_EQ(FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(99), "odd")).code(),
            StatusCode::kUnknown);
}

TEST(ClientArgumentsTest, FailBeforeAnyCall) {
  Client empty(ClientOptions{});
  EXPECT_EQ(empty.Generate(Valid()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.ManagerStats().status().code(), StatusCode::kInvalidArgument);

  ClientOptions options;
  options.addresses = {"127.0.0.1:1"};
  Client client(options);
  const StatusOr<bool> healthy = client.Healthy(1);
  ASSERT_FALSE(healthy.ok());
  EXPECT_EQ(healthy.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(healthy.status().message(), HasSubstr("out of range"));

  GenerateParams params = Valid();
  params.mode = "bogus";
  bool called = false;
  const StatusOr<GenerateResult> result = client.Generate(params, [&](const TokenEvent&) {
    called = true;
    return true;
  });
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(called);
}

TEST(ClientArgumentsTest, UnreadableTlsFilesFailEveryCallNamingTheOption) {
  ClientOptions options;
  options.addresses = {"127.0.0.1:1"};
  options.tls_ca_file = "/nonexistent/kvpool-ca.pem";
  Client client(options);
  for (const Status& status : {client.Generate(Valid()).status(), client.ManagerStats().status(),
                               client.Healthy().status()}) {
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
    EXPECT_THAT(status.message(), HasSubstr("ClientOptions.tls_ca_file"));
    EXPECT_THAT(status.message(), HasSubstr("/nonexistent/kvpool-ca.pem"));
  }
  ClientOptions no_key = options;
  no_key.tls_ca_file.clear();
  no_key.tls_cert_file = "/nonexistent/client.pem";
  const Status status = Client(no_key).Generate(Valid()).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("ClientOptions.tls_key_file"));
}

TEST(CliTlsFlagsTest, ErrorsNameTheFlag) {
  ClientOptions options;
  cli::TlsFlags flags;
  EXPECT_TRUE(cli::ApplyTlsFlags(flags, &options).ok());  // none: plaintext
  flags.cert = "/nonexistent/client.pem";
  Status status = cli::ApplyTlsFlags(flags, &options);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("--tls-cert needs --tls-key"));
  flags = {};
  flags.ca = "/nonexistent/ca.pem";
  status = cli::ApplyTlsFlags(flags, &options);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("--tls-ca: cannot read '/nonexistent/ca.pem'"));
  EXPECT_TRUE(options.tls_ca_file.empty());  // untouched on error
}

TEST(PercentileTest, InterpolatesBetweenOrderStatistics) {
  EXPECT_EQ(cli::Percentile({}, 0.5), 0.0);
  EXPECT_EQ(cli::Percentile({3.0}, 0.99), 3.0);
  EXPECT_DOUBLE_EQ(cli::Percentile({4.0, 1.0, 3.0, 2.0}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(cli::Percentile({1.0, 2.0, 3.0, 4.0, 5.0}, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(cli::Percentile({1.0, 2.0, 3.0, 4.0, 5.0}, 1.0), 5.0);
  EXPECT_DOUBLE_EQ(cli::Percentile({0.0, 100.0}, 0.99), 99.0);
}

}  // namespace
}  // namespace kvpool
