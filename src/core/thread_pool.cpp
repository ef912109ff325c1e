// The pool runs on OpenMP's threads: oneDNN (which the CPU backend hands large products to)
// runs on them too, and two sets of threads on the same cores — one spinning while the other
// works — measured several times slower than one shared set.
#include "core/thread_pool.h"

#include <omp.h>

#include <cstdlib>
#include <memory>
#include <mutex>

namespace fluxpipe {

namespace {
void range_of(int64_t n, int parts, int index, int64_t* begin, int64_t* end) {
  int64_t base = n / parts, extra = n % parts;
  *begin = index * base + std::min<int64_t>(index, extra);
  *end = *begin + base + (index < extra ? 1 : 0);
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads_ = threads;
}

ThreadPool::~ThreadPool() = default;

void ThreadPool::parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (threads_ == 1 || n == 1 || omp_in_parallel()) {   // nested calls run on the calling thread
    fn(0, 0, n);
    return;
  }
  const int parts = threads_;
#pragma omp parallel num_threads(parts)
  {
    int t = omp_get_thread_num();
    int64_t b, e;
    range_of(n, omp_get_num_threads(), t, &b, &e);
    if (b < e) fn(t, b, e);
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
    omp_set_num_threads(slot->size());
  }
  return *slot;
}

void ThreadPool::set_global_threads(int threads) {
  std::lock_guard lock(g_global_mu);
  global_slot() = std::make_unique<ThreadPool>(threads);
  omp_set_num_threads(global_slot()->size());
}

}  // namespace fluxpipe
