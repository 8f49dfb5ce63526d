// ChildProcess: one service process started by `kvpool up`. It owns the fork/exec
// (the child runs in its own process group with the parent's original signal mask, and
// gets SIGTERM if `kvpool up` dies), the pipe on the child's stdout (read line by line until the
// child says where it listens, then copied to our stderr by a thread so the child never blocks on a
// full pipe), signalling and reaping. The child's stderr is ours. Not thread-safe: one owner.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kvpool/v1/status.h"

namespace kvpool::cli {

class ChildProcess {
 public:
  // Starts `argv` (argv[0] is a path); the child runs with `child_mask` as its signal mask.
  static StatusOr<std::unique_ptr<ChildProcess>> Start(std::string name,
                                                       const std::vector<std::string>& argv,
                                                       const sigset_t& child_mask);
  ~ChildProcess();  // SIGKILLs and reaps the child if it still runs; joins the drain thread
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }

  // The next stdout line; nullopt after `timeout`. Sets *eof when the pipe closed.
  // Only before DrainToStderr.
  std::optional<std::string> ReadLine(std::chrono::milliseconds timeout, bool* eof);
  // From now on a thread copies the child's stdout to our stderr.
  void DrainToStderr();

  // True once the child has exited (reaped without blocking); its wait status is kept.
  bool Exited();
  // "exited with code N" or "killed by signal N"; only after Exited() returned true.
  std::string ExitDescription() const;
  void Signal(int signal);

 private:
  ChildProcess(std::string name, pid_t pid, int stdout_fd);

  const std::string name_;
  pid_t pid_;
  int stdout_fd_;
  std::string buffer_;  // read but not yet returned by ReadLine
  std::optional<int> wait_status_;
  std::thread drain_;
};

}  // namespace kvpool::cli
