// OpenAiGateway: see openai_gateway.h. Routing, the per-completion thread and its
// job loop; the wire format (parsing, errors, SSE, stop trimming, logprobs) is
// openai_protocol.cc's.
#include "service/openai_gateway.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "service/openai_chat.h"
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
      created_(UnixNow()),
      cancel_watch_([scheduler] { scheduler->Wake(); }) {}

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
  const bool chat = path == "/v1/chat/completions";
  if (path != "/v1/completions" && !chat) {
    if (path.rfind("/v1/", 0) == 0) {
      return ErrorResponse({404,
                            "no route " + path +
                                ": kvpool serves /v1/completions, /v1/chat/completions and "
                                "/v1/models",
                            "", ""});
    }
    return std::nullopt;
  }
  if (!post) return ErrorResponse({405, "use POST", "", ""});
  return HttpResponse::Deferred([this, request, chat](std::shared_ptr<HttpStream> stream) {
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
    running_.push_back({std::thread([this, request, stream, done, chat] {
                          Completion(request, stream, chat);
                          done->store(true);
                        }),
                        done});
  });
}

ChatContext OpenAiGateway::Chat() const {
  return {options_.served_model_name, scheduler_->config().name, &options_.chat, tokenizer_.get(),
          scheduler_->config().max_position};
}

void OpenAiGateway::Completion(HttpRequest request, std::shared_ptr<HttpStream> stream, bool chat) {
  const auto fail = [&](const ApiError& e) {
    stream->Respond(e.http, "application/json", ErrorBody(e));
  };
  const Json body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return fail(Bad("", "the body is not valid JSON"));
  std::vector<v1::GenerateRequest> generates;
  CompletionAsk ask;
  const ModelConfig& config = scheduler_->config();
  if (auto e =
          chat ? ParseChat(body, Chat(), &generates, &ask)
               : ParseCompletion(body, options_.served_model_name, config.name, &generates, &ask)) {
    return fail(*e);
  }
  if (generates.front().logprobs() > 0 && !tokenizer_) {
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
  std::vector<std::shared_ptr<Job>> jobs;
  for (const v1::GenerateRequest& generate : generates) {
    StatusOr<std::shared_ptr<Job>> made =
        JobFromRequest(generate, config, tokenizer_.get(), seeds(), &names);
    if (!made.ok()) {
      ApiError e = FromStatus(made.status());
      for (const char* field :
           {"prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop_token_ids", "stop",
            "min_p", "min_tokens", "presence_penalty", "frequency_penalty", "repetition_penalty"}) {
        if (e.message.rfind(field, 0) == 0) {
          e.param = field;
          break;
        }
      }
      if (chat && e.param == "prompt") e.param = "messages";
      if (chat && e.param == "max_tokens" && body.contains("max_completion_tokens")) {
        e.param = "max_completion_tokens";
        e.message = "max_completion_tokens" + e.message.substr(std::string("max_tokens").size());
      }
      return fail(e);
    }
    (*made)->client_authorization = request.authorization;
    jobs.push_back(*made);
  }
  if (jobs.size() > 1) {
    const auto bell = std::make_shared<Doorbell>();
    for (const std::shared_ptr<Job>& job : jobs) job->doorbell = bell;
  }
  for (const std::shared_ptr<Job>& job : jobs) scheduler_->Submit(job);
  Relay(jobs, ask, generates.front().logprobs() > 0, *stream);
}

void OpenAiGateway::Relay(const std::vector<std::shared_ptr<Job>>& jobs, const CompletionAsk& ask,
                          bool logprobs, HttpStream& stream) {
  const ApiShape shape{ask.chat};
  const std::string id = (ask.chat ? "chat" : "") + RandomId();
  const int64_t created = UnixNow();
  const auto chunk = [&](Json choices, bool streamed) {
    return Json{{"id", id},
                {"object", shape.Object(streamed)},
                {"created", created},
                {"model", options_.served_model_name},
                {"choices", std::move(choices)}};
  };
  // Choice p * n + i is prompt p's sample i (OpenAI's and vLLM's numbering).
  const int32_t n = jobs.front()->n;
  const size_t choices = jobs.size() * static_cast<size_t>(n);
  std::vector<std::string> texts(choices);
  std::vector<LogprobsLog> logs(choices, LogprobsLog(ask.chat, ask.top_logprobs));
  std::vector<StopTrim> trims;
  for (const std::shared_ptr<Job>& job : jobs) {
    for (int32_t i = 0; i < n; ++i) trims.emplace_back(&job->request.stop);
  }
  const int32_t eos = static_cast<int32_t>(scheduler_->config().eos_token_id);
  std::vector<v1::GenerateSummary> summaries(jobs.size());
  std::vector<bool> finished(jobs.size(), false);
  bool begun = false;
  const auto begin = [&] {
    if (begun) return;
    stream.Begin(200, "text/event-stream");
    begun = true;
    if (!ask.chat) return;
    for (size_t c = 0; c < choices; ++c) {
      stream.Write(Event(chunk(Json::array({shape.Role(static_cast<int>(c))}), true)));
    }
  };
  // The client closing the connection, or the gateway stopping, cancels the jobs
  // through the watch, which wakes a Wait on them.
  std::vector<std::unique_ptr<CancelWatch::Watched>> watched;
  for (const std::shared_ptr<Job>& job : jobs) {
    watched.push_back(
        cancel_watch_.Watch(job, [&stream, this] { return stream.closed() || stopping_.load(); }));
  }
  std::vector<v1::GenerateResponse> events;
  Status outcome;
  // One prompt: sleep on its job. Several: take what each has, then sleep on their
  // shared doorbell until one has more (rings read before looking, so none is missed).
  Doorbell* bell = jobs.size() > 1 ? jobs.front()->doorbell.get() : nullptr;
  for (size_t live = jobs.size(); live > 0;) {
    const uint64_t seen = bell != nullptr ? bell->rings() : 0;
    bool news = false;
    for (size_t p = 0; p < jobs.size(); ++p) {
      if (finished[p]) continue;
      const Job& job = *jobs[p];
      Status status;
      const bool done = bell == nullptr
                            ? jobs[p]->Wait(&events, &status)
                            : jobs[p]->Wait(std::chrono::milliseconds(0), &events, &status);
      news = news || done || !events.empty();
      for (const v1::GenerateResponse& event : events) {
        if (event.has_summary()) {
          summaries[p] = event.summary();
          continue;
        }
        const v1::GeneratedToken& t = event.token();
        const size_t c = p * static_cast<size_t>(n) + static_cast<size_t>(t.index());
        Json token_logprobs = logprobs ? logs[c].Add(t, *tokenizer_) : Json(nullptr);
        // A stop token (EOS, a stop id, the turn's end) ends the text without showing.
        const auto& stops = job.request.stop_token_ids;
        const bool stop_token = (t.token_id() == eos && !job.request.ignore_eos) ||
                                std::find(stops.begin(), stops.end(), t.token_id()) != stops.end();
        const std::string text = stop_token ? std::string() : trims[c].Feed(t.text());
        if (!ask.stream) {
          texts[c] += text;
          continue;
        }
        begin();
        if (text.empty() && token_logprobs.is_null()) continue;
        stream.Write(Event(
            chunk(Json::array({shape.Streamed(static_cast<int>(c), text, token_logprobs, nullptr)}),
                  true)));
      }
      if (done) {
        finished[p] = true;
        --live;
        if (!status.ok() && outcome.ok()) outcome = status;
      }
    }
    if (!outcome.ok()) break;
    if (live > 0 && (stream.closed() || stopping_.load())) {
      for (const std::shared_ptr<Job>& job : jobs) job->Cancel();
      scheduler_->Wake();
      stream.End();
      return;
    }
    if (live > 0 && bell != nullptr && !news) bell->WaitPast(seen);
  }
  if (!outcome.ok()) {
    for (const std::shared_ptr<Job>& job : jobs) job->Cancel();
    scheduler_->Wake();
    if (!begun)
      return stream.Respond(FromStatus(outcome).http, "application/json",
                            ErrorBody(FromStatus(outcome)));
    stream.Write(Event(Json::parse(ErrorBody(FromStatus(outcome)))));
    stream.Write("data: [DONE]\n\n");
    return stream.End();
  }
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  for (const v1::GenerateSummary& s : summaries) {
    prompt_tokens += s.usage().prompt_tokens();
    completion_tokens += s.usage().completion_tokens();
    cached_tokens += s.usage().cached_tokens();
  }
  const Json usage = {{"prompt_tokens", prompt_tokens},
                      {"completion_tokens", completion_tokens},
                      {"total_tokens", prompt_tokens + completion_tokens},
                      {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
  // kvpool's own timings: one prompt's, or the first prompt's of a batch.
  const v1::GenerateSummary& first = summaries.front();
  Json timings = {{"ttft_s", first.ttft_s()},
                  {"time_per_output_token_s", first.time_per_output_token_s()},
                  {"total_s", first.total_s()},
                  {"queue_s", first.queue_s()},
                  {"kv_bytes_reserved", first.kv_bytes_reserved()},
                  {"kv_bytes_used", first.kv_bytes_used()},
                  {"preemptions", first.preemptions()}};
  // kvpool_retention.pin_ttl_s: the pin of each prompt (or why it failed).
  Json pins = Json::array();
  for (const v1::GenerateSummary& s : summaries) {
    if (s.has_pin()) {
      pins.push_back({{"pin_id", s.pin().pin_id()},
                      {"pinned_tokens", s.pin().pinned_tokens()},
                      {"expires_in_s", s.pin().expires_in_ms() / 1000.0}});
    } else if (!s.pin_error().empty()) {
      pins.push_back({{"error", s.pin_error()}});
    }
  }
  if (!pins.empty()) timings["pins"] = std::move(pins);
  const auto finish = [&](size_t c) {
    const v1::GenerateSummary& s = summaries[c / static_cast<size_t>(n)];
    const int i = static_cast<int>(c % static_cast<size_t>(n));
    return i < s.finish_reasons_size() ? OpenAiFinish(s.finish_reasons(i)) : "length";
  };
  if (!ask.stream) {
    Json all = Json::array();
    for (size_t c = 0; c < choices; ++c) {
      texts[c] += trims[c].Flush();
      all.push_back(shape.Whole(static_cast<int>(c), texts[c],
                                logprobs ? logs[c].all() : Json(nullptr), finish(c)));
    }
    Json out = chunk(std::move(all), false);
    out["usage"] = usage;
    out["kvpool"] = timings;
    return stream.Respond(200, "application/json", Dump(out));
  }
  begin();
  for (size_t c = 0; c < choices; ++c) {
    stream.Write(Event(chunk(
        Json::array({shape.Streamed(static_cast<int>(c), trims[c].Flush(), nullptr, finish(c))}),
        true)));
  }
  if (ask.include_usage) {
    Json last = chunk(Json::array(), true);
    last["usage"] = usage;
    last["kvpool"] = timings;
    stream.Write(Event(last));
  }
  stream.Write("data: [DONE]\n\n");
  stream.End();
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
  if (body.contains("messages")) {  // vLLM's chat form: the conversation as rendered
    std::vector<int32_t> ids;
    std::optional<ChatTemplate> used;
    if (auto e = RenderChat(body, Chat(), &ids, &used)) return ErrorResponse(*e);
    return {200, "application/json",
            Dump({{"count", ids.size()},
                  {"max_model_len", scheduler_->config().max_position},
                  {"tokens", ids},
                  {"chat_template_family", used->FamilyName()}})};
  }
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
