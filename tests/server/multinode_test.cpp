// Several nodes on one PostgreSQL store, as separate processes: API nodes and workers with
// the test-double engine, one shared image folder. Any node answers any request; a worker
// killed with SIGKILL loses its lease and another finishes its job; cancel crosses nodes;
// pools are the configured ones plus those with a live worker.
#include <signal.h>

#include <chrono>
#include <set>

#include "pg_test_db.h"
#include "process_util.h"
#include "server/store.h"
#include "test_util.h"
#include "webhook_receiver.h"

namespace fluxpipe::testing {
namespace {

// One cluster: a database, a shared image folder, a data folder per node.
struct Cluster {
  Cluster() : store(server::open_store(db.uri(), "")) { key = add_key(*store, "alice"); }

  // A node of the cluster; `role` all|api|worker. Leases are short so that takeover is quick.
  std::unique_ptr<ServerProcess> node(const std::string& name, const std::string& role, int step_ms,
                                      std::vector<std::string> extra = {}) {
    std::string data = dir.path() + "/" + name;
    std::filesystem::create_directories(data);
    std::vector<std::string> args = {"--store", db.uri(), "--images", images.empty() ? dir.path() + "/images" : images,
                                     "--role", role,
                                     "--node-id", name, "--lease-ms", "2000"};
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<ServerProcess>(data, step_ms, args);
  }

  PgTestDb db;
  TempDir dir;
  std::unique_ptr<server::Store> store;
  std::string key;
  std::string images;   // "" = a folder all nodes share; "postgresql" = in the database
};

json post(const ServerProcess& s, const std::string& key, const json& body) {
  auto res = s.client().Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
  if (!res) return json{{"transport_error", httplib::to_string(res.error())}};
  json j = json::parse(res->body, nullptr, false);
  j["http_status"] = res->status;
  return j;
}

json job(int steps, int samples = 1) {
  return {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", samples}, {"num_inference_steps", steps}};
}

TEST(MultiNode, AnyNodeAnswersAnyRequest) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  auto api_a = c.node("api-a", "api", 0);
  auto api_b = c.node("api-b", "api", 0, {"--sync-wait", "10000"});
  auto worker = c.node("worker-1", "worker", 20);

  // Submitted on A, finished by the worker, seen on B with the same answer.
  json body = job(3, 2);
  body["batch_id"] = "b-1";
  json submitted = post(*api_a, c.key, body);
  ASSERT_EQ(submitted["http_status"], 200) << submitted.dump();
  std::string id = submitted["id"];
  json done = wait_done(*api_b, c.key, id, 20000);
  ASSERT_EQ(done["status"], "SUCCESS") << done.dump();
  EXPECT_EQ(done["seeds"], submitted["seeds"]);
  json batch = api_b->get("/generate/v3/batch/b-1", c.key);
  ASSERT_TRUE(batch.is_array() || batch.contains("requests")) << batch.dump();
  // Images written by the worker are served by either API node.
  for (const auto* node : {api_a.get(), api_b.get()}) {
    json status = node->get("/generate/v3/status/" + id, c.key);
    ASSERT_EQ(status["download_urls"].size(), 2u);
    std::string url = status["download_urls"][0];
    std::string path = url.substr(url.find("/v3/images/"));
    auto img = node->client().Get(path);
    ASSERT_TRUE(img);
    EXPECT_EQ(img->status, 200);
    EXPECT_EQ(img->body.substr(1, 3), "PNG");
  }
  // The sync wait on B ends when the worker (another process) finishes: the store's event.
  auto t0 = std::chrono::steady_clock::now();
  json synced = post(*api_b, c.key, job(2));
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(synced["status"], "SUCCESS") << synced.dump();
  EXPECT_LT(waited, 5.0);
  // The worker serves its health only; a client request there is a 404.
  EXPECT_EQ(worker->client().Get("/healthz")->status, 200);
  EXPECT_EQ(worker->client().Post("/generate/v3", {{"API-Key", c.key}}, job(1).dump(), "application/json")->status, 404);
  // An api node is ready without a model.
  EXPECT_EQ(api_a->client().Get("/readyz")->status, 200);
}

TEST(MultiNode, ImagesInTheDatabaseAreServedByEveryNode) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  c.images = "postgresql";
  auto api_a = c.node("api-a", "api", 0);
  auto api_b = c.node("api-b", "api", 0);
  auto worker = c.node("worker-1", "worker", 10);
  json submitted = post(*api_a, c.key, job(1, 2));
  json done = wait_done(*api_b, c.key, submitted["id"], 20000);
  ASSERT_EQ(done["status"], "SUCCESS") << done.dump();
  std::string url = done["download_urls"][1];
  std::string path = url.substr(url.find("/v3/images/"));
  auto from_a = api_a->client().Get(path);
  auto from_b = api_b->client().Get(path);
  ASSERT_TRUE(from_a && from_b);
  EXPECT_EQ(from_a->status, 200);
  EXPECT_EQ(from_a->body.substr(1, 3), "PNG");
  EXPECT_EQ(from_a->body, from_b->body);
  EXPECT_FALSE(std::filesystem::exists(c.dir.path() + "/images"));   // nothing on disk
}

TEST(MultiNode, CancelOnOneNodeStopsTheJobOnAnother) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  auto api_a = c.node("api-a", "api", 0);
  auto api_b = c.node("api-b", "api", 0);
  auto worker = c.node("worker-1", "worker", 100);
  json submitted = post(*api_a, c.key, job(50));
  std::string id = submitted["id"];
  wait_running(*api_b, c.key, id, 1);   // progress crosses nodes through the worker's heartbeat
  auto t0 = std::chrono::steady_clock::now();
  auto res = api_b->client().Delete("/generate/v3/status/" + id, {{"API-Key", c.key}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  json done = wait_done(*api_a, c.key, id, 10000);
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(done["status"], "FAILURE") << done.dump();
  EXPECT_EQ(done["state"], "cancelled");
  EXPECT_LT(took, 3.0);   // stopped at its next step, not after the remaining 5 s
}

TEST(MultiNode, KilledWorkerLosesItsLeaseAndAnotherFinishesTheJob) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  auto api = c.node("api", "api", 0);
  auto w1 = c.node("worker-1", "worker", 100);
  auto w2 = c.node("worker-2", "worker", 100);
  json submitted = post(*api, c.key, job(20));
  std::string id = submitted["id"];
  wait_running(*api, c.key, id, 2);
  std::optional<server::RequestRecord> running = c.store->get_request(id);
  ASSERT_TRUE(running);
  ServerProcess& victim = running->node_id == "worker-1" ? *w1 : *w2;
  std::string survivor = running->node_id == "worker-1" ? "worker-2" : "worker-1";
  victim.stop(SIGKILL);
  json done = wait_done(*api, c.key, id, 20000);
  EXPECT_EQ(done["status"], "SUCCESS") << done.dump();
  std::optional<server::RequestRecord> after = c.store->get_request(id);
  EXPECT_EQ(after->attempts, 2);
  EXPECT_EQ(after->node_id, survivor);
}

TEST(MultiNode, PoolsAreConfiguredOrLive) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  auto api = c.node("api", "api", 0, {"--known-server-ids", "gpu-c"});
  auto worker = c.node("worker-a", "worker", 10, {"--server-id", "gpu-a"});
  // gpu-a is known because its worker is alive (the api node learns it from the heartbeats).
  json to_a;
  for (int i = 0; i < 100; ++i) {
    json body = job(1);
    body["server_id"] = "gpu-a";
    to_a = post(*api, c.key, body);
    if (to_a["http_status"] == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(to_a["http_status"], 200) << to_a.dump();
  EXPECT_EQ(wait_done(*api, c.key, to_a["id"], 10000)["status"], "SUCCESS");
  // Neither configured nor seen: 400, as on one node.
  json body = job(1);
  body["server_id"] = "gpu-b";
  EXPECT_EQ(post(*api, c.key, body)["http_status"], 400);
  // Configured but no worker: accepted, and its status says what it waits for.
  body["server_id"] = "gpu-c";
  json waiting = post(*api, c.key, body);
  ASSERT_EQ(waiting["http_status"], 200) << waiting.dump();
  json status = api->get("/generate/v3/status/" + waiting["id"].get<std::string>(), c.key);
  EXPECT_EQ(status["state"], "queued");
  EXPECT_NE(status.value("waiting_for", "").find("gpu-c"), std::string::npos) << status.dump();
  // A worker of gpu-c that starts later runs it.
  auto late = c.node("worker-c", "worker", 10, {"--server-id", "gpu-c"});
  EXPECT_EQ(wait_done(*api, c.key, waiting["id"], 15000)["status"], "SUCCESS");
}

TEST(MultiNode, ApiNodeKilledDuringTheSyncWaitKeepsTheRequestOnce) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  auto api = c.node("api", "api", 0, {"--sync-wait", "10000"});
  auto other = c.node("api-2", "api", 0);
  // No worker yet: the submission is stored, then the node waits; kill it mid-wait.
  std::string key_id = c.store->list_keys()[0].id;
  std::thread client([&] { post(*api, c.key, job(1)); });
  for (int i = 0; i < 200 && c.store->count_active_for_key(key_id) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));   // the node is in its wait now
  api->stop(SIGKILL);
  client.join();
  EXPECT_EQ(c.store->count_active_for_key(key_id), 1);   // stored once, not lost, not doubled
  auto worker = c.node("worker", "worker", 10);
  for (int i = 0; i < 200 && c.store->count_active_for_key(key_id) > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(c.store->count_active_for_key(key_id), 0);   // and it ran
}

TEST(MultiNode, KeysSecretAndMigrateWorkOnTheSharedStore) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  RunResult migrated = run({FLUXPIPE_BIN, "migrate", "--store", c.db.uri()});
  EXPECT_EQ(migrated.exit_code, 0) << migrated.output;
  EXPECT_NE(migrated.output.find("schema version " + std::to_string(server::kSchemaVersion)), std::string::npos)
      << migrated.output;
  // A key made with the CLI against the store is accepted by every node at once.
  RunResult added = run({FLUXPIPE_BIN, "keys", "add", "--store", c.db.uri(), "--name", "cli"});
  ASSERT_EQ(added.exit_code, 0) << added.output;
  std::string key = last_line(added.output);
  auto a = c.node("api-a", "api", 0);
  auto b = c.node("api-b", "api", 0);
  EXPECT_EQ(post(*a, key, job(1))["http_status"], 200);
  EXPECT_EQ(post(*b, key, job(1))["http_status"], 200);
  RunResult listed = run({FLUXPIPE_BIN, "keys", "list", "--store", c.db.uri()});
  EXPECT_NE(listed.output.find("cli"), std::string::npos) << listed.output;
  RunResult revoked = run({FLUXPIPE_BIN, "keys", "revoke", "--store", c.db.uri(), "cli"});
  EXPECT_EQ(revoked.exit_code, 0) << revoked.output;
  int status = 0;
  for (int i = 0; i < 50; ++i) {   // nodes cache keys for up to 2 s
    status = post(*b, key, job(1))["http_status"];
    if (status == 401) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(status, 401);
  // One webhook secret for the whole store, the same every time it is asked.
  RunResult s1 = run({FLUXPIPE_BIN, "webhook-secret", "--store", c.db.uri()});
  RunResult s2 = run({FLUXPIPE_BIN, "webhook-secret", "--store", c.db.uri()});
  EXPECT_EQ(s1.exit_code, 0) << s1.output;
  EXPECT_EQ(last_line(s1.output).rfind("whsec_", 0), 0u) << s1.output;
  EXPECT_EQ(last_line(s1.output), last_line(s2.output));
}

TEST(MultiNode, WebhookIsSentOncePerAttemptBySomeNodeWithTheSharedSecret) {
  FLUXPIPE_REQUIRE_PG();
  Cluster c;
  Receiver rx;
  std::vector<std::string> hooks = {"--allow-private-webhooks"};
  auto a = c.node("api-a", "api", 0, hooks);
  auto b = c.node("api-b", "api", 0, hooks);
  auto w = c.node("worker", "worker", 10, hooks);
  std::string secret = last_line(run({FLUXPIPE_BIN, "webhook-secret", "--store", c.db.uri()}).output);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    json body = job(1);
    body["webhook"] = rx.url();
    json j = post(i % 2 ? *a : *b, c.key, body);
    ASSERT_EQ(j["http_status"], 200) << j.dump();
    ids.push_back(j["id"]);
  }
  std::vector<Delivery> got = rx.wait_for(5);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));   // room for a duplicate to arrive
  got = rx.wait_for(5);
  ASSERT_EQ(got.size(), 5u);   // three nodes poll the outbox; each message went out once
  std::set<std::string> seen;
  for (const Delivery& d : got) {
    EXPECT_TRUE(signature_valid(secret, d));
    seen.insert(json::parse(d.body)["id"].get<std::string>());
  }
  EXPECT_EQ(seen, std::set<std::string>(ids.begin(), ids.end()));
}

// The database goes away and comes back: clients get a clear 503 meanwhile, nothing accepted is
// lost, and the nodes resume by themselves. A PostgreSQL server of the test's own (the shared
// one serves the other tests meanwhile).
TEST(MultiNode, DatabaseOutageIs503AndNodesResumeAfterIt) {
  FLUXPIPE_REQUIRE_PG();
  const std::string script = std::string(FLUXPIPE_SOURCE_DIR) + "/scripts/pg_test_server.sh";
  RunResult started = run({"/bin/bash", script, "start"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  // "export FLUXPIPE_TEST_PG_HOST=DIR FLUXPIPE_TEST_PG_PORT=P FLUXPIPE_TEST_PG_DIR=DIR"
  std::string line = last_line(started.output);
  auto field = [&](const std::string& name) {
    size_t at = line.find(name + "=") + name.size() + 1;
    return line.substr(at, line.find(' ', at) - at);
  };
  std::string pg_dir = field("FLUXPIPE_TEST_PG_DIR"), port = field("FLUXPIPE_TEST_PG_PORT");
  std::string uri = "postgresql://postgres@/postgres?host=" + pg_dir + "&port=" + port;
  struct Cleanup {
    std::string script, dir;
    ~Cleanup() { run({"/bin/bash", script, "stop", dir}); }
  } cleanup{script, pg_dir};

  TempDir dir;
  std::string key = add_key(*server::open_store(uri, ""), "alice");
  auto node = [&](const std::string& name, const std::string& role) {
    std::filesystem::create_directories(dir.path() + "/" + name);
    return std::make_unique<ServerProcess>(dir.path() + "/" + name, 20,
                                           std::vector<std::string>{"--store", uri, "--images", dir.path() + "/images",
                                                                    "--role", role, "--node-id", name, "--lease-ms", "2000"});
  };
  auto api = node("api", "api");
  auto worker = node("worker", "worker");
  json before = post(*api, key, job(2));
  ASSERT_EQ(before["http_status"], 200) << before.dump();
  EXPECT_EQ(wait_done(*api, key, before["id"], 10000)["status"], "SUCCESS");

  ASSERT_EQ(run({"/bin/bash", script, "halt", pg_dir}).exit_code, 0);
  json during = post(*api, key, job(2));
  EXPECT_EQ(during["http_status"], 503) << during.dump();
  EXPECT_NE(during.value("error", "").find("database"), std::string::npos) << during.dump();
  auto status_during = api->client().Get("/generate/v3/status/" + before["id"].get<std::string>(), {{"API-Key", key}});
  ASSERT_TRUE(status_during);
  EXPECT_EQ(status_during->status, 503);
  EXPECT_EQ(api->client().Get("/healthz")->status, 200);   // the process lives
  EXPECT_EQ(api->client().Get("/readyz")->status, 503);    // but is not ready
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));

  ASSERT_EQ(run({"/bin/bash", script, "resume", pg_dir}).exit_code, 0);
  json after;
  for (int i = 0; i < 50; ++i) {
    after = post(*api, key, job(2));
    if (after["http_status"] == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(after["http_status"], 200) << after.dump();
  EXPECT_EQ(wait_done(*api, key, after["id"], 15000)["status"], "SUCCESS");   // the worker resumed
  EXPECT_EQ(wait_done(*api, key, before["id"], 5000)["status"], "SUCCESS");   // nothing lost
  if (HasFailure() || std::getenv("FLUXPIPE_TEST_SHOW_LOGS")) {
    for (const char* name : {"api", "worker"}) {
      std::ifstream in(dir.path() + "/" + name + "/server.log");
      std::cerr << "--- " << name << " log ---\n" << in.rdbuf() << "\n";
    }
  }
}

}  // namespace
}  // namespace fluxpipe::testing
