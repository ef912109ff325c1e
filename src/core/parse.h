// fluxpipe core: parsing command-line and environment values.
// Thread-safety: pure functions.
#pragma once

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

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

// A size in bytes: a whole number with an optional unit K, M, G, T (powers of 1024; "KiB",
// "MB" and "GiB" spellings alike), e.g. "8G", "7500M", "8589934592". UserError otherwise.
inline size_t parse_bytes(const char* op, const std::string& flag, const std::string& text) {
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  std::string digits = text.substr(0, i), unit = text.substr(i);
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  int shift = -1;
  if (unit.empty() || unit == "B") shift = 0;
  for (auto [u, sh] : {std::pair<char, int>{'K', 10}, {'M', 20}, {'G', 30}, {'T', 40}}) {
    if (unit == std::string(1, u) || unit == std::string(1, u) + "B" || unit == std::string(1, u) + "IB") shift = sh;
  }
  if (digits.empty() || digits.size() > 12 || shift < 0) {
    throw UserError(std::string("[") + op + "] " + flag + ": '" + text + "' is not a size (e.g. 8G, 7500M, 8589934592)");
  }
  return static_cast<size_t>(std::stoull(digits)) << shift;
}

}  // namespace fluxpipe
