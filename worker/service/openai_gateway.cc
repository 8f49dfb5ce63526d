// OpenAiGateway: see openai_gateway.h. Routing, the per-completion thread and its
// job loop; the wire format (parsing, errors, SSE, stop trimming, logprobs) is
// openai_protocol.cc's.
#include "service/openai_gateway.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "service/openai_protocol.h"
#include "service/worker_service.h"

namespace kvpool::worker {
namespace {

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

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
  if (generate.logprobs() > 0 && !tokenizer_) {
    return fail(Bad("logprobs", "logprobs need the model's tokenizer, and this worker has none"));
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
  std::vector<LogprobsLog> logprobs(static_cast<size_t>(job->n));
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
      Json token_logprobs = nullptr;
      if (generate.logprobs() > 0) {
        token_logprobs = logprobs[static_cast<size_t>(t.index())].Add(t, *tokenizer_);
      }
      const std::string text = trims[static_cast<size_t>(t.index())].Feed(t.text());
      if (!ask.stream) {
        texts[static_cast<size_t>(t.index())] += text;
        continue;
      }
      if (!begun) {
        stream->Begin(200, "text/event-stream");
        begun = true;
      }
      if (text.empty() && token_logprobs.is_null()) continue;
      stream->Write(Event(chunk(Json::array({Json{{"index", t.index()},
                                                  {"text", text},
                                                  {"logprobs", token_logprobs},
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
                         {"logprobs", generate.logprobs() > 0 ? logprobs[static_cast<size_t>(i)].all
                                                              : Json(nullptr)},
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
