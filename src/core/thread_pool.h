// fluxpipe core: a fixed pool of worker threads for data-parallel loops.
//
// parallel_for splits [0, n) into one contiguous range per thread, always the same way for
// the same n and thread count, so results are deterministic for a fixed thread count.
// Thread-safety: one parallel_for at a time per pool (callers are the single engine thread);
// nested calls run serially on the calling thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fluxpipe {

class ThreadPool {
 public:
  // threads <= 0: one per available core.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(thread_index, begin, end) for the ranges of [0, n); returns when all are done.
  void parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn);

  // The pool used by the CPU backend (FLUXPIPE_THREADS or all cores).
  static ThreadPool& global();
  static void set_global_threads(int threads);

 private:
  void worker(int index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int, int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stopping_ = false;
  bool busy_ = false;
};

}  // namespace fluxpipe
