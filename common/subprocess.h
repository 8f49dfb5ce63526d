// Subprocess: one child process started by fork/exec with a pipe on its stdout, the one
// helper the CLI (`kvpool up`, `kvpool bench`) and the tests start services with. It
// owns the fork/exec, the pipe (read line by line until the child says where it listens,
// then optionally copied to our stderr by a thread so the child never blocks on a full
// pipe), signalling and reaping. It never interprets what the child prints and never
// blocks longer than the timeout a caller gives. Not thread-safe: one owner.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace kvpool {

struct SubprocessOptions {
  std::string name;              // for messages; argv[0] when empty
  bool merge_stderr = false;     // the child's stderr goes into the same pipe (else: ours)
  bool own_process_group = false;  // a terminal's Ctrl-C reaches only us, not the child
  bool die_with_parent = false;  // the child gets SIGTERM when this process dies
  std::optional<sigset_t> signal_mask;  // the child's signal mask (else: inherited)
};

class Subprocess {
 public:
  // Starts `argv` (argv[0] is a path). An error only when pipe or fork fails; a path
  // that cannot be executed shows as exit code 127.
  static StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv,
                                                     SubprocessOptions options = {});
  // The same, for tests that hold it by value: on failure pid() is -1 and ReadLine
  // returns nullopt at once.
  explicit Subprocess(const std::vector<std::string>& argv, SubprocessOptions options = {});
  ~Subprocess();  // SIGKILLs and reaps the child if it still runs; joins the drain thread
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const Status& start_status() const { return start_status_; }

  // The next stdout line; nullopt at EOF (then *eof is set, when given) or after
  // `timeout`. Only before DrainToStderr.
  std::optional<std::string> ReadLine(std::chrono::milliseconds timeout, bool* eof = nullptr);
  // From now on a thread copies the child's stdout to our stderr.
  void DrainToStderr();

  // True once the child has exited (reaped without blocking); its wait status is kept.
  bool Exited();
  // The wait status once Exited() returned true.
  std::optional<int> wait_status() const { return wait_status_; }
  // "exited with code N" or "killed by signal N"; "still running" before Exited().
  std::string ExitDescription() const;
  void Signal(int signal);
  // Signal(signal), then waits up to `timeout` for the exit: the wait status, or nullopt.
  std::optional<int> SignalAndWait(int signal, std::chrono::milliseconds timeout);

 private:
  std::string name_;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  Status start_status_;
  std::string buffer_;  // read but not yet returned by ReadLine
  std::optional<int> wait_status_;
  std::thread drain_;
};

}  // namespace kvpool
