// fluxpipe server: the job runner — takes queued requests from the store, one at a time,
// runs them on the engine off the HTTP threads, writes the images, and records the end.
//
// Crash safety: a job is marked running (attempts + 1) before it starts and ends only
// after its images are on disk; on start-up the server calls Store::recover_interrupted,
// so a job interrupted by a crash runs again, or fails after max_attempts starts.
// Cancellation is read from the store (Store::request_cancel sets a flag) at the start and at
// every step, so a DELETE that arrives while the job is being claimed is never lost.
// Thread-safety: progress(), wake() and begin_stop() are thread-safe; start()/stop() are
// called by the owner only.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "pipeline/pipeline.h"
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
  std::string server_id = "local";
  int64_t poll_ms = 1000;        // also woken on every submission
  int64_t job_timeout_ms = 0;    // wall-clock limit per job; 0: none
  int64_t cancel_poll_ms = 200;  // how often a running job looks at the store's cancel flag
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

  // Runs the next queued job, if any, to its end. Returns false when the queue was empty.
  bool run_once();

  std::optional<JobProgress> progress(const std::string& id);
  // The id of the job running now ("" when idle).
  std::string running_id();
  // Mean seconds per finished job on this server (0 until one finished).
  double mean_job_seconds();

 private:
  void loop();
  void run_job(const RequestRecord& record);
  // Records the end, retrying while the store refuses (the row must not stay `running`).
  void record_end(const std::string& id, JobState state, const std::string& error, const std::string& warning);

  Store& store_;
  Engine& engine_;
  ImageStore& images_;
  Metrics& metrics_;
  RunnerOptions options_;
  std::function<void(const std::string&)> on_finished_;

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable wake_cv_;
  bool stopping_ = false;
  bool woken_ = false;
  std::string running_id_;
  JobProgress running_progress_;
  double job_seconds_total_ = 0;
  int jobs_timed_ = 0;
};

}  // namespace fluxpipe::server
