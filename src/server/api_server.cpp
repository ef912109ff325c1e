// ApiServer lifecycle: open the data folder, recover interrupted jobs, start and stop threads.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/clock.h"
#include "core/error.h"
#include "server/api_server_impl.h"
#include "server/log.h"

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
  store = open_sqlite_store(options.data_dir + "/fluxpipe.db");
  keys = std::make_unique<KeyRing>(*store, options.env_api_keys);
  images = std::make_unique<ImageStore>(options.data_dir);
  signer = std::make_unique<WebhookSigner>(load_or_create_webhook_secret(options.data_dir, options.webhook_secret));
  sender = make_curl_sender(options.allow_private_webhooks, options.webhook_timeout_ms, options.webhook_proxy);
  outbox = std::make_unique<WebhookOutbox>(
      *store, *sender, *signer,
      [this](const std::string& id) {
        std::optional<RequestRecord> r = store->get_request(id);
        return r ? status_json(*r).dump() : nlohmann::json{{"status", "FAILURE"}, {"id", id}, {"error", "request not found"}}.dump();
      },
      options.webhook_policy, metrics);
  server_ids.insert(options.server_id);
  server_ids.insert(options.known_server_ids.begin(), options.known_server_ids.end());
  metrics.set_queue_depth_source([this] { return store->count_active(); });

  RecoveryReport rec = store->recover_interrupted(options.max_attempts, wall_ms());
  if (rec.requeued || rec.failed) {
    log("warn", "recovered after an interruption: " + std::to_string(rec.requeued) + " jobs queued again, " +
                    std::to_string(rec.failed) + " failed after " + std::to_string(options.max_attempts) + " attempts");
  }
  if (engine) {
    RunnerOptions ro;
    ro.server_id = options.server_id;
    ro.job_timeout_ms = options.job_timeout_ms;
    runner = std::make_unique<JobRunner>(*store, *engine, *images, metrics, ro, [this](const std::string& id) {
      waiters.notify(id);
      outbox->wake();
    });
  }
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
  log("info", "fluxpipe serving on " + host + ":" + std::to_string(port) + " (data " + s.options.data_dir + ", " +
                  (s.engine ? "model " + s.engine->model_name() : std::string("no model: generation answers 503")) + ")");
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
