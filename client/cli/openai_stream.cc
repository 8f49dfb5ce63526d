// OpenAiStream: see openai_stream.h.
#include "client/cli/openai_stream.h"

// GCC 12 with -fsanitize=address,undefined flags Beast's parser (its optional content
// length) as maybe-uninitialized where it is inlined here: a false positive of that
// combination, silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>

namespace kvpool::cli {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct OpenAiStream::Impl {
  boost::asio::io_context io;
  beast::tcp_stream stream{io};
  std::string host, port, token;
  bool connected = false;

  Status Reconnect() {
    beast::error_code ec;
    stream.socket().close(ec);
    tcp::resolver resolver(io);
    const auto endpoints = resolver.resolve(host, port, ec);
    if (ec) return Unavailable("cannot resolve " + host + ": " + ec.message());
    stream.connect(endpoints, ec);
    if (ec) return Unavailable("cannot connect to " + host + ":" + port + ": " + ec.message());
    stream.socket().set_option(tcp::no_delay(true), ec);
    connected = true;
    return Status::Ok();
  }

  http::request<http::string_body> Request(http::verb verb, const std::string& target,
                                           std::string body) const {
    http::request<http::string_body> r{verb, target, 11};
    r.set(http::field::host, host);
    r.set(http::field::content_type, "application/json");
    if (!token.empty()) r.set(http::field::authorization, "Bearer " + token);
    r.keep_alive(true);
    r.body() = std::move(body);
    r.prepare_payload();
    return r;
  }
};

OpenAiStream::OpenAiStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OpenAiStream::~OpenAiStream() = default;

StatusOr<std::unique_ptr<OpenAiStream>> OpenAiStream::Connect(const std::string& url,
                                                              std::string token) {
  const std::string prefix = "http://";
  if (url.rfind(prefix, 0) != 0) {
    return InvalidArgument("--openai-url must be http://HOST:PORT, got " + url);
  }
  std::string rest = url.substr(prefix.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.size() >= 3 && rest.compare(rest.size() - 3, 3, "/v1") == 0)
    rest.resize(rest.size() - 3);
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || rest.find('/') != std::string::npos) {
    return InvalidArgument("--openai-url must be http://HOST:PORT, got " + url);
  }
  auto impl = std::make_unique<Impl>();
  impl->host = rest.substr(0, colon);
  impl->port = rest.substr(colon + 1);
  impl->token = std::move(token);
  KVPOOL_RETURN_IF_ERROR(impl->Reconnect());
  return std::unique_ptr<OpenAiStream>(new OpenAiStream(std::move(impl)));
}

StatusOr<OpenAiModel> OpenAiStream::FirstModel() {
  Impl& s = *impl_;
  beast::error_code ec;
  http::write(s.stream, s.Request(http::verb::get, "/v1/models", ""), ec);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  if (!ec) http::read(s.stream, buffer, response, ec);
  if (ec) return Unavailable("GET /v1/models: " + ec.message());
  const nlohmann::json body = nlohmann::json::parse(response.body(), nullptr, false);
  if (response.result_int() != 200 || body.is_discarded() || !body.contains("data") ||
      body["data"].empty()) {
    return Unavailable("GET /v1/models answered " + std::to_string(response.result_int()) + ": " +
                       response.body().substr(0, 300));
  }
  const nlohmann::json& first = body["data"][0];
  OpenAiModel model;
  if (!first.is_object()) return Unavailable("GET /v1/models: data[0] is not an object");
  model.id = first.value("id", "");
  model.owned_by = first.value("owned_by", "");
  const nlohmann::json length = first.value("max_model_len", nlohmann::json());
  if (length.is_number_integer()) model.max_model_len = length.get<int64_t>();
  return model;
}

StatusOr<OpenAiCompletion> OpenAiStream::Complete(const std::string& model,
                                                  const std::vector<int32_t>& prompt,
                                                  int max_tokens, const std::string& extra) {
  Impl& s = *impl_;
  nlohmann::json body = {{"model", model},
                         {"prompt", prompt},
                         {"max_tokens", max_tokens},
                         {"temperature", 0},
                         {"ignore_eos", true},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  std::string text = body.dump();
  if (!extra.empty()) text = text.substr(0, text.size() - 1) + "," + extra + "}";
  OpenAiCompletion out;
  std::string events;  // SSE bytes not yet split into events
  std::optional<Status> failed;
  const auto start = Clock::now();
  const auto on_event = [&](const std::string& data) {
    if (data == "[DONE]") return;
    const nlohmann::json j = nlohmann::json::parse(data, nullptr, false);
    if (j.is_discarded()) return;
    if (j.contains("error")) failed = Internal("stream error: " + data.substr(0, 300));
    if (j.contains("choices") && !j["choices"].empty() &&
        !j["choices"][0].value("text", "").empty()) {
      const double t = std::chrono::duration<double>(Clock::now() - start).count();
      if (out.token_arrival_s.empty()) out.ttft_s = t;
      out.token_arrival_s.push_back(t);
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      out.completion_tokens = j["usage"].value("completion_tokens", int64_t{0});
      const nlohmann::json details = j["usage"].value("prompt_tokens_details", nlohmann::json());
      if (details.is_object()) out.cached_tokens = details.value("cached_tokens", int64_t{0});
    }
  };
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(boost::none);
  std::function<size_t(std::uint64_t, beast::string_view, beast::error_code&)> on_chunk =
      [&](std::uint64_t, beast::string_view piece, beast::error_code&) {
        events.append(piece.data(), piece.size());
        for (size_t end; (end = events.find("\n\n")) != std::string::npos;) {
          const std::string event = events.substr(0, end);
          events.erase(0, end + 2);
          if (event.rfind("data: ", 0) == 0) on_event(event.substr(6));
        }
        return piece.size();
      };
  parser.on_chunk_body(on_chunk);
  beast::error_code ec;
  for (int attempt = 0; attempt < 2; ++attempt) {
    http::write(s.stream, s.Request(http::verb::post, "/v1/completions", text), ec);
    if (!ec) break;
    KVPOOL_RETURN_IF_ERROR(s.Reconnect());  // the server closed the idle connection
  }
  if (ec) return Unavailable("POST /v1/completions: " + ec.message());
  beast::flat_buffer buffer;
  http::read_header(s.stream, buffer, parser, ec);
  if (ec) return Unavailable("POST /v1/completions: " + ec.message());
  char scratch[4096];
  while (!parser.is_done()) {
    parser.get().body().data = scratch;
    parser.get().body().size = sizeof(scratch);
    http::read(s.stream, buffer, parser, ec);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) return Unavailable("reading the stream: " + ec.message());
    // A response that is not chunked (an error object): its bytes are in `scratch`.
    if (parser.chunked()) continue;
    events.append(scratch, sizeof(scratch) - parser.get().body().size);
  }
  if (parser.get().result_int() != 200) {
    return Status(
        parser.get().result_int() == 429 ? StatusCode::kResourceExhausted
                                         : StatusCode::kInvalidArgument,
        "HTTP " + std::to_string(parser.get().result_int()) + ": " + events.substr(0, 300));
  }
  if (failed) return *failed;
  if (!parser.keep_alive()) KVPOOL_RETURN_IF_ERROR(s.Reconnect());
  return out;
}

}  // namespace kvpool::cli
