// ManagerProcess / HttpGet: see manager_process.h.
#include "tests/manager/service/manager_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

namespace kvpool::manager::testing {

ManagerProcess::ManagerProcess(std::vector<std::string> args,
                               std::shared_ptr<grpc::ChannelCredentials> credentials) {
  std::vector<std::string> argv = {KVPOOL_MANAGER_BIN, "--listen", "127.0.0.1:0", "--http",
                                   "127.0.0.1:0"};
  argv.insert(argv.end(), args.begin(), args.end());
  process_ = std::make_unique<Subprocess>(argv);
  static const std::string kGrpc = "kvpool-manager listening on ", kHttp = "http on ";
  while (grpc_address_.empty() || http_address_.empty()) {
    const std::optional<std::string> line = process_->ReadLine(std::chrono::seconds(10));
    if (!line) {
      ADD_FAILURE() << "kvpool-manager did not print its addresses";
      grpc_address_.clear();
      return;
    }
    if (line->rfind(kGrpc, 0) == 0) grpc_address_ = line->substr(kGrpc.size());
    if (line->rfind(kHttp, 0) == 0) http_address_ = line->substr(kHttp.size());
  }
  channel_ = grpc::CreateChannel(grpc_address_,
                                 credentials ? credentials : grpc::InsecureChannelCredentials());
}

ManagerProcess::~ManagerProcess() {
  // Our channel goes first: the manager's graceful shutdown waits (up to 2 s) for
  // connected clients.
  channel_.reset();
  if (process_->pid() > 0) process_->SignalAndWait(SIGTERM, std::chrono::seconds(5));
}

std::unique_ptr<v1::CacheManager::Stub> ManagerProcess::NewStub() const {
  return v1::CacheManager::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& bearer_token) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!bearer_token.empty()) context->AddMetadata("authorization", "Bearer " + bearer_token);
  return context;
}

std::string HttpGet(const std::string& host_port, const std::string& path) {
  const size_t colon = host_port.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(host_port.substr(colon + 1))));
  inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &addr.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET " + path + " HTTP/1.1\r\nHost: " + host_port + "\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char chunk[4096];
      ssize_t n;
      while ((n = read(fd, chunk, sizeof(chunk))) > 0) response.append(chunk, n);
    }
  }
  close(fd);
  return response;
}

}  // namespace kvpool::manager::testing
