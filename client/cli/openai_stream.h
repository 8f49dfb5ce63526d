// OpenAiStream: a minimal client of an OpenAI-compatible completions endpoint for
// `kvpool loadgen --openai-url`: one kept-alive HTTP/1.1 connection (Boost.Beast),
// streaming completions (Server-Sent Events) timed per event as the gRPC client times
// its tokens, so that the same load runs against kvpool's gateway, its gRPC API, or any
// other OpenAI-compatible server (vLLM, llama.cpp's server) and the numbers compare.
// One thread uses one OpenAiStream. It parses only what it times: each event's first
// choice text and the final usage. `kvpool bench --openai-url` uses it too.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvpool::cli {

struct OpenAiCompletion {
  double ttft_s = 0;                    // request sent to the first text event
  std::vector<double> token_arrival_s;  // since the request was sent, one per text event
  int64_t completion_tokens = 0, cached_tokens = 0;  // from the usage chunk
};

// What /v1/models says of the first model a server lists.
struct OpenAiModel {
  std::string id;
  std::string owned_by;       // "kvpool" for kvpool's gateway
  int64_t max_model_len = 0;  // vLLM's and kvpool's extension; 0 when not given
};

class OpenAiStream {
 public:
  // `url`: http://HOST:PORT (the /v1 routes are appended); `token`: a bearer token or "".
  static StatusOr<std::unique_ptr<OpenAiStream>> Connect(const std::string& url, std::string token);
  ~OpenAiStream();

  // The first model /v1/models lists.
  StatusOr<OpenAiModel> FirstModel();
  // One streaming completion of token-id `prompt` (greedy, ignore_eos, usage asked).
  // `extra`: more JSON members, e.g. "\"kv_mode\":\"paged\"" ("" for none).
  StatusOr<OpenAiCompletion> Complete(const std::string& model, const std::vector<int32_t>& prompt,
                                      int max_tokens, const std::string& extra);

 private:
  struct Impl;
  explicit OpenAiStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpool::cli
