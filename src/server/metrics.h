// fluxpipe server: counters, gauges and a latency histogram, rendered in the Prometheus
// text exposition format for GET /metrics.
// Thread-safety: every method is thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace fluxpipe::server {

class Metrics {
 public:
  Metrics();
  void count_http(const std::string& route, int status);
  void count_job(const std::string& result);              // succeeded | failed | cancelled
  void observe_job_seconds(double seconds);
  void count_images(int n);
  // Retention: requests deleted after the retention period, and their images.
  void count_expired(int requests, int images);
  void count_webhook(const std::string& result);          // delivered | retry | gave_up
  void count_error(const std::string& kind);              // internal | io | engine
  // Read at render time (queue depth comes from the store).
  void set_queue_depth_source(std::function<int64_t()> source);

  std::string render();

 private:
  std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> http_;
  std::map<std::string, uint64_t> jobs_, webhooks_, errors_;
  uint64_t images_ = 0;
  uint64_t expired_requests_ = 0, expired_images_ = 0;
  std::vector<double> bounds_;
  std::vector<uint64_t> buckets_;   // cumulative at render time, per-bucket here
  double job_seconds_sum_ = 0;
  uint64_t job_count_ = 0;
  std::function<int64_t()> queue_depth_;
};

}  // namespace fluxpipe::server
