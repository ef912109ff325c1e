#include "server/metrics.h"

#include <sstream>

namespace fluxpipe::server {

Metrics::Metrics()
    : bounds_{0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600}, buckets_(bounds_.size() + 1, 0) {}

void Metrics::count_http(const std::string& route, int status) {
  std::lock_guard lock(mu_);
  ++http_[{route, status}];
}
void Metrics::count_job(const std::string& result) {
  std::lock_guard lock(mu_);
  ++jobs_[result];
}
void Metrics::observe_job_seconds(double seconds) {
  std::lock_guard lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) ++i;
  ++buckets_[i];
  job_seconds_sum_ += seconds;
  ++job_count_;
}
void Metrics::count_expired(int requests, int images) {
  std::lock_guard lock(mu_);
  expired_requests_ += static_cast<uint64_t>(requests);
  expired_images_ += static_cast<uint64_t>(images);
}

void Metrics::count_images(int n) {
  std::lock_guard lock(mu_);
  images_ += static_cast<uint64_t>(n);
}
void Metrics::count_webhook(const std::string& result) {
  std::lock_guard lock(mu_);
  ++webhooks_[result];
}
void Metrics::count_error(const std::string& kind) {
  std::lock_guard lock(mu_);
  ++errors_[kind];
}
void Metrics::set_queue_depth_source(std::function<int64_t()> source) {
  std::lock_guard lock(mu_);
  queue_depth_ = std::move(source);
}

std::string Metrics::render() {
  std::function<int64_t()> depth_source;
  {
    std::lock_guard lock(mu_);
    depth_source = queue_depth_;
  }
  int64_t depth = depth_source ? depth_source() : 0;
  std::lock_guard lock(mu_);
  std::ostringstream o;
  o << "# HELP fluxpipe_http_requests_total HTTP requests answered, by route and status code.\n"
    << "# TYPE fluxpipe_http_requests_total counter\n";
  for (const auto& [key, n] : http_) {
    o << "fluxpipe_http_requests_total{route=\"" << key.first << "\",code=\"" << key.second << "\"} " << n << "\n";
  }
  o << "# HELP fluxpipe_queue_depth Requests queued or running.\n# TYPE fluxpipe_queue_depth gauge\n"
    << "fluxpipe_queue_depth " << depth << "\n";
  o << "# HELP fluxpipe_jobs_total Generation jobs ended, by result.\n# TYPE fluxpipe_jobs_total counter\n";
  for (const char* r : {"succeeded", "failed", "cancelled"}) {
    auto it = jobs_.find(r);
    o << "fluxpipe_jobs_total{result=\"" << r << "\"} " << (it == jobs_.end() ? 0 : it->second) << "\n";
  }
  o << "# HELP fluxpipe_job_duration_seconds Time from a job's start to its end.\n"
    << "# TYPE fluxpipe_job_duration_seconds histogram\n";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += buckets_[i];
    o << "fluxpipe_job_duration_seconds_bucket{le=\"" << bounds_[i] << "\"} " << cumulative << "\n";
  }
  cumulative += buckets_.back();
  o << "fluxpipe_job_duration_seconds_bucket{le=\"+Inf\"} " << cumulative << "\n"
    << "fluxpipe_job_duration_seconds_sum " << job_seconds_sum_ << "\n"
    << "fluxpipe_job_duration_seconds_count " << job_count_ << "\n";
  o << "# HELP fluxpipe_images_generated_total Images written.\n# TYPE fluxpipe_images_generated_total counter\n"
    << "fluxpipe_images_generated_total " << images_ << "\n";
  o << "# HELP fluxpipe_retention_deleted_requests_total Requests deleted after the retention period.\n"
    << "# TYPE fluxpipe_retention_deleted_requests_total counter\n"
    << "fluxpipe_retention_deleted_requests_total " << expired_requests_ << "\n"
    << "# HELP fluxpipe_retention_deleted_images_total Images deleted after the retention period.\n"
    << "# TYPE fluxpipe_retention_deleted_images_total counter\n"
    << "fluxpipe_retention_deleted_images_total " << expired_images_ << "\n";
  o << "# HELP fluxpipe_webhook_deliveries_total Webhook delivery attempts, by result.\n"
    << "# TYPE fluxpipe_webhook_deliveries_total counter\n";
  for (const char* r : {"delivered", "retry", "gave_up"}) {
    auto it = webhooks_.find(r);
    o << "fluxpipe_webhook_deliveries_total{result=\"" << r << "\"} " << (it == webhooks_.end() ? 0 : it->second)
      << "\n";
  }
  o << "# HELP fluxpipe_errors_total Faults of the server or engine, by kind.\n# TYPE fluxpipe_errors_total counter\n";
  for (const char* k : {"internal", "io", "engine"}) {
    auto it = errors_.find(k);
    o << "fluxpipe_errors_total{kind=\"" << k << "\"} " << (it == errors_.end() ? 0 : it->second) << "\n";
  }
  return o.str();
}

}  // namespace fluxpipe::server
