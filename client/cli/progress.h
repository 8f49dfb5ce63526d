// ProgressBar: what a long command (`kvpool bench`, `kvpool loadgen`) is doing, on
// stderr. On a terminal it keeps one status line, redrawn in place by a ticker thread
// every 250 ms so the command is never silent: a bar, done/total, the stage and the
// point it is at, the time so far and an ETA (the mean time per finished unit times
// those left). Elsewhere (a pipe, a CI log) it prints plain timestamped lines: one per
// point, and one per tenth of the units. Quiet: nothing. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

namespace kvpool::cli {

// The status line for these values (pure, for tests): "label [####----] 3/8 stage:
// point · 1m05s, ETA ~2m10s"; `total` 0 leaves out the bar, the count and the ETA;
// `width` bounds the line (0: no bound).
std::string ProgressLine(const std::string& label, int64_t done, int64_t total,
                         const std::string& stage, const std::string& point, double elapsed_s,
                         size_t width);

class ProgressBar {
 public:
  // `tty` < 0: whether `out` is a terminal decides; 0 / 1 force plain lines / the bar.
  ProgressBar(std::string label, bool quiet, int tty = -1, std::FILE* out = stderr);
  ~ProgressBar();  // ends the line
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void SetTotal(int64_t total);
  // A new stage begins; the one before counts as one unit done.
  void Stage(const std::string& name);
  // What the current stage is doing now.
  void Point(const std::string& what);
  // `n` more units done.
  void Advance(int64_t n = 1);
  // Stops drawing and clears the line (before a command prints its result); later
  // calls show nothing. The destructor ends it too.
  void End();

 private:
  void Draw();       // mu_ held
  void PlainLine();  // mu_ held
  void Tick();

  const std::string label_;
  const bool quiet_;
  bool tty_ = false;
  std::FILE* const out_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t total_ = 0, done_ = 0, printed_tenth_ = 0;
  bool staged_ = false, stop_ = false, ended_ = false;
  std::string stage_, point_;
  std::thread ticker_;
};

}  // namespace kvpool::cli
