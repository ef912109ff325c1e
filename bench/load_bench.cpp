// Load benchmark (not a test): N concurrent pollers and S submitters against an in-process
// server on 127.0.0.1 while a slow test-double job runs. Prints requests/s, p50/p99
// latency and the error count.
//
//   build/bench/load_bench [--pollers 1000] [--submitters 4] [--seconds 10]
//                          [--interval-ms 500] [--http-threads 2] [--idle 10000]
// --interval-ms is each poller's pause between polls (0 = poll back to back: saturation).
// --idle opens that many keep-alive connections first (each makes one request, then stays
// open and silent), the way thousands of idle clients sit on a public server.
// Poll latencies leave out each poller's first poll (it also opens the connection); the first
// polls are reported on their own line, and a poller never answered counts as an error.
// A probe opens a fresh connection for GET /healthz every 100 ms throughout: a new client's wait.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "pipeline/memory_plan.h"
#include "latency.h"
#include "test_util.h"
#include <dirent.h>

using namespace fluxpipe;
using namespace fluxpipe::testing;

using fluxpipe::bench::percentile;
using fluxpipe::bench::Samples;

int main(int argc, char** argv) {
  int pollers = 1000, submitters = 4, seconds = 10, interval_ms = 500, http_threads = 2, idle = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    int v = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--pollers")) pollers = v;
    else if (!std::strcmp(argv[i], "--submitters")) submitters = v;
    else if (!std::strcmp(argv[i], "--seconds")) seconds = v;
    else if (!std::strcmp(argv[i], "--interval-ms")) interval_ms = v;
    else if (!std::strcmp(argv[i], "--http-threads")) http_threads = v;
    else if (!std::strcmp(argv[i], "--idle")) idle = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  // Client and server share this process: every connection costs two descriptors here.
  rlimit lim{65536, 65536};
  setrlimit(RLIMIT_NOFILE, &lim);
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

  int server_threads = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) server_threads += e->d_name[0] != '.';
    closedir(d);
  }
  size_t rss_before = resident_bytes();
  std::vector<int> idle_fds;
  for (int i = 0; i < idle; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(s.port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      std::fprintf(stderr, "load_bench: idle connection %d failed: %s\n", i, std::strerror(errno));
      if (fd >= 0) close(fd);
      break;
    }
    const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) < 0) std::fprintf(stderr, "load_bench: send failed\n");
    char buf[512];
    if (recv(fd, buf, sizeof buf, 0) <= 0) std::fprintf(stderr, "load_bench: idle connection %d got no answer\n", i);
    idle_fds.push_back(fd);
  }
  size_t rss_idle = resident_bytes();

  Samples poll_lat, submit_lat, first_lat, probe_lat;
  std::atomic<int64_t> never_served{0};
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
      std::vector<double> first_ms;
      while (!stop) {
        auto t0 = std::chrono::steady_clock::now();
        auto res = c.Get("/generate/v3/status/" + polled, h);
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (!res || res->status != 200) poll_lat.errors++;
        else if (!first) local.push_back(ms);   // the first poll also opens the connection
        else first_ms.push_back(ms);
        first = false;
        polls++;
        if (interval_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
      }
      if (first_ms.empty()) never_served++;
      poll_lat.add(local);
      first_lat.add(first_ms);
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
  threads.emplace_back([&] {
    std::vector<double> local;
    while (!stop) {
      httplib::Client c("127.0.0.1", s.port);
      auto t0 = std::chrono::steady_clock::now();
      auto res = c.Get("/healthz");
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (!res || res->status != 200) probe_lat.errors++;
      else local.push_back(ms);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    probe_lat.add(local);
  });
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  size_t rss_load = resident_bytes();
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::printf("load_bench: %d pollers (pause %d ms), %d submitters (pause 100 ms), %zu idle keep-alive connections, "
              "%d HTTP io threads, %.1f s\n", pollers, interval_ms, submitters, idle_fds.size(), http_threads, elapsed);
  std::printf("  server:  %d threads in the process before any client; resident %.0f MiB, %.0f MiB with the idle "
              "connections, %.0f MiB under load (client threads included)\n", server_threads,
              static_cast<double>(rss_before) / (1 << 20), static_cast<double>(rss_idle) / (1 << 20),
              static_cast<double>(rss_load) / (1 << 20));
  std::printf("  first polls: p50 %7.2f ms  p99 %7.2f ms  pollers never answered %lld\n", percentile(first_lat.ms, 0.50),
              percentile(first_lat.ms, 0.99), static_cast<long long>(never_served));
  std::printf("  new client /healthz: %zu probes  p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  errors %lld\n",
              probe_lat.ms.size(), percentile(probe_lat.ms, 0.50), percentile(probe_lat.ms, 0.99),
              probe_lat.ms.empty() ? 0.0 : *std::max_element(probe_lat.ms.begin(), probe_lat.ms.end()),
              static_cast<long long>(probe_lat.errors));
  std::printf("  polls:   %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %lld\n", polls / elapsed,
              percentile(poll_lat.ms, 0.50), percentile(poll_lat.ms, 0.99), static_cast<long long>(poll_lat.errors));
  std::printf("  submits: %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %lld\n", submits / elapsed,
              percentile(submit_lat.ms, 0.50), percentile(submit_lat.ms, 0.99),
              static_cast<long long>(submit_lat.errors));
  for (int fd : idle_fds) close(fd);
  return 0;
}
