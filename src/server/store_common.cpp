// What both stores share, and the choice between them (open_store).
#include "server/store_common.h"

#include "core/error.h"
#include "server/crypto.h"

namespace fluxpipe::server {

const char* to_string(JobState s) {
  switch (s) {
    case JobState::queued: return "queued";
    case JobState::running: return "running";
    case JobState::succeeded: return "succeeded";
    case JobState::failed: return "failed";
    case JobState::cancelled: return "cancelled";
  }
  return "failed";
}

JobState job_state_from_string(const std::string& s) {
  if (s == "queued") return JobState::queued;
  if (s == "running") return JobState::running;
  if (s == "succeeded") return JobState::succeeded;
  if (s == "failed") return JobState::failed;
  if (s == "cancelled") return JobState::cancelled;
  throw InternalError("[store] unknown job state '" + s + "'");
}

std::string interrupted_error(int max_attempts) {
  return "the job was interrupted " + std::to_string(max_attempts) +
         " times (a server stopped, crashed or lost its lease while it ran); not retried again";
}

std::string new_claim_token() { return random_hex(12); }

bool is_pg_location(const std::string& location) {
  return location.rfind("postgresql://", 0) == 0 || location.rfind("postgres://", 0) == 0;
}

std::string redact_store_location(const std::string& location) {
  if (!is_pg_location(location)) return location;
  // scheme://user:password@host...: hide the password; the rest helps find the server.
  size_t scheme_end = location.find("://") + 3;
  size_t at = location.find('@', scheme_end);
  if (at == std::string::npos) return location;
  size_t colon = location.find(':', scheme_end);
  if (colon == std::string::npos || colon > at) return location;
  return location.substr(0, colon + 1) + "***" + location.substr(at);
}

std::unique_ptr<Store> open_store(const std::string& location, const std::string& data_dir) {
  if (location.empty()) {
    if (data_dir.empty()) throw UserError("[store] no --store given and no --data folder for the default SQLite store");
    return open_sqlite_store(data_dir + "/fluxpipe.db");
  }
  if (location.rfind("sqlite:", 0) == 0) {
    std::string path = location.substr(7);
    if (path.empty()) throw UserError("[store] 'sqlite:' needs a path, as in sqlite:/var/lib/fluxpipe/fluxpipe.db");
    return open_sqlite_store(path);
  }
  if (is_pg_location(location)) return open_pg_store(location);
  throw UserError("[store] '" + redact_store_location(location) +
                  "' is not a store: expected sqlite:PATH or a postgresql:// URI");
}

}  // namespace fluxpipe::server
