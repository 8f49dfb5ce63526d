// CancelWatch: one thread that notices, for every in-flight call, that its client
// cancelled it, closed the connection or passed its deadline, and cancels the call's
// job (which wakes the handler blocked on it: Job::Cancel). Before it, each handler
// woke every 10 ms to ask: 32 streams made 3,200 wake-ups a second, each preempting
// one of the forward's threads on a worker that runs one per core (about 2% of a
// 2-core worker's served throughput, docs/benchmarks.md). Now a handler sleeps until
// its job has events, ends or is cancelled, and one thread looks at every call each
// period, only while some call is in flight.
//
// It skips a call that delivered an event within the last `quiet` (Watched::Delivered):
// that call's handler learns of a departed client at its next write, which fails, one
// step later at most. Asking gRPC costs: IsCancelled polls the call's completion queue,
// and the watch's thread spent 2 s of CPU in a 33 s run of 32 streams asking every
// call each 10 ms (docs/benchmarks.md, "The cancel watch asks only quiet calls"). So
// the calls asked are those waiting, prefilling, or with output held back.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "service/job.h"

namespace kvpool::worker {

class CancelWatch {
 public:
  // `on_cancel` runs (on the watch's thread, without its lock) after a period in which
  // it cancelled at least one job: the scheduler's Wake, so it drops them now.
  explicit CancelWatch(std::function<void()> on_cancel,
                       std::chrono::milliseconds period = std::chrono::milliseconds(10),
                       std::chrono::milliseconds quiet = std::chrono::milliseconds(1000));
  ~CancelWatch();
  CancelWatch(const CancelWatch&) = delete;
  CancelWatch& operator=(const CancelWatch&) = delete;

  // While it lives, `job` is cancelled once `gone()` is true. `gone` is called on the
  // watch's thread, never after the Watched is destroyed; it must be thread-safe
  // (grpc::ServerContext::IsCancelled is).
  class Watched {
   public:
    Watched() = default;
    ~Watched();
    Watched(const Watched&) = delete;
    Watched& operator=(const Watched&) = delete;

    // The handler wrote an event to its client: `gone` is not asked for `quiet`.
    // Only for a handler whose failed write cancels the job.
    void Delivered() {
      delivered_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                          std::memory_order_relaxed);
    }

   private:
    friend class CancelWatch;
    CancelWatch* watch_ = nullptr;
    uint64_t id_ = 0;
    std::atomic<int64_t> delivered_ns_{std::numeric_limits<int64_t>::min()};
  };
  std::unique_ptr<Watched> Watch(std::shared_ptr<Job> job, std::function<bool()> gone);

  size_t watched() const;  // calls in flight (for tests)

 private:
  struct Entry {
    std::shared_ptr<Job> job;
    std::function<bool()> gone;
    const std::atomic<int64_t>* delivered_ns;  // its Watched's, which outlives it
  };
  void Run();
  void Forget(uint64_t id);

  const std::function<void()> on_cancel_;
  const std::chrono::milliseconds period_;
  const std::chrono::milliseconds quiet_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Entry> entries_;  // GUARDED_BY(mu_)
  uint64_t next_id_ = 0;               // GUARDED_BY(mu_)
  bool stop_ = false;                  // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace kvpool::worker
