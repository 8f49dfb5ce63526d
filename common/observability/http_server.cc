// HttpServer: async accept loop and keep-alive sessions with Boost.Beast; deferred
// responses are written from a queue that HttpStream fills through the io_context.
// See http_server.h.
#include "common/observability/http_server.h"

// GCC 12 with -fsanitize=address,undefined flags Beast's parser (its optional content
// length) as maybe-uninitialized where it is inlined here: a false positive of that
// combination, silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <array>
#include <atomic>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <cstdio>
#include <deque>
#include <optional>
#include <type_traits>

namespace kvpool {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;

struct HttpServer::Shared {
  std::string server_name;
  Handler handler;
  HttpServerOptions options;
  std::atomic<size_t> connections{0};
  std::optional<ssl::context> tls;  // set: every connection is TLS
};

namespace {

constexpr auto kRequestTimeout = std::chrono::seconds(15);
constexpr size_t kHeaderLimit = 16 << 10;

// What an HttpStream needs of its session, whatever the transport.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void QueueWhole(int status, const std::string& type, std::string body,
                          bool head_only) = 0;
  virtual void QueueBegin(int status, const std::string& type) = 0;
  virtual void QueueChunk(std::string data) = 0;
  virtual void QueueEnd() = 0;
  virtual bool closed() const = 0;
  virtual boost::asio::any_io_executor executor() = 0;
};

using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// One connection: requests read one after another (keep-alive), each answered whole
// or streamed from a deferred producer. S is PlainStream or TlsStream.
template <class S>
class Session final : public Sink, public std::enable_shared_from_this<Session<S>> {
  static constexpr bool kTls = std::is_same_v<S, TlsStream>;

 public:
  template <class... Context>
  Session(tcp::socket socket, std::shared_ptr<HttpServer::Shared> shared, bool refuse,
          Context&... tls)
      : stream_(std::move(socket), tls...), shared_(std::move(shared)), refuse_(refuse) {
    ++shared_->connections;
    // Streamed events are small writes: without this, Nagle's algorithm holds each one
    // back until the client's delayed ACK (~40 ms on Linux).
    beast::error_code ignored;
    Socket().set_option(tcp::no_delay(true), ignored);
  }
  ~Session() override { --shared_->connections; }

  void Start() {
    if constexpr (kTls) {  // the handshake first, within the request timeout
      beast::get_lowest_layer(stream_).expires_after(kRequestTimeout);
      stream_.async_handshake(ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                beast::get_lowest_layer(self->stream_).expires_never();
                                if (ec) return self->Close();
                                self->Serve();
                              });
    } else {
      Serve();
    }
  }

  // The HttpStream side, on the io_context.
  void QueueWhole(int status, const std::string& type, std::string body, bool head_only) override {
    std::string out =
        Head(status, type) + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    if (!head_only) out += body;
    Queue(std::move(out));
    response_done_ = true;
    MaybeFinish();
  }
  void QueueBegin(int status, const std::string& type) override {
    Queue(Head(status, type) + "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n");
  }
  void QueueChunk(std::string data) override {
    if (data.empty()) return;
    char size[32];
    std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
    Queue(size + std::move(data) + "\r\n");
  }
  void QueueEnd() override {
    Queue("0\r\n\r\n");
    response_done_ = true;
    MaybeFinish();
  }
  bool closed() const override { return closed_.load(); }
  boost::asio::any_io_executor executor() override { return stream_.get_executor(); }

 private:
  tcp::socket& Socket() { return beast::get_lowest_layer(stream_).socket(); }

  void Serve() {
    if (refuse_) {
      keep_alive_ = false;
      QueueWhole(503, "text/plain; charset=utf-8", "too many connections: retry shortly\n", false);
      return;
    }
    ReadRequest();
  }

  std::string Head(int status, const std::string& type) const {
    const auto reason = http::obsolete_reason(static_cast<http::status>(status));
    return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason.data(), reason.size()) +
           "\r\nServer: " + shared_->server_name + "\r\nContent-Type: " + type +
           "\r\nConnection: " + (keep_alive_ ? "keep-alive" : "close") + "\r\n";
  }

  void ReadRequest() {
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(shared_->options.max_body_bytes);
    beast::get_lowest_layer(stream_).expires_after(kRequestTimeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    beast::get_lowest_layer(stream_).expires_never();
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      drain_ = true;  // the client may still be sending: read it away, then close
      return QueueWhole(413, "application/json",
                        R"({"error":{"message":"the request body is larger than )" +
                            std::to_string(shared_->options.max_body_bytes) +
                            R"( bytes","type":"invalid_request_error","param":null,"code":null}})",
                        false);
    }
    if (ec == http::error::header_limit) {
      keep_alive_ = false;
      return QueueWhole(431, "text/plain; charset=utf-8", "request headers too large\n", false);
    }
    if (ec) return Close();  // end of stream, timeout, or bytes that are not HTTP
    const http::request<http::string_body>& r = parser_->get();
    keep_alive_ = r.keep_alive();
    head_only_ = r.method() == http::verb::head;
    HttpRequest request;
    request.method = std::string(r.method_string());
    request.target = std::string(r.target());
    request.target = request.target.substr(0, request.target.find('?'));
    if (const auto it = r.find(http::field::authorization); it != r.end()) {
      request.authorization = std::string(it->value());
    }
    if (const auto it = r.find(http::field::content_type); it != r.end()) {
      request.content_type = std::string(it->value());
    }
    request.body = r.body();
    if (!shared_->options.allow_post && r.method() != http::verb::get && !head_only_) {
      return QueueWhole(405, "text/plain; charset=utf-8", "only GET\n", false);
    }
    HttpResponse answer = shared_->handler(request);
    if (!answer.deferred) {
      return QueueWhole(answer.status, answer.content_type, std::move(answer.body), head_only_);
    }
    WatchForDisconnect();
    answer.deferred(MakeStream(this->shared_from_this()));
  }

  static std::shared_ptr<HttpStream> MakeStream(std::shared_ptr<Sink> sink);

  // While a deferred response is produced, a read is kept pending: its end of stream
  // (or error) is the client's close. Bytes a client sends meanwhile (a pipelined
  // request) are kept for the next request, up to the header limit.
  void WatchForDisconnect() {
    watching_ = true;
    stream_.async_read_some(
        buffer_.prepare(4096), [self = this->shared_from_this()](beast::error_code ec, size_t n) {
          self->watching_ = false;
          if (!ec) self->buffer_.commit(n);
          if (self->resume_) {  // the response ended while this read was pending
            self->resume_ = false;
            if (ec && ec != boost::asio::error::operation_aborted) return self->Close();
            return self->closed_.load() ? self->Close() : self->ReadRequest();
          }
          if (ec == boost::asio::error::operation_aborted) return;
          if (ec) return self->closed_.store(true);
          if (self->buffer_.size() < kHeaderLimit) self->WatchForDisconnect();
        });
  }

  void Queue(std::string bytes) {
    if (closed_.load()) return;
    out_.push_back(std::move(bytes));
    if (!writing_) Write();
  }

  void Write() {
    writing_ = true;
    boost::asio::async_write(
        stream_, boost::asio::buffer(out_.front()),
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnWrite(ec); });
  }

  void OnWrite(beast::error_code ec) {
    out_.pop_front();
    writing_ = false;
    if (ec) {
      closed_.store(true);
      out_.clear();
      return Close();
    }
    if (!out_.empty()) return Write();
    MaybeFinish();
  }

  // After a whole response went out: the next request, or the end.
  void MaybeFinish() {
    if (writing_ || !out_.empty() || !response_done_) return;
    response_done_ = false;
    if (drain_ && !closed_.load()) return Drain();
    if (!keep_alive_ || closed_.load()) return Close();
    if (watching_) {  // the disconnect watch's read: cancelled, then the next request
      resume_ = true;
      beast::error_code ignored;
      Socket().cancel(ignored);
      return;
    }
    ReadRequest();
  }

  // A lingering close: the response is out, the rest of what the client sends is read
  // and dropped for up to 2 s, so that closing does not reset the connection (and
  // destroy the response in flight) while the client is still writing.
  void Drain() {
    beast::error_code ignored;
    Socket().shutdown(tcp::socket::shutdown_send, ignored);
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(2));
    stream_.async_read_some(boost::asio::buffer(scratch_),
                            [self = this->shared_from_this()](beast::error_code ec, size_t) {
                              if (ec) return self->Close();
                              self->Drain();
                            });
  }

  void Close() {
    closed_.store(true);
    beast::error_code ignored;
    Socket().shutdown(tcp::socket::shutdown_send, ignored);
    Socket().close(ignored);
  }

  S stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<HttpServer::Shared> shared_;
  const bool refuse_;
  bool keep_alive_ = true;
  bool head_only_ = false;
  std::deque<std::string> out_;
  bool writing_ = false;
  bool response_done_ = false;
  bool drain_ = false;
  bool watching_ = false;
  bool resume_ = false;
  std::array<char, 4096> scratch_{};
  std::atomic<bool> closed_{false};
};

class Stream final : public HttpStream {
 public:
  explicit Stream(std::shared_ptr<Sink> session) : session_(std::move(session)) {}
  ~Stream() override {
    // A producer that never ended the stream: end it, so the connection goes on.
    if (!ended_.exchange(true)) Post([](Sink& s) { s.QueueEnd(); });
  }
  void Respond(int status, const std::string& type, std::string body) override {
    if (ended_.exchange(true)) return;
    Post([status, type, body = std::move(body)](Sink& s) mutable {
      s.QueueWhole(status, type, std::move(body), false);
    });
  }
  void Begin(int status, const std::string& type) override {
    Post([status, type](Sink& s) { s.QueueBegin(status, type); });
  }
  void Write(std::string data) override {
    Post([data = std::move(data)](Sink& s) mutable { s.QueueChunk(std::move(data)); });
  }
  void End() override {
    if (ended_.exchange(true)) return;
    Post([](Sink& s) { s.QueueEnd(); });
  }
  bool closed() const override { return session_->closed(); }

 private:
  template <typename F>
  void Post(F f) {
    boost::asio::post(session_->executor(), [s = session_, f = std::move(f)]() mutable { f(*s); });
  }
  std::shared_ptr<Sink> session_;
  std::atomic<bool> ended_{false};
};

template <class S>
std::shared_ptr<HttpStream> Session<S>::MakeStream(std::shared_ptr<Sink> sink) {
  return std::make_shared<Stream>(std::move(sink));
}

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

HttpServer::HttpServer(boost::asio::io_context& io, std::string server_name, Handler handler,
                       HttpServerOptions options)
    : io_(io), acceptor_(io), shared_(std::make_shared<Shared>()) {
  shared_->server_name = std::move(server_name);
  shared_->handler = std::move(handler);
  shared_->options = options;
}

HttpServer::~HttpServer() = default;

namespace {

// The server's TLS context from PEM files: TLS 1.2 or later; with a client CA, client
// certificates are required and verified (mTLS).
StatusOr<ssl::context> TlsContext(const HttpServerOptions& o) {
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return InvalidArgument("--http-tls-cert and --http-tls-key go together");
  }
  if (o.tls_cert.empty()) return InvalidArgument("--http-tls-client-ca needs --http-tls-cert");
  ssl::context context(ssl::context::tls_server);
  context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  beast::error_code ec;
  context.use_certificate_chain_file(o.tls_cert, ec);
  if (ec) return InvalidArgument("--http-tls-cert " + o.tls_cert + ": " + ec.message());
  context.use_private_key_file(o.tls_key, ssl::context::pem, ec);
  if (ec) return InvalidArgument("--http-tls-key " + o.tls_key + ": " + ec.message());
  if (SSL_CTX_check_private_key(context.native_handle()) != 1) {
    return InvalidArgument("--http-tls-key does not match --http-tls-cert");
  }
  if (!o.tls_client_ca.empty()) {
    context.load_verify_file(o.tls_client_ca, ec);
    if (ec) return InvalidArgument("--http-tls-client-ca " + o.tls_client_ca + ": " + ec.message());
    context.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return context;
}

}  // namespace

const char* HttpServer::Scheme() const { return shared_->tls ? "https" : "http"; }

StatusOr<tcp::endpoint> HttpServer::Listen(const std::string& address) {
  const HttpServerOptions& o = shared_->options;
  if (!o.tls_cert.empty() || !o.tls_key.empty() || !o.tls_client_ca.empty()) {
    StatusOr<ssl::context> context = TlsContext(o);
    if (!context.ok()) return context.status();
    shared_->tls.emplace(std::move(*context));
  }
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
    if (!ec) {
      const bool refuse = shared_->connections.load() >= shared_->options.max_connections;
      if (shared_->tls) {
        std::make_shared<Session<TlsStream>>(std::move(socket), shared_, refuse, *shared_->tls)
            ->Start();
      } else {
        std::make_shared<Session<PlainStream>>(std::move(socket), shared_, refuse)->Start();
      }
    }
    Accept();
  });
}

}  // namespace kvpool
