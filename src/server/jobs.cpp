#include "server/jobs.h"

#include <chrono>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "server/log.h"
#include "server/request.h"

namespace fluxpipe::server {
namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

constexpr size_t kFinishedMemory = 10000;

}  // namespace

std::string parameters_text(const GenerateJob& job, int64_t seed, const std::string& model_name) {
  std::string s = job.prompt + "\n";
  if (!job.negative_prompt.empty()) s += "Negative prompt: " + job.negative_prompt + "\n";
  s += "Steps: " + std::to_string(job.steps) + ", Sampler: Euler, Seed: " + std::to_string(seed) +
       ", Size: " + std::to_string(job.width) + "x" + std::to_string(job.height) + ", Model: " + model_name;
  if (!job.negative_prompt.empty()) s += ", True CFG scale: " + std::to_string(job.true_cfg_scale);
  return s;
}

JobRunner::JobRunner(Store& store, Engine& engine, ImageStore& images, Metrics& metrics, RunnerOptions options,
                     std::function<void(const std::string&)> on_finished)
    : store_(store), engine_(engine), images_(images), metrics_(metrics), options_(std::move(options)),
      on_finished_(std::move(on_finished)) {}

JobRunner::~JobRunner() { stop(); }

void JobRunner::start() { thread_ = std::thread([this] { loop(); }); }

void JobRunner::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    cancel_running_ = true;   // the engine stops at its next step; the job is requeued at restart
  }
  wake_cv_.notify_all();
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

void JobRunner::run_job(const RequestRecord& record) {
  GenerateRequest req = generate_request_from_json(nlohmann::json::parse(record.params_json));
  GenerateJob job;
  job.prompt = req.prompt;
  job.negative_prompt = req.negative_prompt;
  job.true_cfg_scale = req.true_cfg_scale;
  job.width = req.width;
  job.height = req.height;
  job.steps = req.steps;
  job.seeds = record.seeds;

  auto started = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    running_id_ = record.id;
    running_progress_ = {0, job.steps, now_ms()};
    cancel_running_ = stopping_;
  }
  log("info", "job " + record.id + " started (attempt " + std::to_string(record.attempts) + ", " +
                  std::to_string(job.seeds.size()) + " images " + std::to_string(job.width) + "x" +
                  std::to_string(job.height) + ", " + std::to_string(job.steps) + " steps)");

  JobState final_state = JobState::succeeded;
  std::string error, warning;
  bool interrupted_by_shutdown = false;
  try {
    std::vector<Image> images = engine_.generate(job, [this](int done, int total) {
      std::lock_guard lock(mu_);
      running_progress_.done = done;
      running_progress_.total = total;
      return !cancel_running_;
    });
    if (images.size() != job.seeds.size()) {
      throw InternalError("[job] engine returned " + std::to_string(images.size()) + " images for " +
                          std::to_string(job.seeds.size()) + " seeds");
    }
    for (size_t i = 0; i < images.size(); ++i) {
      std::vector<uint8_t> png = encode_png(
          images[i], {{"parameters", parameters_text(job, job.seeds[i], engine_.model_name())},
                      {"Software", "fluxpipe"}});
      images_.write(record.download_token, record.file_names[i], png);
    }
    metrics_.count_images(static_cast<int>(images.size()));
    if (engine_.last_prompt_truncated()) {
      warning = "the prompt was truncated to the text encoders' limits (77 CLIP tokens, 256 T5 tokens for schnell)";
    }
  } catch (const Cancelled&) {
    std::lock_guard lock(mu_);
    interrupted_by_shutdown = stopping_;
    final_state = JobState::cancelled;
    error = "cancelled while running";
  } catch (const UserError& e) {
    final_state = JobState::failed;
    error = e.what();
  } catch (const std::exception& e) {
    final_state = JobState::failed;
    error = std::string("the engine failed: ") + e.what();
    metrics_.count_error("engine");
  }
  {
    std::lock_guard lock(mu_);
    running_id_.clear();
  }
  if (interrupted_by_shutdown) {
    store_.release_running(record.id);
    log("info", "job " + record.id + " interrupted by shutdown; it runs again at the next start");
    return;
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  store_.finish_request(record.id, final_state, error, now_ms(), warning);
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
  mark_finished(record.id);
}

void JobRunner::mark_finished(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    if (finished_.insert(id).second) finished_order_.push_back(id);
    while (finished_order_.size() > kFinishedMemory) {
      finished_.erase(finished_order_.front());
      finished_order_.pop_front();
    }
  }
  finished_cv_.notify_all();
  if (on_finished_) on_finished_(id);
}

bool JobRunner::wait_finished(const std::string& id, int64_t timeout_ms) {
  std::unique_lock lock(mu_);
  return finished_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                               [&] { return finished_.count(id) > 0 || stopping_; }) &&
         finished_.count(id) > 0;
}

std::optional<JobProgress> JobRunner::progress(const std::string& id) {
  std::lock_guard lock(mu_);
  if (running_id_ != id) return std::nullopt;
  return running_progress_;
}

bool JobRunner::request_cancel(const std::string& id) {
  std::lock_guard lock(mu_);
  if (running_id_ != id) return false;
  cancel_running_ = true;
  return true;
}

double JobRunner::mean_job_seconds() {
  std::lock_guard lock(mu_);
  return jobs_timed_ ? job_seconds_total_ / jobs_timed_ : 0.0;
}

}  // namespace fluxpipe::server
