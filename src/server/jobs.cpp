#include "server/jobs.h"

#include <chrono>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/error.h"
#include "server/log.h"
#include "server/request.h"

namespace fluxpipe::server {
namespace {

int64_t now_ms() { return wall_clock_ms(); }

}  // namespace

namespace {

std::vector<std::pair<std::string, std::string>> png_text_chunks(const GenerateJob& job, int64_t seed,
                                                                 const std::string& model_name) {
  return {{"parameters", parameters_text(job, seed, model_name)}, {"Software", "fluxpipe"}};
}

}  // namespace

JobRunner::JobRunner(Store& store, Engine& engine, ImageStore& images, Metrics& metrics, RunnerOptions options,
                     std::function<void(const std::string&)> on_finished)
    : store_(store), engine_(engine), images_(images), metrics_(metrics), options_(std::move(options)),
      on_finished_(std::move(on_finished)) {}

JobRunner::~JobRunner() { stop(); }

void JobRunner::start() { thread_ = std::thread([this] { loop(); }); }

void JobRunner::begin_stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;   // the engine stops at its next step; the job goes back to the queue
  }
  wake_cv_.notify_all();
}

void JobRunner::stop() {
  begin_stop();
  if (thread_.joinable()) thread_.join();
}

void JobRunner::wake() {
  {
    std::lock_guard lock(mu_);
    woken_ = true;
  }
  wake_cv_.notify_all();
}

void JobRunner::loop() {
  while (true) {
    bool ran = false;
    try {
      ran = run_once();
    } catch (const std::exception& e) {
      // The store refused the claim (or the like): wait a poll period, then try again.
      metrics_.count_error("io");
      log("error", std::string("job runner: ") + e.what());
    }
    std::unique_lock lock(mu_);
    if (stopping_) return;
    if (ran) continue;
    wake_cv_.wait_for(lock, std::chrono::milliseconds(options_.poll_ms), [this] { return stopping_ || woken_; });
    if (stopping_) return;
    woken_ = false;
  }
}

bool JobRunner::run_once() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
  }
  std::optional<RequestRecord> record = store_.claim_next(options_.server_id, now_ms());
  if (!record) return false;
  run_job(*record);
  return true;
}

void JobRunner::record_end(const std::string& id, JobState state, const std::string& error, const std::string& warning) {
  for (int64_t delay_ms = 100;; delay_ms = std::min<int64_t>(delay_ms * 2, 5000)) {
    try {
      store_.finish_request(id, state, error, now_ms(), warning);
      return;
    } catch (const std::exception& e) {
      metrics_.count_error("io");
      log("error", "job " + id + ": cannot record its end (" + to_string(state) + "), retrying: " + e.what());
    }
    std::unique_lock lock(mu_);
    // At a stop the row stays running; the next start queues it again (or fails it after
    // max_attempts), so nothing is lost.
    if (wake_cv_.wait_for(lock, std::chrono::milliseconds(delay_ms), [this] { return stopping_; })) return;
  }
}

void JobRunner::run_job(const RequestRecord& record) {
  GenerateJob job;
  try {
    GenerateRequest req = generate_request_from_json(nlohmann::json::parse(record.params_json));
    job.prompt = req.prompt;
    job.negative_prompt = req.negative_prompt;
    job.true_cfg_scale = req.true_cfg_scale;
    job.width = req.width;
    job.height = req.height;
    job.steps = req.steps;
    job.seeds = record.seeds;
    if (job.seeds.empty() || job.seeds.size() != record.file_names.size()) throw InternalError("seeds and file names disagree");
  } catch (const std::exception& e) {
    log("error", "job " + record.id + ": its stored request cannot be read: " + e.what());
    record_end(record.id, JobState::failed, std::string("the stored request cannot be read: ") + e.what(), "");
    metrics_.count_job("failed");
    if (on_finished_) on_finished_(record.id);
    return;
  }

  auto started = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    running_id_ = record.id;
    running_progress_ = {0, job.steps, now_ms()};
  }
  log("info", "job " + record.id + " started (attempt " + std::to_string(record.attempts) + ", " +
                  std::to_string(job.seeds.size()) + " images " + std::to_string(job.width) + "x" +
                  std::to_string(job.height) + ", " + std::to_string(job.steps) + " steps)");

  // Why the step callback asked the engine to stop.
  enum class Stop { none, client, shutdown, timeout } stop_reason = Stop::none;
  auto last_cancel_check = std::chrono::steady_clock::now() - std::chrono::hours(1);
  auto should_stop = [&]() {
    {
      std::lock_guard lock(mu_);
      if (stopping_) stop_reason = Stop::shutdown;
    }
    auto now = std::chrono::steady_clock::now();
    if (options_.job_timeout_ms > 0 && now - started > std::chrono::milliseconds(options_.job_timeout_ms)) {
      stop_reason = Stop::timeout;
    }
    if (now - last_cancel_check >= std::chrono::milliseconds(options_.cancel_poll_ms)) {
      last_cancel_check = now;
      try {
        if (store_.cancel_requested(record.id)) stop_reason = Stop::client;
      } catch (const std::exception& e) {
        log("warn", "job " + record.id + ": cannot read its cancel flag: " + e.what());
      }
    }
    return stop_reason != Stop::none;
  };

  JobState final_state = JobState::succeeded;
  std::string error, warning;
  std::vector<Image> images;
  try {
    if (should_stop()) throw Cancelled();
    images = engine_.generate(job, [&](int done, int total) {
      {
        std::lock_guard lock(mu_);
        running_progress_.done = done;
        running_progress_.total = total;
      }
      return !should_stop();
    });
    if (images.size() != job.seeds.size()) {
      throw InternalError("[job] engine returned " + std::to_string(images.size()) + " images for " +
                          std::to_string(job.seeds.size()) + " seeds");
    }
  } catch (const Cancelled&) {
    final_state = stop_reason == Stop::timeout ? JobState::failed : JobState::cancelled;
    error = stop_reason == Stop::timeout
                ? "the job ran longer than the server's limit of " + std::to_string(options_.job_timeout_ms / 1000) + " s"
                : "cancelled while running";
  } catch (const UserError& e) {
    final_state = JobState::failed;
    error = e.what();
  } catch (const IoError& e) {
    // Its message names files on the server: logged, not shown to the client.
    final_state = JobState::failed;
    error = "the engine could not read or write its files (details in the server's log)";
    log("error", "job " + record.id + ": " + e.what());
    metrics_.count_error("engine");
  } catch (const std::exception& e) {
    final_state = JobState::failed;
    error = std::string("the engine failed: ") + e.what();
    metrics_.count_error("engine");
  }
  if (final_state == JobState::succeeded) {
    try {
      for (size_t i = 0; i < images.size(); ++i) {
        std::vector<uint8_t> png = encode_png(images[i], png_text_chunks(job, job.seeds[i], engine_.model_name()));
        images_.write(record.download_token, record.file_names[i], png);
      }
      metrics_.count_images(static_cast<int>(images.size()));
      if (engine_.last_prompt_truncated()) {
        warning = "the prompt was truncated to the text encoders' limits (77 CLIP tokens, 256 T5 tokens for schnell)";
      }
    } catch (const std::exception& e) {
      final_state = JobState::failed;
      error = "the images could not be stored on the server (details in the server's log)";
      log("error", "job " + record.id + ": storing its images failed: " + e.what());
      metrics_.count_error("io");
    }
  }
  {
    std::lock_guard lock(mu_);
    running_id_.clear();
  }
  if (stop_reason == Stop::shutdown && final_state == JobState::cancelled) {
    try {
      store_.release_running(record.id);
      log("info", "job " + record.id + " interrupted by shutdown; it is queued again");
    } catch (const std::exception& e) {
      log("error", "job " + record.id + ": cannot queue it again (" + e.what() + "); the next start does");
    }
    return;
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  record_end(record.id, final_state, error, warning);
  metrics_.count_job(to_string(final_state));
  metrics_.observe_job_seconds(seconds);
  {
    std::lock_guard lock(mu_);
    if (final_state == JobState::succeeded) {
      job_seconds_total_ += seconds;
      ++jobs_timed_;
    }
  }
  log(final_state == JobState::succeeded ? "info" : "warn",
      "job " + record.id + " " + to_string(final_state) + " in " + std::to_string(seconds) + " s" +
          (error.empty() ? "" : ": " + error));
  if (on_finished_) on_finished_(record.id);
}

std::optional<JobProgress> JobRunner::progress(const std::string& id) {
  std::lock_guard lock(mu_);
  if (running_id_ != id) return std::nullopt;
  return running_progress_;
}

std::string JobRunner::running_id() {
  std::lock_guard lock(mu_);
  return running_id_;
}

double JobRunner::mean_job_seconds() {
  std::lock_guard lock(mu_);
  return jobs_timed_ ? job_seconds_total_ / jobs_timed_ : 0.0;
}

}  // namespace fluxpipe::server
