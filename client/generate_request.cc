// The SDK's conversions to and from the wire: GenerateParams to v1::GenerateRequest
// (with the checks that need no model: a value the worker would reject whatever it
// serves fails here first, naming the field), KvMode names, and grpc::Status to
// kvpool::Status. Conversions only: nothing here talks to a server.
#include <cmath>

#include "kvpool/client.h"

namespace kvpool {

StatusOr<v1::KvMode> ParseKvMode(std::string_view mode) {
  if (mode.empty()) return v1::KV_MODE_UNSPECIFIED;
  if (mode == "none") return v1::KV_MODE_NONE;
  if (mode == "contiguous") return v1::KV_MODE_CONTIGUOUS;
  if (mode == "paged") return v1::KV_MODE_PAGED;
  return InvalidArgument("mode must be none, contiguous or paged, got \"" + std::string(mode) +
                         "\"");
}

std::string_view KvModeName(v1::KvMode mode) {
  switch (mode) {
    case v1::KV_MODE_NONE:
      return "none";
    case v1::KV_MODE_CONTIGUOUS:
      return "contiguous";
    case v1::KV_MODE_PAGED:
      return "paged";
    default:
      return "";
  }
}

StatusOr<v1::GenerateRequest> ToGenerateRequest(const GenerateParams& params) {
  if (params.prompt.empty() == params.token_ids.empty()) {
    return InvalidArgument("exactly one of prompt and token_ids must be non-empty");
  }
  for (size_t i = 0; i < params.token_ids.size(); ++i) {
    if (params.token_ids[i] < 0) {
      return InvalidArgument("token_ids[" + std::to_string(i) + "] must be >= 0, got " +
                             std::to_string(params.token_ids[i]));
    }
  }
  if (params.max_tokens < 1) {
    return InvalidArgument("max_tokens must be >= 1, got " + std::to_string(params.max_tokens));
  }
  if (!std::isfinite(params.temperature) || params.temperature < 0) {
    return InvalidArgument("temperature must be finite and >= 0, got " +
                           std::to_string(params.temperature));
  }
  if (params.top_p && !(*params.top_p > 0 && *params.top_p <= 1)) {
    return InvalidArgument("top_p must be in (0, 1], got " + std::to_string(*params.top_p));
  }
  if (params.top_k < 0) {
    return InvalidArgument("top_k must be >= 0, got " + std::to_string(params.top_k));
  }
  if (params.n < 0) return InvalidArgument("n must be >= 1, got " + std::to_string(params.n));
  KVPOOL_ASSIGN_OR_RETURN(const v1::KvMode mode, ParseKvMode(params.mode));

  v1::GenerateRequest request;
  request.set_prompt(params.prompt);
  request.mutable_token_ids()->Add(params.token_ids.begin(), params.token_ids.end());
  request.set_max_tokens(params.max_tokens);
  request.set_mode(mode);
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_temperature(params.temperature);
  if (params.top_p) sampling->set_top_p(*params.top_p);
  sampling->set_top_k(params.top_k);
  if (params.seed) sampling->set_seed(*params.seed);
  for (const std::string& stop : params.stop) request.add_stop(stop);
  request.set_ignore_eos(params.ignore_eos);
  request.set_n(params.n);
  sampling->set_min_p(params.min_p);
  sampling->set_presence_penalty(params.presence_penalty);
  sampling->set_frequency_penalty(params.frequency_penalty);
  if (params.repetition_penalty) sampling->set_repetition_penalty(*params.repetition_penalty);
  request.set_min_tokens(params.min_tokens);
  request.mutable_stop_token_ids()->Add(params.stop_token_ids.begin(), params.stop_token_ids.end());
  if (params.pin_ttl_ms < 0) {
    return InvalidArgument("pin_ttl_ms must be >= 0, got " + std::to_string(params.pin_ttl_ms));
  }
  if (params.pin_ttl_ms > 0) request.mutable_retention()->set_pin_ttl_ms(params.pin_ttl_ms);
  if (params.retention_priority) {
    request.mutable_retention()->set_priority(*params.retention_priority);
  }
  return request;
}

}  // namespace kvpool
