// ServiceLoop: the main thread of a service process (kvpool-manager, kvpool-worker)
// after start-up. It owns the Boost.Asio io_context the HTTP port runs on, periodic
// timers, and the one clean shutdown: on SIGTERM or SIGINT, or when a timer calls
// Stop(), the timers are cancelled, the shutdown hooks run once in the order they were
// added, and Run() returns. It never touches service state itself: what to do on each
// tick and at shutdown is the caller's.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <list>
#include <string>
#include <vector>

namespace kvpool {

class ServiceLoop {
 public:
  // `program` prefixes the line logged when a signal arrives.
  explicit ServiceLoop(std::string program);
  ServiceLoop(const ServiceLoop&) = delete;
  ServiceLoop& operator=(const ServiceLoop&) = delete;

  boost::asio::io_context& io() { return io_; }

  // Calls `tick` on the loop's thread every `period` until shutdown.
  void Every(std::chrono::milliseconds period, std::function<void()> tick);
  // Runs at shutdown, after the timers are cancelled and before Run() returns.
  void OnShutdown(std::function<void()> hook);
  // Shuts down as a signal would; from a tick or a handler on the loop's thread.
  void Stop();
  // Runs the loop until shutdown.
  void Run();

 private:
  void Arm(boost::asio::steady_timer& timer, std::chrono::milliseconds period,
           const std::function<void()>& tick);

  const std::string program_;
  boost::asio::io_context io_;
  boost::asio::signal_set signals_;
  std::list<boost::asio::steady_timer> timers_;  // list: stable addresses
  std::vector<std::function<void()>> hooks_;
  bool stopped_ = false;
};

}  // namespace kvpool
