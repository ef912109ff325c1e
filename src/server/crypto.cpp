#include "server/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/error.h"

namespace fluxpipe::server {

std::vector<uint8_t> random_bytes(size_t bytes) {
  std::vector<uint8_t> out(bytes);
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) {
    throw InternalError("[random_bytes] OpenSSL RAND_bytes failed");
  }
  return out;
}

namespace {
std::string to_hex(const uint8_t* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = digits[p[i] >> 4];
    s[2 * i + 1] = digits[p[i] & 15];
  }
  return s;
}
}  // namespace

std::string random_hex(size_t bytes) {
  std::vector<uint8_t> b = random_bytes(bytes);
  return to_hex(b.data(), b.size());
}

std::string sha256_hex(std::string_view data) {
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(data.data()), data.size(), digest);
  return to_hex(digest, sizeof digest);
}

std::vector<uint8_t> hmac_sha256(const std::vector<uint8_t>& key, std::string_view data) {
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const uint8_t*>(data.data()),
            data.size(), out.data(), &len)) {
    throw InternalError("[hmac_sha256] OpenSSL HMAC failed");
  }
  out.resize(len);
  return out;
}

std::string base64_encode(const std::vector<uint8_t>& data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(), static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::vector<uint8_t> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) throw UserError("[base64] length " + std::to_string(text.size()) + " is not a multiple of 4");
  std::vector<uint8_t> out(3 * text.size() / 4 + 1);
  int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) throw UserError("[base64] malformed base64 text");
  // EVP_DecodeBlock counts padding as zero bytes; drop them.
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = (text.size() >= 2 && text[text.size() - 2] == '=') ? 2 : 1;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace fluxpipe::server
