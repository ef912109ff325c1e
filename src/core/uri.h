// fluxpipe core: percent-encoding of URL parts (RFC 3986), shared by the S3 signer and the Hub
// client. Unreserved characters (A-Z a-z 0-9 - _ . ~) stay as they are, everything else becomes
// %XX in upper case; '/' stays when `keep_slash` (a path's separators).
// Thread-safety: a pure function.
#pragma once

#include <cctype>
#include <string>
#include <string_view>

namespace fluxpipe {

inline std::string percent_encode(std::string_view s, bool keep_slash) {
  static const char* digits = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out;
}

}  // namespace fluxpipe
