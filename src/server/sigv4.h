// fluxpipe server: AWS Signature Version 4 for S3-compatible object stores.
//
// Signs one request: the canonical request (method, URI-encoded path, sorted query, the signed
// headers lower-cased and trimmed, the payload's SHA-256), the string to sign, and the key
// derived from the secret, date, region and service. Tested against AWS's published examples and
// against botocore (tests/server/sigv4_test.cpp).
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fluxpipe::server {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;   // optional: sent as x-amz-security-token
  std::string region = "us-east-1";
  std::string service = "s3";
};

struct SignedRequestInput {
  std::string method = "GET";
  std::string path = "/";                         // decoded; encoded here (S3: each segment once)
  std::vector<std::pair<std::string, std::string>> query;   // decoded names and values
  std::map<std::string, std::string> headers;     // must hold host; names in any case
  std::string payload_sha256;                     // hex; "UNSIGNED-PAYLOAD" allowed
};

// The headers to add to the request: Authorization, x-amz-date, x-amz-content-sha256 (and
// x-amz-security-token with a session token). `amz_date` is "YYYYMMDDTHHMMSSZ" (UTC).
std::map<std::string, std::string> sigv4_sign(const SignedRequestInput& request, const AwsCredentials& creds,
                                              const std::string& amz_date);

// The canonical request itself (for tests and for debugging a SignatureDoesNotMatch).
std::string sigv4_canonical_request(const SignedRequestInput& request, const std::string& amz_date,
                                    const std::string& session_token = "");

// RFC 3986 encoding as SigV4 wants it: unreserved characters as they are, everything else %XX
// (upper case); '/' kept when `keep_slash`.
std::string sigv4_uri_encode(const std::string& s, bool keep_slash);

// "YYYYMMDDTHHMMSSZ" for a Unix time in seconds.
std::string amz_date_of(int64_t unix_seconds);

}  // namespace fluxpipe::server
