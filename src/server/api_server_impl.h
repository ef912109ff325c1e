// Internal to the server layer: ApiServer's parts, shared by api_server.cpp (lifecycle)
// and api_routes.cpp (HTTP handlers).
#pragma once

#include <httplib.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "server/api_server.h"
#include "server/images.h"
#include "server/jobs.h"
#include "server/keys.h"
#include "server/metrics.h"
#include "server/rate_limit.h"
#include "server/request.h"
#include "server/store.h"
#include "server/webhook.h"

namespace fluxpipe::server {

struct ApiServer::Impl {
  Impl(ServeOptions options, std::unique_ptr<Engine> engine);
  ~Impl();

  // Routes (api_routes.cpp).
  void install_routes();
  void handle_submit(const httplib::Request& req, httplib::Response& res);
  void handle_status(const httplib::Request& req, httplib::Response& res);
  void handle_cancel(const httplib::Request& req, httplib::Response& res);
  void handle_batch(const httplib::Request& req, httplib::Response& res);
  void handle_image(const httplib::Request& req, httplib::Response& res);
  void handle_readyz(const httplib::Request& req, httplib::Response& res);
  void handle_openai(const httplib::Request& req, httplib::Response& res);   // openai_route.cpp

  // Checks capacity (model, rate, queue), resolves the seeds, stores the request and wakes the
  // runner. Answers 503/429 itself and returns nullopt when the request cannot be taken.
  std::optional<RequestRecord> enqueue(GenerateRequest p, const std::string& key_id, httplib::Response& res);

  // The key id of the request's API key; answers 401 and returns empty when there is none.
  std::string authenticate(const httplib::Request& req, httplib::Response& res);
  // The request `id` if it exists and belongs to `key_id`; answers 404 otherwise.
  std::optional<RequestRecord> owned_request(const std::string& id, const std::string& key_id,
                                             httplib::Response& res);
  // The status object clients poll (also the webhook body).
  nlohmann::json status_json(const RequestRecord& record);
  std::vector<std::string> download_urls(const RequestRecord& record, bool direct_link);
  int retry_after_seconds(int64_t jobs_ahead);

  ServeOptions options;
  std::unique_ptr<Engine> engine;
  int lock_fd = -1;
  std::unique_ptr<Store> store;
  std::unique_ptr<KeyRing> keys;
  std::unique_ptr<ImageStore> images;
  Metrics metrics;
  RateLimiter rate_limiter;
  std::unique_ptr<WebhookSigner> signer;
  std::unique_ptr<WebhookSender> sender;
  std::unique_ptr<WebhookOutbox> outbox;
  std::unique_ptr<JobRunner> runner;   // null without a model
  std::set<std::string> server_ids;    // ids a request may name
  httplib::Server http;
  std::thread http_thread;
  std::string base_url;
  std::atomic<bool> stopped{false};
};

void send_json(httplib::Response& res, int status, const nlohmann::json& body);
void send_failure(httplib::Response& res, int status, const std::string& error);
int64_t wall_ms();

const std::string& openapi_document();
const std::string& playground_page();

}  // namespace fluxpipe::server
