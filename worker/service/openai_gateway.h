// OpenAiGateway: the OpenAI-compatible HTTP API on the worker's HTTP port, so that the
// official `openai` clients, curl and the field's benchmark tools drive kvpool
// unchanged: POST /v1/completions (non-streaming, and streaming as Server-Sent Events
// exactly as OpenAI and vLLM frame them; a list of prompts is a batch),
// POST /v1/chat/completions (the model's chat template rendered natively:
// openai_chat.h), GET /v1/models, and vLLM's POST /tokenize (a prompt, or messages)
// and /detokenize. A completion takes the gRPC service's path: the request becomes a
// v1::GenerateRequest, checked by the same JobFromRequest (the one request check),
// submitted to the same scheduler, its job's events turned into OpenAI's JSON. Errors
// are OpenAI's error object with the status a client expects (400 bad field, 401,
// 404 unknown model or route, 413, 429 a full pool, 503 not attached). The bearer
// token is the client's credential as on gRPC (its tenant salts the prefix cache); a
// `cache_salt` in the body is refused: the salt must not come from the request.
// Fields kvpool does not implement yet (echo, best_of, logit_bias, suffix, tools)
// are refused by name, never ignored. Each completion runs on a thread of its own, which waits on
// its job; a client that closes the connection cancels the job (its blocks are freed).
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/observability/http_server.h"
#include "service/cancel_watch.h"
#include "service/manager_link.h"
#include "service/openai_chat.h"
#include "service/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace kvpool::worker {

struct OpenAiGatewayOptions {
  std::string served_model_name;  // the model id clients send and /v1/models lists
  int32_t max_concurrent = 1024;  // completions in flight; 503 beyond
  ChatSetup chat;                 // the model's chat template and special tokens
};

class OpenAiGateway {
 public:
  // All three outlive the gateway.
  OpenAiGateway(OpenAiGatewayOptions options, Scheduler* scheduler, ManagerLink* link,
                std::shared_ptr<const Tokenizer> tokenizer);
  ~OpenAiGateway();  // Stop()

  // The response for a request on one of its routes; nullopt for other paths. Called
  // on the HTTP server's io_context: returns at once (completions are deferred).
  std::optional<HttpResponse> Route(const HttpRequest& request);
  // Cancels the completions in flight and waits for their threads.
  void Stop();

 private:
  // A completion (or, `chat`, a chat completion): parsed, checked, its jobs submitted
  // (one per prompt), then relayed.
  void Completion(HttpRequest request, std::shared_ptr<HttpStream> stream, bool chat);
  // The jobs' events as OpenAI's response: one JSON object, or Server-Sent Events.
  void Relay(const std::vector<std::shared_ptr<Job>>& jobs, const CompletionAsk& ask, bool logprobs,
             HttpStream& stream);
  ChatContext Chat() const;
  HttpResponse Models() const;
  HttpResponse Tokenize(const HttpRequest& request) const;
  HttpResponse Detokenize(const HttpRequest& request) const;

  const OpenAiGatewayOptions options_;
  Scheduler* const scheduler_;
  ManagerLink* const link_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const int64_t created_;  // unix seconds: the models' "created"

  struct Running {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::list<Running> running_;  // GUARDED_BY(mu_)
  std::atomic<bool> stopping_{false};
  CancelWatch cancel_watch_;  // in-flight requests' closed connections, and Stop
};

}  // namespace kvpool::worker
