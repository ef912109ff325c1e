// fluxpipe server: webhook delivery — Standard Webhooks signing, an HTTP sender, and the
// outbox worker that retries with exponential backoff.
//
// Delivery is at-least-once: the outbox row is written in the same transaction that ends
// the request, and marked done only after a 2xx answer, so a restart resends what was not
// acknowledged. Receivers de-duplicate on the `webhook-id` header (stable across retries).
// Thread-safety: WebhookSigner and senders are thread-safe; WebhookOutbox runs one thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "server/metrics.h"
#include "server/store.h"

namespace fluxpipe::server {

// Signs per https://www.standardwebhooks.com: signature over "<id>.<timestamp>.<body>",
// HMAC-SHA256 keyed with the base64-decoded part of "whsec_<base64>".
class WebhookSigner {
 public:
  // Throws UserError when `secret` is not "whsec_" + base64 of at least 24 bytes.
  explicit WebhookSigner(const std::string& secret);
  static std::string generate_secret();
  // Returns the three headers: webhook-id, webhook-timestamp, webhook-signature ("v1,<base64>").
  std::map<std::string, std::string> sign(const std::string& id, int64_t timestamp_s, const std::string& body) const;

 private:
  std::vector<uint8_t> key_;
};

struct DeliveryResult {
  bool ok = false;        // 2xx received
  int http_status = 0;    // 0 when no answer
  std::string error;      // why not ok
};

class WebhookSender {
 public:
  virtual ~WebhookSender() = default;
  virtual DeliveryResult post(const std::string& url, const std::string& body,
                              const std::map<std::string, std::string>& headers) = 0;
};

// libcurl sender: no redirects, http/https only, and — unless `allow_private` — a refusal
// of every connection whose actual address is private/loopback/link-local/metadata
// (checked at connect time, since DNS may answer differently than at submission).
// No proxy from the environment: only `proxy` when the operator names one (then the address
// check judges the proxy, which the operator chose).
std::unique_ptr<WebhookSender> make_curl_sender(bool allow_private, int timeout_ms, const std::string& proxy = "");

// "https://host:port/..." — scheme and host only, for logs (paths and queries often carry tokens).
std::string redact_url(const std::string& url);

struct OutboxPolicy {
  int max_attempts = 8;
  int64_t base_delay_ms = 1000;     // delay after attempt n is base * 2^(n-1), capped
  int64_t max_delay_ms = 300000;
  int64_t poll_ms = 500;            // how often the worker looks for due messages
  std::string node_id = "local";    // names this node's claims on messages
  int64_t claim_ms = 120000;        // a claimed message not updated for this long goes to another node
  int workers = 8;                  // deliveries in flight at once
  int per_host = 2;                 // of which at most this many to one host
  int64_t host_busy_delay_ms = 500; // a message whose host is at its limit waits this long (not an attempt)
};

// Delivers the outbox: one dispatcher claims due messages (as many as there are idle workers) and
// hands them to `workers` delivery threads, at most `per_host` to any one host, so one slow
// receiver holds at most that many threads and never delays the others' webhooks.
class WebhookOutbox {
 public:
  // `payload(request_id)` builds the JSON body: the request's status object.
  WebhookOutbox(Store& store, WebhookSender& sender, const WebhookSigner& signer,
                std::function<std::string(const std::string&)> payload, OutboxPolicy policy, Metrics& metrics);
  ~WebhookOutbox();
  void start();
  void stop();
  // Wakes the dispatcher (a request just ended).
  void wake();

 private:
  void dispatch_loop();
  void worker_loop();
  // Claims what the idle workers can take and queues it; returns how many were queued.
  int dispatch_once();
  // One delivery attempt, recorded in the store.
  void deliver(OutboxMessage m);

  Store& store_;
  WebhookSender& sender_;
  const WebhookSigner& signer_;
  std::function<std::string(const std::string&)> payload_;
  OutboxPolicy policy_;
  Metrics& metrics_;
  std::thread thread_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;          // the dispatcher: woken, a worker went idle, stop
  std::condition_variable work_cv_;     // the workers: a message is queued, stop
  std::deque<OutboxMessage> queue_;
  std::map<std::string, int> in_flight_;   // by host: queued or being delivered
  int busy_ = 0;                        // workers delivering now
  bool stopping_ = false;
  bool woken_ = false;
};

}  // namespace fluxpipe::server
