// Load benchmark (not a test): N concurrent pollers and S submitters against an in-process
// server on 127.0.0.1 while a slow test-double job runs. Prints requests/s, p50/p99
// latency and the error count.
//
//   build/bench/load_bench [--pollers 1000] [--submitters 4] [--seconds 10]
//                          [--interval-ms 500] [--http-threads 1100]
// --interval-ms is each poller's pause between polls (0 = poll back to back: saturation).
// Latencies leave out each poller's first poll, which also opens its keep-alive connection.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "test_util.h"

using namespace fluxpipe;
using namespace fluxpipe::testing;

namespace {

struct Samples {
  std::mutex mu;
  std::vector<double> ms;
  std::atomic<int64_t> errors{0};
  void add(const std::vector<double>& local) {
    std::lock_guard lock(mu);
    ms.insert(ms.end(), local.begin(), local.end());
  }
};

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

}  // namespace

int main(int argc, char** argv) {
  int pollers = 1000, submitters = 4, seconds = 10, interval_ms = 500, http_threads = 1100;
  for (int i = 1; i + 1 < argc; i += 2) {
    int v = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--pollers")) pollers = v;
    else if (!std::strcmp(argv[i], "--submitters")) submitters = v;
    else if (!std::strcmp(argv[i], "--seconds")) seconds = v;
    else if (!std::strcmp(argv[i], "--interval-ms")) interval_ms = v;
    else if (!std::strcmp(argv[i], "--http-threads")) http_threads = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  TestServer s(
      [&](server::ServeOptions& o) {
        o.http_threads = http_threads;
        o.max_queue = 1000000;
        o.rate_limit_per_minute = 0;
        o.limits.max_steps = 1000;
      },
      /*step_ms=*/200);
  // The slow job that runs through the whole benchmark, and the request every poller polls.
  json slow = {{"prompt", "slow"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1000}};
  std::string polled = s.submit(slow).second["id"];

  Samples poll_lat, submit_lat;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> polls{0}, submits{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < pollers; ++p) {
    threads.emplace_back([&, p] {
      // Real clients are not synchronised: spread the pollers' phases over one interval.
      if (interval_ms > 0) std::this_thread::sleep_for(std::chrono::microseconds(1000LL * interval_ms * p / pollers));
      httplib::Client c("127.0.0.1", s.port);
      c.set_keep_alive(true);
      c.set_read_timeout(30, 0);
      httplib::Headers h = s.auth();
      std::vector<double> local;
      bool first = true;
      while (!stop) {
        auto t0 = std::chrono::steady_clock::now();
        auto res = c.Get("/generate/v3/status/" + polled, h);
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (!res || res->status != 200) poll_lat.errors++;
        else if (!first) local.push_back(ms);   // the first poll also opens the connection
        first = false;
        polls++;
        if (interval_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
      }
      poll_lat.add(local);
    });
  }
  json small = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}};
  for (int q = 0; q < submitters; ++q) {
    threads.emplace_back([&] {
      httplib::Client c("127.0.0.1", s.port);
      c.set_keep_alive(true);
      httplib::Headers h = s.auth();
      std::vector<double> local;
      while (!stop) {
        auto t0 = std::chrono::steady_clock::now();
        auto res = c.Post("/generate/v3", h, small.dump(), "application/json");
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (!res || res->status != 200) submit_lat.errors++;
        else local.push_back(ms);
        submits++;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      submit_lat.add(local);
    });
  }
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::printf("load_bench: %d pollers (pause %d ms), %d submitters (pause 100 ms), %d HTTP threads, %.1f s\n",
              pollers, interval_ms, submitters, http_threads, elapsed);
  std::printf("  polls:   %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %lld\n", polls / elapsed,
              percentile(poll_lat.ms, 0.50), percentile(poll_lat.ms, 0.99), static_cast<long long>(poll_lat.errors));
  std::printf("  submits: %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %lld\n", submits / elapsed,
              percentile(submit_lat.ms, 0.50), percentile(submit_lat.ms, 0.99),
              static_cast<long long>(submit_lat.errors));
  return 0;
}
