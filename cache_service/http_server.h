// HttpServer: a small HTTP/1.1 server (Boost.Beast over Asio) for the manager's
// observability port: GET requests are passed to one handler (which serves /metrics
// and /healthz), one request per connection. It runs on the caller's io_context, beside
// the lease timer and the signal handler, so it never competes with gRPC's threads for
// the CacheManager beyond the Stats() the handler reads. It must never serve anything
// that changes manager state.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <functional>
#include <string>

#include "kvpool/v1/status.h"

namespace kvpool::manager {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  // Maps a request target (path, e.g. "/metrics") to the response.
  using Handler = std::function<HttpResponse(const std::string& target)>;

  HttpServer(boost::asio::io_context& io, Handler handler);

  // Binds "HOST:PORT" (port 0 picks a free one) and starts accepting; returns the
  // bound endpoint.
  StatusOr<boost::asio::ip::tcp::endpoint> Listen(const std::string& address);
  // Stops accepting; connections in flight finish on the io_context.
  void Close();

 private:
  void Accept();

  boost::asio::io_context& io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  Handler handler_;
};

// Splits "HOST:PORT" ("[v6]:PORT" too); false when malformed.
bool SplitHostPort(const std::string& address, std::string* host, unsigned short* port);

}  // namespace kvpool::manager
