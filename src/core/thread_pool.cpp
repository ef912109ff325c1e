#include "core/thread_pool.h"

#include <cstdlib>
#include <memory>

namespace fluxpipe {

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  start_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

namespace {
void range_of(int64_t n, int parts, int index, int64_t* begin, int64_t* end) {
  int64_t base = n / parts, extra = n % parts;
  *begin = index * base + std::min<int64_t>(index, extra);
  *end = *begin + base + (index < extra ? 1 : 0);
}
}  // namespace

void ThreadPool::parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  {
    std::unique_lock lock(mu_);
    if (busy_ || workers_.empty() || n == 1) {
      lock.unlock();
      fn(0, 0, n);
      return;
    }
    busy_ = true;
    job_ = &fn;
    n_ = n;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  start_cv_.notify_all();
  int64_t b, e;
  range_of(n, size(), 0, &b, &e);
  if (b < e) fn(0, b, e);
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [this] { return pending_ == 0; });
  job_ = nullptr;
  busy_ = false;
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  while (true) {
    const std::function<void(int, int64_t, int64_t)>* job;
    int64_t n;
    {
      std::unique_lock lock(mu_);
      start_cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      job = job_;
      n = n_;
    }
    int64_t b, e;
    range_of(n, size(), index, &b, &e);
    if (b < e) (*job)(index, b, e);
    {
      std::lock_guard lock(mu_);
      --pending_;
    }
    done_cv_.notify_all();
  }
}

namespace {
std::unique_ptr<ThreadPool>& global_slot() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}
std::mutex g_global_mu;
}  // namespace

ThreadPool& ThreadPool::global() {
  std::lock_guard lock(g_global_mu);
  auto& slot = global_slot();
  if (!slot) {
    int threads = 0;
    if (const char* env = std::getenv("FLUXPIPE_THREADS")) threads = std::atoi(env);
    slot = std::make_unique<ThreadPool>(threads);
  }
  return *slot;
}

void ThreadPool::set_global_threads(int threads) {
  std::lock_guard lock(g_global_mu);
  global_slot() = std::make_unique<ThreadPool>(threads);
}

}  // namespace fluxpipe
