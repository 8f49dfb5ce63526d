// HttpServer: async accept loop and one-request sessions with Boost.Beast. See
// http_server.h.
#include "common/observability/http_server.h"

#include <boost/asio/ip/address.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <memory>

namespace kvpool {
namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;

// One connection: read a request, write the handler's answer, close.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const std::string& server_name, const HttpServer::Handler& handler)
      : stream_(std::move(socket)), server_name_(server_name), handler_(handler) {}

  void Start() {
    stream_.expires_after(std::chrono::seconds(10));
    http::async_read(stream_, buffer_, request_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (!ec) self->Respond();
                     });
  }

 private:
  void Respond() {
    HttpResponse answer;
    if (request_.method() != http::verb::get && request_.method() != http::verb::head) {
      answer = {405, "text/plain; charset=utf-8", "only GET\n"};
    } else {
      HttpRequest request;
      request.target = std::string(request_.target());
      request.target = request.target.substr(0, request.target.find('?'));
      if (const auto it = request_.find(http::field::authorization); it != request_.end()) {
        request.authorization = std::string(it->value());
      }
      answer = handler_(request);
    }
    response_.version(request_.version());
    response_.result(static_cast<http::status>(answer.status));
    response_.set(http::field::server, server_name_);
    response_.set(http::field::content_type, answer.content_type);
    response_.keep_alive(false);
    response_.body() = std::move(answer.body);
    response_.prepare_payload();
    http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code, size_t) {
      beast::error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    });
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> request_;
  http::response<http::string_body> response_;
  const std::string& server_name_;
  const HttpServer::Handler& handler_;
};

}  // namespace

bool SplitHostPort(const std::string& address, std::string* host, unsigned short* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 >= address.size()) return false;
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  char* end = nullptr;
  const long value = std::strtol(address.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || value < 0 || value > 65535) return false;
  *port = static_cast<unsigned short>(value);
  return true;
}

HttpServer::HttpServer(boost::asio::io_context& io, std::string server_name, Handler handler)
    : io_(io), acceptor_(io), server_name_(std::move(server_name)), handler_(std::move(handler)) {}

StatusOr<tcp::endpoint> HttpServer::Listen(const std::string& address) {
  std::string host;
  unsigned short port = 0;
  if (!SplitHostPort(address, &host, &port)) {
    return InvalidArgument("--http must be HOST:PORT, got \"" + address + "\"");
  }
  beast::error_code ec;
  const auto ip = boost::asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) return InvalidArgument("--http host \"" + host + "\" is not an IP address");
  const tcp::endpoint endpoint(ip, port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(boost::asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec)
    return Status(StatusCode::kUnavailable, "cannot listen on " + address + ": " + ec.message());
  Accept();
  return acceptor_.local_endpoint();
}

void HttpServer::Close() {
  beast::error_code ignored;
  acceptor_.close(ignored);
}

void HttpServer::Accept() {
  acceptor_.async_accept(io_, [this](beast::error_code ec, tcp::socket socket) {
    if (ec == boost::asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) std::make_shared<Session>(std::move(socket), server_name_, handler_)->Start();
    Accept();
  });
}

}  // namespace kvpool
