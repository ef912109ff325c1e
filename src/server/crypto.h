// fluxpipe server: the few cryptographic primitives the server needs, from OpenSSL.
// Thread-safety: all functions are thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fluxpipe::server {

// `bytes` bytes from the OpenSSL CSPRNG, as 2*bytes lowercase hex characters.
std::string random_hex(size_t bytes);
std::vector<uint8_t> random_bytes(size_t bytes);

std::string sha256_hex(std::string_view data);
std::vector<uint8_t> hmac_sha256(const std::vector<uint8_t>& key, std::string_view data);

std::string base64_encode(const std::vector<uint8_t>& data);
// Throws UserError on malformed input.
std::vector<uint8_t> base64_decode(std::string_view text);

// Constant-time equality for equal-length strings; false (not early) for other lengths.
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace fluxpipe::server
