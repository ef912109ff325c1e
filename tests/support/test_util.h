// Helpers shared by the server tests: temporary folders, an in-process server with the
// test-double engine, and JSON over a real HTTP client on 127.0.0.1.
#pragma once

#include <httplib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "fake_engine.h"
#include "server/api_server.h"
#include "server/keys.h"
#include "server/rate_limit.h"
#include "server/store.h"

namespace fluxpipe::testing {

using nlohmann::json;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "fluxpipe-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A port on 127.0.0.1 that nothing listens on right now.
inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

inline int64_t test_now_ms() { return wall_clock_ms(); }

// Adds a key straight into the store of the data folder; returns the secret.
inline std::string add_key(server::Store& store, const std::string& name) {
  server::NewKey k = server::make_api_key(name, test_now_ms());
  store.add_key(k.record);
  return k.secret;
}

// An in-process server on 127.0.0.1 with its own data folder and two API keys.
struct TestServer {
  explicit TestServer(std::function<void(server::ServeOptions&)> configure = {}, int step_ms = 0,
                      bool with_engine = true) {
    options.data_dir = dir.path();
    options.listen_host = "127.0.0.1";
    options.listen_port = 0;
    options.quiet = true;
    options.sync_wait_ms = 0;
    options.webhook_policy.poll_ms = 50;
    options.webhook_policy.base_delay_ms = 50;
    if (configure) configure(options);
    std::unique_ptr<Engine> engine;
    if (with_engine) {
      auto fake = std::make_unique<FakeEngine>(step_ms);
      fake_engine = fake.get();
      engine = std::move(fake);
    }
    server = std::make_unique<server::ApiServer>(options, std::move(engine));
    key = add_key(server->store(), "alice");
    other_key = add_key(server->store(), "bob");
    port = server->start();
  }
  ~TestServer() { server->stop(); }

  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30, 0);
    return c;
  }
  httplib::Headers auth(const std::string& k = "") const { return {{"API-Key", k.empty() ? key : k}}; }

  // POST /generate/v3; returns (HTTP status, parsed body or null).
  std::pair<int, json> submit(const json& body, const std::string& k = "") const {
    auto res = client().Post("/generate/v3", auth(k), body.dump(), "application/json");
    if (!res) return {0, httplib::to_string(res.error())};
    return {res->status, json::parse(res->body, nullptr, false)};
  }
  std::pair<int, json> status(const std::string& id, const std::string& k = "") const {
    auto res = client().Get("/generate/v3/status/" + id, auth(k));
    if (!res) return {0, nullptr};
    return {res->status, json::parse(res->body, nullptr, false)};
  }
  // Polls until status != PENDING or `timeout_ms` passes.
  json wait_done(const std::string& id, int timeout_ms = 20000) const {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    json last;
    while (std::chrono::steady_clock::now() < deadline) {
      last = status(id).second;
      if (!last.is_object() || last.value("status", "") != "PENDING") return last;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return last;
  }
  // The path part of a download URL from this server.
  std::string path_of(const std::string& url) const {
    std::string prefix = server->public_url();
    EXPECT_EQ(url.rfind(prefix, 0), 0u) << url;
    return url.substr(prefix.size());
  }

  TempDir dir;
  server::ServeOptions options;
  FakeEngine* fake_engine = nullptr;
  std::unique_ptr<server::ApiServer> server;
  std::string key, other_key;
  int port = 0;
};

}  // namespace fluxpipe::testing
