// ApiServer lifecycle: open the data folder, recover interrupted jobs, start and stop threads.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/clock.h"
#include "core/error.h"
#include "server/api_server_impl.h"
#include "server/log.h"
#include "server/s3_images.h"

namespace fluxpipe::server {

int64_t wall_ms() { return wall_clock_ms(); }

void send_json(http::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.content_type = "application/json";
  res.body = body.dump();
}

void send_failure(http::Response& res, int status, const std::string& error) {
  send_json(res, status, {{"status", "FAILURE"}, {"error", error}});
}

std::string load_or_create_webhook_secret(const std::string& data_dir, const std::string& configured) {
  if (!configured.empty()) return configured;
  std::string path = data_dir + "/webhook_secret";
  std::ifstream in(path);
  std::string secret;
  if (in && std::getline(in, secret) && !secret.empty()) return secret;
  secret = WebhookSigner::generate_secret();
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw IoError("[serve] cannot create '" + tmp + "': " + std::strerror(errno));
  std::string line = secret + "\n";
  bool ok = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) && fsync(fd) == 0;
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    throw IoError("[serve] cannot write '" + path + "': " + std::strerror(errno));
  }
  return secret;
}

std::string webhook_secret_for(Store& store, const std::string& data_dir, const std::string& configured) {
  if (!configured.empty()) return configured;
  // Every node of a shared store signs with one secret, kept in the store; the first node to
  // start makes it. The embedded store keeps its secret in the data folder, as it always did.
  if (std::string(store.kind()) != "sqlite") {
    return store.setting_or_insert("webhook_secret", WebhookSigner::generate_secret());
  }
  return load_or_create_webhook_secret(data_dir, "");
}

std::string default_node_id() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0 || !host[0]) std::strcpy(host, "node");
  return std::string(host) + "-" + std::to_string(getpid());
}

int lock_data_folder(const std::string& data_dir) {
  umask(077);
  if (mkdir(data_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw IoError("[serve] cannot create data folder '" + data_dir + "': " + std::strerror(errno));
  }
  std::string lock_path = data_dir + "/lock";
  int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) throw IoError("[serve] cannot open '" + lock_path + "': " + std::strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    throw UserError("[serve] data folder '" + data_dir + "' is in use by another fluxpipe server");
  }
  return fd;
}

ApiServer::Impl::Impl(ServeOptions opts, std::unique_ptr<Engine> eng)
    : options(std::move(opts)), engine(std::move(eng)), rate_limiter(options.rate_limit_per_minute) {
  set_log_quiet(options.quiet);
  // Prompts, webhook URLs (which often carry tokens), keys' hashes and images are the users':
  // everything under the data folder is the server's user's alone (0700 folders, 0600 files,
  // SQLite's database, journal and WAL included).
  umask(077);
  if (options.secret_on_command_line) {
    log("warn", "--webhook-secret on the command line is visible to every local user (ps); use "
                "FLUXPIPE_WEBHOOK_SECRET or --webhook-secret-file");
  }
  lock_fd = options.data_lock_fd >= 0 ? options.data_lock_fd : lock_data_folder(options.data_dir);
  if (options.node_id.empty()) options.node_id = default_node_id();
  if (!runs_jobs(options)) engine.reset();   // an api node loads no model
  store = open_store(options.store_location, options.data_dir);
  // The SQLite store belongs to this process alone (the data folder's lock): every claim in it
  // is from an earlier life of this server. A shared store holds other nodes' live claims.
  every_node = std::string(store->kind()) == "sqlite";
  keys = std::make_unique<KeyRing>(*store, options.env_api_keys);
  if (options.images_dir == "postgresql") {
    images = open_database_image_store(*store);
  } else if (options.images_dir.rfind("s3://", 0) == 0) {
    images = open_s3_image_store(s3_location_from(options.images_dir, options.s3_endpoint, options.s3_path_style));
  } else {
    images = open_folder_image_store(options.images_dir.empty() ? options.data_dir + "/images" : options.images_dir);
  }
  signer = std::make_unique<WebhookSigner>(webhook_secret_for(*store, options.data_dir, options.webhook_secret));
  sender = make_curl_sender(options.allow_private_webhooks, options.webhook_timeout_ms, options.webhook_proxy);
  options.webhook_policy.node_id = options.node_id;
  outbox = std::make_unique<WebhookOutbox>(
      *store, *sender, *signer,
      [this](const std::string& id) {
        std::optional<RequestRecord> r = store->get_request(id);
        return r ? status_json(*r).dump() : nlohmann::json{{"status", "FAILURE"}, {"id", id}, {"error", "request not found"}}.dump();
      },
      options.webhook_policy, metrics);
  server_ids.insert("any");
  server_ids.insert(options.server_id);
  server_ids.insert(options.known_server_ids.begin(), options.known_server_ids.end());
  metrics.set_queue_depth_source([this] { return store->count_active(); });

  // A job this data folder's last run crashed on ends FAILURE now, before the recovery below
  // would queue it again (see server/crash_guard.h).
  crash_guard = std::make_unique<CrashGuard>(options.data_dir);
  if (std::optional<CrashGuard::Crash> crash = crash_guard->take_crashed()) {
    std::optional<RequestRecord> r = store->get_request(crash->id);
    if (r && r->state == JobState::running && r->claim == crash->claim &&
        store->finish_request(r->id, r->claim, JobState::failed, crash->reason, wall_ms(), "")) {
      metrics.count_job("failed");
      log("error", "job " + r->id + " failed: " + crash->reason);
    } else {
      log("warn", "the last run crashed during job " + crash->id + ", which another node has taken over or ended since");
    }
  }
  RecoverSpec spec;
  spec.max_attempts = options.max_attempts;
  spec.now_ms = wall_ms();
  spec.node_id = options.node_id;
  spec.every_node = every_node;
  RecoveryReport rec = store->recover_interrupted(spec);
  if (rec.requeued || rec.failed) {
    log("warn", "recovered after an interruption: " + std::to_string(rec.requeued) + " jobs queued again, " +
                    std::to_string(rec.failed) + " failed after " + std::to_string(options.max_attempts) + " attempts");
  }
  if (engine) {
    RunnerOptions ro;
    ro.server_id = options.server_id;
    ro.node_id = options.node_id;
    ro.job_timeout_ms = options.job_timeout_ms;
    ro.lease_ms = options.lease_ms;
    ro.crash_guard = crash_guard.get();
    ro.heartbeat_ms = std::max<int64_t>(200, std::min<int64_t>(1000, options.lease_ms / 4));
    runner = std::make_unique<JobRunner>(*store, *engine, *images, metrics, ro, [this](const std::string& id) {
      waiters.notify(id);
      outbox->wake();
    });
  }
  // What other nodes (or, with SQLite, this process) did: wake the runner for its pool, answer
  // waiters of ended requests, stop a cancelled job now rather than at the next poll.
  store->listen([this](const StoreEvent& e) {
    switch (e.kind) {
      case StoreEvent::queued:
        if (runner && (e.value.empty() || e.value == "any" || e.value == "*" || e.value == options.server_id)) {
          runner->wake();
        }
        break;
      case StoreEvent::finished:
        waiters.notify(e.value);
        outbox->wake();
        break;
      case StoreEvent::cancel:
        if (runner) runner->cancel_hint(e.value);
        break;
    }
  });
}

// Every node: takes over claims whose lease expired (a worker died) and, on a worker, tells the
// store this node is alive and which pool it serves. Also the fallback for lost events: the
// waiters of requests that ended on another node are answered here at the latest.
void ApiServer::Impl::maintenance_loop() {
  int64_t period_ms = std::max<int64_t>(200, std::min<int64_t>(2000, options.lease_ms / 4));
  OutageLog outage("node maintenance (heartbeat, lease takeover, retention)");
  auto next_retention = std::chrono::steady_clock::now();
  std::unique_lock lock(maintenance_mu);
  while (!stopped) {
    lock.unlock();
    try {
      if (runner) store->node_heartbeat({options.node_id, options.server_id, options.role, wall_ms()});
      refresh_live_pools();
      // Claims whose lease expired go back to the queue within one period of expiring.
      RecoverSpec spec;
      spec.max_attempts = options.max_attempts;
      spec.now_ms = wall_ms();
      spec.node_id = "";   // only expired leases: this node's own claims are live
      RecoveryReport rec = store->recover_interrupted(spec);
      if (rec.requeued || rec.failed) {
        log("warn", "took over " + std::to_string(rec.requeued + rec.failed) + " jobs whose worker's lease expired (" +
                        std::to_string(rec.requeued) + " queued again, " + std::to_string(rec.failed) + " failed)");
      }
      if (options.retention_ms > 0 && std::chrono::steady_clock::now() >= next_retention) {
        run_retention();
        next_retention = std::chrono::steady_clock::now() +
                         std::chrono::milliseconds(std::clamp<int64_t>(options.retention_ms / 4, 200, 60000));
      }
      if (!every_node) waiters.poll_finished([this](const std::string& id) {
        std::optional<RequestRecord> r = store->get_request(id);
        return !r || is_final(r->state);
      });
      outage.ok();
    } catch (const std::exception& e) {
      metrics.count_error("io");
      outage.failed(e.what());
    }
    lock.lock();
    maintenance_cv.wait_for(lock, std::chrono::milliseconds(period_ms), [this] { return stopped.load(); });
  }
}

// Deletes what ended more than --retention ago: the images first, then the row (leaving a
// tombstone so URLs answer 410). A crash between the two repeats the work next time; every step
// is idempotent, so two nodes doing it at once is harmless.
void ApiServer::Impl::run_retention() {
  int64_t now = wall_ms();
  for (int round = 0; round < 10; ++round) {
    std::vector<RequestRecord> due = store->ended_before(now - options.retention_ms, 100);
    int images_removed = 0;
    for (const RequestRecord& r : due) {
      if (r.state == JobState::succeeded) {
        images->remove(r.download_token, r.file_names);
        images_removed += static_cast<int>(r.file_names.size());
      }
      store->expire_request(r, now);
    }
    if (!due.empty()) {
      metrics.count_expired(static_cast<int>(due.size()), images_removed);
      log("info", "retention: deleted " + std::to_string(due.size()) + " requests and " +
                      std::to_string(images_removed) + " images that ended over " +
                      std::to_string(options.retention_ms / 1000) + " s ago");
    }
    if (due.size() < 100) break;
  }
  // Tombstones answer 410 for 30 days more; Idempotency-Keys are remembered for 24 hours.
  store->prune(now - 30LL * 24 * 3600 * 1000, now - kIdempotencyWindowMs);
}

void ApiServer::Impl::refresh_live_pools() {
  std::set<std::string> pools;
  for (const NodeRecord& n : store->live_nodes(wall_ms(), std::max<int64_t>(options.lease_ms, 5000))) {
    if (n.role != "api") pools.insert(n.server_id);
  }
  std::lock_guard lock(pools_mu);
  live_pools = std::move(pools);
}

bool ApiServer::Impl::pool_known(const std::string& id) {
  if (server_ids.count(id)) return true;
  std::lock_guard lock(pools_mu);
  return live_pools.count(id) > 0;
}

bool ApiServer::Impl::pool_has_worker(const std::string& id) {
  if (runner && (id == options.server_id || id.empty() || id == "any")) return true;
  std::lock_guard lock(pools_mu);
  if (id.empty() || id == "any") return !live_pools.empty();
  return live_pools.count(id) > 0;
}

ApiServer::Impl::~Impl() {
  if (lock_fd >= 0) close(lock_fd);
}

ApiServer::ApiServer(ServeOptions options, std::unique_ptr<Engine> engine)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(engine))) {}

ApiServer::~ApiServer() { stop(); }

int ApiServer::start() {
  Impl& s = *impl_;
  http::Options ho;
  ho.threads = s.options.http_threads;
  ho.max_body_bytes = s.options.max_body_bytes;
  ho.max_header_bytes = s.options.max_header_bytes;
  ho.max_connections = s.options.max_connections;
  ho.max_connections_per_address = s.options.max_connections_per_ip;
  ho.idle_timeout_ms = s.options.idle_timeout_ms;
  ho.header_timeout_ms = s.options.header_timeout_ms;
  s.http = std::make_unique<http::HttpServer>(
      ho, s.routes(),
      [&s](int status, const http::Request& req, const std::string& why) { return s.unrouted(status, req, why); },
      [&s](int route, int status) {
        s.metrics.count_http(route >= 0 ? s.route_names.at(static_cast<size_t>(route)) : "unrouted", status);
      });
  int port = s.http->bind(s.options.listen_host, s.options.listen_port);
  std::string host = s.options.listen_host.find(':') != std::string::npos ? "[" + s.options.listen_host + "]"
                                                                          : s.options.listen_host;
  s.base_url = s.options.public_url.empty() ? "http://" + host + ":" + std::to_string(port) : s.options.public_url;
  if (s.options.public_url.empty() && (s.options.listen_host == "0.0.0.0" || s.options.listen_host == "::")) {
    log("warn", "listening on " + host + " without --public-url: download URLs will name " + host +
                    ", which clients cannot reach; set --public-url https://your.host");
  }
  s.http->start();
  s.outbox->start();
  if (s.runner) s.runner->start();
  try {
    s.refresh_live_pools();
  } catch (const std::exception& e) {
    log("warn", std::string("cannot read the live nodes: ") + e.what());
  }
  s.maintenance = std::thread([&s] { s.maintenance_loop(); });
  std::string what = s.options.role == "api" ? std::string("role api: jobs run on workers")
                     : s.engine             ? "model " + s.engine->model_name() + " on " + s.engine->device_name()
                                            : std::string("no model: generation answers 503");
  log("info", "fluxpipe serving on " + host + ":" + std::to_string(port) + " (node " + s.options.node_id + ", store " +
                  redact_store_location(s.options.store_location.empty() ? "sqlite:" + s.options.data_dir + "/fluxpipe.db"
                                                                          : s.options.store_location) +
                  ", images " + s.images->describe() + ", " + what + ")");
  return port;
}

void ApiServer::wait() {
  std::unique_lock lock(impl_->stop_mu);
  impl_->stop_cv.wait(lock, [this] { return impl_->stopped.load(); });
}

void ApiServer::stop() {
  Impl& s = *impl_;
  if (s.stopped.exchange(true)) return;
  // Drain: claim nothing more and stop the running job at its next step (it is queued again
  // without spending an attempt); refuse new connections; answer every waiting client now
  // with what is known; give in-flight answers a moment; then close whatever is left open.
  if (s.runner) s.runner->begin_stop();
  if (s.http) s.http->stop_accepting();
  s.waiters.shutdown();
  if (s.http) s.http->stop(s.options.drain_ms);
  if (s.runner) s.runner->stop();
  s.outbox->stop();
  {
    std::lock_guard lock(s.maintenance_mu);
  }
  s.maintenance_cv.notify_all();
  if (s.maintenance.joinable()) s.maintenance.join();
  if (s.runner) {
    try {
      s.store->remove_node(s.options.node_id);
    } catch (const std::exception& e) {
      log("warn", std::string("cannot remove this node from the store: ") + e.what());
    }
  }
  s.stop_cv.notify_all();
}

Store& ApiServer::store() { return *impl_->store; }
const std::string& ApiServer::public_url() const { return impl_->base_url; }

namespace {
sigset_t stop_signal_set() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  return s;
}
}  // namespace

void block_stop_signals() {
  sigset_t s = stop_signal_set();
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int wait_for_stop_signal() {
  sigset_t s = stop_signal_set();
  int sig = 0;
  sigwait(&s, &sig);
  return sig;
}

int run_server_until_signal(ServeOptions options, std::unique_ptr<Engine> engine) {
  // The stop signals are blocked in every thread; this one waits for them.
  block_stop_signals();
  ApiServer server(std::move(options), std::move(engine));
  server.start();
  int sig = wait_for_stop_signal();
  log("info", std::string("received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + ", stopping");
  server.stop();
  return 0;
}

}  // namespace fluxpipe::server
