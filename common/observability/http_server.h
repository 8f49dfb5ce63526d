// HttpServer: a small HTTP/1.1 server (Boost.Beast over Asio) for a service's
// observability port (the manager's and the worker's): GET requests are passed to one
// handler (/metrics, /healthz, the dashboard and its JSON), one request per connection.
// It runs on the caller's io_context, beside the service's timers and signal handler,
// so it never competes with gRPC's threads beyond the stats its handler reads. It must
// never serve anything that changes service state.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <functional>
#include <string>

#include "common/status.h"

namespace kvpool {

// What a handler sees of a GET request.
struct HttpRequest {
  std::string target;         // the path, without the query string
  std::string authorization;  // the Authorization header ("" when absent)
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  // Maps a request (its path, e.g. "/metrics", and its credential) to the response.
  using Handler = std::function<HttpResponse(const HttpRequest& request)>;

  // `server_name` goes into every response's Server header.
  HttpServer(boost::asio::io_context& io, std::string server_name, Handler handler);

  // Binds "HOST:PORT" (port 0 picks a free one) and starts accepting; returns the
  // bound endpoint.
  StatusOr<boost::asio::ip::tcp::endpoint> Listen(const std::string& address);
  // Stops accepting; connections in flight finish on the io_context.
  void Close();

 private:
  void Accept();

  boost::asio::io_context& io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::string server_name_;
  Handler handler_;
};

// Splits "HOST:PORT" ("[v6]:PORT" too); false when malformed.
bool SplitHostPort(const std::string& address, std::string* host, unsigned short* port);

}  // namespace kvpool
