// Webhooks: a test listener receives the final status, verifies the Standard Webhooks
// signature independently (OpenSSL HMAC here), sees retries after a 500, and the
// address guard refuses internal targets at submission and at connect time.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>

#include "server/webhook.h"
#include "test_util.h"
#include "webhook_receiver.h"

namespace fluxpipe::testing {
namespace {

const char* kSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

auto allow_private() {
  return [](server::ServeOptions& o) {
    o.allow_private_webhooks = true;
    o.webhook_secret = kSecret;
    o.sync_wait_ms = 0;
  };
}

TEST(Webhook, DeliversTheSignedFinalStatus) {
  Receiver rx;
  TestServer s(allow_private());
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 2}, {"num_inference_steps", 1},
                             {"webhook", rx.url()}});
  ASSERT_EQ(code, 200) << j.dump();
  auto got = rx.wait_for(1);
  ASSERT_EQ(got.size(), 1u);
  const Delivery& d = got[0];
  EXPECT_EQ(header(d.headers, "Content-Type"), "application/json");
  EXPECT_TRUE(signature_valid(kSecret, d));
  int64_t ts = std::stoll(header(d.headers, "webhook-timestamp"));
  EXPECT_LE(std::llabs(ts - test_now_ms() / 1000), 60);
  json body = json::parse(d.body);
  EXPECT_EQ(body["status"], "SUCCESS");
  EXPECT_EQ(body["id"], j["id"]);
  EXPECT_EQ(body["download_urls"].size(), 2u);
  EXPECT_EQ(body, s.status(j["id"]).second);   // the same object the status endpoint answers
  // A tampered body fails verification: the check above is not vacuous.
  Delivery tampered = d;
  tampered.body += " ";
  EXPECT_FALSE(signature_valid(kSecret, tampered));
}

TEST(Webhook, FailureIsDeliveredToo) {
  Receiver rx;
  TestServer s(allow_private());
  s.submit({{"prompt", "[fail]"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1},
            {"webhook", rx.url()}});
  auto got = rx.wait_for(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(json::parse(got[0].body)["status"], "FAILURE");
}

TEST(Webhook, RetriedAfterA500WithTheSameId) {
  Receiver rx(/*fail_first=*/2);
  TestServer s(allow_private());
  s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1},
            {"webhook", rx.url()}});
  auto got = rx.wait_for(3);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(header(got[0].headers, "webhook-id"), header(got[2].headers, "webhook-id"));
  for (const Delivery& d : got) EXPECT_TRUE(signature_valid(kSecret, d));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(rx.wait_for(4, 0).size(), 3u);   // delivered: no more attempts
}

TEST(Webhook, GivesUpAfterTheConfiguredAttempts) {
  Receiver rx(/*fail_first=*/100);
  TestServer s([](server::ServeOptions& o) {
    allow_private()(o);
    o.webhook_policy.max_attempts = 3;
  });
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1},
                             {"webhook", rx.url()}});
  EXPECT_EQ(rx.wait_for(3).size(), 3u);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(rx.wait_for(4, 0).size(), 3u);
  auto m = s.server->store().get_outbox_for_request(j["id"]);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->done);
  EXPECT_EQ(m->attempts, 3);
  EXPECT_NE(m->last_error.find("500"), std::string::npos);
}

TEST(Webhook, UndeliveredMessagesSurviveARestart) {
  TempDir dir;
  int port;
  std::string id;
  port = free_port();   // the receiver is down while the request ends
  auto configure = [&](server::ServeOptions& o) {
    allow_private()(o);
    o.data_dir = dir.path();
    o.webhook_policy.base_delay_ms = 100000;   // no retry before the restart
  };
  {
    TestServer s(configure);
    auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1},
                               {"num_inference_steps", 1}, {"webhook", "http://127.0.0.1:" + std::to_string(port) + "/hook"}});
    id = j["id"];
    EXPECT_EQ(s.wait_done(id)["status"], "SUCCESS");
    for (int i = 0; i < 200; ++i) {
      auto m = s.server->store().get_outbox_for_request(id);
      if (m && m->attempts >= 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  // Make the retry due now, bring the receiver up, restart the server on the same data.
  {
    auto store = server::open_sqlite_store(dir.path() + "/fluxpipe.db");
    auto m = store->get_outbox_for_request(id);
    ASSERT_TRUE(m);
    EXPECT_FALSE(m->done);
    m->next_attempt_ms = 0;
    store->update_outbox(*m);
  }
  Receiver rx(0, port);
  ASSERT_EQ(rx.port(), port);
  TestServer again(configure);
  auto got = rx.wait_for(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(json::parse(got[0].body)["id"], id);
  EXPECT_TRUE(signature_valid(kSecret, got[0]));
}

TEST(Webhook, ASlowReceiverHoldsAtMostItsShareAndDelaysNoOneElse) {
  Receiver slow(0, 0, /*delay_ms=*/1500);
  Receiver fast;
  TestServer s([](server::ServeOptions& o) {
    allow_private()(o);
    o.rate_limit_per_minute = 0;
    o.webhook_policy.workers = 4;
    o.webhook_policy.per_host = 2;
    o.webhook_policy.host_busy_delay_ms = 100;
  });
  auto submit_to = [&](const Receiver& rx) {
    auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1},
                               {"num_inference_steps", 1}, {"webhook", rx.url()}});
    EXPECT_EQ(code, 200) << j.dump();
    return j["id"].get<std::string>();
  };
  std::vector<std::string> slow_ids;
  for (int i = 0; i < 6; ++i) slow_ids.push_back(submit_to(slow));
  for (const std::string& id : slow_ids) s.wait_done(id);
  auto t0 = std::chrono::steady_clock::now();
  std::string a = submit_to(fast), b = submit_to(fast);
  EXPECT_EQ(fast.wait_for(2, 5000).size(), 2u);
  double fast_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(fast_s, 1.4) << "the fast receiver waited behind the slow one";
  EXPECT_EQ(slow.wait_for(6, 15000).size(), 6u);   // every slow one arrives too, in the end
  EXPECT_LE(slow.max_concurrent(), 2);
  EXPECT_EQ(slow.max_concurrent(), 2);             // and two at a time, not one after another
}

TEST(Webhook, InternalTargetsAreRefusedAtSubmission) {
  TestServer s;   // private targets not allowed
  json body = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}};
  for (const char* url : {"http://127.0.0.1:9/hook", "http://localhost/hook", "http://169.254.169.254/latest/meta-data/",
                          "http://10.0.0.1/", "http://[::1]:80/", "http://192.168.0.10/", "ftp://example.com/"}) {
    body["webhook"] = url;
    auto [code, j] = s.submit(body);
    EXPECT_EQ(code, 400) << url;
    EXPECT_NE(j["error"].get<std::string>().find("webhook"), std::string::npos) << j.dump();
  }
}

TEST(Webhook, TheSenderChecksTheAddressItConnectsTo) {
  Receiver rx;
  auto guarded = server::make_curl_sender(/*allow_private=*/false, 2000);
  server::DeliveryResult r = guarded->post(rx.url(), "{}", {});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("loopback"), std::string::npos) << r.error;
  EXPECT_EQ(rx.wait_for(1, 200).size(), 0u);   // nothing reached the listener
  auto open = server::make_curl_sender(/*allow_private=*/true, 2000);
  EXPECT_TRUE(open->post(rx.url(), "{}", {}).ok);
  EXPECT_EQ(rx.wait_for(1).size(), 1u);
}

}  // namespace
}  // namespace fluxpipe::testing
