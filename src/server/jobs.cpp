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

void JobRunner::start() {
  thread_ = std::thread([this] { loop(); });
  heartbeat_thread_ = std::thread([this] { heartbeat_loop(); });
}

void JobRunner::begin_stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;   // the engine stops at its next step; the job goes back to the queue
  }
  wake_cv_.notify_all();
  heartbeat_cv_.notify_all();
}

void JobRunner::stop() {
  begin_stop();
  if (thread_.joinable()) thread_.join();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

void JobRunner::cancel_hint(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    if (id != running_id_) return;
    cancel_hinted_ = true;
  }
  heartbeat_cv_.notify_all();
}

// While a job runs: renew its lease every heartbeat_ms (with the progress) and read its cancel
// flag every cancel_poll_ms, off the engine's thread, so a long step neither lets the lease
// expire nor delays the cancel.
void JobRunner::heartbeat_loop() {
  OutageLog outage("job runner: renewing the running job's lease");
  auto last_renew = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  while (!stopping_) {
    heartbeat_cv_.wait_for(lock, std::chrono::milliseconds(options_.cancel_poll_ms),
                           [this] { return stopping_ || cancel_hinted_; });
    cancel_hinted_ = false;
    if (running_id_.empty()) continue;
    std::string id = running_id_, claim = running_claim_;
    JobProgress progress = running_progress_;
    auto now = std::chrono::steady_clock::now();
    bool renew = now - last_renew >= std::chrono::milliseconds(options_.heartbeat_ms);
    lock.unlock();
    bool cancelled = false, lost = false;
    try {
      cancelled = store_.cancel_requested(id);
      if (renew) {
        lost = !store_.renew_lease(id, claim, now_ms(), options_.lease_ms, progress.done, progress.total);
        last_renew = now;
      }
      outage.ok();
    } catch (const std::exception& e) {
      // The store is away: the job goes on; if the lease expires meanwhile, the renewal after
      // the store returns reports it lost.
      outage.failed(e.what());
    }
    lock.lock();
    if (running_id_ == id) {
      running_cancelled_ = running_cancelled_ || cancelled;
      running_lost_ = running_lost_ || lost;
    }
  }
}

void JobRunner::wake() {
  {
    std::lock_guard lock(mu_);
    woken_ = true;
  }
  wake_cv_.notify_all();
}

void JobRunner::loop() {
  OutageLog outage("job runner: claiming from the store");
  while (true) {
    bool ran = false;
    try {
      ran = run_once();
      outage.ok();
    } catch (const std::exception& e) {
      // The store refused the claim (or the like): wait a poll period, then try again.
      metrics_.count_error("io");
      outage.failed(e.what());
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
  ClaimSpec spec;
  spec.pool = options_.server_id;
  spec.node_id = options_.node_id;
  spec.now_ms = now_ms();
  spec.lease_ms = options_.lease_ms;
  std::optional<RequestRecord> record = store_.claim_next(spec);
  if (!record) return false;
  run_job(*record);
  return true;
}

void JobRunner::record_end(const RequestRecord& record, JobState state, const std::string& error,
                           const std::string& warning) {
  const std::string& id = record.id;
  for (int64_t delay_ms = 100;; delay_ms = std::min<int64_t>(delay_ms * 2, 5000)) {
    try {
      if (!store_.finish_request(id, record.claim, state, error, now_ms(), warning)) {
        log("warn", "job " + id + ": its claim was taken over (lease expired); the newer claim records the end");
      }
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
    job = job_of(generate_request_from_json(nlohmann::json::parse(record.params_json)), record.seeds);
    if (job.seeds.empty() || job.seeds.size() != record.file_names.size()) throw InternalError("seeds and file names disagree");
  } catch (const std::exception& e) {
    log("error", "job " + record.id + ": its stored request cannot be read: " + e.what());
    record_end(record, JobState::failed, std::string("the stored request cannot be read: ") + e.what(), "");
    metrics_.count_job("failed");
    if (on_finished_) on_finished_(record.id);
    return;
  }

  auto started = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    running_id_ = record.id;
    running_claim_ = record.claim;
    running_progress_ = {0, job.steps, now_ms()};
    running_cancelled_ = false;
    running_lost_ = false;
  }
  // Until this job's end is recorded (or it is queued again), a crash is blamed on it.
  if (options_.crash_guard) options_.crash_guard->job_started(record.id, record.claim);
  struct Unmark {
    CrashGuard* guard;
    ~Unmark() {
      if (guard) guard->job_ended();
    }
  } unmark{options_.crash_guard};
  log("info", "job " + record.id + " started (attempt " + std::to_string(record.attempts) + ", " +
                  std::to_string(job.seeds.size()) + " images " + std::to_string(job.width) + "x" +
                  std::to_string(job.height) + ", " + std::to_string(job.steps) + " steps)");

  // Why the step callback asked the engine to stop. The flags come from the heartbeat thread.
  enum class Stop { none, client, shutdown, timeout, lost } stop_reason = Stop::none;
  auto should_stop = [&]() {
    {
      std::lock_guard lock(mu_);
      if (running_lost_) stop_reason = Stop::lost;
      else if (stopping_) stop_reason = Stop::shutdown;
      else if (running_cancelled_) stop_reason = Stop::client;
    }
    auto now = std::chrono::steady_clock::now();
    if (stop_reason == Stop::none && options_.job_timeout_ms > 0 &&
        now - started > std::chrono::milliseconds(options_.job_timeout_ms)) {
      stop_reason = Stop::timeout;
    }
    return stop_reason != Stop::none;
  };
  // The first look at the cancel flag happens here, not only on the heartbeat thread, so a
  // cancel recorded before the claim never lets the engine start.
  try {
    if (store_.cancel_requested(record.id)) {
      std::lock_guard lock(mu_);
      running_cancelled_ = true;
    }
  } catch (const std::exception& e) {
    log("warn", "job " + record.id + ": cannot read its cancel flag: " + e.what());
  }

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
    // (Stop::lost is handled below: nothing is recorded.)
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
  auto claim_lost = [&] {
    std::lock_guard lock(mu_);
    return running_lost_;
  };
  if (final_state == JobState::succeeded && !claim_lost()) {
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
  bool lost = false;
  {
    std::lock_guard lock(mu_);
    lost = running_lost_;
    running_id_.clear();
    running_claim_.clear();
  }
  if (lost) {
    // Another node took the job over after this one's lease expired: it finishes it.
    log("warn", "job " + record.id + ": abandoned, its lease was taken over by another claim");
    metrics_.count_job("lost_lease");
    return;
  }
  if (stop_reason == Stop::shutdown && final_state == JobState::cancelled) {
    try {
      store_.release_running(record.id, record.claim);
      log("info", "job " + record.id + " interrupted by shutdown; it is queued again");
    } catch (const std::exception& e) {
      log("error", "job " + record.id + ": cannot queue it again (" + e.what() + "); the next start does");
    }
    return;
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  record_end(record, final_state, error, warning);
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
