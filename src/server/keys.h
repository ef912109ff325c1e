// fluxpipe server: API keys — creation, and checking a presented key.
//
// A key is "fpk_" + 48 random hex characters; only its SHA-256 is stored (a key has 192
// random bits, so a fast hash is enough: there is nothing to brute-force). Checking compares
// the presented key's hash against every active key in constant time.
// Keys come from the store (`fluxpipe keys add|list|revoke`) and, for a quick start, from
// FLUXPIPE_API_KEYS (comma-separated plain keys).
// Thread-safety: KeyRing is thread-safe.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "server/store.h"

namespace fluxpipe::server {

struct NewKey {
  ApiKeyRecord record;
  std::string secret;   // shown once, never stored
};

// REQUIRES: name at most 64 characters.
NewKey make_api_key(const std::string& name, int64_t now_ms);

class KeyRing {
 public:
  // `env_keys`: plain keys accepted in addition to the store's. The store's keys are
  // re-read at most every `refresh`, so a revocation takes effect within that time.
  KeyRing(Store& store, const std::vector<std::string>& env_keys,
          std::chrono::milliseconds refresh = std::chrono::milliseconds(2000));

  // The key id of an active key, or nullopt.
  std::optional<std::string> authenticate(const std::string& presented);

 private:
  struct Entry {
    std::string id;
    std::string hash_hex;
  };
  void refresh_locked();

  Store& store_;
  std::vector<Entry> env_entries_;
  std::vector<Entry> entries_;
  std::chrono::milliseconds refresh_;
  std::chrono::steady_clock::time_point loaded_at_{};
  bool loaded_ = false;
  std::mutex mu_;
};

}  // namespace fluxpipe::server
