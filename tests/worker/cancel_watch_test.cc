// CancelWatch and Job::Wait: a handler blocked on its job with no timeout wakes for an
// event, for the job's end, and when the watch sees its call gone and cancels the job;
// the watch never asks about a call after its Watched is destroyed.
#include "service/cancel_watch.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <thread>
#include <vector>

namespace kvpool::worker {
namespace {

using std::chrono::milliseconds;

// Runs the blocking Wait on another thread; the future holds (done, events seen).
std::future<std::pair<bool, size_t>> WaitAsync(std::shared_ptr<Job> job) {
  return std::async(std::launch::async, [job] {
    std::vector<v1::GenerateResponse> events;
    Status status;
    const bool done = job->Wait(&events, &status);
    return std::make_pair(done, events.size());
  });
}

TEST(JobWaitTest, BlocksUntilAnEventTheEndOrACancel) {
  auto job = std::make_shared<Job>();
  auto waiting = WaitAsync(job);
  EXPECT_EQ(waiting.wait_for(milliseconds(100)), std::future_status::timeout);
  job->Push(v1::GenerateResponse());
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(waiting.get(), std::make_pair(false, size_t{1}));

  waiting = WaitAsync(job);
  EXPECT_EQ(waiting.wait_for(milliseconds(50)), std::future_status::timeout);
  job->End(Status::Ok());
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(waiting.get(), std::make_pair(true, size_t{0}));

  auto other = std::make_shared<Job>();
  waiting = WaitAsync(other);
  EXPECT_EQ(waiting.wait_for(milliseconds(50)), std::future_status::timeout);
  other->Cancel();
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(waiting.get(), std::make_pair(false, size_t{0}));
  EXPECT_TRUE(other->cancelled());
}

// A request with several prompts sleeps on their shared doorbell: any job's event, end
// or cancel wakes it, and a ring before the sleep is not missed.
TEST(JobWaitTest, ADoorbellWakesOnAnyOfItsJobs) {
  auto bell = std::make_shared<Doorbell>();
  std::vector<std::shared_ptr<Job>> jobs(3);
  for (auto& job : jobs) {
    job = std::make_shared<Job>();
    job->doorbell = bell;
  }
  auto sleep_past = [&](uint64_t seen) {
    return std::async(std::launch::async, [bell, seen] { bell->WaitPast(seen); });
  };
  const std::vector<std::function<void(Job&)>> news = {
      [](Job& job) { job.Push(v1::GenerateResponse()); },
      [](Job& job) { job.End(Status::Ok()); },
      [](Job& job) { job.Cancel(); },
  };
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto sleeping = sleep_past(bell->rings());
    EXPECT_EQ(sleeping.wait_for(milliseconds(50)), std::future_status::timeout);
    news[i](*jobs[2 - i]);
    ASSERT_EQ(sleeping.wait_for(std::chrono::seconds(5)), std::future_status::ready) << i;
  }
  // Rung between reading the count and sleeping: returns at once.
  const uint64_t seen = bell->rings();
  jobs[0]->Push(v1::GenerateResponse());
  auto late = sleep_past(seen);
  EXPECT_EQ(late.wait_for(std::chrono::seconds(5)), std::future_status::ready);
}

TEST(CancelWatchTest, CancelsTheJobOfAGoneCallAndWakesItsHandler) {
  std::atomic<int> woken{0};
  CancelWatch watch([&] { woken.fetch_add(1); }, milliseconds(5));
  auto job = std::make_shared<Job>();
  auto bystander = std::make_shared<Job>();
  std::atomic<bool> gone{false};
  auto watched = watch.Watch(job, [&] { return gone.load(); });
  auto kept = watch.Watch(bystander, [] { return false; });
  EXPECT_EQ(watch.watched(), 2u);
  auto waiting = WaitAsync(job);
  EXPECT_EQ(waiting.wait_for(milliseconds(100)), std::future_status::timeout);
  EXPECT_FALSE(job->cancelled());
  EXPECT_EQ(woken.load(), 0);
  gone = true;
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(waiting.get(), std::make_pair(false, size_t{0}));
  EXPECT_TRUE(job->cancelled());
  EXPECT_FALSE(bystander->cancelled());
  // The scheduler is woken once for it, not again each period.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (woken.load() == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(milliseconds(1));
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(woken.load(), 1);
}

TEST(CancelWatchTest, NeverAsksAboutACallAfterItsWatchedIsGone) {
  CancelWatch watch({}, milliseconds(1));
  auto job = std::make_shared<Job>();
  std::atomic<int> asked{0};
  auto watched = watch.Watch(job, [&] {
    asked.fetch_add(1);
    return false;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (asked.load() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(milliseconds(1));
  EXPECT_GE(asked.load(), 3);
  watched.reset();
  const int after = asked.load();
  EXPECT_EQ(watch.watched(), 0u);
  std::this_thread::sleep_for(milliseconds(30));
  EXPECT_EQ(asked.load(), after);
  EXPECT_FALSE(job->cancelled());
}

// A call that delivered an event lately is not asked about (its handler's next write
// would fail if the client left); once quiet for `quiet` it is asked again.
TEST(CancelWatchTest, AsksOnlyAboutCallsQuietSinceTheirLastDelivery) {
  const milliseconds quiet(300);
  CancelWatch watch({}, milliseconds(1), quiet);
  auto streaming = std::make_shared<Job>();
  auto waiting = std::make_shared<Job>();
  std::atomic<int> asked_streaming{0}, asked_waiting{0};
  auto streamed = watch.Watch(streaming, [&] {
    asked_streaming.fetch_add(1);
    return true;  // gone: cancelled as soon as it is asked
  });
  streamed->Delivered();
  const auto delivered = std::chrono::steady_clock::now();
  auto queued = watch.Watch(waiting, [&] {
    asked_waiting.fetch_add(1);
    return false;
  });
  // The waiting call (never delivered) is asked every period meanwhile.
  const auto deadline = delivered + std::chrono::seconds(5);
  while (asked_waiting.load() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(milliseconds(1));
  EXPECT_GE(asked_waiting.load(), 3);
  // Delivering again within `quiet` keeps the streaming call from being asked.
  for (int i = 0; i < 5 && std::chrono::steady_clock::now() - delivered < quiet / 2; ++i) {
    streamed->Delivered();
    std::this_thread::sleep_for(milliseconds(10));
  }
  const auto last_delivery = std::chrono::steady_clock::now();
  streamed->Delivered();
  if (std::chrono::steady_clock::now() - delivered < quiet / 2) {
    EXPECT_EQ(asked_streaming.load(), 0);
    EXPECT_FALSE(streaming->cancelled());
  }
  // Quiet since: asked, found gone, cancelled, and not sooner than `quiet` after it.
  while (!streaming->cancelled() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(milliseconds(1));
  EXPECT_TRUE(streaming->cancelled());
  EXPECT_GE(std::chrono::steady_clock::now() - last_delivery, quiet);
  EXPECT_EQ(asked_streaming.load(), 1);
  EXPECT_FALSE(waiting->cancelled());
}

}  // namespace
}  // namespace kvpool::worker
