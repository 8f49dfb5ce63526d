// ServiceLoop: see service_loop.h.
#include "common/service_loop.h"

#include <csignal>
#include <iostream>

namespace kvpool {

ServiceLoop::ServiceLoop(std::string program)
    : program_(std::move(program)), signals_(io_, SIGTERM, SIGINT) {
  signals_.async_wait([this](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    std::cerr << program_ << ": signal " << signal << ", shutting down\n";
    Stop();
  });
}

void ServiceLoop::Every(std::chrono::milliseconds period, std::function<void()> tick) {
  boost::asio::steady_timer& timer = timers_.emplace_back(io_);
  Arm(timer, period, std::move(tick));
}

void ServiceLoop::Arm(boost::asio::steady_timer& timer, std::chrono::milliseconds period,
                      const std::function<void()>& tick) {
  timer.expires_after(period);
  timer.async_wait([this, &timer, period, tick](const boost::system::error_code& ec) {
    if (ec || stopped_) return;
    tick();
    if (!stopped_) Arm(timer, period, tick);
  });
}

void ServiceLoop::OnShutdown(std::function<void()> hook) { hooks_.push_back(std::move(hook)); }

void ServiceLoop::Stop() {
  if (stopped_) return;
  stopped_ = true;
  for (boost::asio::steady_timer& timer : timers_) timer.cancel();
  boost::system::error_code ignored;
  signals_.cancel(ignored);
  for (const std::function<void()>& hook : hooks_) hook();
  io_.stop();
}

void ServiceLoop::Run() { io_.run(); }

}  // namespace kvpool
