// HttpServer: a small HTTP/1.1 server (Boost.Beast over Asio) for a service's HTTP
// port: the manager's and the worker's /metrics, /healthz and dashboard, and the
// worker's OpenAI-compatible API. Connections are kept alive; every request is
// bounded (headers 16 KiB, a body at most `max_body_bytes`: 413 beyond it; a request
// must arrive within 15 s of the previous one's end, which bounds slow clients; at
// most `max_connections` connections, 503 beyond). It runs on the caller's
// io_context, beside the service's timers and signal handler: a handler that returns
// a complete response must be quick (stats, pages); one that waits (a generation)
// defers: it returns a response whose `deferred` callback gets an HttpStream that any
// thread may complete or stream into (Server-Sent Events as chunked transfer).
// Methods other than GET and HEAD reach the handler only with `allow_post`. With TLS
// files in the options every connection is HTTPS (mTLS with a client CA).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "common/status.h"

namespace kvpool {

// What a handler sees of a request.
struct HttpRequest {
  std::string method = "GET";
  std::string target;         // the path, without the query string
  std::string authorization;  // the Authorization header ("" when absent)
  std::string content_type;   // the Content-Type header ("" when absent)
  std::string body;
};

// The response side of a deferred request; its methods may be called from any thread
// and return at once (the bytes go out on the server's io_context, in order).
class HttpStream {
 public:
  virtual ~HttpStream() = default;
  // A whole response (status, type, body with its length). Ends the stream.
  virtual void Respond(int status, const std::string& content_type, std::string body) = 0;
  // Starts a chunked response; then Write any number of times, then End.
  virtual void Begin(int status, const std::string& content_type) = 0;
  virtual void Write(std::string data) = 0;
  virtual void End() = 0;
  // The client closed the connection (or a write to it failed): stop producing.
  virtual bool closed() const = 0;
};

struct HttpResponse {
  HttpResponse(int status_code = 200, std::string type = "text/plain; charset=utf-8",
               std::string text = {})
      : status(status_code), content_type(std::move(type)), body(std::move(text)) {}
  static HttpResponse Deferred(std::function<void(std::shared_ptr<HttpStream>)> start) {
    HttpResponse r;
    r.deferred = std::move(start);
    return r;
  }

  int status;
  std::string content_type;
  std::string body;
  // When set, the server calls it (on its io_context) with the request's stream
  // instead of sending `body`; the callee must end the stream exactly once.
  std::function<void(std::shared_ptr<HttpStream>)> deferred;
};

struct HttpServerOptions {
  bool allow_post = false;                  // pass POST (and others) to the handler
  size_t max_body_bytes = size_t{1} << 20;  // larger bodies get 413
  size_t max_connections = 512;
  // PEM files: with a certificate and its key the port speaks HTTPS only (TLS 1.2+);
  // with a client CA too, clients must present a certificate it signed (mTLS).
  std::string tls_cert, tls_key, tls_client_ca;
};

class HttpServer {
 public:
  // Maps a request (its path, e.g. "/metrics", and its credential) to the response.
  using Handler = std::function<HttpResponse(const HttpRequest& request)>;

  // `server_name` goes into every response's Server header.
  HttpServer(boost::asio::io_context& io, std::string server_name, Handler handler,
             HttpServerOptions options = {});
  ~HttpServer();

  // Binds "HOST:PORT" (port 0 picks a free one) and starts accepting; returns the
  // bound endpoint. INVALID_ARGUMENT naming the flag for TLS files that cannot be used.
  StatusOr<boost::asio::ip::tcp::endpoint> Listen(const std::string& address);
  // "https" when Listen set TLS up, else "http".
  const char* Scheme() const;
  // Stops accepting; connections in flight finish on the io_context.
  void Close();

  struct Shared;  // what sessions share with the server (outlives it while they run)

 private:
  void Accept();

  boost::asio::io_context& io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::shared_ptr<Shared> shared_;
};

// Splits "HOST:PORT" ("[v6]:PORT" too); false when malformed.
bool SplitHostPort(const std::string& address, std::string* host, unsigned short* port);

}  // namespace kvpool
