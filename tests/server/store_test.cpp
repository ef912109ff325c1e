// The store interface, one suite run against every implementation (SQLite and PostgreSQL):
// queue order and fairness, pools, claims and their fencing, leases and recovery, cancel,
// the outbox and its claims, keys, nodes, settings, events and the schema version.
#include <gtest/gtest.h>

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "core/error.h"
#include "pg_test_db.h"
#include "server/store.h"
#include "test_util.h"

namespace fluxpipe::server {
namespace {

using fluxpipe::testing::PgTestDb;
using fluxpipe::testing::TempDir;

int64_t test_now() { return fluxpipe::testing::test_now_ms(); }

RequestRecord make_record(const std::string& id, const std::string& server_id = "", const std::string& webhook = "",
                          const std::string& key_id = "key_a") {
  RequestRecord r;
  r.id = id;
  r.key_id = key_id;
  r.download_token = id + "tok";
  r.params_json = "{}";
  r.seeds = {1, 2};
  r.file_names = {"a.png", "b.png"};
  r.server_id = server_id;
  r.webhook = webhook;
  r.created_ms = 1;
  return r;
}

ClaimSpec claim_spec(const std::string& pool, int64_t now_ms, const std::string& node = "node-a",
                     int64_t lease_ms = 60000) {
  ClaimSpec s;
  s.pool = pool;
  s.node_id = node;
  s.now_ms = now_ms;
  s.lease_ms = lease_ms;
  return s;
}

RecoverSpec recover_spec(int64_t now_ms, const std::string& node, bool every_node, int max_attempts = 3) {
  RecoverSpec s;
  s.max_attempts = max_attempts;
  s.now_ms = now_ms;
  s.node_id = node;
  s.every_node = every_node;
  return s;
}

// The parameter names the implementation; each test gets a store of its own, and reopen()
// opens the same one again (a restart).
class StoreSuite : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgresql") {
      FLUXPIPE_REQUIRE_PG();
      db_ = std::make_unique<PgTestDb>();
      location_ = db_->uri();
    } else {
      location_ = "sqlite:" + dir_.path() + "/db";
    }
    store = open_store(location_, "");
  }

  std::unique_ptr<Store> reopen() { return open_store(location_, ""); }

  // Runs one statement on the store's database behind its back.
  void raw_exec(const std::string& sql) {
    if (db_) {
      db_->exec(sql);
      return;
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_.path() + "/db").c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(db);
  }

  // Pretends every lease has expired (PostgreSQL measures leases on its own clock).
  void expire_leases() { raw_exec("UPDATE requests SET lease_until_ms=1 WHERE state='running'"); }

  TempDir dir_;
  std::unique_ptr<PgTestDb> db_;
  std::string location_;
  std::unique_ptr<Store> store;
};

TEST_P(StoreSuite, QueueIsFifoAndClaimMovesToRunning) {
  for (const char* id : {"r1", "r2", "r3"}) {
    RequestRecord r = make_record(id);
    store->insert_request(r);
    EXPECT_GT(r.seq, 0);
  }
  EXPECT_EQ(store->count_active(), 3);
  auto first = store->claim_next(claim_spec("local", 100));
  ASSERT_TRUE(first);
  EXPECT_EQ(first->id, "r1");
  EXPECT_EQ(first->state, JobState::running);
  EXPECT_EQ(first->attempts, 1);
  EXPECT_EQ(first->node_id, "node-a");
  EXPECT_FALSE(first->claim.empty());
  auto stored = store->get_request("r1");
  EXPECT_EQ(stored->state, JobState::running);
  EXPECT_EQ(stored->claim, first->claim);
  auto r3 = store->get_request("r3");
  EXPECT_EQ(store->count_ahead(r3->seq, ""), 2);   // r2 queued ahead, r1 running
  EXPECT_EQ(store->count_ahead(r3->seq, "elsewhere"), 0);
  EXPECT_TRUE(store->finish_request("r1", first->claim, JobState::succeeded, "", 200));
  EXPECT_FALSE(store->finish_request("r1", first->claim, JobState::failed, "again", 300));   // not running any more
  EXPECT_EQ(store->get_request("r1")->state, JobState::succeeded);
  EXPECT_EQ(store->claim_next(claim_spec("local", 300))->id, "r2");
  EXPECT_EQ(store->get_request_by_token("r3tok")->id, "r3");
  EXPECT_FALSE(store->get_request("nope"));
}

TEST_P(StoreSuite, ClaimHonoursPools) {
  RequestRecord a = make_record("for-b", "pool-b");
  RequestRecord b = make_record("none");
  RequestRecord c = make_record("any", "any");
  store->insert_request(a);
  store->insert_request(b);
  store->insert_request(c);
  EXPECT_EQ(store->claim_next(claim_spec("pool-a", 1))->id, "none");
  EXPECT_EQ(store->claim_next(claim_spec("pool-a", 1))->id, "any");
  EXPECT_FALSE(store->claim_next(claim_spec("pool-a", 1)));
  EXPECT_EQ(store->claim_next(claim_spec("pool-b", 1))->id, "for-b");
}

TEST_P(StoreSuite, ClaimIsFairAcrossKeys) {
  // Key A bursts three jobs; key B's one job, submitted after, runs second, not fourth.
  for (const char* id : {"a1", "a2", "a3"}) {
    RequestRecord r = make_record(id, "", "", "key_a");
    store->insert_request(r);
  }
  RequestRecord b = make_record("b1", "", "", "key_b");
  store->insert_request(b);
  RequestRecord a4 = make_record("a4", "", "", "key_a");
  store->insert_request(a4);
  RequestRecord b2 = make_record("b2", "", "", "key_b");
  store->insert_request(b2);
  std::vector<std::string> order;
  for (int64_t t = 10; auto r = store->claim_next(claim_spec("local", t)); ++t) order.push_back(r->id);
  EXPECT_EQ(order, (std::vector<std::string>{"a1", "b1", "a2", "b2", "a3", "a4"}));
  EXPECT_EQ(store->count_active_for_key("key_a"), 4);
  EXPECT_EQ(store->count_active_for_key("key_b"), 2);
  EXPECT_EQ(store->count_active_for_key("key_c"), 0);
}

TEST_P(StoreSuite, KeysTakeTurnsWhenJobsFinishOneByOne) {
  // One worker: each job ends before the next claim. Key A's burst still alternates with key B.
  for (const char* id : {"a1", "a2", "a3"}) {
    RequestRecord r = make_record(id, "", "", "key_a");
    store->insert_request(r);
  }
  for (const char* id : {"b1", "b2"}) {
    RequestRecord r = make_record(id, "", "", "key_b");
    store->insert_request(r);
  }
  std::vector<std::string> order;
  for (int64_t t = 10; auto r = store->claim_next(claim_spec("local", t)); ++t) {
    order.push_back(r->id);
    EXPECT_TRUE(store->finish_request(r->id, r->claim, JobState::succeeded, "", t));
  }
  EXPECT_EQ(order, (std::vector<std::string>{"a1", "b1", "a2", "b2", "a3"}));
}

TEST_P(StoreSuite, FinishRenewAndReleaseAreFencedOnTheClaim) {
  RequestRecord r = make_record("r1");
  store->insert_request(r);
  auto old_claim = store->claim_next(claim_spec("local", 1, "node-a"));
  ASSERT_TRUE(old_claim);
  EXPECT_TRUE(store->renew_lease("r1", old_claim->claim, 2, 60000, 3, 10));
  auto mid = store->get_request("r1");
  EXPECT_EQ(mid->progress_done, 3);
  EXPECT_EQ(mid->progress_total, 10);
  // node-a stalls; its lease expires; node-b takes the job over.
  expire_leases();
  RecoveryReport rep = store->recover_interrupted(recover_spec(10, "node-b", false));
  EXPECT_EQ(rep.requeued, 1);
  auto new_claim = store->claim_next(claim_spec("local", 11, "node-b"));
  ASSERT_TRUE(new_claim);
  EXPECT_EQ(new_claim->attempts, 2);
  EXPECT_NE(new_claim->claim, old_claim->claim);
  // node-a wakes up: none of its writes land.
  EXPECT_FALSE(store->renew_lease("r1", old_claim->claim, 12, 60000, 9, 10));
  EXPECT_FALSE(store->finish_request("r1", old_claim->claim, JobState::failed, "stale", 12));
  store->release_running("r1", old_claim->claim);
  auto now = store->get_request("r1");
  EXPECT_EQ(now->state, JobState::running);
  EXPECT_EQ(now->node_id, "node-b");
  EXPECT_EQ(now->attempts, 2);
  EXPECT_TRUE(store->finish_request("r1", new_claim->claim, JobState::succeeded, "", 13));
  EXPECT_EQ(store->get_request("r1")->state, JobState::succeeded);
}

TEST_P(StoreSuite, RecoveryRequeuesThenFailsAfterMaxAttempts) {
  RequestRecord r = make_record("r1", "", "http://example.com/hook");
  store->insert_request(r);
  store->claim_next(claim_spec("local", 1));   // attempt 1, then "crash"
  for (int attempt = 2; attempt <= 3; ++attempt) {
    store = reopen();
    RecoveryReport rep = store->recover_interrupted(recover_spec(10, "restarted", true));
    EXPECT_EQ(rep.requeued, 1);
    EXPECT_EQ(rep.failed, 0);
    EXPECT_EQ(store->get_request("r1")->state, JobState::queued);
    EXPECT_EQ(store->claim_next(claim_spec("local", 1))->attempts, attempt);
  }
  store = reopen();
  RecoveryReport rep = store->recover_interrupted(recover_spec(10, "restarted", true));
  EXPECT_EQ(rep.failed, 1);
  auto failed = store->get_request("r1");
  EXPECT_EQ(failed->state, JobState::failed);
  EXPECT_NE(failed->error.find("interrupted 3 times"), std::string::npos);
  // The failure is announced to the webhook.
  auto due = store->claim_due_outbox("n", 10, 1000, 10);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].request_id, "r1");
  EXPECT_EQ(due[0].url, "http://example.com/hook");
}

TEST_P(StoreSuite, RecoveryNeverTouchesALiveClaimOfAnotherNode) {
  RequestRecord a = make_record("a");
  RequestRecord b = make_record("b");
  store->insert_request(a);
  store->insert_request(b);
  ASSERT_TRUE(store->claim_next(claim_spec("local", test_now(), "node-a", 600000)));
  ASSERT_TRUE(store->claim_next(claim_spec("local", test_now(), "node-b", 600000)));
  // node-c starting up: both leases are live, neither is its own.
  RecoveryReport rep = store->recover_interrupted(recover_spec(test_now(), "node-c", false));
  EXPECT_EQ(rep.requeued, 0);
  EXPECT_EQ(store->get_request("a")->state, JobState::running);
  // node-a restarting under its old name takes back its own claim only.
  rep = store->recover_interrupted(recover_spec(test_now(), "node-a", false));
  EXPECT_EQ(rep.requeued, 1);
  EXPECT_EQ(store->get_request("a")->state, JobState::queued);
  EXPECT_EQ(store->get_request("b")->state, JobState::running);
}

TEST_P(StoreSuite, ReleaseRunningDoesNotCountTheAttempt) {
  RequestRecord r = make_record("r1");
  store->insert_request(r);
  auto c = store->claim_next(claim_spec("local", 1));
  store->release_running("r1", c->claim);
  auto back = store->get_request("r1");
  EXPECT_EQ(back->state, JobState::queued);
  EXPECT_EQ(back->attempts, 0);
  EXPECT_TRUE(back->claim.empty());
}

TEST_P(StoreSuite, CancelQueuedRunningAndFinished) {
  RequestRecord a = make_record("a", "", "http://example.com/h");
  RequestRecord b = make_record("b");
  store->insert_request(a);
  store->insert_request(b);
  EXPECT_EQ(store->request_cancel("a", 5), CancelOutcome::cancelled);
  EXPECT_EQ(store->request_cancel("a", 5), CancelOutcome::already_final);
  EXPECT_EQ(store->request_cancel("zzz", 5), CancelOutcome::not_found);
  EXPECT_EQ(store->get_request("a")->state, JobState::cancelled);
  EXPECT_EQ(store->claim_due_outbox("n", 5, 1000, 10).size(), 1u);
  auto c = store->claim_next(claim_spec("local", 6));
  ASSERT_EQ(c->id, "b");
  EXPECT_FALSE(store->cancel_requested("b"));
  EXPECT_EQ(store->request_cancel("b", 7), CancelOutcome::requested);
  EXPECT_TRUE(store->cancel_requested("b"));
  EXPECT_EQ(store->get_request("b")->state, JobState::running);   // the runner ends it
}

TEST_P(StoreSuite, OutboxIsClaimedOncePerLease) {
  RequestRecord r = make_record("r", "", "http://example.com/h");
  store->insert_request(r);
  auto c = store->claim_next(claim_spec("local", 1));
  store->finish_request("r", c->claim, JobState::succeeded, "", 100);
  auto due = store->claim_due_outbox("node-a", 100, 1000, 10);
  ASSERT_EQ(due.size(), 1u);
  // Claimed by node-a: node-b gets nothing until node-a's claim lapses (it may have died).
  EXPECT_TRUE(store->claim_due_outbox("node-b", 200, 1000, 10).empty());
  EXPECT_EQ(store->claim_due_outbox("node-b", 1100, 1000, 10).size(), 1u);
  OutboxMessage m = due[0];
  m.attempts = 1;
  m.next_attempt_ms = 5000;
  m.last_error = "HTTP 500";
  store->update_outbox(m);   // releases the claim
  EXPECT_TRUE(store->claim_due_outbox("node-a", 4999, 1000, 10).empty());
  EXPECT_EQ(store->claim_due_outbox("node-a", 5000, 1000, 10).size(), 1u);
  m.done = true;
  store->update_outbox(m);
  EXPECT_TRUE(store->claim_due_outbox("node-a", 100000, 1000, 10).empty());
  EXPECT_EQ(store->get_outbox_for_request("r")->last_error, "HTTP 500");
  // No webhook: nothing enqueued.
  RequestRecord q = make_record("q");
  store->insert_request(q);
  auto cq = store->claim_next(claim_spec("local", 1));
  store->finish_request("q", cq->claim, JobState::succeeded, "", 100);
  EXPECT_FALSE(store->get_outbox_for_request("q"));
}

TEST_P(StoreSuite, KeysAddListRevoke) {
  store->add_key({"key_1", "alice", "h1", 1, false});
  store->add_key({"key_2", "bob", "h2", 2, false});
  EXPECT_EQ(store->revoke_key("alice"), 1);
  EXPECT_EQ(store->revoke_key("alice"), 0);
  EXPECT_EQ(store->revoke_key("key_2"), 1);
  auto keys = store->list_keys();
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].name, "alice");
  EXPECT_TRUE(keys[0].revoked && keys[1].revoked);
}

TEST_P(StoreSuite, ConcurrentInsertsAllLand) {
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

TEST_P(StoreSuite, ConcurrentClaimersNeverShareAJob) {
  for (int i = 0; i < 60; ++i) {
    RequestRecord r = make_record("j" + std::to_string(i), "", "", "key_" + std::to_string(i % 3));
    store->insert_request(r);
  }
  // Four workers, each with its own connection to the store, as separate nodes would have.
  std::vector<std::unique_ptr<Store>> nodes;
  for (int t = 0; t < 4; ++t) nodes.push_back(reopen());
  std::mutex mu;
  std::vector<std::string> claimed;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      while (auto r = nodes[t]->claim_next(claim_spec("local", 1, "node-" + std::to_string(t)))) {
        std::lock_guard lock(mu);
        claimed.push_back(r->id);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> unique(claimed.begin(), claimed.end());
  EXPECT_EQ(claimed.size(), 60u);
  EXPECT_EQ(unique.size(), 60u);
}

TEST_P(StoreSuite, NodesHeartbeatAndExpire) {
  int64_t now = test_now();
  store->node_heartbeat({"w1", "pool-a", "worker", now});
  store->node_heartbeat({"w2", "pool-b", "all", now});
  auto live = store->live_nodes(now, 60000);
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].node_id, "w1");
  EXPECT_EQ(live[0].server_id, "pool-a");
  EXPECT_EQ(live[1].role, "all");
  store->remove_node("w1");
  EXPECT_EQ(store->live_nodes(now, 60000).size(), 1u);
  raw_exec("UPDATE nodes SET heartbeat_ms=1");   // w2 went silent long ago
  EXPECT_TRUE(store->live_nodes(now, 60000).empty());
}

TEST_P(StoreSuite, SettingIsStoredOnceAndShared) {
  EXPECT_EQ(store->setting_or_insert("webhook_secret", "first"), "first");
  EXPECT_EQ(store->setting_or_insert("webhook_secret", "second"), "first");
  EXPECT_EQ(reopen()->setting_or_insert("webhook_secret", "third"), "first");
}

TEST_P(StoreSuite, EventsReachTheListener) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<StoreEvent::Kind, std::string>> seen;
  // The listener is another node's store on the same database where that matters (PostgreSQL).
  std::unique_ptr<Store> other = reopen();
  Store& listening = std::string(store->kind()) == "postgresql" ? *other : *store;
  listening.listen([&](const StoreEvent& e) {
    std::lock_guard lock(mu);
    seen.emplace_back(e.kind, e.value);
    cv.notify_all();
  });
  auto wait_for = [&](StoreEvent::Kind kind, const std::string& value) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(10), [&] {
      return std::find(seen.begin(), seen.end(), std::make_pair(kind, value)) != seen.end();
    });
  };
  if (&listening != store.get()) std::this_thread::sleep_for(std::chrono::milliseconds(300));   // LISTEN is up
  RequestRecord r = make_record("e1", "pool-x");
  store->insert_request(r);
  EXPECT_TRUE(wait_for(StoreEvent::queued, "pool-x"));
  auto c = store->claim_next(claim_spec("pool-x", 1));
  EXPECT_EQ(store->request_cancel("e1", 2), CancelOutcome::requested);
  EXPECT_TRUE(wait_for(StoreEvent::cancel, "e1"));
  store->finish_request("e1", c->claim, JobState::cancelled, "cancelled while running", 3);
  EXPECT_TRUE(wait_for(StoreEvent::finished, "e1"));
}

TEST_P(StoreSuite, NewerSchemaIsRefusedNamingBothVersions) {
  EXPECT_EQ(store->schema_version(), kSchemaVersion);
  std::string table = std::string(store->kind()) == "postgresql" ? "fluxpipe_settings" : "settings";
  raw_exec("UPDATE " + table + " SET value='99' WHERE name='schema_version'");
  store.reset();
  try {
    reopen();
    ADD_FAILURE() << "a newer schema was accepted";
  } catch (const UserError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("99"), std::string::npos) << what;
    EXPECT_NE(what.find(std::to_string(kSchemaVersion)), std::string::npos) << what;
  }
}

TEST_P(StoreSuite, RetentionExpiresEndedRequestsLeavingTombstones) {
  RequestRecord old_one = make_record("old", "", "http://example.com/h");
  RequestRecord young = make_record("young");
  RequestRecord waiting = make_record("waiting");
  store->insert_request(old_one);
  store->insert_request(young);
  store->insert_request(waiting);
  auto c1 = store->claim_next(claim_spec("local", 1));
  store->finish_request(c1->id, c1->claim, JobState::succeeded, "", 100);
  auto c2 = store->claim_next(claim_spec("local", 1));
  store->finish_request(c2->id, c2->claim, JobState::failed, "x", 5000);
  std::vector<RequestRecord> due = store->ended_before(1000, 10);
  ASSERT_EQ(due.size(), 1u);   // "young" ended later, "waiting" has not ended
  EXPECT_EQ(due[0].id, "old");
  store->expire_request(due[0], 2000);
  store->expire_request(due[0], 2001);   // a second node doing the same: harmless
  EXPECT_FALSE(store->get_request("old"));
  EXPECT_FALSE(store->get_outbox_for_request("old"));
  auto tomb = store->get_expired("old");
  ASSERT_TRUE(tomb);
  EXPECT_EQ(tomb->key_id, "key_a");
  EXPECT_EQ(tomb->expired_ms, 2000);
  EXPECT_EQ(store->get_expired_by_token("oldtok")->id, "old");
  EXPECT_FALSE(store->get_expired("young"));
  EXPECT_TRUE(store->ended_before(1000, 10).empty());
  EXPECT_EQ(store->prune(1999, 0), 0);
  EXPECT_EQ(store->prune(2001, 0), 1);
  EXPECT_FALSE(store->get_expired("old"));
}

TEST_P(StoreSuite, IdempotencyKeyStoresOneRequest) {
  IdempotencyKey k{"order-42", "hash-a", 0};
  RequestRecord first = make_record("first");
  EXPECT_EQ(store->insert_request_once(first, k), IdempotentInsert::inserted);
  RequestRecord again = make_record("again");
  EXPECT_EQ(store->insert_request_once(again, k), IdempotentInsert::existing);
  EXPECT_EQ(again.id, "first");
  RequestRecord other_body = make_record("other");
  EXPECT_EQ(store->insert_request_once(other_body, {"order-42", "hash-b", 0}), IdempotentInsert::conflict);
  EXPECT_FALSE(store->get_request("other"));
  // Another key may use the same Idempotency-Key value.
  RequestRecord bobs = make_record("bobs", "", "", "key_b");
  EXPECT_EQ(store->insert_request_once(bobs, k), IdempotentInsert::inserted);
  // After the window (since_ms past the first use) the key starts afresh.
  RequestRecord later = make_record("later");
  later.created_ms = 100;
  EXPECT_EQ(store->insert_request_once(later, {"order-42", "hash-b", 50}), IdempotentInsert::inserted);
  EXPECT_EQ(store->count_active(), 3);
}

TEST_P(StoreSuite, ConcurrentSubmissionsWithOneIdempotencyKeyStoreOne) {
  std::vector<std::unique_ptr<Store>> nodes;
  for (int t = 0; t < 4; ++t) nodes.push_back(reopen());
  std::atomic<int> inserted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      RequestRecord r = make_record("r" + std::to_string(t));
      if (nodes[t]->insert_request_once(r, {"same", "h", 0}) == IdempotentInsert::inserted) ++inserted;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(inserted.load(), 1);
  EXPECT_EQ(store->count_active(), 1);
}

TEST_P(StoreSuite, ImagesRoundTripByteForByte) {
  std::string bytes("\x89PNG\r\n\x1a\n\0\0\xff\x00tail", 16);
  store->put_image("abcd", "x-0.png", bytes);
  EXPECT_EQ(store->get_image("abcd", "x-0.png"), bytes);
  EXPECT_FALSE(store->get_image("abcd", "x-1.png"));
  store->put_image("abcd", "x-0.png", "again");   // a re-run after a takeover writes it once more
  EXPECT_EQ(store->get_image("abcd", "x-0.png"), "again");
  store->put_image("abcd", "x-1.png", bytes);
  store->delete_images("abcd");
  EXPECT_FALSE(store->get_image("abcd", "x-0.png"));
  EXPECT_FALSE(store->get_image("abcd", "x-1.png"));
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreSuite, ::testing::Values("sqlite", "postgresql"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(SqliteStore, UnopenablePathNamesIt) {
  try {
    open_sqlite_store("/nonexistent-dir/x/db");
    ADD_FAILURE();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x/db"), std::string::npos);
  }
}

TEST(PgStore, UnreachableServerIsStoreUnavailableWithoutThePassword) {
  int port = fluxpipe::testing::free_port();
  try {
    open_store("postgresql://user:s3cret@127.0.0.1:" + std::to_string(port) + "/db?connect_timeout=2", "");
    ADD_FAILURE();
  } catch (const StoreUnavailable& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("127.0.0.1"), std::string::npos) << what;
    EXPECT_EQ(what.find("s3cret"), std::string::npos) << what;
  }
}

TEST(OpenStore, UnknownLocationIsAUserError) {
  EXPECT_THROW(open_store("mysql://x", ""), UserError);
  EXPECT_THROW(open_store("sqlite:", ""), UserError);
  EXPECT_THROW(open_store("", ""), UserError);
  EXPECT_EQ(redact_store_location("postgresql://u:pw@h:5/d"), "postgresql://u:***@h:5/d");
  EXPECT_EQ(redact_store_location("postgresql://u@h/d"), "postgresql://u@h/d");
}

}  // namespace
}  // namespace fluxpipe::server
