// Prefix pins and retention priorities through the real services (tiny-gpt2, a small
// pool): a prompt pinned through the worker's PinPrompt survives a storm of one-off
// prompts that evicts an unpinned prompt served at the same time; a Generate with
// retention pins its prompt and reports the pin; the SDK lists and ends pins, and the
// CLI's pin, pins, unpin and reset-prefix-cache work; pins expire on the manager's
// sweep; with a token file a tenant neither sees nor ends another tenant's pins and an
// end client cannot reset the prefix cache.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "kvpool/client.h"
#include "system_harness.h"

namespace kvpool::integration {
namespace {

using ::testing::HasSubstr;

// 4 full blocks of 16 tokens, then a token of its own per request.
std::vector<int32_t> SystemPrompt(uint32_t seed) { return RandomTokens(64, seed, 5000); }

Client ClientOf(const std::string& address, const std::string& token = "") {
  ClientOptions options;
  options.addresses = {address};
  options.token = token;
  return Client(std::move(options));
}

std::vector<int32_t> With(std::vector<int32_t> prompt, int32_t last) {
  prompt.push_back(last);
  return prompt;
}

int64_t CachedTokens(v1::Worker::Stub& stub, const std::vector<int32_t>& prompt) {
  const GenerateOutcome out = Generate(stub, GreedyRequest(prompt, 2, v1::KV_MODE_PAGED));
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  return out.summary.usage().cached_tokens();
}

// One-off prompts of 3 full blocks each, enough to cycle a 40-block pool several times.
void Storm(v1::Worker::Stub& stub, int n) {
  for (int i = 0; i < n; ++i) CachedTokens(stub, RandomTokens(50, 9000 + i, 5000));
}

TEST(PinTest, APinnedPromptSurvivesAStormThatEvictsAnUnpinnedOne) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "40"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  auto stub = worker.NewStub();
  Client client = ClientOf(worker.address());

  v1::PinPromptRequest pin;
  const std::vector<int32_t> pinned = SystemPrompt(1);
  pin.mutable_token_ids()->Add(pinned.begin(), pinned.end());
  pin.mutable_retention()->set_pin_ttl_ms(60000);
  const StatusOr<v1::PinPromptResponse> made = client.PinPrompt(pin);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  EXPECT_EQ(made->pin().pinned_tokens(), 64);
  EXPECT_EQ(made->prompt_tokens(), 64);
  const std::vector<int32_t> unpinned = SystemPrompt(2);
  EXPECT_EQ(CachedTokens(*stub, With(unpinned, 1)), 0);  // served once, same age

  Storm(*stub, 30);
  EXPECT_EQ(CachedTokens(*stub, With(pinned, 7)), 64);
  EXPECT_EQ(CachedTokens(*stub, With(unpinned, 7)), 0);
  auto manager_stub = manager.NewStub();
  const v1::GetStatsResponse stats = ManagerStats(*manager_stub);
  EXPECT_GT(stats.evictions(), 0);
  EXPECT_EQ(stats.pins(), 1);
  EXPECT_EQ(stats.pinned_blocks(), 4);
  EXPECT_EQ(stats.tenant_max_pinned_blocks(), 10);  // the default 25% of 40

  // Listed, ended, then gone; the blocks drop back to LRU and the storm takes them.
  StatusOr<v1::ListPinsForClientResponse> pins = client.ListPins();
  ASSERT_TRUE(pins.ok());
  ASSERT_EQ(pins->pins_size(), 1);
  EXPECT_EQ(pins->pins(0).pin_id(), made->pin().pin_id());
  EXPECT_TRUE(client.Unpin(made->pin().pin_id()).ok());
  EXPECT_EQ(client.Unpin(made->pin().pin_id()).code(), StatusCode::kNotFound);
  EXPECT_EQ(client.ListPins()->pins_size(), 0);
  Storm(*stub, 30);
  EXPECT_EQ(CachedTokens(*stub, With(pinned, 8)), 0);
  std::string violation;
  EXPECT_TRUE(ManagerInvariantsHold(*manager_stub, &violation)) << violation;
}

TEST(PinTest, GenerateWithRetentionPinsItsPromptAndPinsExpire) {
  // Lease TTL 1 s: the manager sweeps leases and pins every 250 ms.
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "64", "--lease-ttl-ms", "1000"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  auto stub = worker.NewStub();
  v1::GenerateRequest request = GreedyRequest(With(SystemPrompt(3), 1), 3, v1::KV_MODE_PAGED);
  request.mutable_retention()->set_pin_ttl_ms(600);
  request.mutable_retention()->set_priority(90);
  const GenerateOutcome out = Generate(*stub, request);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_TRUE(out.summary.has_pin()) << out.summary.pin_error();
  EXPECT_EQ(out.summary.pin().pinned_tokens(), 64);
  EXPECT_EQ(out.summary.pin().priority(), 90);
  Client client = ClientOf(worker.address());
  EXPECT_EQ(client.ListPins()->pins_size(), 1);
  auto manager_stub = manager.NewStub();
  EXPECT_TRUE(
      WaitUntil([&] { return ManagerStats(*manager_stub).pins() == 0; }, std::chrono::seconds(5)));
  EXPECT_EQ(client.ListPins()->pins_size(), 0);

  // Bad retention is refused before anything is queued.
  v1::GenerateRequest bad = request;
  bad.mutable_retention()->set_priority(101);
  EXPECT_EQ(Generate(*stub, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = request;
  bad.set_mode(v1::KV_MODE_CONTIGUOUS);
  const GenerateOutcome contiguous = Generate(*stub, bad);
  EXPECT_EQ(contiguous.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(contiguous.status.error_message(), HasSubstr("retention needs mode paged"));
  // A pin over the manager's longest TTL is the manager's INVALID_ARGUMENT, in the summary.
  v1::GenerateRequest too_long = request;
  too_long.mutable_retention()->set_pin_ttl_ms(int64_t{31} * 86400 * 1000);
  const GenerateOutcome refused = Generate(*stub, too_long);
  ASSERT_TRUE(refused.status.ok());
  EXPECT_FALSE(refused.summary.has_pin());
  EXPECT_THAT(refused.summary.pin_error(), HasSubstr("max pin TTL"));
}

TEST(PinTest, TheCliPinsListsUnpinsAndResets) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "64"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  const std::string cli = std::string(KVPOOL_CLI_BIN);
  std::string ids;
  for (int32_t t : SystemPrompt(4)) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  auto run = [](const std::string& command) {
    std::string out;
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    char buffer[512];
    while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
    const int status = pipe != nullptr ? pclose(pipe) : -1;
    return std::make_pair(status, out);
  };
  const auto [pin_status, pin_out] =
      run(cli + " pin --server " + worker.address() + " --token-ids " + ids + " --ttl-s 60");
  ASSERT_EQ(pin_status, 0) << pin_out;
  EXPECT_THAT(pin_out, HasSubstr("64 tokens, expires in 60.0 s"));
  const auto [list_status, list_out] = run(cli + " pins --server " + worker.address());
  EXPECT_EQ(list_status, 0);
  EXPECT_THAT(list_out, HasSubstr("pin 1: 64 tokens"));
  const auto [reset_status, reset_out] =
      run(cli + " reset-prefix-cache --server " + manager.address());
  EXPECT_EQ(reset_status, 0) << reset_out;
  EXPECT_THAT(reset_out, HasSubstr("dropped 1 pins"));
  const auto [unpin_status, unpin_out] = run(cli + " unpin 1 --server " + worker.address());
  EXPECT_NE(unpin_status, 0);  // the reset ended it
  EXPECT_THAT(unpin_out, HasSubstr("has no pin 1"));
  auto stub = worker.NewStub();
  EXPECT_EQ(CachedTokens(*stub, With(SystemPrompt(4), 1)), 0);  // the reset evicted it
}

TEST(PinTest, TenantsNeitherSeeNorEndEachOthersPins) {
  const std::string tokens = ::testing::TempDir() + "kvpool_pin_tokens.txt";
  const std::string worker_token = ::testing::TempDir() + "kvpool_pin_worker_token.txt";
  std::ofstream(tokens)
      << "tok-worker workers worker\ntok-a tenant-a client\ntok-b tenant-b client\n";
  std::ofstream(worker_token) << "tok-worker\n";
  ManagerProcess manager(
      {"--model", "tiny-gpt2", "--num-blocks", "64", "--auth-token-file", tokens});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(),
                       {"--model", "tiny-gpt2", "--threads", "1", "--token-file", worker_token});
  ASSERT_FALSE(worker.address().empty());
  auto client_of = [&](const std::string& token) {
    ClientOptions options;
    options.addresses = {worker.address()};
    options.token = token;
    return std::make_unique<Client>(std::move(options));
  };
  auto a = client_of("tok-a");
  auto b = client_of("tok-b");
  v1::PinPromptRequest pin;
  const std::vector<int32_t> prompt = SystemPrompt(5);
  pin.mutable_token_ids()->Add(prompt.begin(), prompt.end());
  pin.mutable_retention()->set_pin_ttl_ms(60000);
  const StatusOr<v1::PinPromptResponse> made = a->PinPrompt(pin);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  EXPECT_EQ(b->ListPins()->pins_size(), 0);
  EXPECT_EQ(b->Unpin(made->pin().pin_id()).code(), StatusCode::kNotFound);
  EXPECT_EQ(a->ListPins()->pins_size(), 1);
  // The operator resets on the manager; an end client's token cannot.
  EXPECT_EQ(ClientOf(manager.address(), "tok-a").ResetPrefixCache().status().code(),
            StatusCode::kPermissionDenied);
  const StatusOr<v1::ResetPrefixCacheResponse> reset =
      ClientOf(manager.address(), "tok-worker").ResetPrefixCache();
  ASSERT_TRUE(reset.ok()) << reset.status().ToString();
  EXPECT_EQ(reset->dropped_pins(), 1);
  std::remove(tokens.c_str());
  std::remove(worker_token.c_str());
}

}  // namespace
}  // namespace kvpool::integration
