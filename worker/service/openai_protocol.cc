// The OpenAI completions wire format: see openai_protocol.h. The request fields and
// their refusals follow vLLM's OpenAI server (vllm/entrypoints/openai/): what it
// accepts beyond OpenAI (top_k, min_p, repetition_penalty, min_tokens, stop_token_ids,
// ignore_eos) is accepted here too; kvpool's own extensions are kv_mode and
// kvpool_retention (pin the prompt's blocks, or give them a retention priority).
#include "service/openai_protocol.h"

#include <cmath>
#include <random>

#include "common/kv_mode.h"

namespace kvpool::worker {
namespace {

// Fields kvpool refuses unless they hold their neutral value.
bool IsNeutral(const std::string& field, const Json& v) {
  if (v.is_null()) return true;
  if (field == "echo") return v.is_boolean() && !v.get<bool>();
  if (field == "best_of") return v.is_number_integer() && v.get<int64_t>() <= 1;
  if (field == "logit_bias") return v.empty();
  return false;  // logprobs, suffix, prompt_logprobs: any value
}

}  // namespace

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

ApiError FromStatus(const Status& status) {
  ApiError e;
  e.message = status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kOutOfRange:
      e.http = 400;
      break;
    case StatusCode::kUnauthenticated:
      e.http = 401;
      break;
    case StatusCode::kPermissionDenied:
      e.http = 403;
      break;
    case StatusCode::kNotFound:
      e.http = 404;
      break;
    case StatusCode::kResourceExhausted:
      e.http = 429;
      break;
    case StatusCode::kUnavailable:
    case StatusCode::kCancelled:
      e.http = 503;
      break;
    case StatusCode::kDeadlineExceeded:
      e.http = 504;
      break;
    default:
      e.http = 500;
  }
  return e;
}

std::string ErrorBody(const ApiError& e) {
  const char* type = e.http == 401   ? "authentication_error"
                     : e.http == 403 ? "permission_error"
                     : e.http == 404 ? "not_found_error"
                     : e.http == 429 ? "rate_limit_error"
                     : e.http >= 500 ? "server_error"
                                     : "invalid_request_error";
  return Dump({{"error",
                {{"message", e.message},
                 {"type", type},
                 {"param", e.param.empty() ? Json(nullptr) : Json(e.param)},
                 {"code", e.code.empty() ? Json(nullptr) : Json(e.code)}}}});
}

HttpResponse ErrorResponse(const ApiError& e) { return {e.http, "application/json", ErrorBody(e)}; }

ApiError Bad(std::string param, std::string message) {
  return {400, std::move(message), std::move(param), ""};
}

std::optional<ApiError> ParseCompletion(const Json& body, const std::string& served,
                                        const std::string& model_name,
                                        std::vector<v1::GenerateRequest>* requests,
                                        CompletionAsk* ask) {
  if (!body.is_object()) return Bad("", "the body must be a JSON object");
  if (body.contains("cache_salt")) {
    return Bad("cache_salt",
               "cache_salt is not accepted: kvpool salts the prefix cache by the tenant of "
               "the bearer token, never by a field of the request");
  }
  for (const char* field : {"echo", "best_of", "logit_bias", "suffix", "prompt_logprobs"}) {
    if (body.contains(field) && !IsNeutral(field, body[field])) {
      return Bad(field, std::string(field) + " is not supported by kvpool yet");
    }
  }
  const Json model = body.value("model", Json());
  if (!model.is_string()) return Bad("model", "model is required and must be a string");
  if (model != served && model != model_name) {
    return ApiError{404,
                    "The model `" + model.get<std::string>() +
                        "` does not exist (this worker serves `" + served + "`).",
                    "model", "model_not_found"};
  }
  const Json prompt = body.value("prompt", Json());
  const auto token_array = [](const Json& a) {
    if (!a.is_array() || a.empty()) return false;
    for (const Json& t : a) {
      if (!t.is_number_integer()) return false;
    }
    return true;
  };
  // One prompt: a string or a list of token ids; a batch: a list of those.
  std::vector<const Json*> prompts;
  if (prompt.is_string() || token_array(prompt)) {
    prompts.push_back(&prompt);
  } else if (prompt.is_array() && !prompt.empty()) {
    if (prompt.size() > kMaxPromptsPerRequest) {
      return Bad("prompt", "at most " + std::to_string(kMaxPromptsPerRequest) +
                               " prompts per request, got " + std::to_string(prompt.size()));
    }
    for (const Json& one : prompt) {
      if (!one.is_string() && !token_array(one)) {
        return Bad("prompt",
                   "each prompt of a list must be a string or a non-empty list of token ids");
      }
      prompts.push_back(&one);
    }
  } else {
    return Bad("prompt",
               "prompt must be a string, a list of token ids, or a list of those, and not "
               "empty");
  }
  v1::GenerateRequest base;
  v1::GenerateRequest* r = &base;
  const auto integer = [&](const char* field, int64_t fallback,
                           int64_t* out) -> std::optional<ApiError> {
    const Json v = body.value(field, Json());
    if (v.is_null()) {
      *out = fallback;
      return std::nullopt;
    }
    if (!v.is_number_integer()) return Bad(field, std::string(field) + " must be an integer");
    *out = v.get<int64_t>();
    if (*out < -(int64_t{1} << 31) || *out > (int64_t{1} << 31) - 1) {
      return Bad(field, std::string(field) + " is out of range");
    }
    return std::nullopt;
  };
  const auto number = [&](const char* field, double fallback,
                          double* out) -> std::optional<ApiError> {
    const Json v = body.value(field, Json());
    if (v.is_null()) {
      *out = fallback;
      return std::nullopt;
    }
    if (!v.is_number()) return Bad(field, std::string(field) + " must be a number");
    *out = v.get<double>();
    return std::nullopt;
  };
  const auto boolean = [&](const char* field, bool* out) -> std::optional<ApiError> {
    const Json v = body.value(field, Json());
    if (v.is_null()) return std::nullopt;
    if (!v.is_boolean()) return Bad(field, std::string(field) + " must be true or false");
    *out = v.get<bool>();
    return std::nullopt;
  };
  int64_t max_tokens = 0, n = 0, top_k = 0, seed = 0;
  double temperature = 0, top_p = 0;
  if (auto e = integer("max_tokens", 16, &max_tokens)) return e;
  if (auto e = integer("n", 1, &n)) return e;
  if (auto e = integer("top_k", 0, &top_k)) return e;
  if (auto e = number("temperature", 1.0, &temperature)) return e;
  if (auto e = number("top_p", 1.0, &top_p)) return e;
  double min_p = 0, presence = 0, frequency = 0, repetition = 1;
  int64_t min_tokens = 0;
  if (auto e = number("min_p", 0.0, &min_p)) return e;
  if (auto e = number("presence_penalty", 0.0, &presence)) return e;
  if (auto e = number("frequency_penalty", 0.0, &frequency)) return e;
  if (auto e = number("repetition_penalty", 1.0, &repetition)) return e;
  if (auto e = integer("min_tokens", 0, &min_tokens)) return e;
  int64_t logprobs = 0;
  if (auto e = integer("logprobs", 0, &logprobs)) return e;
  if (logprobs < 0 || logprobs > 5) return Bad("logprobs", "logprobs must be in [0, 5]");
  r->set_logprobs(static_cast<int32_t>(logprobs));
  r->set_min_tokens(static_cast<int32_t>(min_tokens));
  const Json stop_ids = body.value("stop_token_ids", Json());
  if (!stop_ids.is_null()) {
    if (!stop_ids.is_array() || stop_ids.size() > 64) {
      return Bad("stop_token_ids", "stop_token_ids must be a list of at most 64 token ids");
    }
    for (const Json& id : stop_ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return Bad("stop_token_ids", "stop_token_ids must hold token ids");
      }
      r->add_stop_token_ids(id.get<int32_t>());
    }
  }
  r->set_max_tokens(static_cast<int32_t>(max_tokens));
  if (n < 1) return Bad("n", "n must be >= 1, got " + std::to_string(n));
  r->set_n(static_cast<int32_t>(n));
  v1::SamplingParams* s = r->mutable_sampling();
  s->set_temperature(temperature);
  s->set_top_p(top_p);
  s->set_min_p(static_cast<float>(min_p));
  s->set_presence_penalty(static_cast<float>(presence));
  s->set_frequency_penalty(static_cast<float>(frequency));
  s->set_repetition_penalty(static_cast<float>(repetition));
  s->set_top_k(static_cast<int32_t>(top_k == -1 ? 0 : top_k));  // vLLM's -1: no top-k
  if (body.contains("seed") && !body["seed"].is_null()) {
    if (auto e = integer("seed", 0, &seed)) return e;
    s->set_seed(static_cast<uint64_t>(seed));
  }
  bool ignore_eos = false;
  if (auto e = boolean("ignore_eos", &ignore_eos)) return e;
  r->set_ignore_eos(ignore_eos);
  if (auto e = boolean("stream", &ask->stream)) return e;
  const Json options = body.value("stream_options", Json());
  if (!options.is_null()) {
    if (!options.is_object()) return Bad("stream_options", "stream_options must be an object");
    const Json usage = options.value("include_usage", Json(false));
    if (!usage.is_boolean()) return Bad("stream_options", "include_usage must be true or false");
    ask->include_usage = usage.get<bool>();
  }
  const Json stop = body.value("stop", Json());
  if (stop.is_string()) {
    r->add_stop(stop.get<std::string>());
  } else if (stop.is_array()) {
    for (const Json& one : stop) {
      if (!one.is_string()) return Bad("stop", "stop must be a string or a list of strings");
      r->add_stop(one.get<std::string>());
    }
  } else if (!stop.is_null()) {
    return Bad("stop", "stop must be a string or a list of strings");
  }
  const Json mode = body.value("kv_mode", Json("paged"));
  StatusOr<KvMode> parsed = mode.is_string()
                                ? ParseKvMode(mode.get<std::string>())
                                : StatusOr<KvMode>(InvalidArgument("kv_mode must be a string"));
  if (!parsed.ok()) return Bad("kv_mode", parsed.status().message());
  r->set_mode(*parsed == KvMode::kNone         ? v1::KV_MODE_NONE
              : *parsed == KvMode::kContiguous ? v1::KV_MODE_CONTIGUOUS
                                               : v1::KV_MODE_PAGED);
  // kvpool's extension: what happens to the prompt's blocks after the request
  // (worker.proto PrefixRetention): {"pin_ttl_s": seconds, "priority": 0..100}.
  if (const Json retention = body.value("kvpool_retention", Json()); !retention.is_null()) {
    if (!retention.is_object()) {
      return Bad("kvpool_retention",
                 "kvpool_retention must be an object: {\"pin_ttl_s\": s, \"priority\": 0..100}");
    }
    for (const auto& [key, value] : retention.items()) {
      if (key == "pin_ttl_s") {
        if (!value.is_number() || value.get<double>() < 0 || value.get<double>() > 30 * 86400.0) {
          return Bad("kvpool_retention.pin_ttl_s",
                     "kvpool_retention.pin_ttl_s must be a number of seconds in [0, 2592000]");
        }
        r->mutable_retention()->set_pin_ttl_ms(std::llround(value.get<double>() * 1000));
      } else if (key == "priority") {
        if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > 100) {
          return Bad("kvpool_retention.priority",
                     "kvpool_retention.priority must be an integer in 0..100");
        }
        r->mutable_retention()->set_priority(value.get<int32_t>());
      } else {
        return Bad("kvpool_retention." + key,
                   "kvpool_retention has pin_ttl_s and priority only, not " + key);
      }
    }
  }
  requests->clear();
  for (const Json* one : prompts) {
    v1::GenerateRequest& out = requests->emplace_back(base);
    if (one->is_string()) {
      out.set_prompt(one->get<std::string>());
      continue;
    }
    for (const Json& t : *one) {
      const int64_t id = t.get<int64_t>();
      if (id < INT32_MIN || id > INT32_MAX) {
        return Bad("prompt", "prompt holds a token id out of range");
      }
      out.add_token_ids(static_cast<int32_t>(id));
    }
  }
  return std::nullopt;
}

const char* OpenAiFinish(const std::string& reason) {
  return reason == "eos" || reason == "stop" ? "stop" : "length";
}

std::string RandomId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char id[40];
  std::snprintf(id, sizeof(id), "cmpl-%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffff));
  return id;
}

std::string Event(const Json& j) { return "data: " + Dump(j) + "\n\n"; }

LogprobsLog::LogprobsLog(bool chat, int32_t top) : chat_(chat), top_(top) {
  all_ = chat ? Json{{"content", Json::array()}}
              : Json{{"tokens", Json::array()},
                     {"token_logprobs", Json::array()},
                     {"top_logprobs", Json::array()},
                     {"text_offset", Json::array()}};
}

Json LogprobsLog::Add(const v1::GeneratedToken& t, const Tokenizer& tokenizer) {
  const auto text_of = [&](int32_t id) {
    try {
      return tokenizer.TokenText(id);
    } catch (const std::exception&) {
      return std::string("\xEF\xBF\xBD");
    }
  };
  const std::string text = text_of(t.token_id());
  if (chat_) {
    // The token's bytes as numbers: a token may be part of one UTF-8 character.
    const auto entry = [&](const std::string& token, double logprob) {
      Json bytes = Json::array();
      for (unsigned char c : token) bytes.push_back(static_cast<int>(c));
      return Json{{"token", token}, {"logprob", logprob}, {"bytes", std::move(bytes)}};
    };
    Json one = entry(text, t.logprob());
    Json top = Json::array();
    for (int i = 0; i < std::min(top_, t.top_logprobs_size()); ++i) {
      top.push_back(entry(text_of(t.top_logprobs(i).token_id()), t.top_logprobs(i).logprob()));
    }
    one["top_logprobs"] = std::move(top);
    all_["content"].push_back(one);
    return {{"content", Json::array({std::move(one)})}};
  }
  Json top = Json::object();
  for (const v1::TopLogprob& p : t.top_logprobs()) top[text_of(p.token_id())] = p.logprob();
  Json one = {{"tokens", Json::array({text})},
              {"token_logprobs", Json::array({t.logprob()})},
              {"top_logprobs", Json::array({top})},
              {"text_offset", Json::array({offset_})}};
  for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
    all_[key].push_back(one[key][0]);
  }
  offset_ += static_cast<int64_t>(text.size());
  return one;
}

}  // namespace kvpool::worker
