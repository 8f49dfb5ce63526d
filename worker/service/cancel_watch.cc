// CancelWatch: see cancel_watch.h.
#include "service/cancel_watch.h"

#include <utility>

namespace kvpool::worker {

CancelWatch::CancelWatch(std::function<void()> on_cancel, std::chrono::milliseconds period)
    : on_cancel_(std::move(on_cancel)), period_(period) {
  thread_ = std::thread([this] { Run(); });
}

CancelWatch::~CancelWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

CancelWatch::Watched::~Watched() { watch_->Forget(id_); }

std::unique_ptr<CancelWatch::Watched> CancelWatch::Watch(std::shared_ptr<Job> job,
                                                         std::function<bool()> gone) {
  uint64_t id;
  bool first;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_id_++;
    first = entries_.empty();
    entries_.emplace(id, Entry{std::move(job), std::move(gone)});
  }
  if (first) cv_.notify_all();  // the thread sleeps while nothing is watched
  return std::make_unique<Watched>(this, id);
}

void CancelWatch::Forget(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(id);
}

size_t CancelWatch::watched() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

void CancelWatch::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !entries_.empty(); });
    if (stop_) return;
    cv_.wait_for(lock, period_, [&] { return stop_; });
    if (stop_) return;
    bool cancelled = false;
    // Under the lock: a Watched's destructor waits for this pass, so no `gone` outlives
    // the call it asks about.
    for (auto& [id, entry] : entries_) {
      if (entry.job->cancelled() || !entry.gone()) continue;
      entry.job->Cancel();
      cancelled = true;
    }
    if (cancelled && on_cancel_) {
      lock.unlock();
      on_cancel_();
      lock.lock();
    }
  }
}

}  // namespace kvpool::worker
