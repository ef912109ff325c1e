#include "server/keys.h"

#include "core/error.h"
#include "server/crypto.h"

namespace fluxpipe::server {

NewKey make_api_key(const std::string& name, int64_t now_ms) {
  if (name.size() > 64) throw UserError("[keys add] --name is longer than 64 characters");
  NewKey k;
  k.secret = "fpk_" + random_hex(24);
  k.record.id = "key_" + random_hex(6);
  k.record.name = name;
  k.record.hash_hex = sha256_hex(k.secret);
  k.record.created_ms = now_ms;
  return k;
}

KeyRing::KeyRing(Store& store, const std::vector<std::string>& env_keys, std::chrono::milliseconds refresh)
    : store_(store), refresh_(refresh) {
  for (const std::string& key : env_keys) {
    if (key.empty()) continue;
    std::string hash = sha256_hex(key);
    env_entries_.push_back({"env_" + hash.substr(0, 12), hash});
  }
}

void KeyRing::refresh_locked() {
  auto now = std::chrono::steady_clock::now();
  if (loaded_ && now - loaded_at_ < refresh_) return;
  std::vector<Entry> fresh = env_entries_;
  try {
    for (const ApiKeyRecord& k : store_.list_keys()) {
      if (!k.revoked) fresh.push_back({k.id, k.hash_hex});
    }
  } catch (const IoError&) {
    // The store is away (a database restart): keep judging keys by the last list, which is
    // at most `refresh_` old, and try again in a second. Without any list, refuse.
    if (!loaded_) throw;
    loaded_at_ = now - refresh_ + std::chrono::seconds(1);
    return;
  }
  entries_ = std::move(fresh);
  loaded_at_ = now;
  loaded_ = true;
}

std::optional<std::string> KeyRing::authenticate(const std::string& presented) {
  if (presented.empty() || presented.size() > 256) return std::nullopt;
  std::string hash = sha256_hex(presented);
  std::lock_guard lock(mu_);
  refresh_locked();
  // Every entry is compared, so the time taken does not say which one matched.
  std::optional<std::string> found;
  for (const Entry& e : entries_) {
    if (constant_time_equal(hash, e.hash_hex) && !found) found = e.id;
  }
  return found;
}

}  // namespace fluxpipe::server
