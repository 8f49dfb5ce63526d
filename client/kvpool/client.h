// The kvpool client SDK: kvpool::Client talks to kvpool-workers (Generate, model info,
// worker stats, health) and to a kvpool-manager (its stats) over gRPC. It owns one
// channel per address, spreads calls over them round-robin, retries a call on the next
// address when it fails UNAVAILABLE before any token arrived (never after: streamed
// tokens are never generated twice), puts the deadline and the bearer token on every
// call, and turns gRPC statuses into kvpool::Status with the server's message intact.
// It is thread-safe: any number of threads may share one Client. It never links
// LibTorch and holds no model state.
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/grpc_status.h"
#include "common/status.h"
#include "kvpool/v1/manager.pb.h"
#include "kvpool/v1/worker.pb.h"

namespace kvpool {

struct ClientOptions {
  std::vector<std::string> addresses;            // HOST:PORT of workers (or of a manager)
  std::string token;                             // sent as "authorization: Bearer TOKEN" when set
  std::chrono::milliseconds deadline{0};         // of each Client call, retries included; 0 = none
  int max_attempts = 3;                          // tries of one call, counting the first
  std::chrono::milliseconds retry_backoff{100};  // pause before each retry
  // TLS (PEM file paths, read once when the Client is made). Any of them set: every
  // channel speaks TLS, trusting tls_ca_file (the system roots when empty); with
  // tls_cert_file + tls_key_file it presents that client certificate (for an mTLS
  // server). None set: plaintext. A file that cannot be read fails every call with
  // INVALID_ARGUMENT naming the option and the path.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
};

// v1::GenerateRequest in plain C++ (see worker.proto for each field's meaning).
struct GenerateParams {
  std::string prompt;  // exactly one of prompt and token_ids is non-empty
  std::vector<int32_t> token_ids;
  int32_t max_tokens = 16;
  std::string mode;          // "none" | "contiguous" | "paged"; empty = the worker's default
  float temperature = 0.0f;  // 0 = greedy
  std::optional<float> top_p;
  int32_t top_k = 0;  // 0 = off
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int32_t n = 1;  // parallel samples
  float min_p = 0.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<float> repetition_penalty;  // unset = 1 = off
  int32_t min_tokens = 0;
  std::vector<int32_t> stop_token_ids;
  // worker.proto PrefixRetention: pin the prompt's full blocks for this long after the
  // request (0: no pin; the pin is in GenerateResult::summary.pin()), and/or give them a
  // retention priority (0..100; evicted lower first). Paged mode only.
  int64_t pin_ttl_ms = 0;
  std::optional<int32_t> retention_priority;
};

// The request for `params`; INVALID_ARGUMENT naming the field when a value can never be
// valid (unknown mode, no prompt, max_tokens < 1, ...). Limits that depend on the model
// (context length, vocabulary) are the worker's to check.
StatusOr<v1::GenerateRequest> ToGenerateRequest(const GenerateParams& params);

// "none" | "contiguous" | "paged" | "" (unspecified) to the enum; INVALID_ARGUMENT else.
StatusOr<v1::KvMode> ParseKvMode(std::string_view mode);
// The inverse of ParseKvMode: "none", "contiguous", "paged" or "" for unspecified.
std::string_view KvModeName(v1::KvMode mode);

// The kvpool::Status of a gRPC status: same code (the numbering is shared), same
// message, and the reason of a kvpool error detail (common/grpc_status.h, the one
// mapping every process uses).
using v1::FromGrpcStatus;

// One generated token as it arrives.
struct TokenEvent {
  int index = 0;  // sample, 0 .. n-1
  int32_t token_id = 0;
  std::string text;               // the token's text piece (may be a partial UTF-8 sequence)
  double step_latency_s = 0.0;    // the server's forward that produced it
  double arrival_s = 0.0;         // client clock since the call started
  int64_t kv_bytes_reserved = 0;  // the sample's KV blocks on the server after this step
  int64_t kv_bytes_used = 0;      // of those, bytes holding its tokens
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // per sample
  std::vector<std::string> text;             // per sample, the pieces concatenated
  v1::GenerateSummary summary;               // the server's usage and timings
  double client_ttft_s = 0.0;                // call start to the first token (0 when none came)
  double client_total_s = 0.0;               // call start to the end of the stream
  std::vector<double> token_arrival_s;       // every token's arrival, in arrival order
  std::string server;                        // the address that served the call
};

class Client;
namespace client_internal {
class Channels;
}  // namespace client_internal

// One Generate call read token by token. Not thread-safe except Cancel, which any
// thread may call at any time.
class GenerateStream {
 public:
  ~GenerateStream();  // cancels the call if it is still running
  GenerateStream(const GenerateStream&) = delete;
  GenerateStream& operator=(const GenerateStream&) = delete;

  // The next token; false at the end of the stream (success or error: see Finish).
  bool Next(TokenEvent* event);
  // Reads what is left and returns the result, or the call's error.
  StatusOr<GenerateResult> Finish();
  // Stops the call: Next returns false and Finish returns CANCELLED.
  void Cancel();

 private:
  friend class Client;
  struct State;
  explicit GenerateStream(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class Client {
 public:
  // Unary calls given this index start at the round-robin address instead of a fixed one.
  static constexpr size_t kAnyAddress = std::numeric_limits<size_t>::max();
  // Called per token; returning false cancels the call (the result is then CANCELLED).
  using TokenCallback = std::function<bool(const TokenEvent&)>;

  // Creates one channel per address; connections open on first use.
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const ClientOptions& options() const;

  StatusOr<GenerateResult> Generate(const GenerateParams& params, TokenCallback on_token = {});
  // Sends `request` as is, without client-side checks (for testing the server).
  StatusOr<GenerateResult> Generate(const v1::GenerateRequest& request,
                                    TokenCallback on_token = {});
  // The iterator form of Generate (the stream may outlive this Client).
  StatusOr<std::unique_ptr<GenerateStream>> Stream(const GenerateParams& params);
  StatusOr<std::unique_ptr<GenerateStream>> Stream(const v1::GenerateRequest& request);

  // Unary calls go to `address_index` (retries on UNAVAILABLE try that address again),
  // or with kAnyAddress to the round-robin address (retries move to the next one).
  StatusOr<v1::GetWorkerStatsResponse> WorkerStats(size_t address_index = kAnyAddress);
  StatusOr<v1::GetModelInfoResponse> ModelInfo(size_t address_index = kAnyAddress);
  // A kvpool-manager's CacheManager.GetStats.
  StatusOr<v1::GetStatsResponse> ManagerStats(size_t address_index = kAnyAddress);
  // Prefix pins of the caller's tenant (worker.proto): prefill `request`'s prompt and pin
  // its full blocks; list them; end one. Any worker of the node answers for its manager.
  StatusOr<v1::PinPromptResponse> PinPrompt(const v1::PinPromptRequest& request,
                                            size_t address_index = kAnyAddress);
  StatusOr<v1::ListPinsForClientResponse> ListPins(size_t address_index = kAnyAddress);
  Status Unpin(int64_t pin_id, size_t address_index = kAnyAddress);
  // A kvpool-manager's CacheManager.ResetPrefixCache (an operator's token).
  StatusOr<v1::ResetPrefixCacheResponse> ResetPrefixCache(size_t address_index = kAnyAddress);
  // grpc.health.v1 Check of service "": true when SERVING (a worker is SERVING once
  // attached to a manager), false for any other serving status.
  StatusOr<bool> Healthy(size_t address_index = kAnyAddress);

 private:
  std::shared_ptr<client_internal::Channels> channels_;
};

}  // namespace kvpool
