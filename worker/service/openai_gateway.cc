// OpenAiGateway: see openai_gateway.h. The request fields and their refusals follow
// vLLM's OpenAI server (vllm/entrypoints/openai/): what it accepts beyond OpenAI
// (top_k, ignore_eos) is accepted here too; kvpool's own extension is kv_mode.
#include "service/openai_gateway.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "common/kv_mode.h"
#include "service/worker_service.h"

namespace kvpool::worker {
namespace {

using Json = nlohmann::ordered_json;

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// A failed request as OpenAI reports it: the status and {"error": {...}}.
struct ApiError {
  int http = 400;
  std::string message;
  std::string param;  // the offending field, "" for none
  std::string code;   // "" for none
};

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

// What a completion request asks beyond the GenerateRequest.
struct CompletionAsk {
  bool stream = false;
  bool include_usage = false;
};

// Fields kvpool refuses unless they hold their neutral value.
bool IsNeutral(const std::string& field, const Json& v) {
  if (v.is_null()) return true;
  if (field == "echo") return v.is_boolean() && !v.get<bool>();
  if (field == "best_of") return v.is_number_integer() && v.get<int64_t>() <= 1;
  if (field == "logit_bias") return v.empty();
  return false;  // logprobs, suffix, prompt_logprobs: any value
}

std::optional<ApiError> ParseCompletion(const Json& body, const std::string& served,
                                        const std::string& model_name, v1::GenerateRequest* r,
                                        CompletionAsk* ask) {
  if (!body.is_object()) return Bad("", "the body must be a JSON object");
  if (body.contains("cache_salt")) {
    return Bad("cache_salt",
               "cache_salt is not accepted: kvpool salts the prefix cache by the tenant of "
               "the bearer token, never by a field of the request");
  }
  for (const char* field :
       {"logprobs", "echo", "best_of", "logit_bias", "suffix", "prompt_logprobs"}) {
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
  if (prompt.is_string()) {
    r->set_prompt(prompt.get<std::string>());
  } else if (token_array(prompt)) {
    for (const Json& t : prompt) {
      const int64_t id = t.get<int64_t>();
      if (id < INT32_MIN || id > INT32_MAX)
        return Bad("prompt", "prompt holds a token id out of range");
      r->add_token_ids(static_cast<int32_t>(id));
    }
  } else if (prompt.is_array() && prompt.size() == 1 &&
             (prompt[0].is_string() || token_array(prompt[0]))) {
    Json one = Json::object({{"prompt", prompt[0]}, {"model", model}});
    v1::GenerateRequest inner;
    CompletionAsk unused;
    if (auto e = ParseCompletion(one, served, model_name, &inner, &unused)) return e;
    r->set_prompt(inner.prompt());
    r->mutable_token_ids()->CopyFrom(inner.token_ids());
  } else if (prompt.is_array() && prompt.size() > 1) {
    return Bad("prompt", "one prompt per request: send the " + std::to_string(prompt.size()) +
                             " prompts as separate requests");
  } else {
    return Bad("prompt",
               "prompt must be a string, a list of token ids, or a list of one of "
               "those, and not empty");
  }
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

}  // namespace

OpenAiGateway::OpenAiGateway(OpenAiGatewayOptions options, Scheduler* scheduler, ManagerLink* link,
                             std::shared_ptr<const Tokenizer> tokenizer)
    : options_(std::move(options)),
      scheduler_(scheduler),
      link_(link),
      tokenizer_(std::move(tokenizer)),
      created_(UnixNow()) {}

OpenAiGateway::~OpenAiGateway() { Stop(); }

void OpenAiGateway::Stop() {
  stopping_.store(true);
  std::list<Running> running;
  {
    std::lock_guard<std::mutex> lock(mu_);
    running.swap(running_);
  }
  for (Running& r : running) r.thread.join();
}

std::optional<HttpResponse> OpenAiGateway::Route(const HttpRequest& request) {
  const std::string& path = request.target;
  const bool post = request.method == "POST";
  if (path == "/v1/models") {
    if (request.method != "GET") return ErrorResponse({405, "use GET", "", ""});
    return Models();
  }
  if (path == "/tokenize" || path == "/detokenize") {
    if (!post) return ErrorResponse({405, "use POST", "", ""});
    return path == "/tokenize" ? Tokenize(request) : Detokenize(request);
  }
  if (path == "/v1/chat/completions") {
    return ErrorResponse({404,
                          "chat completions are not served by kvpool yet: use "
                          "/v1/completions",
                          "", "not_implemented"});
  }
  if (path != "/v1/completions") {
    if (path.rfind("/v1/", 0) == 0) {
      return ErrorResponse({404,
                            "no route " + path +
                                ": kvpool serves /v1/completions and "
                                "/v1/models",
                            "", ""});
    }
    return std::nullopt;
  }
  if (!post) return ErrorResponse({405, "use POST", "", ""});
  return HttpResponse::Deferred([this, request](std::shared_ptr<HttpStream> stream) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = running_.begin(); it != running_.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    if (stopping_.load() || static_cast<int32_t>(running_.size()) >= options_.max_concurrent) {
      const ApiError busy{503,
                          "the worker is at its limit of concurrent completions (or "
                          "shutting down): retry shortly",
                          "", ""};
      stream->Respond(busy.http, "application/json", ErrorBody(busy));
      return;
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    running_.push_back({std::thread([this, request, stream, done] {
                          Completion(request, stream);
                          done->store(true);
                        }),
                        done});
  });
}

void OpenAiGateway::Completion(HttpRequest request, std::shared_ptr<HttpStream> stream) {
  const auto fail = [&](const ApiError& e) {
    stream->Respond(e.http, "application/json", ErrorBody(e));
  };
  const Json body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return fail(Bad("", "the body is not valid JSON"));
  v1::GenerateRequest generate;
  CompletionAsk ask;
  const ModelConfig& config = scheduler_->config();
  if (auto e = ParseCompletion(body, options_.served_model_name, config.name, &generate, &ask)) {
    return fail(*e);
  }
  if (Status caller = AuthenticateCaller(link_, request.authorization); !caller.ok()) {
    return fail(FromStatus(caller));
  }
  if (!scheduler_->serving()) {
    return fail({503, "the worker is not attached to a cache manager: retry shortly", "", ""});
  }
  thread_local std::mt19937_64 seeds{std::random_device{}()};
  RequestFieldNames names;  // OpenAI's names: prompt[i], temperature, top_p, ...
  StatusOr<std::shared_ptr<Job>> made =
      JobFromRequest(generate, config, tokenizer_.get(), seeds(), &names);
  if (!made.ok()) {
    ApiError e = FromStatus(made.status());
    const std::string& m = e.message;
    for (const char* field :
         {"prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop_token_ids", "stop",
          "min_p", "min_tokens", "presence_penalty", "frequency_penalty", "repetition_penalty"}) {
      if (m.rfind(field, 0) == 0) {
        e.param = field;
        break;
      }
    }
    return fail(e);
  }
  std::shared_ptr<Job> job = *made;
  job->client_authorization = request.authorization;
  scheduler_->Submit(job);

  const std::string id = RandomId();
  const int64_t created = UnixNow();
  const std::string& model = options_.served_model_name;
  const auto chunk = [&](Json choices) {
    return Json{{"id", id},
                {"object", "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", std::move(choices)}};
  };
  std::vector<std::string> texts(static_cast<size_t>(job->n));
  std::vector<StopTrim> trims(static_cast<size_t>(job->n), StopTrim(&job->request.stop));
  bool begun = false;
  v1::GenerateSummary summary;
  std::vector<v1::GenerateResponse> events;
  Status outcome;
  for (;;) {
    const bool done = job->Wait(std::chrono::milliseconds(10), &events, &outcome);
    for (const v1::GenerateResponse& event : events) {
      if (event.has_summary()) {
        summary = event.summary();
        continue;
      }
      const v1::GeneratedToken& t = event.token();
      const std::string text = trims[static_cast<size_t>(t.index())].Feed(t.text());
      if (!ask.stream) {
        texts[static_cast<size_t>(t.index())] += text;
        continue;
      }
      if (!begun) {
        stream->Begin(200, "text/event-stream");
        begun = true;
      }
      if (text.empty()) continue;
      stream->Write(Event(chunk(Json::array({Json{{"index", t.index()},
                                                  {"text", text},
                                                  {"logprobs", nullptr},
                                                  {"finish_reason", nullptr}}}))));
    }
    if (done) break;
    if (stream->closed() || stopping_.load()) {
      job->Cancel();
      scheduler_->Wake();
      stream->End();
      return;
    }
  }
  if (!outcome.ok()) {
    if (!begun) return fail(FromStatus(outcome));
    stream->Write(Event(Json::parse(ErrorBody(FromStatus(outcome)))));
    stream->Write("data: [DONE]\n\n");
    return stream->End();
  }
  const v1::Usage& u = summary.usage();
  const Json usage = {{"prompt_tokens", u.prompt_tokens()},
                      {"completion_tokens", u.completion_tokens()},
                      {"total_tokens", u.prompt_tokens() + u.completion_tokens()},
                      {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens()}}}};
  const Json timings = {{"ttft_s", summary.ttft_s()},
                        {"time_per_output_token_s", summary.time_per_output_token_s()},
                        {"total_s", summary.total_s()},
                        {"queue_s", summary.queue_s()},
                        {"kv_bytes_reserved", summary.kv_bytes_reserved()},
                        {"kv_bytes_used", summary.kv_bytes_used()},
                        {"preemptions", summary.preemptions()}};
  const auto finish = [&](int i) {
    return i < summary.finish_reasons_size() ? OpenAiFinish(summary.finish_reasons(i)) : "length";
  };
  if (!ask.stream) {
    Json choices = Json::array();
    for (int i = 0; i < job->n; ++i) {
      texts[static_cast<size_t>(i)] += trims[static_cast<size_t>(i)].Flush();
      choices.push_back({{"index", i},
                         {"text", texts[static_cast<size_t>(i)]},
                         {"logprobs", nullptr},
                         {"finish_reason", finish(i)}});
    }
    Json out = chunk(std::move(choices));
    out["usage"] = usage;
    out["kvpool"] = timings;
    return stream->Respond(200, "application/json", Dump(out));
  }
  if (!begun) stream->Begin(200, "text/event-stream");
  for (int i = 0; i < job->n; ++i) {
    const std::string rest = trims[static_cast<size_t>(i)].Flush();
    stream->Write(Event(chunk(Json::array({Json{
        {"index", i}, {"text", rest}, {"logprobs", nullptr}, {"finish_reason", finish(i)}}}))));
  }
  if (ask.include_usage) {
    Json last = chunk(Json::array());
    last["usage"] = usage;
    last["kvpool"] = timings;
    stream->Write(Event(last));
  }
  stream->Write("data: [DONE]\n\n");
  stream->End();
}

HttpResponse OpenAiGateway::Models() const {
  const Json model = {{"id", options_.served_model_name},
                      {"object", "model"},
                      {"created", created_},
                      {"owned_by", "kvpool"},
                      {"root", scheduler_->config().name},
                      {"max_model_len", scheduler_->config().max_position}};
  return {200, "application/json", Dump({{"object", "list"}, {"data", Json::array({model})}})};
}

HttpResponse OpenAiGateway::Tokenize(const HttpRequest& request) const {
  const Json body = Json::parse(request.body, nullptr, false);
  if (body.is_discarded() || !body.is_object())
    return ErrorResponse(Bad("", "the body is not a JSON object"));
  if (!body.value("prompt", Json()).is_string())
    return ErrorResponse(Bad("prompt", "prompt must be a string"));
  if (!tokenizer_) return ErrorResponse(Bad("prompt", "this worker's model has no tokenizer"));
  const std::string prompt = body["prompt"].get<std::string>();
  if (prompt.size() > (size_t{1} << 20))
    return ErrorResponse(Bad("prompt", "prompt is over 1 MiB"));
  const std::vector<int32_t> ids = tokenizer_->Encode(prompt);
  return {200, "application/json",
          Dump({{"count", ids.size()},
                {"max_model_len", scheduler_->config().max_position},
                {"tokens", ids}})};
}

HttpResponse OpenAiGateway::Detokenize(const HttpRequest& request) const {
  const Json body = Json::parse(request.body, nullptr, false);
  if (body.is_discarded() || !body.is_object())
    return ErrorResponse(Bad("", "the body is not a JSON object"));
  const Json tokens = body.value("tokens", Json());
  if (!tokens.is_array()) return ErrorResponse(Bad("tokens", "tokens must be a list of token ids"));
  if (!tokenizer_) return ErrorResponse(Bad("tokens", "this worker's model has no tokenizer"));
  std::vector<int32_t> ids;
  for (const Json& t : tokens) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
        t.get<int64_t>() >= tokenizer_->VocabSize()) {
      return ErrorResponse(Bad("tokens", "tokens holds an id outside the vocabulary"));
    }
    ids.push_back(t.get<int32_t>());
  }
  return {200, "application/json", Dump({{"prompt", tokenizer_->Decode(ids)}})};
}

}  // namespace kvpool::worker
