// A webhook receiver on 127.0.0.1 for the tests, and an independent Standard Webhooks
// signature check (OpenSSL's HMAC, not the server's signer).
#pragma once

#include <httplib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fluxpipe::testing {

struct Delivery {
  httplib::Headers headers;
  std::string body;
};

// An HTTP listener on 127.0.0.1 that records POSTs and answers `fail_first` of them with 500.
class Receiver {
 public:
  // `delay_ms`: each answer waits that long (a slow receiver); max_concurrent() says how many
  // deliveries it held at once.
  explicit Receiver(int fail_first = 0, int port = 0, int delay_ms = 0) : fail_first_(fail_first) {
    http_.Post("/hook", [this, delay_ms](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard lock(mu_);
        max_concurrent_ = std::max(max_concurrent_, ++concurrent_);
      }
      if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      std::lock_guard lock(mu_);
      --concurrent_;
      deliveries_.push_back({req.headers, req.body});
      res.status = static_cast<int>(deliveries_.size()) <= fail_first_ ? 500 : 204;
    });
    port_ = port ? (http_.bind_to_port("127.0.0.1", port) ? port : -1) : http_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { http_.listen_after_bind(); });
  }
  ~Receiver() {
    http_.stop();
    thread_.join();
  }
  int max_concurrent() {
    std::lock_guard lock(mu_);
    return max_concurrent_;
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hook"; }
  int port() const { return port_; }
  std::vector<Delivery> wait_for(size_t n, int timeout_ms = 10000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        if (deliveries_.size() >= n) return deliveries_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::lock_guard lock(mu_);
    return deliveries_;
  }

 private:
  int fail_first_;
  httplib::Server http_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Delivery> deliveries_;
  int concurrent_ = 0;
  int max_concurrent_ = 0;
};

inline std::string header(const httplib::Headers& h, const std::string& name) {
  auto it = h.find(name);
  return it == h.end() ? "" : it->second;
}

// Verifies per the Standard Webhooks spec, written independently of the server's signer.
inline bool signature_valid(const std::string& secret, const Delivery& d) {
  std::string b64 = secret.substr(6);
  std::vector<unsigned char> key(b64.size());
  int n = EVP_DecodeBlock(key.data(), reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  if (n < 0) return false;
  key.resize(static_cast<size_t>(n) - std::count(b64.begin(), b64.end(), '='));
  std::string content = header(d.headers, "webhook-id") + "." + header(d.headers, "webhook-timestamp") + "." + d.body;
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(content.data()),
       content.size(), mac, &len);
  std::string expected(45, '\0');
  expected.resize(static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(expected.data()), mac, len)));
  return header(d.headers, "webhook-signature") == "v1," + expected;
}

}  // namespace fluxpipe::testing
