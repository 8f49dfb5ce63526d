// CheckGeneration: see request_check.h.
#include "engine/request_check.h"

namespace kvpool {

Status CheckGeneration(const GenerationRequest& r, const ModelConfig& c, bool has_tokenizer,
                       const RequestFieldNames& names) {
  const auto n = static_cast<int64_t>(r.prompt.size());
  if (n == 0) return InvalidArgument(names.prompt + " is empty: give at least one token");
  for (int64_t i = 0; i < n; ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size) {
      return InvalidArgument(names.prompt + "[" + std::to_string(i) + "] is " +
                             std::to_string(r.prompt[i]) + ", outside the vocabulary [0, " +
                             std::to_string(c.vocab_size) + ")");
    }
  }
  if (n >= c.max_position) {
    const std::string field = names.prompt == "prompt" ? "" : " (" + names.prompt + ")";
    return InvalidArgument("prompt has " + std::to_string(n) + " tokens" + field + "; model '" +
                           c.name + "' has a context of " + std::to_string(c.max_position) +
                           " and needs room for at least one new token");
  }
  if (r.max_tokens <= 0) {
    return InvalidArgument("max_tokens must be > 0, got " + std::to_string(r.max_tokens));
  }
  if (n + r.max_tokens > c.max_position) {
    return InvalidArgument("prompt (" + std::to_string(n) + " tokens) + max_tokens (" +
                           std::to_string(r.max_tokens) + ") exceeds the context of " +
                           std::to_string(c.max_position) + " of model '" + c.name + "'");
  }
  KVPOOL_RETURN_IF_ERROR(r.sampling.Validate(names.sampling));
  if (r.stop_token_ids.size() > 64) {
    return InvalidArgument("stop_token_ids has " + std::to_string(r.stop_token_ids.size()) +
                           " ids, over the limit of 64");
  }
  for (size_t i = 0; i < r.stop_token_ids.size(); ++i) {
    if (r.stop_token_ids[i] < 0 || r.stop_token_ids[i] >= c.vocab_size) {
      return InvalidArgument("stop_token_ids[" + std::to_string(i) + "] is " +
                             std::to_string(r.stop_token_ids[i]) + ", outside the vocabulary [0, " +
                             std::to_string(c.vocab_size) + ")");
    }
  }
  if (r.logprobs < 0 || r.logprobs > 5) {
    return InvalidArgument("logprobs must be in [0, 5], got " + std::to_string(r.logprobs));
  }
  if (r.min_tokens < 0 || r.min_tokens > r.max_tokens) {
    return InvalidArgument("min_tokens must be in [0, max_tokens = " +
                           std::to_string(r.max_tokens) + "], got " + std::to_string(r.min_tokens));
  }
  if (!r.stop.empty() && !has_tokenizer) {
    return InvalidArgument("stop strings need a tokenizer and model '" + c.name + "' has none");
  }
  return Status::Ok();
}

}  // namespace kvpool
