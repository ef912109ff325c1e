// Several-machines benchmark (not a test): the same load against one SQLite node and against
// two API nodes + one worker on PostgreSQL, all separate processes on 127.0.0.1 with the
// test-double engine; then the time from a worker's SIGKILL to another worker holding its job.
//
//   eval "$(FLUXPIPE_PG_FSYNC=on bash scripts/pg_test_server.sh start)"
//   build/bench/cluster_bench [--pollers 1000] [--submitters 8] [--seconds 10] [--interval-ms 500]
//                             [--lease-ms 5000] [--takeovers 3]
// Pollers poll one long-running request on keep-alive connections (spread over the API nodes);
// submitters post 1-step jobs back to back, which the worker runs meanwhile (the store takes
// the submissions, the claims and the ends at once). PostgreSQL runs with fsync on, as SQLite
// runs with synchronous=FULL: both commit durably.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "latency.h"
#include "pg_test_db.h"
#include "process_util.h"
#include "server/store.h"
#include "test_util.h"

using namespace fluxpipe;
using namespace fluxpipe::testing;
using fluxpipe::bench::percentile;
using fluxpipe::bench::Samples;

namespace {

struct Load {
  int pollers = 1000, submitters = 8, seconds = 10, interval_ms = 500;
};

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Runs the load against `ports` (pollers and submitters spread round-robin) and prints a line.
void run_load(const char* label, const std::vector<int>& ports, const std::string& key, const Load& load) {
  json slow = {{"prompt", "slow"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1000}};
  httplib::Client first("127.0.0.1", ports[0]);
  auto made = first.Post("/generate/v3", {{"API-Key", key}}, slow.dump(), "application/json");
  if (!made || made->status != 200) {
    std::fprintf(stderr, "cluster_bench: cannot submit the polled job\n");
    std::exit(1);
  }
  std::string polled = json::parse(made->body)["id"];
  Samples polls, submits;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> n_polls{0}, n_submits{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < load.pollers; ++p) {
    threads.emplace_back([&, p] {
      if (load.interval_ms > 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(1000LL * load.interval_ms * p / load.pollers));
      }
      httplib::Client c("127.0.0.1", ports[static_cast<size_t>(p) % ports.size()]);
      c.set_keep_alive(true);
      c.set_read_timeout(30, 0);
      std::vector<double> local;
      bool opened = false;
      while (!stop) {
        auto t0 = std::chrono::steady_clock::now();
        auto res = c.Get("/generate/v3/status/" + polled, {{"API-Key", key}});
        double ms = since(t0);
        if (!res || res->status != 200) polls.errors++;
        else if (opened) local.push_back(ms);   // the first poll also opens the connection
        opened = true;
        n_polls++;
        if (load.interval_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(load.interval_ms));
      }
      polls.add(local);
    });
  }
  json small = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}};
  for (int q = 0; q < load.submitters; ++q) {
    threads.emplace_back([&, q] {
      httplib::Client c("127.0.0.1", ports[static_cast<size_t>(q) % ports.size()]);
      c.set_keep_alive(true);
      c.set_read_timeout(30, 0);
      std::vector<double> local;
      while (!stop) {
        auto t0 = std::chrono::steady_clock::now();
        auto res = c.Post("/generate/v3", {{"API-Key", key}}, small.dump(), "application/json");
        double ms = since(t0);
        if (!res || res->status != 200) submits.errors++;
        else local.push_back(ms);
        n_submits++;
      }
      submits.add(local);
    });
  }
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(load.seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed = since(t0) / 1000.0;
  std::printf("  %-34s submits %6.0f/s (p50 %6.2f ms, p99 %7.2f ms, errors %lld)   polls %6.0f/s (p50 %6.2f ms, "
              "p99 %7.2f ms, errors %lld)\n",
              label, static_cast<double>(submits.ms.size()) / elapsed, percentile(submits.ms, 0.5), percentile(submits.ms, 0.99),
              static_cast<long long>(submits.errors), static_cast<double>(n_polls) / elapsed, percentile(polls.ms, 0.5),
              percentile(polls.ms, 0.99), static_cast<long long>(polls.errors));
}

std::vector<std::string> common_flags() {
  return {"--max-queue", "1000000", "--max-queued-per-key", "1000000", "--max-steps", "1000", "--http-threads", "2"};
}

}  // namespace

int main(int argc, char** argv) {
  Load load;
  int lease_ms = 5000, takeovers = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h" || i + 1 >= argc) {
      std::printf("usage: cluster_bench [--pollers N] [--submitters N] [--seconds S] [--interval-ms MS] "
                  "[--lease-ms MS] [--takeovers N]\n  (needs FLUXPIPE_TEST_PG_HOST/_PORT: scripts/pg_test_server.sh)\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
    int v = std::atoi(argv[++i]);
    if (a == "--pollers") load.pollers = v;
    else if (a == "--submitters") load.submitters = v;
    else if (a == "--seconds") load.seconds = v;
    else if (a == "--interval-ms") load.interval_ms = v;
    else if (a == "--lease-ms") lease_ms = v;
    else if (a == "--takeovers") takeovers = v;
    else {
      std::fprintf(stderr, "cluster_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (!pg_test_server_configured()) {
    std::fprintf(stderr, "cluster_bench: no PostgreSQL (eval \"$(FLUXPIPE_PG_FSYNC=on bash scripts/pg_test_server.sh start)\")\n");
    return 2;
  }
  rlimit lim{65536, 65536};
  setrlimit(RLIMIT_NOFILE, &lim);
  std::printf("cluster_bench: %d pollers (pause %d ms) and %d submitters (back to back) for %d s; processes on "
              "127.0.0.1, test-double engine\n",
              load.pollers, load.interval_ms, load.submitters, load.seconds);
  {
    TempDir dir;
    std::string key = add_key(*server::open_sqlite_store(dir.path() + "/fluxpipe.db"), "bench");
    ServerProcess one(dir.path(), 0, common_flags());
    run_load("SQLite, one node", {one.port()}, key, load);
  }
  {
    PgTestDb db;
    TempDir dir;
    std::string key = add_key(*server::open_store(db.uri(), ""), "bench");
    std::vector<std::unique_ptr<ServerProcess>> nodes;
    for (const char* name : {"api-a", "api-b", "worker"}) {
      std::filesystem::create_directories(dir.path() + "/" + name);
      std::vector<std::string> flags = common_flags();
      std::vector<std::string> more = {"--store", db.uri(), "--images", dir.path() + "/images", "--node-id", name,
                                       "--role", std::string(name).rfind("api", 0) == 0 ? "api" : "worker"};
      flags.insert(flags.end(), more.begin(), more.end());
      nodes.push_back(std::make_unique<ServerProcess>(dir.path() + "/" + name, 0, flags));
    }
    run_load("PostgreSQL, 2 API nodes + 1 worker", {nodes[0]->port(), nodes[1]->port()}, key, load);
  }
  {
    // Takeover: two workers; the one running the job is killed; how long until the other holds it.
    PgTestDb db;
    TempDir dir;
    auto store = server::open_store(db.uri(), "");
    std::string key = add_key(*store, "bench");
    std::vector<double> gaps;
    std::map<std::string, std::unique_ptr<ServerProcess>> workers;
    auto start_worker = [&](const std::string& name) {
      std::filesystem::create_directories(dir.path() + "/" + name);
      workers[name] = std::make_unique<ServerProcess>(
          dir.path() + "/" + name, 50,
          std::vector<std::string>{"--store", db.uri(), "--images", dir.path() + "/images", "--node-id", name, "--role",
                                   "worker", "--lease-ms", std::to_string(lease_ms), "--max-steps", "1000"});
    };
    std::filesystem::create_directories(dir.path() + "/api");
    ServerProcess api(dir.path() + "/api", 0,
                      {"--store", db.uri(), "--images", dir.path() + "/images", "--role", "api", "--max-steps", "1000"});
    int next = 0;
    start_worker("w" + std::to_string(next++));
    start_worker("w" + std::to_string(next++));
    for (int t = 0; t < takeovers; ++t) {
      json body = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1000}};
      auto res = api.client().Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
      std::string id = json::parse(res->body)["id"];
      std::string holder;
      for (int i = 0; i < 1000 && holder.empty(); ++i) {
        auto r = store->get_request(id);
        if (r && r->state == server::JobState::running) holder = r->node_id;
        else std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      auto t0 = std::chrono::steady_clock::now();
      workers[holder]->stop(SIGKILL);
      workers.erase(holder);
      for (int i = 0; i < 100000; ++i) {
        auto r = store->get_request(id);
        if (r && r->state == server::JobState::running && r->node_id != holder) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      gaps.push_back(since(t0));
      store->request_cancel(id, wall_clock_ms());
      start_worker("w" + std::to_string(next++));   // two workers again for the next round
    }
    std::string list;
    for (double g : gaps) list += (list.empty() ? "" : ", ") + std::to_string(static_cast<int>(g)) + " ms";
    std::printf("  takeover after SIGKILL (lease %d ms, expired leases swept every lease/4, at most 2 s): %s\n", lease_ms, list.c_str());
  }
  return 0;
}
