// Internal to the server layer: ApiServer's parts, shared by api_server.cpp (lifecycle)
// and api_routes.cpp (HTTP handlers).
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "server/api_server.h"
#include "server/crash_guard.h"
#include "server/http_server.h"
#include "server/images.h"
#include "server/jobs.h"
#include "server/keys.h"
#include "server/metrics.h"
#include "server/rate_limit.h"
#include "server/request.h"
#include "server/store.h"
#include "server/waiters.h"
#include "server/webhook.h"

namespace fluxpipe::server {

// How long an Idempotency-Key is remembered.
inline constexpr int64_t kIdempotencyWindowMs = 24LL * 3600 * 1000;

struct ApiServer::Impl {
  Impl(ServeOptions options, std::unique_ptr<Engine> engine);
  ~Impl();

  // Routes (api_routes.cpp). Handlers answer through their Reply, at once or, for the ones that
  // wait for a job, from a Waiters callback; none blocks its thread.
  std::vector<http::Route> routes();
  void handle_submit(const http::Request& req, http::Reply reply);
  void handle_status(const http::Request& req, http::Response& res);
  void handle_cancel(const http::Request& req, http::Reply reply);
  void handle_batch(const http::Request& req, http::Response& res);
  void handle_image(const http::Request& req, http::Response& res);
  void handle_readyz(const http::Request& req, http::Response& res);
  void handle_openai(const http::Request& req, http::Reply reply);   // openai_route.cpp
  // The answer to a request no route took, or that the HTTP layer refused (one error shape).
  http::Response unrouted(int status, const http::Request& req, const std::string& why);

  // Checks capacity (model, rate, queue), resolves the seeds, stores the request and wakes the
  // runner. Answers 503/429 itself and returns nullopt when the request cannot be taken.
  // With `idem`, a retry of an earlier submission (same key and body) answers that request, and
  // the same key with another body a 409.
  std::optional<RequestRecord> enqueue(GenerateRequest p, const std::string& key_id, http::Response& res,
                                       const std::optional<IdempotencyKey>& idem = std::nullopt);

  // The key id of the request's API key; answers 401 and returns empty when there is none.
  std::string authenticate(const http::Request& req, http::Response& res);
  // The request `id` if it exists and belongs to `key_id`; answers 404 otherwise.
  std::optional<RequestRecord> owned_request(const std::string& id, const std::string& key_id,
                                             http::Response& res);
  // The status object clients poll (also the webhook body).
  nlohmann::json status_json(const RequestRecord& record);
  std::vector<std::string> download_urls(const RequestRecord& record, bool direct_link);
  int retry_after_seconds(int64_t jobs_ahead);
  // Calls `then(finished)` once request `id` has ended or `timeout_ms` passed (or at shutdown).
  void when_finished(const std::string& id, int64_t timeout_ms, std::function<void(bool)> then);
  // Several nodes (api_server.cpp): expired leases, this node's heartbeat, the known pools.
  void maintenance_loop();
  void refresh_live_pools();
  void run_retention();
  // Answers 410 when `gone` is the tombstone of a request deleted after the retention period.
  bool answer_if_expired(const std::optional<ExpiredRecord>& gone, http::Response& res);
  // A server_id a request may name: configured, or the pool of a live worker.
  bool pool_known(const std::string& id);
  // Some worker (this node's or a live one elsewhere) serves pool `id` now.
  bool pool_has_worker(const std::string& id);

  ServeOptions options;
  std::unique_ptr<Engine> engine;
  int lock_fd = -1;
  std::unique_ptr<CrashGuard> crash_guard;   // marks the running job in the data folder
  std::unique_ptr<Store> store;
  std::unique_ptr<KeyRing> keys;
  std::unique_ptr<ImageStore> images;
  Metrics metrics;
  RateLimiter rate_limiter;
  std::unique_ptr<WebhookSigner> signer;
  std::unique_ptr<WebhookSender> sender;
  std::unique_ptr<WebhookOutbox> outbox;
  std::unique_ptr<JobRunner> runner;   // null without a model
  std::set<std::string> server_ids;    // ids a request may name (configured)
  bool every_node = false;             // the store is this process's alone (SQLite)
  std::mutex pools_mu;
  std::set<std::string> live_pools;    // pools with a live worker, refreshed by maintenance
  std::thread maintenance;
  std::mutex maintenance_mu;
  std::condition_variable maintenance_cv;
  Waiters waiters;
  std::unique_ptr<http::HttpServer> http;
  std::vector<std::string> route_names;   // by route index, for metrics
  std::string base_url;
  std::atomic<bool> stopped{false};
  std::mutex stop_mu;
  std::condition_variable stop_cv;
};

void send_json(http::Response& res, int status, const nlohmann::json& body);
void send_failure(http::Response& res, int status, const std::string& error);
// Runs `body` and maps what it throws: UserError -> 400, IoError -> 500 "storage", anything
// else -> 500 (logged, counted). The single place where handler errors become answers.
http::Response guarded(Metrics& metrics, const char* route, const std::function<void(http::Response&)>& body);
int64_t wall_ms();
// OpenAI's error object {"error": {"message", "type", "param", "code"}} (null param/code when empty).
void openai_error(http::Response& res, int status, const std::string& message, const char* type,
                  const std::string& code, const std::string& param = "");

const std::string& openapi_document();
const std::string& playground_page();   // playground.cpp
const std::string& favicon_svg();

}  // namespace fluxpipe::server
