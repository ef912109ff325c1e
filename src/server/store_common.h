// Internal to the stores: what the SQLite and PostgreSQL stores share (texts, tokens).
#pragma once

#include <string>

#include "server/store.h"

namespace fluxpipe::server {

inline constexpr const char* kCancelledQueued = "cancelled before it started";

// The error of a job failed after `max_attempts` interrupted starts.
std::string interrupted_error(int max_attempts);

// A fresh, unguessable claim token (fences a worker's writes to its claim).
std::string new_claim_token();

}  // namespace fluxpipe::server
