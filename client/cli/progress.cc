// ProgressBar: see progress.h.
#include "client/cli/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace kvpool::cli {
namespace {

std::string Duration(double s) {
  char text[32];
  const auto total = static_cast<long long>(std::llround(std::max(0.0, s)));
  if (total >= 3600) {
    std::snprintf(text, sizeof(text), "%lldh%02lldm", total / 3600, total / 60 % 60);
  } else if (total >= 60) {
    std::snprintf(text, sizeof(text), "%lldm%02llds", total / 60, total % 60);
  } else {
    std::snprintf(text, sizeof(text), "%llds", total);
  }
  return text;
}

size_t TerminalWidth(std::FILE* out) {
  winsize size{};
  if (ioctl(fileno(out), TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 100;
}

}  // namespace

std::string ProgressLine(const std::string& label, int64_t done, int64_t total,
                         const std::string& stage, const std::string& point, double elapsed_s,
                         size_t width) {
  std::string line = label;
  if (total > 0) {
    constexpr int kBar = 20;
    const int filled = static_cast<int>(kBar * std::min(done, total) / total);
    line += " [" + std::string(static_cast<size_t>(filled), '#') +
            std::string(static_cast<size_t>(kBar - filled), '-') + "] " + std::to_string(done) +
            "/" + std::to_string(total);
  }
  if (!stage.empty()) line += " " + stage + (point.empty() ? "" : ":");
  if (!point.empty()) line += " " + point;
  line += " · " + Duration(elapsed_s);
  if (total > 0 && done > 0 && done < total) {
    line += ", ETA ~" +
            Duration(elapsed_s / static_cast<double>(done) * static_cast<double>(total - done));
  }
  if (width > 4 && line.size() > width - 1) line = line.substr(0, width - 4) + "...";
  return line;
}

ProgressBar::ProgressBar(std::string label, bool quiet, int tty, std::FILE* out)
    : label_(std::move(label)), quiet_(quiet), out_(out) {
  tty_ = tty < 0 ? isatty(fileno(out)) != 0 : tty > 0;
  if (!quiet_ && tty_) ticker_ = std::thread([this] { Tick(); });
}

ProgressBar::~ProgressBar() { End(); }

void ProgressBar::End() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (ticker_.joinable()) ticker_.join();
  std::lock_guard<std::mutex> lock(mu_);
  ended_ = true;
  if (!quiet_ && tty_) {
    std::fputs("\r\033[K", out_);
    std::fflush(out_);
  }
}

void ProgressBar::SetTotal(int64_t total) {
  std::lock_guard<std::mutex> lock(mu_);
  total_ = total;
}

void ProgressBar::Stage(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (staged_) ++done_;
  staged_ = true;
  stage_ = name;
  point_.clear();
  if (quiet_ || ended_) return;
  tty_ ? Draw() : PlainLine();
}

void ProgressBar::Point(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  point_ = what;
  if (quiet_ || ended_) return;
  tty_ ? Draw() : PlainLine();
}

void ProgressBar::Advance(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  done_ += n;
  if (quiet_ || ended_) return;
  if (tty_) return Draw();
  if (total_ > 0 && done_ * 10 / total_ > printed_tenth_) {
    printed_tenth_ = done_ * 10 / total_;
    PlainLine();
  }
}

void ProgressBar::Draw() {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::string line =
      ProgressLine(label_, done_, total_, stage_, point_, elapsed, TerminalWidth(out_));
  std::fprintf(out_, "\r\033[K%s", line.c_str());
  std::fflush(out_);
}

void ProgressBar::PlainLine() {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(out_, "[%7.1f s] %s\n", elapsed,
               ProgressLine(label_, done_, total_, stage_, point_, elapsed, 0).c_str());
  std::fflush(out_);
}

void ProgressBar::Tick() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stop_; })) Draw();
}

}  // namespace kvpool::cli
