// fluxpipe server: the durable store behind the API — keys, requests (the job queue)
// and the webhook outbox.
//
// An interface because a PostgreSQL store for several machines comes next; the
// embedded implementation is SQLite in WAL mode (sqlite_store.cpp).
// Durability contract: every mutating call has committed when it returns, so an id
// handed to a client survives a crash or kill -9 right after.
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
  virtual std::optional<RequestRecord> get_request(const std::string& id) = 0;
  virtual std::optional<RequestRecord> get_request_by_token(const std::string& token) = 0;
  virtual std::vector<RequestRecord> list_batch(const std::string& key_id, const std::string& batch_id) = 0;
  // Oldest queued request this server may run (server_id empty or == server_id),
  // atomically moved to running with attempts + 1.
  virtual std::optional<RequestRecord> claim_next(const std::string& server_id, int64_t now_ms) = 0;
  // Moves a running request to its final state and, if it has a webhook, enqueues an
  // outbox message in the same transaction (the webhook sender builds the body from the
  // final record). Returns false if it was not running.
  virtual bool finish_request(const std::string& id, JobState final_state, const std::string& error,
                              int64_t now_ms, const std::string& warning = "") = 0;
  // queued -> cancelled, with the outbox message as above. False if it was not queued.
  virtual bool cancel_queued(const std::string& id, int64_t now_ms) = 0;
  // A client's DELETE, in one transaction: a queued request is cancelled; a running one gets
  // its cancel flag, which the runner that claimed it reads at every step (so a cancel that
  // arrives between claiming and starting, or on another node, is never lost).
  virtual CancelOutcome request_cancel(const std::string& id, int64_t now_ms) = 0;
  virtual bool cancel_requested(const std::string& id) = 0;
  // running -> queued without counting the attempt (a clean shutdown interrupted it).
  virtual void release_running(const std::string& id) = 0;
  // Number of queued or running requests.
  virtual int64_t count_active() = 0;
  // Queued requests ahead of seq, plus running ones.
  virtual int64_t count_ahead(int64_t seq) = 0;
  // After a crash: running requests go back to queued, or to failed once they have
  // been started max_attempts times (the failing ones get their webhook message).
  virtual RecoveryReport recover_interrupted(int max_attempts, int64_t now_ms) = 0;

  // Webhook outbox.
  virtual std::vector<OutboxMessage> due_outbox(int64_t now_ms, int limit) = 0;
  virtual void update_outbox(const OutboxMessage& message) = 0;
  virtual std::optional<OutboxMessage> get_outbox_for_request(const std::string& request_id) = 0;

  // True when the store answers a trivial query.
  virtual bool ping() = 0;
};

// Opens (creating if needed) the SQLite store at `path`. Throws IoError naming the path.
std::unique_ptr<Store> open_sqlite_store(const std::string& path);

}  // namespace fluxpipe::server
