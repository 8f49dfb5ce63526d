// ChildProcess: see child_process.h.
#include "client/cli/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kvpool::cli {

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(std::string name,
                                                            const std::vector<std::string>& argv,
                                                            const sigset_t& child_mask) {
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return Internal(std::string("pipe: ") + std::strerror(errno));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return Internal(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {  // async-signal-safe calls only from here to exec
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    setpgid(0, 0);  // a terminal's Ctrl-C reaches only kvpool up, which stops us in order
    sigprocmask(SIG_SETMASK, &child_mask, nullptr);
    dup2(fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  return std::unique_ptr<ChildProcess>(new ChildProcess(std::move(name), pid, fds[0]));
}

ChildProcess::ChildProcess(std::string name, pid_t pid, int stdout_fd)
    : name_(std::move(name)), pid_(pid), stdout_fd_(stdout_fd) {}

ChildProcess::~ChildProcess() {
  if (!Exited()) {
    Signal(SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  if (drain_.joinable()) drain_.join();  // EOF: the child is gone
  close(stdout_fd_);
}

std::optional<std::string> ChildProcess::ReadLine(std::chrono::milliseconds timeout, bool* eof) {
  *eof = false;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const size_t newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd pfd{stdout_fd_, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[4096];
    const ssize_t n = read(stdout_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *eof = true;
      return std::nullopt;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

void ChildProcess::DrainToStderr() {
  std::string pending = std::move(buffer_);
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

bool ChildProcess::Exited() {
  if (wait_status_) return true;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) != pid_) return false;
  wait_status_ = status;
  return true;
}

std::string ChildProcess::ExitDescription() const {
  if (!wait_status_) return "still running";
  if (WIFEXITED(*wait_status_))
    return "exited with code " + std::to_string(WEXITSTATUS(*wait_status_));
  if (WIFSIGNALED(*wait_status_))
    return "killed by signal " + std::to_string(WTERMSIG(*wait_status_));
  return "stopped";
}

void ChildProcess::Signal(int signal) {
  if (!wait_status_) kill(pid_, signal);
}

}  // namespace kvpool::cli
