// fluxpipe core: data-parallel loops over a fixed number of threads (OpenMP's, shared with
// oneDNN).
//
// parallel_for splits [0, n) into one contiguous range per thread, always the same way for
// the same n and thread count, so results are deterministic for a fixed thread count.
// Thread-safety: one parallel_for at a time per pool (callers are the single engine thread);
// nested calls run serially on the calling thread.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>   // hardware_concurrency
#include <vector>

namespace fluxpipe {

class ThreadPool {
 public:
  // threads <= 0: one per available core.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return threads_; }
  // Calls fn(thread_index, begin, end) for the ranges of [0, n); returns when all are done.
  void parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn);

  // The pool used by the CPU backend (FLUXPIPE_THREADS or all cores).
  static ThreadPool& global();
  static void set_global_threads(int threads);

 private:
  int threads_ = 1;
};

}  // namespace fluxpipe
