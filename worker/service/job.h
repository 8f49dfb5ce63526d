// Job: one Generate call as the scheduler and the gRPC handler share it, and the
// response side of the worker: the only place the stream's messages (tokens, then a
// summary) are built. The handler fills the request once and then only reads the
// event channel and may cancel; the scheduler thread owns every other field and pushes
// events. The channel is the only state both threads touch, under its mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/engine.h"
#include "kvpool/v1/worker.pb.h"
#include "service/manager_api.h"

namespace kvpool::worker {

using Clock = std::chrono::steady_clock;

// Rung by every job of a request with several prompts (an OpenAI completion's list),
// so that its handler sleeps until any of them has news rather than waking each in
// turn on a timer.
class Doorbell {
 public:
  void Ring() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++rings_;
    }
    cv_.notify_all();
  }
  uint64_t rings() const {
    std::lock_guard<std::mutex> lock(mu_);
    return rings_;
  }
  // Until it has rung since `rings()` returned `seen`.
  void WaitPast(uint64_t seen) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return rings_ != seen; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t rings_ = 0;  // GUARDED_BY(mu_)
};

class Job {
 public:
  // Set by the handler before Submit, then read-only.
  GenerationRequest request;         // prompt, max_tokens, mode, sampling, stop, ignore_eos
  int32_t n = 1;                     // parallel samples
  std::string client_authorization;  // forwarded to the manager for the tenant's salt
  // GenerateRequest.retention: the prompt's full blocks' priority when its sequences
  // close (-1: as they are), and a pin of them (0: none) made as the first sample retires.
  int32_t retention_priority = -1;
  int64_t pin_ttl_ms = 0;
  Clock::time_point arrival = Clock::now();
  // Rung, besides the job's own Wait, at every event, the end and a cancel (optional).
  std::shared_ptr<Doorbell> doorbell;

  // Handler side (and the CancelWatch). Cancel wakes a Wait.
  void Cancel() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_.store(true);
    }
    Notify();
  }
  bool cancelled() const { return cancelled_.load(); }
  // Moves pending events into `out`; true once the job has ended (then `status` is
  // its outcome and no event follows). Waits up to `timeout` for something new, or for
  // the job to be cancelled.
  bool Wait(std::chrono::milliseconds timeout, std::vector<v1::GenerateResponse>* out,
            Status* status) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return HasNews(); });
    return TakeNews(out, status);
  }
  // The same with no timeout: until there are events, the job ends or it is cancelled.
  bool Wait(std::vector<v1::GenerateResponse>* out, Status* status) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return HasNews(); });
    return TakeNews(out, status);
  }

  // Scheduler side. One token of sample `index`: `text` holds the characters it
  // completes (UTF-8), the KV bytes are the sample's after the step.
  void PushToken(int32_t index, int32_t token_id, std::string text, double step_s,
                 int64_t kv_bytes_reserved, int64_t kv_bytes_used,
                 const TokenLogprobs* logprobs = nullptr);
  // The summary, from the accounting below, after the last sample finished.
  void PushSummary();
  void Push(v1::GenerateResponse event) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::move(event));
    }
    Notify();
  }
  void End(Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_) return;
      done_ = true;
      status_ = std::move(status);
    }
    Notify();
  }
  bool ended() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  // Accounting, scheduler thread only.
  int32_t samples_left = 0;
  int64_t cached_tokens = 0;
  int64_t completion_tokens = 0;
  bool admitted = false;
  std::string tenant;  // the client's, as the manager authenticated it at intake
  Clock::time_point admitted_at, first_token_at, last_token_at;
  double gap_sum_s = 0;
  int64_t gaps = 0;
  int64_t peak_reserved_bytes = 0, peak_used_bytes = 0;
  std::vector<std::string> finish_reasons;
  int32_t preemptions = 0;
  bool pin_tried = false;
  StatusOr<PinOutcome> pin = Internal("the request ended before its prompt could be pinned");

 private:
  void Notify() {
    cv_.notify_all();
    if (doorbell) doorbell->Ring();
  }
  bool HasNews() const { return !events_.empty() || done_ || cancelled_.load(); }  // under mu_
  bool TakeNews(std::vector<v1::GenerateResponse>* out, Status* status) {          // under mu_
    out->assign(events_.begin(), events_.end());
    events_.clear();
    if (done_) *status = status_;
    return done_;
  }

  std::atomic<bool> cancelled_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::GenerateResponse> events_;  // GUARDED_BY(mu_)
  bool done_ = false;                        // GUARDED_BY(mu_)
  Status status_;                            // GUARDED_BY(mu_)
};

}  // namespace kvpool::worker
