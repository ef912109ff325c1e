// fluxpipe server: the job runner — takes queued requests from the store, one at a time,
// runs them on the engine off the HTTP threads, writes the images, and records the end.
//
// Crash safety: a job is marked running (attempts + 1) before it starts and ends only
// after its images are on disk; on start-up the server calls Store::recover_interrupted,
// so a job interrupted by a crash runs again, or fails after max_attempts starts.
// Thread-safety: progress(), request_cancel(), wake() and wait_finished() are thread-safe;
// start()/stop() are called by the owner only.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
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
  int64_t poll_ms = 1000;   // also woken on every submission
};

class JobRunner {
 public:
  // `on_finished(id)` is called after a request reached its final state (for webhooks).
  JobRunner(Store& store, Engine& engine, ImageStore& images, Metrics& metrics, RunnerOptions options,
            std::function<void(const std::string&)> on_finished);
  ~JobRunner();

  void start();
  void stop();
  void wake();

  // Runs the next queued job, if any, to its end. Returns false when the queue was empty.
  bool run_once();

  std::optional<JobProgress> progress(const std::string& id);
  // Asks the running job `id` to stop at the next step; false if it is not running here.
  bool request_cancel(const std::string& id);
  // Records that `id` ended (also used for requests cancelled while queued) and wakes waiters.
  void mark_finished(const std::string& id);
  // Waits until `id` ends or `timeout_ms` passes; true if it ended.
  bool wait_finished(const std::string& id, int64_t timeout_ms);
  // Mean seconds per finished job on this server (0 until one finished).
  double mean_job_seconds();

 private:
  void loop();
  void run_job(const RequestRecord& record);

  Store& store_;
  Engine& engine_;
  ImageStore& images_;
  Metrics& metrics_;
  RunnerOptions options_;
  std::function<void(const std::string&)> on_finished_;

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable wake_cv_;
  std::condition_variable finished_cv_;
  bool stopping_ = false;
  bool woken_ = false;
  std::string running_id_;
  JobProgress running_progress_;
  bool cancel_running_ = false;
  std::set<std::string> finished_;        // bounded by finished_order_
  std::deque<std::string> finished_order_;
  double job_seconds_total_ = 0;
  int jobs_timed_ = 0;
};

// The "parameters" text chunk image tools read (prompt, negative prompt, settings).
std::string parameters_text(const GenerateJob& job, int64_t seed, const std::string& model_name);

}  // namespace fluxpipe::server
