// The shared store: PostgreSQL through libpq, for several nodes on one database.
//
// Connections: a small pool (one per concurrent caller, at most kPoolSize); a broken
// connection is dropped and the next call opens a new one, so a database restart costs the
// calls in flight (StoreUnavailable, which the API answers 503) and nothing after.
// Claims use FOR UPDATE SKIP LOCKED, so concurrent workers never wait on each other's rows.
// Leases and node heartbeats are measured on the database's clock (kDbNow).
// Events: every change that matters to another node sends pg_notify('fluxpipe_events', ...) in
// its own transaction (delivered at commit); one listener connection per store receives them.
// Payloads: "q:<server_id>" (a job queued; "q:*" several), "f:<id>" (ended), "c:<id>" (cancel).
#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "server/log.h"
#include "server/store_common.h"

namespace fluxpipe::server {
namespace {

constexpr size_t kPoolSize = 8;
constexpr const char* kChannel = "fluxpipe_events";
// Milliseconds since the epoch on the database server's clock.
constexpr const char* kDbNow = "(extract(epoch from clock_timestamp())*1000)::bigint";
// Serialises schema changes of nodes starting at the same moment (an arbitrary constant).
constexpr const char* kMigrationLock = "SELECT pg_advisory_xact_lock(7421001)";

const char* kRequestColumns =
    "seq, id, key_id, download_token, params, seeds, file_names, server_id, batch_id, webhook, state, error, "
    "attempts, created_ms, started_ms, finished_ms, warning, node_id, claim, lease_until_ms, progress_done, "
    "progress_total";

// Schema steps: kSteps[i] brings version i+1 to i+2 (version 1 was SQLite-only, so a new
// PostgreSQL database goes from 0 to 2 with the first step, then on).
const char* kSchemaV2 = R"sql(
CREATE TABLE IF NOT EXISTS api_keys(
  id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
  created_ms BIGINT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS requests(
  seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL,
  download_token TEXT NOT NULL UNIQUE, params TEXT NOT NULL, seeds TEXT NOT NULL,
  file_names TEXT NOT NULL, server_id TEXT NOT NULL, batch_id TEXT NOT NULL, webhook TEXT NOT NULL,
  state TEXT NOT NULL, error TEXT NOT NULL DEFAULT '', warning TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0, created_ms BIGINT NOT NULL, started_ms BIGINT NOT NULL DEFAULT 0,
  finished_ms BIGINT NOT NULL DEFAULT 0, cancel_requested BOOLEAN NOT NULL DEFAULT false,
  node_id TEXT NOT NULL DEFAULT '', claim TEXT NOT NULL DEFAULT '', lease_until_ms BIGINT NOT NULL DEFAULT 0,
  progress_done INTEGER NOT NULL DEFAULT 0, progress_total INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS requests_queued ON requests(server_id, seq) WHERE state='queued';
CREATE INDEX IF NOT EXISTS requests_running ON requests(server_id) WHERE state='running';
CREATE INDEX IF NOT EXISTS requests_by_batch ON requests(key_id, batch_id);
CREATE INDEX IF NOT EXISTS requests_by_key_started ON requests(key_id, started_ms);
CREATE INDEX IF NOT EXISTS requests_active_by_key ON requests(key_id) WHERE state IN ('queued','running');
CREATE TABLE IF NOT EXISTS outbox(
  id BIGSERIAL PRIMARY KEY, request_id TEXT NOT NULL, url TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms BIGINT NOT NULL,
  last_error TEXT NOT NULL DEFAULT '', done BOOLEAN NOT NULL DEFAULT false,
  claimed_by TEXT NOT NULL DEFAULT '', claimed_until_ms BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(next_attempt_ms) WHERE NOT done;
CREATE INDEX IF NOT EXISTS outbox_by_request ON outbox(request_id);
CREATE TABLE IF NOT EXISTS nodes(
  node_id TEXT PRIMARY KEY, server_id TEXT NOT NULL, role TEXT NOT NULL, heartbeat_ms BIGINT NOT NULL);
)sql";
// Version 3: retention tombstones, Idempotency-Keys, images in the database.
const char* kSchemaV3 = R"sql(
CREATE TABLE IF NOT EXISTS expired(
  id TEXT PRIMARY KEY, key_id TEXT NOT NULL, download_token TEXT NOT NULL UNIQUE, expired_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency(
  key_id TEXT NOT NULL, idem_key TEXT NOT NULL, body_sha256 TEXT NOT NULL, request_id TEXT NOT NULL,
  created_ms BIGINT NOT NULL, PRIMARY KEY(key_id, idem_key));
CREATE INDEX IF NOT EXISTS idempotency_by_request ON idempotency(request_id);
CREATE TABLE IF NOT EXISTS images(
  token TEXT NOT NULL, name TEXT NOT NULL, bytes BYTEA NOT NULL, PRIMARY KEY(token, name));
CREATE INDEX IF NOT EXISTS requests_by_finished ON requests(finished_ms)
  WHERE state IN ('succeeded','failed','cancelled');
)sql";
const char* const kSteps[] = {kSchemaV2, kSchemaV3};

// libpq's text-format parameters.
using Params = std::vector<std::string>;

class Result {
 public:
  explicit Result(PGresult* r) : r_(r) {}
  ~Result() { PQclear(r_); }
  Result(Result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;
  int rows() const { return PQntuples(r_); }
  std::string text(int row, int col) const {
    return std::string(PQgetvalue(r_, row, col), static_cast<size_t>(PQgetlength(r_, row, col)));
  }
  int64_t integer(int row, int col) const { return std::stoll(text(row, col)); }
  bool boolean(int row, int col) const { return text(row, col) == "t"; }
  int64_t affected() const {
    const char* n = PQcmdTuples(r_);
    return n && *n ? std::stoll(n) : 0;
  }

 private:
  PGresult* r_;
};

RequestRecord read_request(const Result& r, int row) {
  RequestRecord q;
  q.seq = r.integer(row, 0);
  q.id = r.text(row, 1);
  q.key_id = r.text(row, 2);
  q.download_token = r.text(row, 3);
  q.params_json = r.text(row, 4);
  q.seeds = nlohmann::json::parse(r.text(row, 5)).get<std::vector<int64_t>>();
  q.file_names = nlohmann::json::parse(r.text(row, 6)).get<std::vector<std::string>>();
  q.server_id = r.text(row, 7);
  q.batch_id = r.text(row, 8);
  q.webhook = r.text(row, 9);
  q.state = job_state_from_string(r.text(row, 10));
  q.error = r.text(row, 11);
  q.attempts = static_cast<int>(r.integer(row, 12));
  q.created_ms = r.integer(row, 13);
  q.started_ms = r.integer(row, 14);
  q.finished_ms = r.integer(row, 15);
  q.warning = r.text(row, 16);
  q.node_id = r.text(row, 17);
  q.claim = r.text(row, 18);
  q.lease_until_ms = r.integer(row, 19);
  q.progress_done = static_cast<int>(r.integer(row, 20));
  q.progress_total = static_cast<int>(r.integer(row, 21));
  return q;
}

OutboxMessage read_outbox(const Result& r, int row) {
  OutboxMessage m;
  m.id = r.integer(row, 0);
  m.request_id = r.text(row, 1);
  m.url = r.text(row, 2);
  m.attempts = static_cast<int>(r.integer(row, 3));
  m.next_attempt_ms = r.integer(row, 4);
  m.last_error = r.text(row, 5);
  m.done = r.boolean(row, 6);
  return m;
}

// libpq's messages span lines ("...\n\tIs the server running...?\n"); a log record is one line.
std::string one_line(std::string msg) {
  for (char& ch : msg) {
    if (ch == '\n' || ch == '\t' || ch == '\r') ch = ' ';
  }
  std::string out;
  for (char ch : msg) {
    if (!(ch == ' ' && !out.empty() && out.back() == ' ')) out += ch;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

PGconn* connect(const std::string& conninfo) {
  // connect_timeout first: the caller's string (expanded from "dbname") overrides it.
  const char* keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* values[] = {"5", "fluxpipe", conninfo.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, values, 1);
  if (!c || PQstatus(c) != CONNECTION_OK) {
    std::string msg = one_line(c ? PQerrorMessage(c) : "out of memory");
    PQfinish(c);
    throw StoreUnavailable("[store] cannot connect to PostgreSQL at " + redact_store_location(conninfo) + ": " + msg);
  }
  // Notices (e.g. "relation already exists, skipping") are not the operator's business.
  PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);
  return c;
}

class PgStore final : public Store {
 public:
  explicit PgStore(std::string conninfo) : conninfo_(std::move(conninfo)) {
    Conn c(this);
    migrate(c);
  }

  ~PgStore() override {
    stopping_ = true;
    if (listener_thread_.joinable()) listener_thread_.join();
    for (PGconn* c : idle_) PQfinish(c);
  }

  void add_key(const ApiKeyRecord& key) override {
    Conn c(this);
    c.exec("INSERT INTO api_keys(id, name, hash, created_ms) VALUES($1,$2,$3,$4)",
           {key.id, key.name, key.hash_hex, std::to_string(key.created_ms)});
  }

  std::vector<ApiKeyRecord> list_keys() override {
    Conn c(this);
    Result r = c.exec("SELECT id, name, hash, created_ms, revoked FROM api_keys ORDER BY created_ms, id", {});
    std::vector<ApiKeyRecord> out;
    for (int i = 0; i < r.rows(); ++i) {
      out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), r.integer(i, 3), r.boolean(i, 4)});
    }
    return out;
  }

  int revoke_key(const std::string& id_or_name) override {
    Conn c(this);
    return static_cast<int>(
        c.exec("UPDATE api_keys SET revoked=true WHERE NOT revoked AND (id=$1 OR name=$1)", {id_or_name}).affected());
  }

  void insert_request(RequestRecord& q) override {
    Conn c(this);
    Tx tx(c);
    insert(c, q);
    tx.commit();
  }

  IdempotentInsert insert_request_once(RequestRecord& q, const IdempotencyKey& key) override {
    Conn c(this);
    Tx tx(c);
    // Claim the key first: a concurrent submission with the same key waits on this row's lock
    // and then sees it, so one request is stored.
    Result claimed = c.exec(
        "INSERT INTO idempotency(key_id, idem_key, body_sha256, request_id, created_ms) VALUES($1,$2,$3,$4,$5) "
        "ON CONFLICT(key_id, idem_key) DO UPDATE SET body_sha256=excluded.body_sha256, "
        "request_id=excluded.request_id, created_ms=excluded.created_ms WHERE idempotency.created_ms<$6 "
        "RETURNING request_id",
        {q.key_id, key.key, key.body_sha256, q.id, std::to_string(q.created_ms), std::to_string(key.since_ms)});
    if (claimed.rows() == 0) {
      Result seen = c.exec("SELECT body_sha256, request_id FROM idempotency WHERE key_id=$1 AND idem_key=$2",
                           {q.key_id, key.key});
      if (seen.rows() == 0) throw IoError("[store] idempotency key vanished during the insert");
      if (seen.text(0, 0) != key.body_sha256) return IdempotentInsert::conflict;
      q.id = seen.text(0, 1);
      return IdempotentInsert::existing;
    }
    insert(c, q);
    tx.commit();
    return IdempotentInsert::inserted;
  }

  std::optional<RequestRecord> get_request(const std::string& id) override { return get_one("id", id); }

  std::optional<RequestRecord> get_request_by_token(const std::string& token) override {
    return get_one("download_token", token);
  }

  std::vector<RequestRecord> list_batch(const std::string& key_id, const std::string& batch_id) override {
    Conn c(this);
    Result r = c.exec(std::string("SELECT ") + kRequestColumns +
                          " FROM requests WHERE key_id=$1 AND batch_id=$2 ORDER BY seq LIMIT 1000",
                      {key_id, batch_id});
    std::vector<RequestRecord> out;
    for (int i = 0; i < r.rows(); ++i) out.push_back(read_request(r, i));
    return out;
  }

  std::optional<RequestRecord> claim_next(const ClaimSpec& spec) override {
    Conn c(this);
    // One statement: rank the pool's queue (each key's n-th job before any key's n+1-th, keys
    // taking turns by when each last had a job started), lock the first row no other claimer
    // holds, and take it.
    Result r = c.exec(std::string("UPDATE requests SET state='running', attempts=attempts+1, started_ms=$2, "
                                  "node_id=$3, claim=$4, lease_until_ms=") +
                          kDbNow + "+$5, progress_done=0, progress_total=0 WHERE seq=("
                          "WITH q AS (SELECT seq AS qseq, key_id AS qkey, "
                          "row_number() OVER (PARTITION BY key_id ORDER BY seq) AS rn FROM requests "
                          "WHERE state='queued' AND server_id IN ('', 'any', $1)), "
                          "served AS (SELECT key_id AS skey, MAX(started_ms) AS last FROM requests "
                          "WHERE key_id IN (SELECT qkey FROM q) GROUP BY key_id) "
                          "SELECT r.seq FROM requests r JOIN q ON q.qseq=r.seq LEFT JOIN served ON served.skey=q.qkey "
                          "WHERE r.state='queued' ORDER BY q.rn, COALESCE(served.last, 0), r.seq "
                          "LIMIT 1 FOR UPDATE OF r SKIP LOCKED) RETURNING " +
                          kRequestColumns,
                      {spec.pool, std::to_string(spec.now_ms), spec.node_id, new_claim_token(),
                       std::to_string(spec.lease_ms)});
    if (r.rows() == 0) return std::nullopt;
    return read_request(r, 0);
  }

  bool renew_lease(const std::string& id, const std::string& claim, int64_t, int64_t lease_ms, int done,
                   int total) override {
    Conn c(this);
    return c.exec(std::string("UPDATE requests SET lease_until_ms=") + kDbNow +
                      "+$3, progress_done=$4, progress_total=$5 WHERE id=$1 AND state='running' AND claim=$2",
                  {id, claim, std::to_string(lease_ms), std::to_string(done), std::to_string(total)})
               .affected() == 1;
  }

  bool finish_request(const std::string& id, const std::string& claim, JobState final_state,
                      const std::string& error, int64_t now_ms, const std::string& warning) override {
    Conn c(this);
    Tx tx(c);
    Result r = c.exec(
        "UPDATE requests SET state=$3, error=$4, finished_ms=$5, warning=$6, lease_until_ms=0 "
        "WHERE id=$1 AND state='running' AND claim=$2",
        {id, claim, to_string(final_state), error, std::to_string(now_ms), warning});
    if (r.affected() != 1) return false;
    enqueue_webhook(c, id, now_ms);
    notify(c, "f:" + id);
    tx.commit();
    return true;
  }

  CancelOutcome request_cancel(const std::string& id, int64_t now_ms) override {
    Conn c(this);
    Tx tx(c);
    Result s = c.exec("SELECT state FROM requests WHERE id=$1 FOR UPDATE", {id});
    if (s.rows() == 0) return CancelOutcome::not_found;
    JobState state = job_state_from_string(s.text(0, 0));
    if (state == JobState::queued) {
      c.exec("UPDATE requests SET state='cancelled', error=$2, finished_ms=$3 WHERE id=$1",
             {id, kCancelledQueued, std::to_string(now_ms)});
      enqueue_webhook(c, id, now_ms);
      notify(c, "f:" + id);
      tx.commit();
      return CancelOutcome::cancelled;
    }
    if (state == JobState::running) {
      c.exec("UPDATE requests SET cancel_requested=true WHERE id=$1", {id});
      notify(c, "c:" + id);
      tx.commit();
      return CancelOutcome::requested;
    }
    return CancelOutcome::already_final;
  }

  bool cancel_requested(const std::string& id) override {
    Conn c(this);
    Result r = c.exec("SELECT cancel_requested FROM requests WHERE id=$1", {id});
    return r.rows() == 1 && r.boolean(0, 0);
  }

  void release_running(const std::string& id, const std::string& claim) override {
    Conn c(this);
    Tx tx(c);
    Result r = c.exec(
        "UPDATE requests SET state='queued', attempts=GREATEST(attempts-1,0), node_id='', claim='', "
        "lease_until_ms=0 WHERE id=$1 AND state='running' AND claim=$2 RETURNING server_id",
        {id, claim});
    if (r.rows() == 1) notify(c, "q:" + r.text(0, 0));
    tx.commit();
  }

  int64_t count_active() override {
    Conn c(this);
    return c.exec("SELECT COUNT(*) FROM requests WHERE state IN ('queued','running')", {}).integer(0, 0);
  }

  int64_t count_active_for_key(const std::string& key_id) override {
    Conn c(this);
    return c.exec("SELECT COUNT(*) FROM requests WHERE key_id=$1 AND state IN ('queued','running')", {key_id})
        .integer(0, 0);
  }

  int64_t count_ahead(int64_t seq, const std::string& server_id) override {
    Conn c(this);
    return c.exec("SELECT (SELECT COUNT(*) FROM requests WHERE state='queued' AND server_id=$1 AND seq<$2) + "
                  "(SELECT COUNT(*) FROM requests WHERE state='running' AND server_id=$1)",
                  {server_id, std::to_string(seq)})
        .integer(0, 0);
  }

  RecoveryReport recover_interrupted(const RecoverSpec& spec) override {
    Conn c(this);
    Tx tx(c);
    std::string gone = std::string("state='running' AND ($1 OR node_id=$2 OR lease_until_ms<") + kDbNow + ")";
    Params p{spec.every_node ? "true" : "false", spec.node_id};
    RecoveryReport report;
    Result failed = c.exec("UPDATE requests SET state='failed', error=$3, finished_ms=$4, lease_until_ms=0 WHERE " +
                               gone + " AND attempts>=$5 RETURNING id",
                           {p[0], p[1], interrupted_error(spec.max_attempts), std::to_string(spec.now_ms),
                            std::to_string(spec.max_attempts)});
    for (int i = 0; i < failed.rows(); ++i) {
      enqueue_webhook(c, failed.text(i, 0), spec.now_ms);
      notify(c, "f:" + failed.text(i, 0));
    }
    report.failed = failed.rows();
    Result requeued =
        c.exec("UPDATE requests SET state='queued', node_id='', claim='', lease_until_ms=0 WHERE " + gone, p);
    report.requeued = static_cast<int>(requeued.affected());
    if (report.requeued) notify(c, "q:*");
    tx.commit();
    return report;
  }

  std::vector<RequestRecord> ended_before(int64_t before_ms, int limit) override {
    Conn c(this);
    Result r = c.exec(std::string("SELECT ") + kRequestColumns +
                          " FROM requests WHERE state IN ('succeeded','failed','cancelled') AND finished_ms<$1 "
                          "ORDER BY finished_ms LIMIT $2",
                      {std::to_string(before_ms), std::to_string(limit)});
    std::vector<RequestRecord> out;
    for (int i = 0; i < r.rows(); ++i) out.push_back(read_request(r, i));
    return out;
  }

  void expire_request(const RequestRecord& q, int64_t now_ms) override {
    Conn c(this);
    Tx tx(c);
    c.exec("INSERT INTO expired(id, key_id, download_token, expired_ms) VALUES($1,$2,$3,$4) ON CONFLICT DO NOTHING",
           {q.id, q.key_id, q.download_token, std::to_string(now_ms)});
    c.exec("DELETE FROM outbox WHERE request_id=$1", {q.id});
    c.exec("DELETE FROM idempotency WHERE request_id=$1", {q.id});
    c.exec("DELETE FROM requests WHERE id=$1", {q.id});
    tx.commit();
  }

  std::optional<ExpiredRecord> get_expired(const std::string& id) override { return expired_where("id", id); }

  std::optional<ExpiredRecord> get_expired_by_token(const std::string& token) override {
    return expired_where("download_token", token);
  }

  int prune(int64_t before_ms, int64_t idempotency_before_ms) override {
    Conn c(this);
    Tx tx(c);
    int n = static_cast<int>(c.exec("DELETE FROM expired WHERE expired_ms<$1", {std::to_string(before_ms)}).affected());
    c.exec("DELETE FROM idempotency WHERE created_ms<$1", {std::to_string(idempotency_before_ms)});
    tx.commit();
    return n;
  }

  void put_image(const std::string& token, const std::string& name, const std::string& bytes) override {
    Conn c(this);
    c.exec("INSERT INTO images(token, name, bytes) VALUES($1,$2,$3) ON CONFLICT(token, name) DO UPDATE SET "
           "bytes=excluded.bytes",
           {token, name, bytes}, {false, false, true});
  }

  std::optional<std::string> get_image(const std::string& token, const std::string& name) override {
    Conn c(this);
    Result r = c.exec("SELECT bytes FROM images WHERE token=$1 AND name=$2", {token, name}, {}, true);
    if (r.rows() == 0) return std::nullopt;
    return r.text(0, 0);
  }

  void delete_images(const std::string& token) override {
    Conn c(this);
    c.exec("DELETE FROM images WHERE token=$1", {token});
  }

  std::vector<OutboxMessage> claim_due_outbox(const std::string& node_id, int64_t now_ms, int64_t lease_ms,
                                              int limit) override {
    Conn c(this);
    Result r = c.exec(
        "UPDATE outbox SET claimed_by=$1, claimed_until_ms=$2+$3 WHERE id IN ("
        "SELECT id FROM outbox WHERE NOT done AND next_attempt_ms<=$2 AND claimed_until_ms<=$2 "
        "ORDER BY next_attempt_ms, id LIMIT $4 FOR UPDATE SKIP LOCKED) "
        "RETURNING id, request_id, url, attempts, next_attempt_ms, last_error, done",
        {node_id, std::to_string(now_ms), std::to_string(lease_ms), std::to_string(limit)});
    std::vector<OutboxMessage> out;
    for (int i = 0; i < r.rows(); ++i) out.push_back(read_outbox(r, i));
    std::sort(out.begin(), out.end(), [](const OutboxMessage& a, const OutboxMessage& b) {
      return a.next_attempt_ms != b.next_attempt_ms ? a.next_attempt_ms < b.next_attempt_ms : a.id < b.id;
    });
    return out;
  }

  void update_outbox(const OutboxMessage& m) override {
    Conn c(this);
    c.exec("UPDATE outbox SET attempts=$2, next_attempt_ms=$3, last_error=$4, done=$5, claimed_by='', "
           "claimed_until_ms=0 WHERE id=$1",
           {std::to_string(m.id), std::to_string(m.attempts), std::to_string(m.next_attempt_ms), m.last_error,
            m.done ? "true" : "false"});
  }

  std::optional<OutboxMessage> get_outbox_for_request(const std::string& request_id) override {
    Conn c(this);
    Result r = c.exec(
        "SELECT id, request_id, url, attempts, next_attempt_ms, last_error, done FROM outbox "
        "WHERE request_id=$1 ORDER BY id DESC LIMIT 1",
        {request_id});
    if (r.rows() == 0) return std::nullopt;
    return read_outbox(r, 0);
  }

  void node_heartbeat(const NodeRecord& n) override {
    Conn c(this);
    c.exec(std::string("INSERT INTO nodes(node_id, server_id, role, heartbeat_ms) VALUES($1,$2,$3,") + kDbNow +
               ") ON CONFLICT(node_id) DO UPDATE SET server_id=excluded.server_id, role=excluded.role, "
               "heartbeat_ms=excluded.heartbeat_ms",
           {n.node_id, n.server_id, n.role});
  }

  std::vector<NodeRecord> live_nodes(int64_t, int64_t window_ms) override {
    Conn c(this);
    Result r = c.exec(std::string("SELECT node_id, server_id, role, heartbeat_ms FROM nodes WHERE heartbeat_ms>=") +
                          kDbNow + "-$1 ORDER BY node_id",
                      {std::to_string(window_ms)});
    std::vector<NodeRecord> out;
    for (int i = 0; i < r.rows(); ++i) out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), r.integer(i, 3)});
    return out;
  }

  void remove_node(const std::string& node_id) override {
    Conn c(this);
    c.exec("DELETE FROM nodes WHERE node_id=$1", {node_id});
  }

  std::string setting_or_insert(const std::string& name, const std::string& value) override {
    Conn c(this);
    c.exec("INSERT INTO fluxpipe_settings(name, value) VALUES($1,$2) ON CONFLICT(name) DO NOTHING", {name, value});
    Result r = c.exec("SELECT value FROM fluxpipe_settings WHERE name=$1", {name});
    if (r.rows() != 1) throw IoError("[store] setting '" + name + "' vanished");
    return r.text(0, 0);
  }

  void listen(std::function<void(const StoreEvent&)> listener) override {
    listener_ = std::move(listener);
    listener_thread_ = std::thread([this] { listen_loop(); });
  }

  int schema_version() override {
    Conn c(this);
    return read_version(c);
  }

  const char* kind() const override { return "postgresql"; }

  bool ping() override {
    try {
      Conn c(this);
      return c.exec("SELECT 1", {}).integer(0, 0) == 1;
    } catch (const std::exception&) {
      return false;
    }
  }

 private:
  // A pooled connection for one call; a connection that broke is closed, not returned.
  class Conn {
   public:
    explicit Conn(PgStore* store) : store_(store), c_(store->acquire()) {}
    ~Conn() { store_->release(c_); }
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;

    // Text parameters and results; `binary` marks parameters sent as raw bytes (bytea), and
    // `binary_result` asks for raw bytes back.
    Result exec(const std::string& sql, const Params& params, const std::vector<bool>& binary = {},
                bool binary_result = false) {
      std::vector<const char*> values;
      std::vector<int> lengths, formats;
      for (size_t i = 0; i < params.size(); ++i) {
        values.push_back(params[i].c_str());
        lengths.push_back(static_cast<int>(params[i].size()));
        formats.push_back(i < binary.size() && binary[i] ? 1 : 0);
      }
      PGresult* res = PQexecParams(c_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(),
                                   lengths.data(), formats.data(), binary_result ? 1 : 0);
      ExecStatusType st = PQresultStatus(res);
      if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return Result(res);
      std::string msg = one_line(res ? PQresultErrorMessage(res) : PQerrorMessage(c_));
      const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      std::string sqlstate = state ? state : "";
      PQclear(res);
      if (PQstatus(c_) != CONNECTION_OK || sqlstate.rfind("08", 0) == 0 || sqlstate.rfind("57P", 0) == 0) {
        throw StoreUnavailable("[store] PostgreSQL connection lost: " + msg);
      }
      throw IoError("[store] PostgreSQL: " + msg + (sqlstate.empty() ? "" : " (SQLSTATE " + sqlstate + ")"));
    }
    PGconn* raw() { return c_; }

   private:
    PgStore* store_;
    PGconn* c_;
  };

  // BEGIN ... COMMIT; rolled back when commit() was not reached.
  class Tx {
   public:
    explicit Tx(Conn& c) : c_(c) { c_.exec("BEGIN", {}); }
    ~Tx() {
      if (!done_ && PQstatus(c_.raw()) == CONNECTION_OK) PQclear(PQexec(c_.raw(), "ROLLBACK"));
    }
    void commit() {
      c_.exec("COMMIT", {});
      done_ = true;
    }

   private:
    Conn& c_;
    bool done_ = false;
  };

  PGconn* acquire() {
    {
      std::unique_lock lock(pool_mu_);
      pool_cv_.wait(lock, [this] { return !idle_.empty() || open_ < kPoolSize; });
      if (!idle_.empty()) {
        PGconn* c = idle_.back();
        idle_.pop_back();
        return c;
      }
      ++open_;
    }
    try {
      return connect(conninfo_);
    } catch (...) {
      std::lock_guard lock(pool_mu_);
      --open_;
      pool_cv_.notify_one();
      throw;
    }
  }

  void release(PGconn* c) {
    std::lock_guard lock(pool_mu_);
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE) {
      idle_.push_back(c);
    } else {
      PQfinish(c);
      --open_;
    }
    pool_cv_.notify_one();
  }

  static void insert(Conn& c, RequestRecord& q) {
    Result r = c.exec(
        "INSERT INTO requests(id, key_id, download_token, params, seeds, file_names, server_id, batch_id, webhook, "
        "state, error, attempts, created_ms) VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) RETURNING seq",
        {q.id, q.key_id, q.download_token, q.params_json, nlohmann::json(q.seeds).dump(),
         nlohmann::json(q.file_names).dump(), q.server_id, q.batch_id, q.webhook, to_string(q.state), q.error,
         std::to_string(q.attempts), std::to_string(q.created_ms)});
    notify(c, "q:" + q.server_id);
    q.seq = r.integer(0, 0);
  }

  std::optional<ExpiredRecord> expired_where(const char* column, const std::string& value) {
    Conn c(this);
    Result r = c.exec(std::string("SELECT id, key_id, download_token, expired_ms FROM expired WHERE ") + column + "=$1",
                      {value});
    if (r.rows() == 0) return std::nullopt;
    return ExpiredRecord{r.text(0, 0), r.text(0, 1), r.text(0, 2), r.integer(0, 3)};
  }

  static void notify(Conn& c, const std::string& payload) {
    c.exec("SELECT pg_notify($1, $2)", {kChannel, payload});
  }

  static void enqueue_webhook(Conn& c, const std::string& id, int64_t now_ms) {
    c.exec("INSERT INTO outbox(request_id, url, next_attempt_ms) SELECT id, webhook, $2 FROM requests "
           "WHERE id=$1 AND webhook<>''",
           {id, std::to_string(now_ms)});
  }

  std::optional<RequestRecord> get_one(const char* column, const std::string& value) {
    Conn c(this);
    Result r = c.exec(std::string("SELECT ") + kRequestColumns + " FROM requests WHERE " + column + "=$1", {value});
    if (r.rows() == 0) return std::nullopt;
    return read_request(r, 0);
  }

  static int read_version(Conn& c) {
    Result r = c.exec("SELECT value FROM fluxpipe_settings WHERE name='schema_version'", {});
    return r.rows() ? std::stoi(r.text(0, 0)) : 0;
  }

  // Brings the database to kSchemaVersion, one step per transaction under an advisory lock, or
  // refuses a newer one. Nodes of the old version keep working during a rolling upgrade as long
  // as a step only adds (new columns have defaults; nothing is dropped or renamed).
  void migrate(Conn& c) {
    while (true) {
      Tx tx(c);
      c.exec(kMigrationLock, {});
      c.exec("CREATE TABLE IF NOT EXISTS fluxpipe_settings(name TEXT PRIMARY KEY, value TEXT NOT NULL)", {});
      int found = read_version(c);
      if (found > kSchemaVersion) {
        throw UserError("[store] the PostgreSQL database " + redact_store_location(conninfo_) + " has schema version " +
                        std::to_string(found) + ", newer than this fluxpipe knows (" + std::to_string(kSchemaVersion) +
                        "): upgrade this node");
      }
      if (found == kSchemaVersion) {
        tx.commit();
        return;
      }
      int step = found <= 1 ? 0 : found - 1;
      PGresult* res = PQexec(c.raw(), kSteps[step]);   // several statements: the simple protocol
      bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
      std::string msg = ok ? "" : one_line(PQresultErrorMessage(res));
      PQclear(res);
      if (!ok) throw IoError("[store] PostgreSQL schema step to version " + std::to_string(step + 2) + " failed: " + msg);
      c.exec("INSERT INTO fluxpipe_settings(name, value) VALUES('schema_version', $1) "
             "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
             {std::to_string(step + 2)});
      tx.commit();
      log("info", "store: PostgreSQL schema now at version " + std::to_string(step + 2));
    }
  }

  // The listener: its own connection, LISTEN, then wait on its socket. Reconnects with a
  // backoff when the connection drops (events meanwhile are lost; users also poll).
  void listen_loop() {
    int64_t backoff_ms = 200;
    OutageLog outage("store listener (LISTEN/NOTIFY)");
    while (!stopping_) {
      PGconn* c = nullptr;
      try {
        c = connect(conninfo_);
        PGresult* r = PQexec(c, (std::string("LISTEN ") + kChannel).c_str());
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok) throw StoreUnavailable("[store] LISTEN failed: " + one_line(PQerrorMessage(c)));
        backoff_ms = 200;
        outage.ok();
        // Anything may have happened while not listening: say so.
        deliver({StoreEvent::queued, "*"});
        while (!stopping_) {
          pollfd pfd{PQsocket(c), POLLIN, 0};
          int n = poll(&pfd, 1, 200);
          if (n < 0 && errno != EINTR) break;
          if (n <= 0) continue;
          if (!PQconsumeInput(c)) break;
          while (PGnotify* note = PQnotifies(c)) {
            std::string payload = note->extra ? note->extra : "";
            PQfreemem(note);
            if (payload.size() < 2 || payload[1] != ':') continue;
            StoreEvent::Kind kind = payload[0] == 'q'   ? StoreEvent::queued
                                    : payload[0] == 'f' ? StoreEvent::finished
                                                        : StoreEvent::cancel;
            deliver({kind, payload.substr(2)});
          }
        }
      } catch (const std::exception& e) {
        if (!stopping_) outage.failed(e.what());
      }
      if (c) PQfinish(c);
      for (int64_t waited = 0; waited < backoff_ms && !stopping_; waited += 50) usleep(50 * 1000);
      backoff_ms = std::min<int64_t>(backoff_ms * 2, 5000);
    }
  }

  void deliver(const StoreEvent& e) {
    try {
      listener_(e);
    } catch (const std::exception& ex) {
      log("error", std::string("store listener callback: ") + ex.what());
    }
  }

  std::string conninfo_;
  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  std::vector<PGconn*> idle_;
  size_t open_ = 0;
  std::function<void(const StoreEvent&)> listener_;
  std::thread listener_thread_;
  std::atomic<bool> stopping_{false};
};

}  // namespace

std::unique_ptr<Store> open_pg_store(const std::string& conninfo) { return std::make_unique<PgStore>(conninfo); }

}  // namespace fluxpipe::server
