#include "server/webhook.h"

#include <curl/curl.h>

#include <chrono>

#include "core/clock.h"
#include "core/error.h"
#include "server/crypto.h"
#include "server/log.h"
#include "server/net_guard.h"

namespace fluxpipe::server {
namespace {

int64_t now_ms() { return wall_clock_ms(); }

size_t discard_body(char*, size_t size, size_t n, void*) { return size * n; }

struct ConnectGuard {
  bool allow_private = false;
  std::string refused;   // set when the guard refused an address
};

curl_socket_t open_checked_socket(void* clientp, curlsocktype, curl_sockaddr* address) {
  auto* guard = static_cast<ConnectGuard*>(clientp);
  if (!guard->allow_private) {
    std::string why = refused_address_reason(&address->addr);
    if (!why.empty()) {
      guard->refused = why;
      return CURL_SOCKET_BAD;
    }
  }
  return socket(address->family, address->socktype, address->protocol);
}

class CurlSender final : public WebhookSender {
 public:
  CurlSender(bool allow_private, int timeout_ms, std::string proxy)
      : allow_private_(allow_private), timeout_ms_(timeout_ms), proxy_(std::move(proxy)) {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  }

  DeliveryResult post(const std::string& url, const std::string& body,
                      const std::map<std::string, std::string>& headers) override {
    DeliveryResult result;
    CURL* curl = curl_easy_init();
    if (!curl) {
      result.error = "curl_easy_init failed";
      return result;
    }
    curl_slist* list = curl_slist_append(nullptr, "Content-Type: application/json");
    list = curl_slist_append(list, "User-Agent: fluxpipe-webhook");
    for (const auto& [name, value] : headers) list = curl_slist_append(list, (name + ": " + value).c_str());
    ConnectGuard guard{allow_private_, {}};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    // libcurl would honour http_proxy/HTTPS_PROXY from the environment, and the address check
    // below would then judge the proxy, not the target: no proxy unless the operator names one.
    curl_easy_setopt(curl, CURLOPT_PROXY, proxy_.c_str());
    if (proxy_.empty()) curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms_));
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(curl, CURLOPT_OPENSOCKETFUNCTION, open_checked_socket);
    curl_easy_setopt(curl, CURLOPT_OPENSOCKETDATA, &guard);
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
      long status = 0;
      curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
      result.http_status = static_cast<int>(status);
      result.ok = status >= 200 && status < 300;
      if (!result.ok) result.error = "receiver answered HTTP " + std::to_string(status);
    } else if (!guard.refused.empty()) {
      result.error = "refused to connect: the target is " + guard.refused;
    } else {
      result.error = curl_easy_strerror(rc);
    }
    curl_slist_free_all(list);
    curl_easy_cleanup(curl);
    return result;
  }

 private:
  bool allow_private_;
  int timeout_ms_;
  std::string proxy_;
};

}  // namespace

WebhookSigner::WebhookSigner(const std::string& secret) {
  if (secret.rfind("whsec_", 0) != 0) throw UserError("[webhook secret] must start with 'whsec_'");
  key_ = base64_decode(secret.substr(6));
  if (key_.size() < 24) throw UserError("[webhook secret] must hold at least 24 bytes of base64 after 'whsec_'");
}

std::string WebhookSigner::generate_secret() { return "whsec_" + base64_encode(random_bytes(32)); }

std::map<std::string, std::string> WebhookSigner::sign(const std::string& id, int64_t timestamp_s,
                                                       const std::string& body) const {
  std::string ts = std::to_string(timestamp_s);
  std::string signature = "v1," + base64_encode(hmac_sha256(key_, id + "." + ts + "." + body));
  return {{"webhook-id", id}, {"webhook-timestamp", ts}, {"webhook-signature", signature}};
}

namespace {

// The host[:port] a URL names, without user information (what logs show and the per-host limit
// counts); the whole text when it is not a URL.
std::string host_of(const std::string& url) {
  size_t scheme = url.find("://");
  if (scheme == std::string::npos) return url;
  size_t end = url.find_first_of("/?#", scheme + 3);
  std::string authority = url.substr(scheme + 3, end == std::string::npos ? std::string::npos : end - scheme - 3);
  if (size_t at = authority.rfind('@'); at != std::string::npos) authority = authority.substr(at + 1);
  return authority;
}

}  // namespace

std::string redact_url(const std::string& url) {
  size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "(not a URL)";
  bool more = url.find_first_of("/?#", scheme + 3) != std::string::npos;
  return url.substr(0, scheme + 3) + host_of(url) + (more ? "/..." : "");
}

std::unique_ptr<WebhookSender> make_curl_sender(bool allow_private, int timeout_ms, const std::string& proxy) {
  return std::make_unique<CurlSender>(allow_private, timeout_ms, proxy);
}

WebhookOutbox::WebhookOutbox(Store& store, WebhookSender& sender, const WebhookSigner& signer,
                             std::function<std::string(const std::string&)> payload, OutboxPolicy policy,
                             Metrics& metrics)
    : store_(store), sender_(sender), signer_(signer), payload_(std::move(payload)), policy_(policy),
      metrics_(metrics) {}

WebhookOutbox::~WebhookOutbox() { stop(); }

void WebhookOutbox::start() {
  thread_ = std::thread([this] { dispatch_loop(); });
  for (int i = 0; i < std::max(1, policy_.workers); ++i) workers_.emplace_back([this] { worker_loop(); });
}

void WebhookOutbox::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  work_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
  // Messages claimed but not sent: release them for the next start or another node.
  std::deque<OutboxMessage> left;
  {
    std::lock_guard lock(mu_);
    left.swap(queue_);
  }
  for (const OutboxMessage& m : left) {
    try {
      store_.update_outbox(m);
    } catch (const std::exception& e) {
      log("warn", std::string("webhook outbox: cannot release a claimed message at stop (another node takes it "
                              "after the claim lapses): ") + e.what());
    }
  }
}

void WebhookOutbox::wake() {
  {
    std::lock_guard lock(mu_);
    woken_ = true;
  }
  cv_.notify_all();
}

int WebhookOutbox::dispatch_once() {
  int idle = 0;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return 0;
    idle = std::max(1, policy_.workers) - busy_ - static_cast<int>(queue_.size());
  }
  if (idle <= 0) return 0;
  // Claimed, so that with several nodes each message is sent by one of them per attempt; a node
  // that dies mid-delivery leaves its messages to the others after claim_ms.
  std::vector<OutboxMessage> due = store_.claim_due_outbox(policy_.node_id, now_ms(), policy_.claim_ms, idle);
  int queued = 0;
  std::vector<OutboxMessage> deferred;
  {
    std::lock_guard lock(mu_);
    for (OutboxMessage& m : due) {
      int& n = in_flight_[host_of(m.url)];
      if (n >= policy_.per_host) {
        deferred.push_back(std::move(m));
        continue;
      }
      ++n;
      queue_.push_back(std::move(m));
      ++queued;
    }
  }
  work_cv_.notify_all();
  for (OutboxMessage& m : deferred) {
    // Its host has per_host deliveries in flight: later, without spending an attempt.
    m.next_attempt_ms = now_ms() + policy_.host_busy_delay_ms;
    store_.update_outbox(m);
  }
  return queued;
}

void WebhookOutbox::dispatch_loop() {
  OutageLog outage("webhook outbox");
  while (true) {
    int queued = 0;
    try {
      queued = dispatch_once();
      outage.ok();
    } catch (const std::exception& e) {
      metrics_.count_error("io");
      outage.failed(e.what());
    }
    std::unique_lock lock(mu_);
    if (stopping_) return;
    bool room = busy_ + static_cast<int>(queue_.size()) < std::max(1, policy_.workers);
    if (queued > 0 && room) continue;   // more may be due
    cv_.wait_for(lock, std::chrono::milliseconds(policy_.poll_ms), [this] { return stopping_ || woken_; });
    if (stopping_) return;
    woken_ = false;
  }
}

void WebhookOutbox::worker_loop() {
  while (true) {
    OutboxMessage m;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      m = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    std::string host = host_of(m.url);
    try {
      deliver(std::move(m));
    } catch (const std::exception& e) {
      // Recording the attempt failed (the store is away): the claim lapses and it is sent again.
      metrics_.count_error("io");
      log("error", std::string("webhook outbox: cannot record a delivery attempt: ") + e.what());
    }
    {
      std::lock_guard lock(mu_);
      --busy_;
      if (--in_flight_[host] <= 0) in_flight_.erase(host);
      woken_ = true;   // a worker is free: the dispatcher may claim more now
    }
    cv_.notify_all();
  }
}

void WebhookOutbox::deliver(OutboxMessage m) {
  std::string body = payload_(m.request_id);
  std::string message_id = "msg_" + m.request_id + "_" + std::to_string(m.id);
  DeliveryResult r = sender_.post(m.url, body, signer_.sign(message_id, now_ms() / 1000, body));
  m.attempts += 1;
  if (r.ok) {
    m.done = true;
    m.last_error.clear();
    metrics_.count_webhook("delivered");
    log("info", "webhook " + message_id + " delivered to " + redact_url(m.url) + " (attempt " + std::to_string(m.attempts) +
                    ", HTTP " + std::to_string(r.http_status) + ")");
  } else if (m.attempts >= policy_.max_attempts) {
    m.done = true;
    m.last_error = r.error;
    metrics_.count_webhook("gave_up");
    log("warn", "webhook " + message_id + " to " + redact_url(m.url) + " failed (attempt " + std::to_string(m.attempts) +
                    "): " + r.error + "; giving up after " + std::to_string(policy_.max_attempts) + " attempts");
  } else {
    int64_t delay = policy_.base_delay_ms << std::min(m.attempts - 1, 30);
    if (delay > policy_.max_delay_ms || delay <= 0) delay = policy_.max_delay_ms;
    m.next_attempt_ms = now_ms() + delay;
    m.last_error = r.error;
    metrics_.count_webhook("retry");
    log("warn", "webhook " + message_id + " to " + redact_url(m.url) + " failed (attempt " + std::to_string(m.attempts) +
                    "): " + r.error + "; retrying in " + std::to_string(delay) + " ms");
  }
  store_.update_outbox(m);
}

}  // namespace fluxpipe::server
