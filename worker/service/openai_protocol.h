// The OpenAI completions wire format as kvpool's gateway (openai_gateway.h) speaks it:
// a request body parsed into a v1::GenerateRequest (the fields vLLM's server accepts,
// refusals by name), OpenAI's error objects and the status each error gets, the
// Server-Sent Event framing, a sample's text without the stop string that ended it,
// and its logprobs lists. Pure functions of JSON and protobufs: no scheduler, no
// sockets, no threads.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/observability/http_server.h"
#include "common/status.h"
#include "kvpool/v1/worker.pb.h"
#include "tokenizer/tokenizer.h"

namespace kvpool::worker {

using Json = nlohmann::ordered_json;

// A failed request as OpenAI reports it: the status and {"error": {...}}.
struct ApiError {
  int http = 400;
  std::string message;
  std::string param;  // the offending field, "" for none
  std::string code;   // "" for none
};

ApiError FromStatus(const Status& status);
std::string ErrorBody(const ApiError& e);
HttpResponse ErrorResponse(const ApiError& e);
ApiError Bad(std::string param, std::string message);

// What a completion request asks beyond the GenerateRequest.
struct CompletionAsk {
  bool chat = false;  // /v1/chat/completions: chat's response shapes
  bool stream = false;
  bool include_usage = false;
  int32_t top_logprobs = -1;  // chat: the top tokens to list with logprobs; -1 without
};

// The most prompts one completion request may carry (OpenAI's batch form).
inline constexpr size_t kMaxPromptsPerRequest = 64;

// Parses a completion request for the model served as `served` (or known as
// `model_name`) into one GenerateRequest per prompt (a list of prompts is OpenAI's
// batch: choice p*n + i is prompt p's sample i) and `ask`; the error to answer with
// otherwise.
std::optional<ApiError> ParseCompletion(const Json& body, const std::string& served,
                                        const std::string& model_name,
                                        std::vector<v1::GenerateRequest>* requests,
                                        CompletionAsk* ask);

// How each API spells a choice: completions' {"text"}, chat's {"message"} and, when
// streamed, {"delta"} (the first of a choice carries the role).
struct ApiShape {
  bool chat = false;
  const char* Object(bool stream) const {
    return !chat ? "text_completion" : stream ? "chat.completion.chunk" : "chat.completion";
  }
  Json Streamed(int index, const std::string& text, Json logprobs, Json finish) const {
    Json choice = {{"index", index}};
    if (chat) {
      choice["delta"] =
          text.empty() && !finish.is_null() ? Json::object() : Json{{"content", text}};
    } else {
      choice["text"] = text;
    }
    choice["logprobs"] = std::move(logprobs);
    choice["finish_reason"] = std::move(finish);
    return choice;
  }
  Json Role(int index) const {
    return {{"index", index},
            {"delta", {{"role", "assistant"}, {"content", ""}}},
            {"logprobs", nullptr},
            {"finish_reason", nullptr}};
  }
  Json Whole(int index, const std::string& text, Json logprobs, const char* finish) const {
    Json choice = {{"index", index}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      choice["text"] = text;
    }
    choice["logprobs"] = std::move(logprobs);
    choice["finish_reason"] = finish;
    return choice;
  }
};

// "stop" for eos and stop, "length" otherwise (length, context).
const char* OpenAiFinish(const std::string& reason);
std::string RandomId();            // "cmpl-" and 24 hex digits
std::string Dump(const Json& j);   // invalid UTF-8 replaced
std::string Event(const Json& j);  // "data: {...}\n\n"

// One sample's logprobs as OpenAI returns them: completions' parallel lists (the
// tokens' text, their log-probabilities, the top tokens of each as {text: logprob},
// each token's offset in the generated text), or chat's list of {token, logprob,
// bytes, top_logprobs}. `all` grows token by token; Add returns the one-token form a
// streamed chunk carries.
class LogprobsLog {
 public:
  // chat: chat's form with `top` entries in each top_logprobs.
  explicit LogprobsLog(bool chat = false, int32_t top = 0);
  Json Add(const v1::GeneratedToken& t, const Tokenizer& tokenizer);
  const Json& all() const { return all_; }

 private:
  bool chat_;
  int32_t top_;
  Json all_;
  int64_t offset_ = 0;
};

// One sample's text as OpenAI returns it: without the stop string that ended it (the
// engine's text runs up to and including it). Text that may be the start of a stop
// string is held back until the next piece decides.
class StopTrim {
 public:
  explicit StopTrim(const std::vector<std::string>* stops) : stops_(stops) {}
  // The part of `piece` (after what was held back) that is safe to send now.
  std::string Feed(const std::string& piece) {
    if (stopped_) return {};
    pending_ += piece;
    size_t first = std::string::npos;
    for (const std::string& stop : *stops_) first = std::min(first, pending_.find(stop));
    if (first != std::string::npos) {
      stopped_ = true;
      std::string out = pending_.substr(0, first);
      pending_.clear();
      return out;
    }
    size_t hold = 0;  // the longest end of pending_ that begins a stop string
    for (const std::string& stop : *stops_) {
      if (stop.empty()) continue;  // refused at intake; never a reason to underflow
      for (size_t n = std::min(stop.size() - 1, pending_.size()); n > hold; --n) {
        if (pending_.compare(pending_.size() - n, n, stop, 0, n) == 0) {
          hold = n;
          break;
        }
      }
    }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  // What is held back, once the sample ended without a stop string.
  std::string Flush() {
    std::string out = stopped_ ? std::string() : pending_;
    pending_.clear();
    return out;
  }

 private:
  const std::vector<std::string>* stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace kvpool::worker
