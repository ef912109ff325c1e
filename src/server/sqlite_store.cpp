// The embedded store: one SQLite database in WAL mode, synchronous=FULL, so a commit
// that returned survives kill -9 and power loss. Two connections, each behind its own
// mutex: one writes (each commit waits for fsync), one reads, so that pollers never wait
// behind a submission's fsync (WAL lets a reader run beside the writer).
// One process owns it (the server's data-folder lock), so its events are delivered in-process,
// after the commit, on the calling thread.
#include <sqlite3.h>

#include <mutex>

#include <nlohmann/json.hpp>

#include "server/store_common.h"

#include "core/error.h"
#include "server/store.h"

namespace fluxpipe::server {

namespace {

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS api_keys(
  id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
  created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS requests(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL,
  download_token TEXT NOT NULL UNIQUE, params TEXT NOT NULL, seeds TEXT NOT NULL,
  file_names TEXT NOT NULL, server_id TEXT NOT NULL, batch_id TEXT NOT NULL, webhook TEXT NOT NULL,
  state TEXT NOT NULL, error TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL DEFAULT 0, finished_ms INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests(state, seq);
CREATE INDEX IF NOT EXISTS requests_by_batch ON requests(key_id, batch_id);
CREATE INDEX IF NOT EXISTS requests_by_key_started ON requests(key_id, started_ms);
CREATE TABLE IF NOT EXISTS outbox(
  id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, url TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL,
  last_error TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(done, next_attempt_ms);
CREATE TABLE IF NOT EXISTS nodes(
  node_id TEXT PRIMARY KEY, server_id TEXT NOT NULL, role TEXT NOT NULL, heartbeat_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS settings(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS expired(
  id TEXT PRIMARY KEY, key_id TEXT NOT NULL, download_token TEXT NOT NULL UNIQUE, expired_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency(
  key_id TEXT NOT NULL, idem_key TEXT NOT NULL, body_sha256 TEXT NOT NULL, request_id TEXT NOT NULL,
  created_ms INTEGER NOT NULL, PRIMARY KEY(key_id, idem_key));
CREATE TABLE IF NOT EXISTS images(
  token TEXT NOT NULL, name TEXT NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY(token, name));
CREATE INDEX IF NOT EXISTS requests_by_finished ON requests(finished_ms)
  WHERE state IN ('succeeded','failed','cancelled');
)sql";

// The pool's queue in claim order (pg_store.cpp spells the same query in PostgreSQL's dialect):
// q ranks each key's queued jobs (rn 1 = its oldest), served says when each key last had a job
// started. Claims go by rn, then to the key served least recently, then oldest first: each
// key's n-th job before any key's (n+1)-th, and keys take turns.
const char* kFairQueue =
    "q AS (SELECT seq AS qseq, key_id AS qkey, row_number() OVER (PARTITION BY key_id ORDER BY seq) AS rn "
    "FROM requests WHERE state='queued' AND server_id IN ('', 'any', ?)), "
    "served AS (SELECT key_id AS skey, MAX(started_ms) AS last FROM requests "
    "WHERE key_id IN (SELECT qkey FROM q) GROUP BY key_id)";

const char* kRequestColumns =
    "seq, id, key_id, download_token, params, seeds, file_names, server_id, batch_id, webhook, state, error, "
    "attempts, created_ms, started_ms, finished_ms, warning, node_id, claim, lease_until_ms, progress_done, "
    "progress_total";

// A prepared statement with positional binding; finalized on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      throw IoError(std::string("[store] prepare failed: ") + sqlite3_errmsg(db) + " in: " + sql);
    }
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(const std::string& v) {
    check(sqlite3_bind_text(stmt_, ++arg_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Stmt& bind_blob(const std::string& v) {
    check(sqlite3_bind_blob(stmt_, ++arg_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Stmt& bind(int64_t v) {
    check(sqlite3_bind_int64(stmt_, ++arg_, v));
    return *this;
  }
  // True while a row is available.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw IoError(std::string("[store] ") + sqlite3_errmsg(db_));
  }
  std::string blob(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : std::string();
  }
  std::string text(int col) {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : std::string();
  }
  int64_t integer(int col) { return sqlite3_column_int64(stmt_, col); }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) throw IoError(std::string("[store] bind failed: ") + sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int arg_ = 0;
};

RequestRecord read_request(Stmt& s) {
  RequestRecord r;
  r.seq = s.integer(0);
  r.id = s.text(1);
  r.key_id = s.text(2);
  r.download_token = s.text(3);
  r.params_json = s.text(4);
  r.seeds = nlohmann::json::parse(s.text(5)).get<std::vector<int64_t>>();
  r.file_names = nlohmann::json::parse(s.text(6)).get<std::vector<std::string>>();
  r.server_id = s.text(7);
  r.batch_id = s.text(8);
  r.webhook = s.text(9);
  r.state = job_state_from_string(s.text(10));
  r.error = s.text(11);
  r.attempts = static_cast<int>(s.integer(12));
  r.created_ms = s.integer(13);
  r.started_ms = s.integer(14);
  r.finished_ms = s.integer(15);
  r.warning = s.text(16);
  r.node_id = s.text(17);
  r.claim = s.text(18);
  r.lease_until_ms = s.integer(19);
  r.progress_done = static_cast<int>(s.integer(20));
  r.progress_total = static_cast<int>(s.integer(21));
  return r;
}

OutboxMessage read_outbox(Stmt& s) {
  OutboxMessage m;
  m.id = s.integer(0);
  m.request_id = s.text(1);
  m.url = s.text(2);
  m.attempts = static_cast<int>(s.integer(3));
  m.next_attempt_ms = s.integer(4);
  m.last_error = s.text(5);
  m.done = s.integer(6) != 0;
  return m;
}

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(const std::string& path) : path_(path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw IoError("[store] cannot open SQLite database '" + path + "': " + msg);
    }
    sqlite3_busy_timeout(db_, 5000);
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");
    exec(kSchema);
    check_schema_version();
    add_column_if_missing("requests", "warning", "TEXT NOT NULL DEFAULT ''");
    add_column_if_missing("requests", "cancel_requested", "INTEGER NOT NULL DEFAULT 0");
    // Schema 2: leases and progress, outbox claims.
    add_column_if_missing("requests", "node_id", "TEXT NOT NULL DEFAULT ''");
    add_column_if_missing("requests", "claim", "TEXT NOT NULL DEFAULT ''");
    add_column_if_missing("requests", "lease_until_ms", "INTEGER NOT NULL DEFAULT 0");
    add_column_if_missing("requests", "progress_done", "INTEGER NOT NULL DEFAULT 0");
    add_column_if_missing("requests", "progress_total", "INTEGER NOT NULL DEFAULT 0");
    add_column_if_missing("outbox", "claimed_by", "TEXT NOT NULL DEFAULT ''");
    add_column_if_missing("outbox", "claimed_until_ms", "INTEGER NOT NULL DEFAULT 0");
    if (sqlite3_open_v2(path.c_str(), &rdb_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
      std::string msg = rdb_ ? sqlite3_errmsg(rdb_) : "out of memory";
      sqlite3_close(rdb_);
      sqlite3_close(db_);
      throw IoError("[store] cannot open SQLite database '" + path + "' for reading: " + msg);
    }
    sqlite3_busy_timeout(rdb_, 5000);
  }
  ~SqliteStore() override {
    sqlite3_close(rdb_);
    sqlite3_close(db_);
  }

  void add_key(const ApiKeyRecord& key) override {
    std::lock_guard lock(mu_);
    Stmt s(db_, "INSERT INTO api_keys(id, name, hash, created_ms, revoked) VALUES(?,?,?,?,0)");
    s.bind(key.id).bind(key.name).bind(key.hash_hex).bind(key.created_ms).step();
  }

  std::vector<ApiKeyRecord> list_keys() override {
    std::lock_guard lock(rmu_);
    Stmt s(rdb_, "SELECT id, name, hash, created_ms, revoked FROM api_keys ORDER BY created_ms, id");
    std::vector<ApiKeyRecord> out;
    while (s.step()) out.push_back({s.text(0), s.text(1), s.text(2), s.integer(3), s.integer(4) != 0});
    return out;
  }

  int revoke_key(const std::string& id_or_name) override {
    std::lock_guard lock(mu_);
    Stmt s(db_, "UPDATE api_keys SET revoked=1 WHERE revoked=0 AND (id=? OR name=?)");
    s.bind(id_or_name).bind(id_or_name).step();
    return sqlite3_changes(db_);
  }

  void insert_request(RequestRecord& r) override {
    {
      std::lock_guard lock(mu_);
      insert_locked(r);
    }
    emit({StoreEvent::queued, r.server_id});
  }

  IdempotentInsert insert_request_once(RequestRecord& r, const IdempotencyKey& key) override {
    {
      std::lock_guard lock(mu_);
      Transaction tx(this);
      Stmt s(db_, "SELECT body_sha256, request_id, created_ms FROM idempotency WHERE key_id=? AND idem_key=?");
      s.bind(r.key_id).bind(key.key);
      if (s.step() && s.integer(2) >= key.since_ms) {
        if (s.text(0) != key.body_sha256) return IdempotentInsert::conflict;
        r.id = s.text(1);
        return IdempotentInsert::existing;
      }
      insert_locked(r);
      Stmt u(db_,
             "INSERT INTO idempotency(key_id, idem_key, body_sha256, request_id, created_ms) VALUES(?,?,?,?,?) "
             "ON CONFLICT(key_id, idem_key) DO UPDATE SET body_sha256=excluded.body_sha256, "
             "request_id=excluded.request_id, created_ms=excluded.created_ms");
      u.bind(r.key_id).bind(key.key).bind(key.body_sha256).bind(r.id).bind(r.created_ms).step();
      tx.commit();
    }
    emit({StoreEvent::queued, r.server_id});
    return IdempotentInsert::inserted;
  }

  std::optional<RequestRecord> get_request(const std::string& id) override {
    return get_one("id", id);
  }

  std::optional<RequestRecord> get_request_by_token(const std::string& token) override {
    return get_one("download_token", token);
  }

  std::vector<RequestRecord> list_batch(const std::string& key_id, const std::string& batch_id) override {
    std::lock_guard lock(rmu_);
    std::string sql = std::string("SELECT ") + kRequestColumns +
                      " FROM requests WHERE key_id=? AND batch_id=? ORDER BY seq LIMIT 1000";
    Stmt s(rdb_, sql.c_str());
    s.bind(key_id).bind(batch_id);
    std::vector<RequestRecord> out;
    while (s.step()) out.push_back(read_request(s));
    return out;
  }

  std::optional<RequestRecord> claim_next(const ClaimSpec& spec) override {
    std::lock_guard lock(mu_);
    Transaction tx(this);
    std::string sql = std::string("WITH ") + kFairQueue + " SELECT " + kRequestColumns +
                      " FROM requests JOIN q ON q.qseq=requests.seq LEFT JOIN served ON served.skey=q.qkey "
                      "ORDER BY q.rn, COALESCE(served.last, 0), requests.seq LIMIT 1";
    Stmt s(db_, sql.c_str());
    s.bind(spec.pool);
    if (!s.step()) return std::nullopt;
    RequestRecord r = read_request(s);
    r.claim = new_claim_token();
    Stmt u(db_,
           "UPDATE requests SET state='running', attempts=attempts+1, started_ms=?, node_id=?, claim=?, "
           "lease_until_ms=?, progress_done=0, progress_total=0 WHERE seq=?");
    u.bind(spec.now_ms).bind(spec.node_id).bind(r.claim).bind(spec.now_ms + spec.lease_ms).bind(r.seq).step();
    tx.commit();
    r.state = JobState::running;
    r.attempts += 1;
    r.started_ms = spec.now_ms;
    r.node_id = spec.node_id;
    r.lease_until_ms = spec.now_ms + spec.lease_ms;
    r.progress_done = r.progress_total = 0;
    return r;
  }

  bool renew_lease(const std::string& id, const std::string& claim, int64_t now_ms, int64_t lease_ms, int done,
                   int total) override {
    int64_t lease_until_ms = now_ms + lease_ms;
    std::lock_guard lock(mu_);
    Stmt u(db_,
           "UPDATE requests SET lease_until_ms=?, progress_done=?, progress_total=? "
           "WHERE id=? AND state='running' AND claim=?");
    u.bind(lease_until_ms).bind(static_cast<int64_t>(done)).bind(static_cast<int64_t>(total)).bind(id).bind(claim).step();
    return sqlite3_changes(db_) == 1;
  }

  bool finish_request(const std::string& id, const std::string& claim, JobState final_state,
                      const std::string& error, int64_t now_ms, const std::string& warning) override {
    {
      std::lock_guard lock(mu_);
      Transaction tx(this);
      Stmt u(db_,
             "UPDATE requests SET state=?, error=?, finished_ms=?, warning=?, lease_until_ms=0 "
             "WHERE id=? AND state='running' AND claim=?");
      u.bind(std::string(to_string(final_state))).bind(error).bind(now_ms).bind(warning).bind(id).bind(claim).step();
      if (sqlite3_changes(db_) != 1) return false;
      enqueue_webhook_locked(id, now_ms);
      tx.commit();
    }
    emit({StoreEvent::finished, id});
    return true;
  }

  CancelOutcome request_cancel(const std::string& id, int64_t now_ms) override {
    CancelOutcome outcome = CancelOutcome::already_final;
    {
      std::lock_guard lock(mu_);
      Transaction tx(this);
      Stmt s(db_, "SELECT state FROM requests WHERE id=?");
      s.bind(id);
      if (!s.step()) return CancelOutcome::not_found;
      JobState state = job_state_from_string(s.text(0));
      if (state == JobState::queued) {
        Stmt u(db_, "UPDATE requests SET state='cancelled', error=?, finished_ms=? WHERE id=? AND state='queued'");
        u.bind(std::string(kCancelledQueued)).bind(now_ms).bind(id).step();
        enqueue_webhook_locked(id, now_ms);
        outcome = CancelOutcome::cancelled;
      } else if (state == JobState::running) {
        Stmt u(db_, "UPDATE requests SET cancel_requested=1 WHERE id=?");
        u.bind(id).step();
        outcome = CancelOutcome::requested;
      } else {
        return CancelOutcome::already_final;
      }
      tx.commit();
    }
    emit({outcome == CancelOutcome::cancelled ? StoreEvent::finished : StoreEvent::cancel, id});
    return outcome;
  }

  bool cancel_requested(const std::string& id) override {
    std::lock_guard lock(rmu_);
    Stmt s(rdb_, "SELECT cancel_requested FROM requests WHERE id=?");
    s.bind(id);
    return s.step() && s.integer(0) != 0;
  }

  void release_running(const std::string& id, const std::string& claim) override {
    {
      std::lock_guard lock(mu_);
      Stmt u(db_,
             "UPDATE requests SET state='queued', attempts=MAX(attempts-1,0), node_id='', claim='', lease_until_ms=0 "
             "WHERE id=? AND state='running' AND claim=?");
      u.bind(id).bind(claim).step();
      if (sqlite3_changes(db_) != 1) return;
    }
    std::optional<RequestRecord> r = get_request(id);
    if (r) emit({StoreEvent::queued, r->server_id});
  }

  int64_t count_active() override {
    std::lock_guard lock(rmu_);
    Stmt s(rdb_, "SELECT COUNT(*) FROM requests WHERE state IN ('queued','running')");
    s.step();
    return s.integer(0);
  }

  int64_t count_active_for_key(const std::string& key_id) override {
    std::lock_guard lock(rmu_);
    Stmt s(rdb_, "SELECT COUNT(*) FROM requests WHERE key_id=? AND state IN ('queued','running')");
    s.bind(key_id).step();
    return s.integer(0);
  }

  int64_t count_ahead(int64_t seq, const std::string& server_id) override {
    std::lock_guard lock(rmu_);
    Stmt s(rdb_,
           "SELECT (SELECT COUNT(*) FROM requests WHERE state='queued' AND server_id=? AND seq<?) + "
           "(SELECT COUNT(*) FROM requests WHERE state='running' AND server_id=?)");
    s.bind(server_id).bind(seq).bind(server_id).step();
    return s.integer(0);
  }

  RecoveryReport recover_interrupted(const RecoverSpec& spec) override {
    RecoveryReport report;
    std::vector<std::string> failed;
    {
      std::lock_guard lock(mu_);
      Transaction tx(this);
      const char* gone = "state='running' AND (?=1 OR node_id=? OR lease_until_ms<?)";
      {
        Stmt s(db_, (std::string("SELECT id FROM requests WHERE ") + gone + " AND attempts>=?").c_str());
        s.bind(int64_t{spec.every_node}).bind(spec.node_id).bind(spec.now_ms).bind(int64_t{spec.max_attempts});
        while (s.step()) failed.push_back(s.text(0));
      }
      for (const std::string& id : failed) {
        Stmt u(db_, "UPDATE requests SET state='failed', error=?, finished_ms=?, lease_until_ms=0 WHERE id=?");
        u.bind(interrupted_error(spec.max_attempts)).bind(spec.now_ms).bind(id).step();
        enqueue_webhook_locked(id, spec.now_ms);
        ++report.failed;
      }
      Stmt u(db_, (std::string("UPDATE requests SET state='queued', node_id='', claim='', lease_until_ms=0 WHERE ") +
                   gone).c_str());
      u.bind(int64_t{spec.every_node}).bind(spec.node_id).bind(spec.now_ms).step();
      report.requeued = sqlite3_changes(db_);
      tx.commit();
    }
    for (const std::string& id : failed) emit({StoreEvent::finished, id});
    if (report.requeued) emit({StoreEvent::queued, ""});
    return report;
  }

  std::vector<RequestRecord> ended_before(int64_t before_ms, int limit) override {
    std::lock_guard lock(rmu_);
    std::string sql = std::string("SELECT ") + kRequestColumns +
                      " FROM requests WHERE state IN ('succeeded','failed','cancelled') AND finished_ms<? "
                      "ORDER BY finished_ms LIMIT ?";
    Stmt s(rdb_, sql.c_str());
    s.bind(before_ms).bind(static_cast<int64_t>(limit));
    std::vector<RequestRecord> out;
    while (s.step()) out.push_back(read_request(s));
    return out;
  }

  void expire_request(const RequestRecord& r, int64_t now_ms) override {
    std::lock_guard lock(mu_);
    Transaction tx(this);
    Stmt t(db_, "INSERT INTO expired(id, key_id, download_token, expired_ms) VALUES(?,?,?,?) ON CONFLICT DO NOTHING");
    t.bind(r.id).bind(r.key_id).bind(r.download_token).bind(now_ms).step();
    Stmt o(db_, "DELETE FROM outbox WHERE request_id=?");
    o.bind(r.id).step();
    Stmt i(db_, "DELETE FROM idempotency WHERE request_id=?");
    i.bind(r.id).step();
    Stmt d(db_, "DELETE FROM requests WHERE id=?");
    d.bind(r.id).step();
    tx.commit();
  }

  std::optional<ExpiredRecord> get_expired(const std::string& id) override { return expired_where("id", id); }

  std::optional<ExpiredRecord> get_expired_by_token(const std::string& token) override {
    return expired_where("download_token", token);
  }

  int prune(int64_t before_ms, int64_t idempotency_before_ms) override {
    std::lock_guard lock(mu_);
    Transaction tx(this);
    Stmt e(db_, "DELETE FROM expired WHERE expired_ms<?");
    e.bind(before_ms).step();
    int n = sqlite3_changes(db_);
    Stmt i(db_, "DELETE FROM idempotency WHERE created_ms<?");
    i.bind(idempotency_before_ms).step();
    tx.commit();
    return n;
  }

  void put_image(const std::string& token, const std::string& name, const std::string& bytes) override {
    std::lock_guard lock(mu_);
    Stmt u(db_, "INSERT INTO images(token, name, bytes) VALUES(?,?,?) ON CONFLICT(token, name) DO UPDATE SET "
                "bytes=excluded.bytes");
    u.bind(token).bind(name).bind_blob(bytes).step();
  }

  std::optional<std::string> get_image(const std::string& token, const std::string& name) override {
    std::lock_guard lock(rmu_);
    Stmt s(rdb_, "SELECT bytes FROM images WHERE token=? AND name=?");
    s.bind(token).bind(name);
    if (!s.step()) return std::nullopt;
    return s.blob(0);
  }

  void delete_images(const std::string& token) override {
    std::lock_guard lock(mu_);
    Stmt u(db_, "DELETE FROM images WHERE token=?");
    u.bind(token).step();
  }

  std::vector<OutboxMessage> claim_due_outbox(const std::string& node_id, int64_t now_ms, int64_t lease_ms,
                                              int limit) override {
    std::lock_guard lock(mu_);
    Transaction tx(this);
    std::vector<OutboxMessage> out;
    {
      Stmt s(db_,
             "SELECT id, request_id, url, attempts, next_attempt_ms, last_error, done FROM outbox "
             "WHERE done=0 AND next_attempt_ms<=? AND claimed_until_ms<=? ORDER BY next_attempt_ms, id LIMIT ?");
      s.bind(now_ms).bind(now_ms).bind(static_cast<int64_t>(limit));
      while (s.step()) out.push_back(read_outbox(s));
    }
    for (const OutboxMessage& m : out) {
      Stmt u(db_, "UPDATE outbox SET claimed_by=?, claimed_until_ms=? WHERE id=?");
      u.bind(node_id).bind(now_ms + lease_ms).bind(m.id).step();
    }
    tx.commit();
    return out;
  }

  void update_outbox(const OutboxMessage& m) override {
    std::lock_guard lock(mu_);
    Stmt u(db_,
           "UPDATE outbox SET attempts=?, next_attempt_ms=?, last_error=?, done=?, claimed_by='', claimed_until_ms=0 "
           "WHERE id=?");
    u.bind(static_cast<int64_t>(m.attempts)).bind(m.next_attempt_ms).bind(m.last_error)
        .bind(static_cast<int64_t>(m.done ? 1 : 0)).bind(m.id).step();
  }

  std::optional<OutboxMessage> get_outbox_for_request(const std::string& request_id) override {
    std::lock_guard lock(rmu_);
    Stmt s(rdb_,
           "SELECT id, request_id, url, attempts, next_attempt_ms, last_error, done FROM outbox "
           "WHERE request_id=? ORDER BY id DESC LIMIT 1");
    s.bind(request_id);
    if (!s.step()) return std::nullopt;
    return read_outbox(s);
  }

  void node_heartbeat(const NodeRecord& n) override {
    std::lock_guard lock(mu_);
    Stmt u(db_,
           "INSERT INTO nodes(node_id, server_id, role, heartbeat_ms) VALUES(?,?,?,?) "
           "ON CONFLICT(node_id) DO UPDATE SET server_id=excluded.server_id, role=excluded.role, "
           "heartbeat_ms=excluded.heartbeat_ms");
    u.bind(n.node_id).bind(n.server_id).bind(n.role).bind(n.heartbeat_ms).step();
  }

  std::vector<NodeRecord> live_nodes(int64_t now_ms, int64_t window_ms) override {
    int64_t since_ms = now_ms - window_ms;
    std::lock_guard lock(rmu_);
    Stmt s(rdb_, "SELECT node_id, server_id, role, heartbeat_ms FROM nodes WHERE heartbeat_ms>=? ORDER BY node_id");
    s.bind(since_ms);
    std::vector<NodeRecord> out;
    while (s.step()) out.push_back({s.text(0), s.text(1), s.text(2), s.integer(3)});
    return out;
  }

  void remove_node(const std::string& node_id) override {
    std::lock_guard lock(mu_);
    Stmt u(db_, "DELETE FROM nodes WHERE node_id=?");
    u.bind(node_id).step();
  }

  std::string setting_or_insert(const std::string& name, const std::string& value) override {
    std::lock_guard lock(mu_);
    {
      Stmt u(db_, "INSERT INTO settings(name, value) VALUES(?,?) ON CONFLICT(name) DO NOTHING");
      u.bind(name).bind(value).step();
    }
    Stmt s(db_, "SELECT value FROM settings WHERE name=?");
    s.bind(name);
    if (!s.step()) throw IoError("[store] setting '" + name + "' vanished");
    return s.text(0);
  }

  void listen(std::function<void(const StoreEvent&)> listener) override {
    std::lock_guard lock(listener_mu_);
    listener_ = std::move(listener);
  }

  int schema_version() override {
    std::lock_guard lock(mu_);
    return read_schema_version();
  }

  const char* kind() const override { return "sqlite"; }

  bool ping() override {
    try {
      std::lock_guard lock(rmu_);
      Stmt s(rdb_, "SELECT 1");
      return s.step() && s.integer(0) == 1;
    } catch (const std::exception&) {
      return false;
    }
  }

 private:
  // BEGIN IMMEDIATE ... COMMIT, rolled back if commit() was not reached.
  class Transaction {
   public:
    explicit Transaction(SqliteStore* store) : store_(store) { store_->exec("BEGIN IMMEDIATE"); }
    ~Transaction() {
      if (!done_) sqlite3_exec(store_->db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    void commit() {
      store_->exec("COMMIT");
      done_ = true;
    }

   private:
    SqliteStore* store_;
    bool done_ = false;
  };

  // Columns added after a database was first created (databases are never rebuilt).
  void add_column_if_missing(const std::string& table, const std::string& column, const std::string& decl) {
    std::string q = "SELECT COUNT(*) FROM pragma_table_info('" + table + "') WHERE name='" + column + "'";
    Stmt s(db_, q.c_str());
    s.step();
    if (s.integer(0) == 0) exec(("ALTER TABLE " + table + " ADD COLUMN " + column + " " + decl).c_str());
  }

  void exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw IoError("[store] " + path_ + ": " + msg);
    }
  }

  std::optional<RequestRecord> get_one(const char* column, const std::string& value) {
    std::lock_guard lock(rmu_);
    std::string sql = std::string("SELECT ") + kRequestColumns + " FROM requests WHERE " + column + "=?";
    Stmt s(rdb_, sql.c_str());
    s.bind(value);
    if (!s.step()) return std::nullopt;
    return read_request(s);
  }

  int read_schema_version() {
    Stmt s(db_, "SELECT value FROM settings WHERE name='schema_version'");
    return s.step() ? std::stoi(s.text(0)) : 0;
  }

  // Schema 1 had no version row; the columns above bring any database to kSchemaVersion.
  void check_schema_version() {
    int found = read_schema_version();
    if (found > kSchemaVersion) {
      throw UserError("[store] " + path_ + " has schema version " + std::to_string(found) +
                      ", newer than this fluxpipe knows (" + std::to_string(kSchemaVersion) + "): upgrade fluxpipe");
    }
    Stmt u(db_, "INSERT INTO settings(name, value) VALUES('schema_version', ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value");
    u.bind(std::to_string(kSchemaVersion)).step();
  }

  void emit(const StoreEvent& e) {
    std::function<void(const StoreEvent&)> l;
    {
      std::lock_guard lock(listener_mu_);
      l = listener_;
    }
    if (l) l(e);
  }

  void insert_locked(RequestRecord& r) {
    Stmt s(db_,
           "INSERT INTO requests(id, key_id, download_token, params, seeds, file_names, server_id, batch_id, "
           "webhook, state, error, attempts, created_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)");
    s.bind(r.id).bind(r.key_id).bind(r.download_token).bind(r.params_json)
        .bind(nlohmann::json(r.seeds).dump()).bind(nlohmann::json(r.file_names).dump())
        .bind(r.server_id).bind(r.batch_id).bind(r.webhook).bind(std::string(to_string(r.state)))
        .bind(r.error).bind(static_cast<int64_t>(r.attempts)).bind(r.created_ms).step();
    r.seq = sqlite3_last_insert_rowid(db_);
  }

  std::optional<ExpiredRecord> expired_where(const char* column, const std::string& value) {
    std::lock_guard lock(rmu_);
    std::string sql = std::string("SELECT id, key_id, download_token, expired_ms FROM expired WHERE ") + column + "=?";
    Stmt s(rdb_, sql.c_str());
    s.bind(value);
    if (!s.step()) return std::nullopt;
    return ExpiredRecord{s.text(0), s.text(1), s.text(2), s.integer(3)};
  }

  void enqueue_webhook_locked(const std::string& request_id, int64_t now_ms) {
    Stmt s(db_,
           "INSERT INTO outbox(request_id, url, next_attempt_ms) "
           "SELECT id, webhook, ? FROM requests WHERE id=? AND webhook<>''");
    s.bind(now_ms).bind(request_id).step();
  }

  std::string path_;
  sqlite3* db_ = nullptr;    // writes, and reads inside write transactions
  std::mutex mu_;
  sqlite3* rdb_ = nullptr;   // plain reads
  std::mutex rmu_;
  std::mutex listener_mu_;
  std::function<void(const StoreEvent&)> listener_;
};

}  // namespace

std::unique_ptr<Store> open_sqlite_store(const std::string& path) { return std::make_unique<SqliteStore>(path); }

}  // namespace fluxpipe::server
