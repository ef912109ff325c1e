// fluxpipe server: `fluxpipe serve` options. Every option has an environment-variable
// twin (FLUXPIPE_<NAME>); a command-line flag wins over the environment.
// Thread-safety: plain values.
#pragma once

#include <string>
#include <vector>

#include "pipeline/pipeline.h"
#include "server/request.h"
#include "server/webhook.h"

namespace fluxpipe::server {

struct ServeOptions {
  std::string listen_host = "127.0.0.1";
  int listen_port = 8080;
  std::string data_dir;                  // required: the lock, the default store and images
  std::string store_location;            // --store: "" (<data>/fluxpipe.db), sqlite:PATH or postgresql://...
  std::string images_dir;                // --images: "" (<data>/images), a folder every node shares, or s3://
  std::string s3_endpoint;               // with s3://: "" = AWS for AWS_REGION
  bool s3_path_style = false;
  std::string role = "all";              // all, api (HTTP only, no model) or worker (jobs, health only)
  std::string node_id;                   // names this node's claims; "" = host name and process id
  int max_queued_per_key = 50;           // queued+running requests of one key before 429
  int64_t lease_ms = 30000;              // a worker's claim not renewed this long is taken over
  int64_t retention_ms = 7LL * 24 * 3600 * 1000;   // ended requests and their images are deleted after; 0 = never
  std::string model_path;                // empty: no model, generation answers 503; or a model name
  std::string models_dir;                // pulled models (resolved by the CLI); empty: the default
  bool pull_model = false;               // the CLI pulls a model name not pulled yet
  EngineOptions engine = [] {            // memory budget, tiled decoding, device (default auto), text cache (8)
    EngineOptions e;
    e.device = "auto";
    e.text_cache = 8;
    return e;
  }();
  std::string public_url;                // base of download URLs; default http://<listen>
  std::string server_id = "local";       // the pool this server's runner serves
  std::vector<std::string> known_server_ids;   // other pools a request may name (for routing)
  int sync_wait_ms = 10000;
  int openai_wait_ms = 600000;            // POST /v1/images/generations waits this long
  int max_queue = 100;
  int rate_limit_per_minute = 60;        // submissions per key; 0 = unlimited
  size_t max_body_bytes = 64 * 1024;
  int max_attempts = 3;
  int http_threads = 2;                  // io threads of the event-driven HTTP layer
  size_t max_header_bytes = 16 * 1024;
  int max_connections = 20000;
  int max_connections_per_ip = 0;        // 0: off (behind a proxy every client has its address)
  int64_t idle_timeout_ms = 60000;
  int64_t header_timeout_ms = 10000;
  int64_t drain_ms = 2000;               // a clean stop waits this long for answers in flight
  int64_t job_timeout_ms = 0;            // per-job wall-clock limit; 0: none
  std::string webhook_secret;            // empty: read or create <data>/webhook_secret
  std::string webhook_proxy;             // empty: webhooks connect directly, whatever the environment says
  bool allow_private_webhooks = false;
  int webhook_timeout_ms = 10000;
  OutboxPolicy webhook_policy;
  RequestLimits limits;
  std::vector<std::string> env_api_keys; // FLUXPIPE_API_KEYS
  bool quiet = false;
  bool secret_on_command_line = false;   // set by the parser: serve warns (ps shows it to every user)
  int data_lock_fd = -1;                 // the data folder's lock, when the caller took it first
};

// Parses `args` (after "serve") and the environment. Throws UserError naming the flag.
ServeOptions parse_serve_options(const std::vector<std::string>& args);
// True when this node runs jobs (role all or worker) and so loads a model.
inline bool runs_jobs(const ServeOptions& o) { return o.role != "api"; }
std::string serve_usage();

}  // namespace fluxpipe::server
