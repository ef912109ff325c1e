// fluxpipe server: the generate v3 HTTP API, assembled — store, keys, job runner, webhook
// outbox, images, metrics — behind one object with a start/stop lifecycle.
//
// Ownership: ApiServer owns the engine it is given (nullptr = no model: generation
// answers 503; an api-role node drops it) and everything else it builds. It holds an exclusive
// lock on the data folder while it lives, so two servers never share one SQLite queue; nodes of
// one PostgreSQL store each have their own data folder and may share an image folder.
// Thread-safety: start/stop/wait from the owning thread; HTTP handlers run on the HTTP
// layer's io threads (http_server.h) and never block waiting for a job (waiters.h).
#pragma once

#include <memory>
#include <string>

#include "pipeline/pipeline.h"
#include "server/options.h"

namespace fluxpipe::server {

class Store;

class ApiServer {
 public:
  // Opens the data folder and store, and queues again the jobs a crash interrupted.
  // Throws UserError/IoError naming what failed.
  ApiServer(ServeOptions options, std::unique_ptr<Engine> engine);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Binds, starts the HTTP pool, job runner and webhook outbox. Returns the bound port.
  int start();
  // Blocks until stop() is called (from another thread or a signal handler thread).
  void wait();
  // Stops accepting, finishes in-flight HTTP answers, interrupts the running job (it is
  // queued again at the next start) and joins every thread. Idempotent.
  void stop();

  Store& store();
  const std::string& public_url() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later) and ignores
// SIGPIPE; wait_for_stop_signal() then returns the one that arrives.
void block_stop_signals();
int wait_for_stop_signal();

// `fluxpipe serve`: runs until SIGINT or SIGTERM, then stops cleanly. Returns an exit code.
int run_server_until_signal(ServeOptions options, std::unique_ptr<Engine> engine);

// Creates the data folder (0700) if needed and takes its exclusive lock; returns the descriptor
// to pass as ServeOptions::data_lock_fd. Throws UserError when another server holds it.
int lock_data_folder(const std::string& data_dir);

// The webhook secret in force: options.webhook_secret, or <data>/webhook_secret (created
// with mode 0600 on first use).
std::string load_or_create_webhook_secret(const std::string& data_dir, const std::string& configured);
// The secret a server on `store` signs with: `configured`, else the shared store's (made by the
// first node), else, for the embedded store, the data folder's file as above.
std::string webhook_secret_for(Store& store, const std::string& data_dir, const std::string& configured);

}  // namespace fluxpipe::server
