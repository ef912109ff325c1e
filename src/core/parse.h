// fluxpipe core: parsing command-line and environment values.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "core/error.h"

namespace fluxpipe {

// The whole of `text` as an integer in [lo, hi], or UserError "[op] flag: 'text' is not an
// integer in lo..hi".
inline int64_t parse_integer(const char* op, const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || x < lo || x > hi) {
    throw UserError(std::string("[") + op + "] " + flag + ": '" + text + "' is not an integer in " + std::to_string(lo) +
                    ".." + std::to_string(hi));
  }
  return x;
}

}  // namespace fluxpipe
