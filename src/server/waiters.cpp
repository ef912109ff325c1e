#include "server/waiters.h"

#include "server/log.h"

namespace fluxpipe::server {

Waiters::Waiters() { thread_ = std::thread([this] { loop(); }); }

Waiters::~Waiters() {
  shutdown();
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Waiters::add(const std::string& id, int64_t timeout_ms, std::function<void(bool)> done) {
  {
    std::lock_guard lock(mu_);
    if (!closed_) {
      uint64_t serial = next_serial_++;
      by_serial_.emplace(serial, Waiter{serial, id, std::move(done)});
      by_id_.emplace(id, serial);
      deadlines_.emplace(std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms), serial);
    } else {
      ready_.emplace_back(std::move(done), false);
    }
  }
  cv_.notify_all();
}

void Waiters::notify(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    auto [lo, hi] = by_id_.equal_range(id);
    if (lo == hi) return;
    for (auto it = lo; it != hi; ++it) {
      auto w = by_serial_.find(it->second);
      ready_.emplace_back(std::move(w->second.done), true);
      by_serial_.erase(w);
    }
    by_id_.erase(lo, hi);
  }
  cv_.notify_all();
}

void Waiters::poll_finished(const std::function<bool(const std::string&)>& finished) {
  std::vector<std::string> ids;
  {
    std::lock_guard lock(mu_);
    for (auto it = by_id_.begin(); it != by_id_.end(); it = by_id_.upper_bound(it->first)) ids.push_back(it->first);
  }
  for (const std::string& id : ids) {
    if (finished(id)) notify(id);
  }
}

void Waiters::shutdown() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    for (auto& [serial, w] : by_serial_) ready_.emplace_back(std::move(w.done), false);
    by_serial_.clear();
    by_id_.clear();
    deadlines_.clear();
  }
  cv_.notify_all();
}

size_t Waiters::waiting() const {
  std::lock_guard lock(mu_);
  return by_serial_.size();
}

void Waiters::loop() {
  std::unique_lock lock(mu_);
  while (true) {
    // Expired deadlines become ready; deadlines of waiters already answered are dropped.
    auto now = std::chrono::steady_clock::now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      uint64_t serial = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      auto w = by_serial_.find(serial);
      if (w == by_serial_.end()) continue;
      auto [lo, hi] = by_id_.equal_range(w->second.id);
      for (auto it = lo; it != hi; ++it) {
        if (it->second == serial) {
          by_id_.erase(it);
          break;
        }
      }
      ready_.emplace_back(std::move(w->second.done), false);
      by_serial_.erase(w);
    }
    if (!ready_.empty()) {
      auto batch = std::move(ready_);
      ready_.clear();
      lock.unlock();
      for (auto& [fn, finished] : batch) {
        try {
          fn(finished);
        } catch (const std::exception& e) {
          log("error", std::string("waiter: ") + e.what());
        }
      }
      lock.lock();
      continue;
    }
    if (stopping_) return;
    // Deadlines whose waiter was answered are dropped lazily; wait for the earliest one.
    while (!deadlines_.empty() && !by_serial_.count(deadlines_.begin()->second)) deadlines_.erase(deadlines_.begin());
    if (deadlines_.empty()) {
      cv_.wait(lock);
    } else {
      cv_.wait_until(lock, deadlines_.begin()->first);
    }
  }
}

}  // namespace fluxpipe::server
