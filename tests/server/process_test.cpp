// The server and CLI as separate processes: kill -9 mid-job and restart loses nothing;
// `fluxpipe keys` prints the key alone on its last line; bad command lines fail clearly.
#include <signal.h>

#include <fstream>

#include "process_util.h"
#include "server/crash_guard.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

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

// A job running when the process died of a fatal signal is the job's fault (a poison job): it
// ends FAILURE with the reason at the next start and is not run again; the jobs queued behind
// it run. (The kill -9 test above shows the other case: an operator's kill is retried.)
TEST(Process, AJobThatCrashedTheServerFailsInsteadOfRunningAgain) {
  for (int sig : {SIGSEGV, SIGABRT}) {
    TempDir dir;
    std::string key = make_key(dir.path());
    std::string poison, next;
    {
      ServerProcess s(dir.path(), /*step_ms=*/50);
      poison = submit(s, key, 20)["id"];
      next = submit(s, key, 2)["id"];
      wait_running(s, key, poison, 1);
      s.stop(sig);
    }
    EXPECT_TRUE(std::ifstream(dir.path() + "/crashed_job").good()) << "the handler did not write its marker";
    ServerProcess again(dir.path(), /*step_ms=*/1);
    json j = wait_done(again, key, poison, 30000);
    EXPECT_EQ(j["status"], "FAILURE") << j.dump();
    std::string error = j.value("error", "");
    EXPECT_NE(error.find("the server crashed while running this job"), std::string::npos) << error;
    EXPECT_NE(error.find(sig == SIGSEGV ? "SIGSEGV" : "SIGABRT"), std::string::npos) << error;
    EXPECT_EQ(wait_done(again, key, next, 30000)["status"], "SUCCESS");
    auto store = server::open_sqlite_store(dir.path() + "/fluxpipe.db");
    EXPECT_EQ(store->get_request(poison)->attempts, 1) << "a poison job must not start again";
    EXPECT_FALSE(std::ifstream(dir.path() + "/crashed_job").good());
  }
}

// The OOM killer's SIGKILL cannot be caught: the cgroup's oom_kill count, recorded when the job
// started and read at the next start, tells it from an operator's kill -9.
TEST(CrashGuard, AnOomKillDuringAJobIsToldFromAnOperatorsKill) {
  TempDir dir;
  std::string events = dir.path() + "/memory.events";
  auto set_count = [&](int n) { std::ofstream(events) << "low 0\nhigh 0\nmax 2\noom 1\noom_kill " << n << "\n"; };
  set_count(3);
  {
    server::CrashGuard guard(dir.path(), events);
    EXPECT_EQ(guard.oom_kill_count(), 3);
    guard.job_started("job1", "claimA");
  }   // the process "dies" with the marker in place
  set_count(4);
  {
    server::CrashGuard guard(dir.path(), events);
    std::optional<server::CrashGuard::Crash> crash = guard.take_crashed();
    ASSERT_TRUE(crash.has_value());
    EXPECT_EQ(crash->id, "job1");
    EXPECT_EQ(crash->claim, "claimA");
    EXPECT_NE(crash->reason.find("lack of memory"), std::string::npos) << crash->reason;
    EXPECT_FALSE(guard.take_crashed().has_value()) << "the markers are removed once read";
    // The same death without an OOM kill (kill -9, power loss): an ordinary interruption.
    guard.job_started("job2", "claimB");
  }
  {
    server::CrashGuard guard(dir.path(), events);
    EXPECT_FALSE(guard.take_crashed().has_value());
    // A job that ended leaves nothing behind.
    guard.job_started("job3", "claimC");
    guard.job_ended();
    set_count(9);
    EXPECT_FALSE(guard.take_crashed().has_value());
  }
  // Without a readable count nothing is blamed on the job.
  server::CrashGuard blind(dir.path(), dir.path() + "/no-such-file");
  EXPECT_EQ(blind.oom_kill_count(), -1);
  blind.job_started("job4", "claimD");
  EXPECT_FALSE(blind.take_crashed().has_value());
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
