// Helpers for tests that run fluxpipe and fluxpipe-test-server as separate processes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"

extern char** environ;

namespace fluxpipe::testing {

struct RunResult {
  int exit_code = -1;
  std::string output;   // stdout and stderr together
};

inline pid_t spawn(const std::vector<std::string>& args, const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "cannot start " << args[0];
  return pid;
}

inline RunResult run(const std::vector<std::string>& args) {
  TempDir out;
  std::string log = out.path() + "/out";
  pid_t pid = spawn(args, log);
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream in(log);
  RunResult r;
  r.output.assign(std::istreambuf_iterator<char>(in), {});
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline std::string last_line(const std::string& text) {
  std::string t = text;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

// A fluxpipe-test-server process on 127.0.0.1 over `data_dir`.
class ServerProcess {
 public:
  // `extra` options come last, so they override the defaults here.
  ServerProcess(const std::string& data_dir, int step_ms, const std::vector<std::string>& extra = {})
      : data_dir_(data_dir) {
    std::string port_file = data_dir + "/port." + std::to_string(++starts_);
    std::vector<std::string> args = {FLUXPIPE_TEST_SERVER_BIN, "--data", data_dir, "--listen", "127.0.0.1:0",
                                     "--port-file", port_file, "--fake-step-ms", std::to_string(step_ms),
                                     "--sync-wait", "0", "--rate-limit", "0", "--quiet"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = spawn(args, data_dir + "/server.log");
    for (int i = 0; i < 500 && port_ == 0; ++i) {
      std::ifstream in(port_file);
      if (!(in >> port_)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_GT(port_, 0) << "server did not start; log in " << data_dir << "/server.log";
  }
  ~ServerProcess() {
    if (pid_ > 0) stop(SIGTERM);
  }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  void stop(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(10, 0);
    return c;
  }
  json get(const std::string& path, const std::string& key) const {
    auto res = client().Get(path, {{"API-Key", key}});
    return res ? json::parse(res->body, nullptr, false) : json();
  }

 private:
  static inline int starts_ = 0;
  std::string data_dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

inline json wait_done(const ServerProcess& s, const std::string& key, const std::string& id, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  json j;
  while (std::chrono::steady_clock::now() < deadline) {
    j = s.get("/generate/v3/status/" + id, key);
    if (j.is_object() && j.value("status", "") != "PENDING") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return j;
}

inline void wait_running(const ServerProcess& s, const std::string& key, const std::string& id, int min_done) {
  for (int i = 0; i < 400; ++i) {
    json j = s.get("/generate/v3/status/" + id, key);
    if (j.value("state", "") == "running" && j["progress"]["done"].get<int>() >= min_done) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "request " << id << " never ran";
}

}  // namespace fluxpipe::testing
