#include "server/sigv4.h"

#include <algorithm>
#include <cctype>
#include <ctime>

#include "core/error.h"
#include "core/uri.h"
#include "server/crypto.h"

namespace fluxpipe::server {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Header values: leading/trailing spaces removed, inner runs of spaces folded to one.
std::string trim_value(const std::string& v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::string hex(const std::vector<uint8_t>& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

// The signed headers in canonical order: (lower-case name, trimmed value).
std::vector<std::pair<std::string, std::string>> canonical_headers(const SignedRequestInput& r,
                                                                   const std::string& amz_date,
                                                                   const std::string& session_token) {
  std::map<std::string, std::string> h;
  for (const auto& [name, value] : r.headers) h[lower(name)] = trim_value(value);
  if (!h.count("host")) throw InternalError("[sigv4] the request has no host header");
  h["x-amz-date"] = amz_date;
  h["x-amz-content-sha256"] = r.payload_sha256;
  if (!session_token.empty()) h["x-amz-security-token"] = session_token;
  return {h.begin(), h.end()};
}

std::string signed_header_names(const std::vector<std::pair<std::string, std::string>>& headers) {
  std::string out;
  for (const auto& [name, value] : headers) out += (out.empty() ? "" : ";") + name;
  return out;
}

}  // namespace

std::string sigv4_uri_encode(const std::string& s, bool keep_slash) { return percent_encode(s, keep_slash); }

std::string amz_date_of(int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

std::string sigv4_canonical_request(const SignedRequestInput& r, const std::string& amz_date,
                                    const std::string& session_token) {
  std::vector<std::pair<std::string, std::string>> query;
  for (const auto& [k, v] : r.query) query.emplace_back(sigv4_uri_encode(k, false), sigv4_uri_encode(v, false));
  std::sort(query.begin(), query.end());
  std::string q;
  for (const auto& [k, v] : query) q += (q.empty() ? "" : "&") + k + "=" + v;
  auto headers = canonical_headers(r, amz_date, session_token);
  std::string h;
  for (const auto& [name, value] : headers) h += name + ":" + value + "\n";
  return r.method + "\n" + sigv4_uri_encode(r.path.empty() ? "/" : r.path, true) + "\n" + q + "\n" + h + "\n" +
         signed_header_names(headers) + "\n" + r.payload_sha256;
}

std::map<std::string, std::string> sigv4_sign(const SignedRequestInput& r, const AwsCredentials& creds,
                                              const std::string& amz_date) {
  if (amz_date.size() != 16 || amz_date[8] != 'T' || amz_date.back() != 'Z') {
    throw InternalError("[sigv4] amz_date must be YYYYMMDDTHHMMSSZ, got '" + amz_date + "'");
  }
  std::string day = amz_date.substr(0, 8);
  std::string scope = day + "/" + creds.region + "/" + creds.service + "/aws4_request";
  std::string canonical = sigv4_canonical_request(r, amz_date, creds.session_token);
  std::string to_sign = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + sha256_hex(canonical);
  std::vector<uint8_t> key = hmac_sha256(bytes_of("AWS4" + creds.secret_access_key), day);
  key = hmac_sha256(key, creds.region);
  key = hmac_sha256(key, creds.service);
  key = hmac_sha256(key, "aws4_request");
  std::string signature = hex(hmac_sha256(key, to_sign));
  std::map<std::string, std::string> out;
  out["Authorization"] = "AWS4-HMAC-SHA256 Credential=" + creds.access_key_id + "/" + scope +
                         ", SignedHeaders=" + signed_header_names(canonical_headers(r, amz_date, creds.session_token)) +
                         ", Signature=" + signature;
  out["x-amz-date"] = amz_date;
  out["x-amz-content-sha256"] = r.payload_sha256;
  if (!creds.session_token.empty()) out["x-amz-security-token"] = creds.session_token;
  return out;
}

}  // namespace fluxpipe::server
