// Subprocess: see subprocess.h.
#include "common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kvpool {

StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(const std::vector<std::string>& argv,
                                                        SubprocessOptions options) {
  auto process = std::make_unique<Subprocess>(argv, std::move(options));
  if (!process->start_status().ok()) return process->start_status();
  return process;
}

Subprocess::Subprocess(const std::vector<std::string>& argv, SubprocessOptions options)
    : name_(options.name.empty() && !argv.empty() ? argv[0] : options.name) {
  if (argv.empty()) {
    start_status_ = InvalidArgument("Subprocess: empty argv");
    return;
  }
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    start_status_ = Internal(std::string("pipe: ") + std::strerror(errno));
    return;
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    start_status_ = Internal(std::string("fork: ") + std::strerror(errno));
    return;
  }
  if (pid == 0) {  // async-signal-safe calls only from here to exec
    if (options.die_with_parent) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(127);  // the parent died before prctl
    }
    if (options.own_process_group) setpgid(0, 0);
    if (options.signal_mask) sigprocmask(SIG_SETMASK, &*options.signal_mask, nullptr);
    dup2(fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
    if (options.merge_stderr) dup2(fds[1], STDERR_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  pid_ = pid;
  stdout_fd_ = fds[0];
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !Exited()) {
    Signal(SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  if (drain_.joinable()) drain_.join();  // EOF: the child is gone
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

std::optional<std::string> Subprocess::ReadLine(std::chrono::milliseconds timeout, bool* eof) {
  if (eof != nullptr) *eof = false;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const size_t newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return line;
    }
    if (stdout_fd_ < 0) return std::nullopt;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd pfd{stdout_fd_, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[4096];
    const ssize_t n = read(stdout_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (eof != nullptr) *eof = true;
      return std::nullopt;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

void Subprocess::DrainToStderr() {
  if (stdout_fd_ < 0 || drain_.joinable()) return;
  std::string pending = std::move(buffer_);
  buffer_.clear();
  drain_ = std::thread([fd = stdout_fd_, pending = std::move(pending)] {
    if (!pending.empty() && write(STDERR_FILENO, pending.data(), pending.size()) < 0) return;
    char chunk[4096];
    while (true) {
      const ssize_t n = read(fd, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      if (write(STDERR_FILENO, chunk, static_cast<size_t>(n)) < 0) return;
    }
  });
}

bool Subprocess::Exited() {
  if (wait_status_) return true;
  if (pid_ <= 0) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) != pid_) return false;
  wait_status_ = status;
  return true;
}

std::string Subprocess::ExitDescription() const {
  if (!wait_status_) return "still running";
  if (WIFEXITED(*wait_status_))
    return "exited with code " + std::to_string(WEXITSTATUS(*wait_status_));
  if (WIFSIGNALED(*wait_status_))
    return "killed by signal " + std::to_string(WTERMSIG(*wait_status_));
  return "stopped";
}

void Subprocess::Signal(int signal) {
  if (pid_ > 0 && !wait_status_) kill(pid_, signal);
}

std::optional<int> Subprocess::SignalAndWait(int signal, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  if (wait_status_) return wait_status_;
  Signal(signal);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!Exited()) {
    if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return wait_status_;
}

}  // namespace kvpool
