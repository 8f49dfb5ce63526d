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
  bool stream = false;
  bool include_usage = false;
};

// Parses a completion request for the model served as `served` (or known as
// `model_name`) into `r` and `ask`; the error to answer with otherwise.
std::optional<ApiError> ParseCompletion(const Json& body, const std::string& served,
                                        const std::string& model_name, v1::GenerateRequest* r,
                                        CompletionAsk* ask);

// "stop" for eos and stop, "length" otherwise (length, context).
const char* OpenAiFinish(const std::string& reason);
std::string RandomId();            // "cmpl-" and 24 hex digits
std::string Dump(const Json& j);   // invalid UTF-8 replaced
std::string Event(const Json& j);  // "data: {...}\n\n"

// One sample's logprobs in OpenAI's completions form (parallel lists: the tokens' text,
// their log-probabilities, the top tokens of each as {text: logprob}, and each token's
// offset in the generated text); `all` grows token by token and Add returns the
// one-token form a streamed chunk carries.
struct LogprobsLog {
  Json all = {{"tokens", Json::array()},
              {"token_logprobs", Json::array()},
              {"top_logprobs", Json::array()},
              {"text_offset", Json::array()}};
  int64_t offset = 0;

  Json Add(const v1::GeneratedToken& t, const Tokenizer& tokenizer) {
    const auto text_of = [&](int32_t id) {
      try {
        return tokenizer.TokenText(id);
      } catch (const std::exception&) {
        return std::string("\xEF\xBF\xBD");
      }
    };
    const std::string text = text_of(t.token_id());
    Json top = Json::object();
    for (const v1::TopLogprob& p : t.top_logprobs()) {
      top[text_of(p.token_id())] = p.logprob();
    }
    Json one = {{"tokens", Json::array({text})},
                {"token_logprobs", Json::array({t.logprob()})},
                {"top_logprobs", Json::array({top})},
                {"text_offset", Json::array({offset})}};
    for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
      all[key].push_back(one[key][0]);
    }
    offset += static_cast<int64_t>(text.size());
    return one;
  }
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
