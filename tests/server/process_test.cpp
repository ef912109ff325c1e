// The server and CLI as separate processes: kill -9 mid-job and restart loses nothing;
// `fluxpipe keys` prints the key alone on its last line; bad command lines fail clearly.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>

#include "test_util.h"

extern char** environ;

namespace fluxpipe::testing {
namespace {

struct RunResult {
  int exit_code = -1;
  std::string output;   // stdout and stderr together
};

pid_t spawn(const std::vector<std::string>& args, const std::string& log_path) {
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

RunResult run(const std::vector<std::string>& args) {
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

std::string last_line(const std::string& text) {
  std::string t = text;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

// A fluxpipe-test-server process on 127.0.0.1 over `data_dir`.
class ServerProcess {
 public:
  ServerProcess(const std::string& data_dir, int step_ms) : data_dir_(data_dir) {
    std::string port_file = data_dir + "/port." + std::to_string(++starts_);
    pid_ = spawn({FLUXPIPE_TEST_SERVER_BIN, "--data", data_dir, "--listen", "127.0.0.1:0", "--port-file", port_file,
                  "--fake-step-ms", std::to_string(step_ms), "--sync-wait", "0", "--rate-limit", "0", "--quiet"},
                 data_dir + "/server.log");
    for (int i = 0; i < 500 && port_ == 0; ++i) {
      std::ifstream in(port_file);
      if (!(in >> port_)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_GT(port_, 0) << "server did not start; log in " << data_dir << "/server.log";
  }
  ~ServerProcess() {
    if (pid_ > 0) stop(SIGTERM);
  }
  void stop(int sig) {
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

std::string make_key(const std::string& data_dir) {
  RunResult r = run({FLUXPIPE_BIN, "keys", "add", "--data", data_dir, "--name", "tests"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return last_line(r.output);
}

json submit(const ServerProcess& s, const std::string& key, int steps) {
  json body = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 2}, {"num_inference_steps", steps}};
  auto res = s.client().Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
  return res ? json::parse(res->body, nullptr, false) : json();
}

json wait_done(const ServerProcess& s, const std::string& key, const std::string& id, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  json j;
  while (std::chrono::steady_clock::now() < deadline) {
    j = s.get("/generate/v3/status/" + id, key);
    if (j.is_object() && j.value("status", "") != "PENDING") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return j;
}

void wait_running(const ServerProcess& s, const std::string& key, const std::string& id, int min_done) {
  for (int i = 0; i < 400; ++i) {
    json j = s.get("/generate/v3/status/" + id, key);
    if (j.value("state", "") == "running" && j["progress"]["done"].get<int>() >= min_done) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "request " << id << " never ran";
}

TEST(Process, KillNineMidJobThenRestartFinishesEveryRequest) {
  TempDir dir;
  std::string key = make_key(dir.path());
  ASSERT_EQ(key.rfind("fpk_", 0), 0u) << key;
  std::vector<std::string> ids;
  {
    ServerProcess s(dir.path(), /*step_ms=*/50);
    for (int i = 0; i < 4; ++i) {
      json j = submit(s, key, 10);
      ASSERT_EQ(j["status"], "PENDING") << j.dump();
      ids.push_back(j["id"]);
    }
    wait_running(s, key, ids[0], 2);
    s.stop(SIGKILL);
  }
  {
    // The store saw the first job start and not end.
    auto store = server::open_sqlite_store(dir.path() + "/fluxpipe.db");
    EXPECT_EQ(store->get_request(ids[0])->state, server::JobState::running);
    EXPECT_EQ(store->get_request(ids[3])->state, server::JobState::queued);
  }
  ServerProcess again(dir.path(), /*step_ms=*/5);
  for (const std::string& id : ids) {
    json j = wait_done(again, key, id, 30000);
    ASSERT_EQ(j["status"], "SUCCESS") << id << " " << j.dump();
    for (const auto& url : j["download_urls"]) {
      std::string u = url;
      auto res = again.client().Get(u.substr(u.find("/v3/images/")));
      ASSERT_TRUE(res);
      EXPECT_EQ(res->status, 200);
    }
  }
  auto store = server::open_sqlite_store(dir.path() + "/fluxpipe.db");
  EXPECT_EQ(store->get_request(ids[0])->attempts, 2);   // started, killed, started again
  EXPECT_EQ(store->get_request(ids[3])->attempts, 1);
}

TEST(Process, GracefulStopMidJobRequeuesWithoutSpendingAnAttempt) {
  TempDir dir;
  std::string key = make_key(dir.path());
  std::string id;
  {
    ServerProcess s(dir.path(), /*step_ms=*/50);
    id = submit(s, key, 40)["id"];
    wait_running(s, key, id, 1);
    s.stop(SIGTERM);
  }
  auto store = server::open_sqlite_store(dir.path() + "/fluxpipe.db");
  EXPECT_EQ(store->get_request(id)->state, server::JobState::queued);
  EXPECT_EQ(store->get_request(id)->attempts, 0);
  ServerProcess again(dir.path(), /*step_ms=*/1);
  EXPECT_EQ(wait_done(again, key, id, 30000)["status"], "SUCCESS");
}

TEST(Process, TwoServersCannotShareADataFolder) {
  TempDir dir;
  ServerProcess first(dir.path(), 0);
  RunResult second = run({FLUXPIPE_TEST_SERVER_BIN, "--data", dir.path(), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_NE(second.output.find("in use by another fluxpipe server"), std::string::npos) << second.output;
}

TEST(Cli, KeysAddListRevoke) {
  TempDir dir;
  RunResult add = run({FLUXPIPE_BIN, "keys", "add", "--data", dir.path(), "--name", "ci"});
  ASSERT_EQ(add.exit_code, 0) << add.output;
  std::string key = last_line(add.output);
  EXPECT_EQ(key.size(), 52u);
  EXPECT_EQ(key.find(' '), std::string::npos);
  RunResult list = run({FLUXPIPE_BIN, "keys", "list", "--data", dir.path()});
  EXPECT_EQ(list.exit_code, 0);
  EXPECT_NE(list.output.find("\tci\t"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("active"), std::string::npos);
  EXPECT_EQ(list.output.find(key), std::string::npos);   // the secret is never shown again
  RunResult revoke = run({FLUXPIPE_BIN, "keys", "revoke", "--data", dir.path(), "ci"});
  EXPECT_EQ(revoke.exit_code, 0) << revoke.output;
  EXPECT_NE(run({FLUXPIPE_BIN, "keys", "list", "--data", dir.path()}).output.find("revoked"), std::string::npos);
  RunResult again = run({FLUXPIPE_BIN, "keys", "revoke", "--data", dir.path(), "ci"});
  EXPECT_EQ(again.exit_code, 2);
  // A revoked key no longer authenticates.
  ServerProcess s(dir.path(), 0);
  auto res = s.client().Get("/generate/v3/batch/x", {{"API-Key", key}});
  EXPECT_EQ(res->status, 401);
}

TEST(Cli, BadCommandLinesFailClearly) {
  RunResult no_data = run({FLUXPIPE_BIN, "serve"});
  EXPECT_EQ(no_data.exit_code, 2);
  EXPECT_NE(no_data.output.find("--data"), std::string::npos) << no_data.output;
  RunResult unknown = run({FLUXPIPE_BIN, "serve", "--data", "/tmp/x", "--bogus"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.output.find("--bogus"), std::string::npos);
  RunResult bad_port = run({FLUXPIPE_BIN, "serve", "--data", "/tmp/x", "--listen", "127.0.0.1:99999"});
  EXPECT_EQ(bad_port.exit_code, 2);
  EXPECT_NE(bad_port.output.find("--listen"), std::string::npos);
  TempDir dir;
  RunResult model = run({FLUXPIPE_BIN, "serve", "--data", dir.path(), "--model", "/models/flux"});
  EXPECT_EQ(model.exit_code, 2);
  EXPECT_NE(model.output.find("/models/flux"), std::string::npos) << model.output;
  RunResult help = run({FLUXPIPE_BIN, "serve", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("FLUXPIPE_LISTEN"), std::string::npos);
  EXPECT_EQ(run({FLUXPIPE_BIN, "frobnicate"}).exit_code, 2);
}

}  // namespace
}  // namespace fluxpipe::testing
