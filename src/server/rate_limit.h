// fluxpipe server: a token bucket per API key, for submissions.
// Thread-safety: thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>

namespace fluxpipe::server {

class RateLimiter {
 public:
  // `per_minute` tokens refill evenly over a minute; the bucket holds as many. 0 = unlimited.
  explicit RateLimiter(int per_minute) : per_minute_(per_minute) {}

  // Takes a token for `key`. Returns 0 when allowed, else the seconds to wait (>= 1).
  int take(const std::string& key, std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now()) {
    if (per_minute_ <= 0) return 0;
    std::lock_guard lock(mu_);
    Bucket& b = buckets_[key];
    if (!b.initialised) {
      b = {static_cast<double>(per_minute_), now, true};
    }
    double refill = std::chrono::duration<double>(now - b.last).count() * per_minute_ / 60.0;
    b.tokens = std::min<double>(per_minute_, b.tokens + refill);
    b.last = now;
    if (b.tokens >= 1.0) {
      b.tokens -= 1.0;
      return 0;
    }
    double wait_s = (1.0 - b.tokens) * 60.0 / per_minute_;
    return std::max(1, static_cast<int>(wait_s + 0.999));
  }

 private:
  struct Bucket {
    double tokens = 0;
    std::chrono::steady_clock::time_point last;
    bool initialised = false;
  };
  int per_minute_;
  std::mutex mu_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace fluxpipe::server
