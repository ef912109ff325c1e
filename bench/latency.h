// Latency samples gathered by many client threads, and their percentiles (the load benchmarks).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace fluxpipe::bench {

struct Samples {
  std::mutex mu;
  std::vector<double> ms;
  std::atomic<int64_t> errors{0};
  // Each thread collects locally and adds once at the end.
  void add(const std::vector<double>& local) {
    std::lock_guard lock(mu);
    ms.insert(ms.end(), local.begin(), local.end());
  }
};

// The p-quantile (0..1) of `v`, which it reorders; 0 for no samples.
inline double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

}  // namespace fluxpipe::bench
