// fluxpipe server: the job runner — takes queued requests from the store, one at a time,
// runs them on the engine off the HTTP threads, writes the images, and records the end.
//
// Crash safety: a job is claimed (running, attempts + 1, a lease) before it starts and ends
// only after its images are stored; a job whose worker died is queued again by
// Store::recover_interrupted once its lease expires (or at once on a restart of its own node),
// and fails after max_attempts starts.
// While a job runs, a heartbeat thread renews its lease with the progress (so status on any
// node shows it) and reads the store's cancel flag, so a DELETE on any node, even one that
// arrives while the job is being claimed, stops it at its next step. A job whose lease was lost
// (taken over after a stall) is abandoned without writing anything: its new claim finishes it.
// Thread-safety: progress(), wake(), cancel_hint() and begin_stop() are thread-safe;
// start()/stop() are called by the owner only.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "pipeline/pipeline.h"
#include "server/crash_guard.h"
#include "server/images.h"
#include "server/metrics.h"
#include "server/store.h"

namespace fluxpipe::server {

struct JobProgress {
  int done = 0;
  int total = 0;
  int64_t started_ms = 0;
};

struct RunnerOptions {
  std::string server_id = "local";   // the pool this runner serves
  std::string node_id = "local";     // names its claims
  int64_t poll_ms = 1000;        // also woken by the store's events (a submission on any node)
  int64_t job_timeout_ms = 0;    // wall-clock limit per job; 0: none
  int64_t cancel_poll_ms = 200;  // how often a running job looks at the store's cancel flag
  int64_t lease_ms = 30000;      // a claim not renewed for this long is taken over
  int64_t heartbeat_ms = 1000;   // how often the lease is renewed (with the progress)
  CrashGuard* crash_guard = nullptr;   // marks the running job (not owned); null: no marking
};

class JobRunner {
 public:
  // `on_finished(id)` is called after a request reached its final state (for webhooks).
  JobRunner(Store& store, Engine& engine, ImageStore& images, Metrics& metrics, RunnerOptions options,
            std::function<void(const std::string&)> on_finished);
  ~JobRunner();

  void start();
  // Claims nothing more and asks the running job to stop at its next step; it goes back to the
  // queue without spending an attempt. Returns at once.
  void begin_stop();
  // begin_stop(), then joins the runner thread.
  void stop();
  void wake();
  // A cancel for `id` was signalled (a store event): look at the flag now, not at the next poll.
  void cancel_hint(const std::string& id);

  // Runs the next queued job, if any, to its end. Returns false when the queue was empty.
  bool run_once();

  std::optional<JobProgress> progress(const std::string& id);
  // The id of the job running now ("" when idle).
  std::string running_id();
  // Mean seconds per finished job on this server (0 until one finished).
  double mean_job_seconds();

 private:
  void loop();
  void heartbeat_loop();
  void run_job(const RequestRecord& record);
  // Records the end, retrying while the store refuses (the row must not stay `running`).
  void record_end(const RequestRecord& record, JobState state, const std::string& error, const std::string& warning);

  Store& store_;
  Engine& engine_;
  ImageStore& images_;
  Metrics& metrics_;
  RunnerOptions options_;
  std::function<void(const std::string&)> on_finished_;

  std::thread thread_;
  std::thread heartbeat_thread_;
  std::mutex mu_;
  std::condition_variable wake_cv_;
  std::condition_variable heartbeat_cv_;
  bool stopping_ = false;
  bool woken_ = false;
  bool cancel_hinted_ = false;
  // The running job, as the heartbeat thread sees it.
  std::string running_id_;
  std::string running_claim_;
  JobProgress running_progress_;
  bool running_cancelled_ = false;   // the store's cancel flag was seen
  bool running_lost_ = false;        // the lease was taken over
  double job_seconds_total_ = 0;
  int jobs_timed_ = 0;
};

}  // namespace fluxpipe::server
