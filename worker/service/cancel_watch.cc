// CancelWatch: see cancel_watch.h.
#include "service/cancel_watch.h"

#include <utility>

namespace kvpool::worker {

CancelWatch::CancelWatch(std::function<void()> on_cancel, std::chrono::milliseconds period,
                         std::chrono::milliseconds quiet)
    : on_cancel_(std::move(on_cancel)), period_(period), quiet_(quiet) {
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

CancelWatch::Watched::~Watched() {
  if (watch_ != nullptr) watch_->Forget(id_);
}

std::unique_ptr<CancelWatch::Watched> CancelWatch::Watch(std::shared_ptr<Job> job,
                                                         std::function<bool()> gone) {
  auto watched = std::make_unique<Watched>();
  bool first;
  {
    std::lock_guard<std::mutex> lock(mu_);
    watched->watch_ = this;
    watched->id_ = next_id_++;
    first = entries_.empty();
    entries_.emplace(watched->id_, Entry{std::move(job), std::move(gone), &watched->delivered_ns_});
  }
  if (first) cv_.notify_all();  // the thread sleeps while nothing is watched
  return watched;
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
    const int64_t asked_before =
        (std::chrono::steady_clock::now() - quiet_).time_since_epoch().count();
    // Under the lock: a Watched's destructor waits for this pass, so no `gone` outlives
    // the call it asks about.
    for (auto& [id, entry] : entries_) {
      if (entry.job->cancelled()) continue;
      if (entry.delivered_ns->load(std::memory_order_relaxed) > asked_before) continue;
      if (!entry.gone()) continue;
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
