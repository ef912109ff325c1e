// fluxpipe server: the durable store behind the API — keys, requests (the job queue),
// the webhook outbox, the nodes that serve it, and a few shared settings.
//
// Two implementations pass one test suite (tests/server/store_suite_test.cpp): SQLite in WAL
// mode (sqlite_store.cpp), the embedded default for one process, and PostgreSQL
// (pg_store.cpp), which several nodes share. Every behaviour below holds for both.
// Durability contract: every mutating call has committed when it returns, so an id
// handed to a client survives a crash or kill -9 right after.
// Claims: a worker claims a job with a lease (node id, a random claim token, an expiry) and
// renews it while the job runs; finishing, renewing and releasing are fenced on the token, so a
// worker whose lease expired and whose job was claimed again cannot overwrite the newer claim.
// Clocks: SQLite uses the now_ms it is given (one machine); PostgreSQL measures leases and node
// heartbeats on the database server's clock, so the nodes' clocks need not agree.
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"

namespace fluxpipe::server {

struct ApiKeyRecord {
  std::string id;          // public, short: shown by `keys list`, used by `keys revoke`
  std::string name;
  std::string hash_hex;    // SHA-256 of the secret key, hex
  int64_t created_ms = 0;
  bool revoked = false;
};

// queued and running answer PENDING; succeeded SUCCESS; failed and cancelled FAILURE.
enum class JobState { queued, running, succeeded, failed, cancelled };
const char* to_string(JobState s);
JobState job_state_from_string(const std::string& s);
inline bool is_final(JobState s) { return s != JobState::queued && s != JobState::running; }

struct RequestRecord {
  std::string id;              // random, 32 hex chars; the status id
  std::string key_id;          // owner
  std::string download_token;  // random, 32 hex chars; the capability in image URLs
  std::string params_json;     // GenerateRequest, normalised, seeds resolved
  std::vector<int64_t> seeds;
  std::vector<std::string> file_names;   // decided at submission, one per image
  std::string server_id;       // empty: any server
  std::string batch_id;
  std::string webhook;
  JobState state = JobState::queued;
  std::string error;
  std::string warning;         // set when the request ended (e.g. the prompt was truncated)
  int attempts = 0;            // times a runner started it
  int64_t seq = 0;             // queue order, assigned by the store
  int64_t created_ms = 0;
  int64_t started_ms = 0;
  int64_t finished_ms = 0;
  // While running: who holds it and until when, and how far it got (for status on any node).
  std::string node_id;
  std::string claim;           // the claim token; fences finish/renew/release
  int64_t lease_until_ms = 0;
  int progress_done = 0;
  int progress_total = 0;
};

struct OutboxMessage {
  int64_t id = 0;
  std::string request_id;
  std::string url;
  int attempts = 0;
  int64_t next_attempt_ms = 0;
  std::string last_error;
  bool done = false;           // delivered, or given up after the last attempt
};

// A node (a `fluxpipe serve` process) as the store knows it: refreshed while it runs.
struct NodeRecord {
  std::string node_id;
  std::string server_id;       // the pool its worker serves ("" for an api-only node)
  std::string role;            // all, api or worker
  int64_t heartbeat_ms = 0;
};

struct ClaimSpec {
  std::string pool;            // claims requests whose server_id is this, "" or "any"
  std::string node_id;
  int64_t now_ms = 0;
  int64_t lease_ms = 30000;
};

struct RecoverSpec {
  int max_attempts = 3;
  int64_t now_ms = 0;
  std::string node_id;         // this node's own claims are recovered whatever their lease
  bool every_node = false;     // true when this process owns the whole store (SQLite's folder lock)
};

// What other parts of the server learn from the store without polling. With PostgreSQL they
// come from LISTEN/NOTIFY and cross processes; with SQLite they are delivered in-process.
// Either way they can be lost (a dropped connection), so every user also polls, slowly.
struct StoreEvent {
  enum Kind { queued, finished, cancel } kind;
  std::string value;           // queued: the request's server_id; finished, cancel: its id
};

// What is left of a request deleted after the retention period: enough to answer 410.
struct ExpiredRecord {
  std::string id;
  std::string key_id;
  std::string download_token;
  int64_t expired_ms = 0;
};

// An Idempotency-Key on a submission, and what insert_request_once did with it.
struct IdempotencyKey {
  std::string key;             // the client's header value
  std::string body_sha256;     // of the submitted body
  int64_t since_ms = 0;        // keys used before this are forgotten (24 h)
};
enum class IdempotentInsert {
  inserted,   // a new request, the key remembered with it
  existing,   // the same key and body within the window: record.id is the earlier request's
  conflict,   // the same key with another body: nothing stored
};

// The schema this build knows. A store with a newer one is refused, naming both.
constexpr int kSchemaVersion = 3;

// The store cannot be reached (PostgreSQL down, connection refused): the API answers 503.
struct StoreUnavailable : IoError {
  using IoError::IoError;
};

// What Store::request_cancel did.
enum class CancelOutcome {
  not_found,
  cancelled,       // it was queued: now cancelled, with its webhook message
  requested,       // it is running: the flag is set; the runner stops it at its next step
  already_final,   // it had ended already
};

struct RecoveryReport {
  int requeued = 0;
  int failed = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  // Keys.
  virtual void add_key(const ApiKeyRecord& key) = 0;
  virtual std::vector<ApiKeyRecord> list_keys() = 0;
  // Revokes by id or by name; returns how many keys were revoked.
  virtual int revoke_key(const std::string& id_or_name) = 0;

  // Requests. insert_request assigns seq and commits before returning.
  virtual void insert_request(RequestRecord& record) = 0;
  // insert_request under the calling key's Idempotency-Key, in one transaction: concurrent
  // submissions with one key (on any nodes) store one request.
  virtual IdempotentInsert insert_request_once(RequestRecord& record, const IdempotencyKey& key) = 0;
  virtual std::optional<RequestRecord> get_request(const std::string& id) = 0;
  virtual std::optional<RequestRecord> get_request_by_token(const std::string& token) = 0;
  virtual std::vector<RequestRecord> list_batch(const std::string& key_id, const std::string& batch_id) = 0;
  // The next queued request of spec.pool (server_id == pool, "" or "any"), atomically moved
  // to running with attempts + 1 and a fresh lease held by spec.node_id. Fair across keys:
  // each key's n-th queued job goes before any key's (n+1)-th, and among those the key whose
  // last job started longest ago goes first (oldest job first among equals), so keys take
  // turns and one key's burst does not starve the others.
  // Concurrent claimers never receive the same request.
  virtual std::optional<RequestRecord> claim_next(const ClaimSpec& spec) = 0;
  // Extends the lease of a running request and records its progress. False when the claim is
  // no longer this one (the lease expired and the job was taken again, or it ended).
  virtual bool renew_lease(const std::string& id, const std::string& claim, int64_t now_ms, int64_t lease_ms,
                           int progress_done, int progress_total) = 0;
  // Moves a running request, still held by `claim`, to its final state and, if it has a
  // webhook, enqueues an outbox message in the same transaction. False when it was not
  // running under that claim (nothing is written then).
  virtual bool finish_request(const std::string& id, const std::string& claim, JobState final_state,
                              const std::string& error, int64_t now_ms, const std::string& warning = "") = 0;
  // A client's DELETE, in one transaction: a queued request is cancelled; a running one gets
  // its cancel flag, which the runner that claimed it reads at every step (so a cancel that
  // arrives between claiming and starting, or on another node, is never lost).
  virtual CancelOutcome request_cancel(const std::string& id, int64_t now_ms) = 0;
  virtual bool cancel_requested(const std::string& id) = 0;
  // running -> queued without counting the attempt (a clean shutdown interrupted it); fenced.
  virtual void release_running(const std::string& id, const std::string& claim) = 0;
  // Number of queued or running requests: all of them, or one key's.
  virtual int64_t count_active() = 0;
  virtual int64_t count_active_for_key(const std::string& key_id) = 0;
  // Requests of the same server_id queued ahead of seq, plus the running ones of that server_id.
  virtual int64_t count_ahead(int64_t seq, const std::string& server_id) = 0;
  // Running requests whose claim is gone — this node's own (whatever their lease), every
  // node's when spec.every_node, and any whose lease expired — go back to queued, or to
  // failed once they have been started max_attempts times (with their webhook message).
  // A live claim of another node is never touched.
  virtual RecoveryReport recover_interrupted(const RecoverSpec& spec) = 0;

  // Retention. Requests that ended before `before_ms`, oldest first.
  virtual std::vector<RequestRecord> ended_before(int64_t before_ms, int limit) = 0;
  // Deletes the request row, its outbox messages and its idempotency key, leaving a tombstone
  // (id, owner, token) so that its status and image URLs answer 410. Idempotent.
  virtual void expire_request(const RequestRecord& record, int64_t now_ms) = 0;
  virtual std::optional<ExpiredRecord> get_expired(const std::string& id) = 0;
  virtual std::optional<ExpiredRecord> get_expired_by_token(const std::string& token) = 0;
  // Drops tombstones expired before `before_ms` and idempotency keys used before
  // `idempotency_before_ms`; returns how many tombstones went.
  virtual int prune(int64_t before_ms, int64_t idempotency_before_ms) = 0;

  // Images kept in the database itself (--images postgresql, for small deployments): written
  // whole in one statement, so a reader never sees half of one.
  virtual void put_image(const std::string& token, const std::string& name, const std::string& bytes) = 0;
  virtual std::optional<std::string> get_image(const std::string& token, const std::string& name) = 0;
  virtual void delete_images(const std::string& token) = 0;

  // Webhook outbox. Due messages are claimed like jobs: a message claimed by one node is not
  // handed to another until `lease_ms` passed (the node may have died mid-delivery).
  virtual std::vector<OutboxMessage> claim_due_outbox(const std::string& node_id, int64_t now_ms,
                                                      int64_t lease_ms, int limit) = 0;
  // Records a delivery attempt and releases the claim.
  virtual void update_outbox(const OutboxMessage& message) = 0;
  virtual std::optional<OutboxMessage> get_outbox_for_request(const std::string& request_id) = 0;

  // Nodes: each refreshes its record; the live ones are those seen in the last `window_ms`.
  virtual void node_heartbeat(const NodeRecord& node) = 0;
  virtual std::vector<NodeRecord> live_nodes(int64_t now_ms, int64_t window_ms) = 0;
  virtual void remove_node(const std::string& node_id) = 0;

  // Shared settings (the webhook secret): the stored value, or `value` stored now if there was
  // none. Two nodes racing get the same answer.
  virtual std::string setting_or_insert(const std::string& name, const std::string& value) = 0;

  // Delivers events (see StoreEvent) to `listener` from a store thread until the store is
  // destroyed. One listener; call before any job is submitted.
  virtual void listen(std::function<void(const StoreEvent&)> listener) = 0;

  virtual int schema_version() = 0;
  // "sqlite" or "postgresql".
  virtual const char* kind() const = 0;

  // True when the store answers a trivial query.
  virtual bool ping() = 0;
};

// Opens (creating if needed) the SQLite store at `path`. Throws IoError naming the path.
std::unique_ptr<Store> open_sqlite_store(const std::string& path);
// Connects to PostgreSQL (any URI or key=value string libpq accepts) and applies the schema.
// Throws StoreUnavailable when it cannot connect, UserError for a newer schema.
std::unique_ptr<Store> open_pg_store(const std::string& conninfo);
// `location` is "sqlite:PATH", a postgresql:// or postgres:// URI, or empty (the default
// <data_dir>/fluxpipe.db). UserError for anything else.
std::unique_ptr<Store> open_store(const std::string& location, const std::string& data_dir);
bool is_pg_location(const std::string& location);
// The location with any password replaced by "***" (for logs and errors).
std::string redact_store_location(const std::string& location);

}  // namespace fluxpipe::server
