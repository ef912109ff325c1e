// The SQLite store: queue order, claiming, recovery after a crash, outbox, keys.
#include <gtest/gtest.h>

#include <thread>

#include "server/store.h"
#include "test_util.h"

namespace fluxpipe::server {
namespace {

using fluxpipe::testing::TempDir;

RequestRecord make_record(const std::string& id, const std::string& server_id = "", const std::string& webhook = "") {
  RequestRecord r;
  r.id = id;
  r.key_id = "key_a";
  r.download_token = id + "tok";
  r.params_json = "{}";
  r.seeds = {1, 2};
  r.file_names = {"a.png", "b.png"};
  r.server_id = server_id;
  r.webhook = webhook;
  r.created_ms = 1;
  return r;
}

TEST(SqliteStore, QueueIsFifoAndClaimMovesToRunning) {
  TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  for (const char* id : {"r1", "r2", "r3"}) {
    RequestRecord r = make_record(id);
    store->insert_request(r);
    EXPECT_GT(r.seq, 0);
  }
  EXPECT_EQ(store->count_active(), 3);
  auto first = store->claim_next("local", 100);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->id, "r1");
  EXPECT_EQ(first->state, JobState::running);
  EXPECT_EQ(first->attempts, 1);
  EXPECT_EQ(store->get_request("r1")->state, JobState::running);
  auto r3 = store->get_request("r3");
  EXPECT_EQ(store->count_ahead(r3->seq), 2);   // r2 queued ahead, r1 running
  EXPECT_TRUE(store->finish_request("r1", JobState::succeeded, "", 200));
  EXPECT_FALSE(store->finish_request("r1", JobState::failed, "again", 300));   // not running any more
  EXPECT_EQ(store->get_request("r1")->state, JobState::succeeded);
  EXPECT_EQ(store->claim_next("local", 300)->id, "r2");
  EXPECT_EQ(store->get_request_by_token("r3tok")->id, "r3");
  EXPECT_FALSE(store->get_request("nope"));
}

TEST(SqliteStore, ClaimHonoursServerId) {
  TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  RequestRecord a = make_record("for-b", "pool-b");
  RequestRecord b = make_record("any");
  store->insert_request(a);
  store->insert_request(b);
  EXPECT_EQ(store->claim_next("pool-a", 1)->id, "any");
  EXPECT_FALSE(store->claim_next("pool-a", 1));
  EXPECT_EQ(store->claim_next("pool-b", 1)->id, "for-b");
}

TEST(SqliteStore, RecoveryRequeuesThenFailsAfterMaxAttempts) {
  TempDir dir;
  std::string path = dir.path() + "/db";
  {
    auto store = open_sqlite_store(path);
    RequestRecord r = make_record("r1", "", "http://example.com/hook");
    store->insert_request(r);
    store->claim_next("local", 1);   // attempt 1, then "crash"
  }
  for (int attempt = 2; attempt <= 3; ++attempt) {
    auto store = open_sqlite_store(path);
    RecoveryReport rep = store->recover_interrupted(3, 10);
    EXPECT_EQ(rep.requeued, 1);
    EXPECT_EQ(rep.failed, 0);
    EXPECT_EQ(store->get_request("r1")->state, JobState::queued);
    EXPECT_EQ(store->claim_next("local", 1)->attempts, attempt);
  }
  auto store = open_sqlite_store(path);
  RecoveryReport rep = store->recover_interrupted(3, 10);
  EXPECT_EQ(rep.failed, 1);
  auto r = store->get_request("r1");
  EXPECT_EQ(r->state, JobState::failed);
  EXPECT_NE(r->error.find("interrupted 3 times"), std::string::npos);
  // The failure is announced to the webhook.
  auto due = store->due_outbox(10, 10);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].request_id, "r1");
  EXPECT_EQ(due[0].url, "http://example.com/hook");
}

TEST(SqliteStore, ReleaseRunningDoesNotCountTheAttempt) {
  TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  RequestRecord r = make_record("r1");
  store->insert_request(r);
  store->claim_next("local", 1);
  store->release_running("r1");
  auto back = store->get_request("r1");
  EXPECT_EQ(back->state, JobState::queued);
  EXPECT_EQ(back->attempts, 0);
}

TEST(SqliteStore, CancelOnlyWhileQueued) {
  TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  RequestRecord a = make_record("a", "", "http://example.com/h");
  RequestRecord b = make_record("b");
  store->insert_request(a);
  store->insert_request(b);
  EXPECT_TRUE(store->cancel_queued("a", 5));
  EXPECT_FALSE(store->cancel_queued("a", 5));
  EXPECT_EQ(store->get_request("a")->state, JobState::cancelled);
  EXPECT_EQ(store->due_outbox(5, 10).size(), 1u);
  store->claim_next("local", 6);
  EXPECT_FALSE(store->cancel_queued("b", 7));   // running now
}

TEST(SqliteStore, OutboxDueAndUpdate) {
  TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  RequestRecord r = make_record("r", "", "http://example.com/h");
  store->insert_request(r);
  store->claim_next("local", 1);
  store->finish_request("r", JobState::succeeded, "", 100);
  auto due = store->due_outbox(100, 10);
  ASSERT_EQ(due.size(), 1u);
  OutboxMessage m = due[0];
  m.attempts = 1;
  m.next_attempt_ms = 500;
  m.last_error = "HTTP 500";
  store->update_outbox(m);
  EXPECT_TRUE(store->due_outbox(499, 10).empty());
  EXPECT_EQ(store->due_outbox(500, 10).size(), 1u);
  m.done = true;
  store->update_outbox(m);
  EXPECT_TRUE(store->due_outbox(1000, 10).empty());
  EXPECT_EQ(store->get_outbox_for_request("r")->last_error, "HTTP 500");
  // No webhook: nothing enqueued.
  RequestRecord q = make_record("q");
  store->insert_request(q);
  store->claim_next("local", 1);
  store->finish_request("q", JobState::succeeded, "", 100);
  EXPECT_FALSE(store->get_outbox_for_request("q"));
}

TEST(SqliteStore, KeysAddListRevoke) {
  TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  store->add_key({"key_1", "alice", "h1", 1, false});
  store->add_key({"key_2", "bob", "h2", 2, false});
  EXPECT_EQ(store->revoke_key("alice"), 1);
  EXPECT_EQ(store->revoke_key("alice"), 0);
  EXPECT_EQ(store->revoke_key("key_2"), 1);
  auto keys = store->list_keys();
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_TRUE(keys[0].revoked && keys[1].revoked);
}

TEST(SqliteStore, ConcurrentInsertsAllLand) {
  TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        RequestRecord r = make_record("t" + std::to_string(t) + "_" + std::to_string(i));
        store->insert_request(r);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(store->count_active(), 200);
}

TEST(SqliteStore, UnopenablePathNamesIt) {
  try {
    open_sqlite_store("/nonexistent-dir/x/db");
    ADD_FAILURE();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x/db"), std::string::npos);
  }
}

}  // namespace
}  // namespace fluxpipe::server
