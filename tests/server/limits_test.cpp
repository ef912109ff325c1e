// Limits: body size (413), queue depth, per-key queue cap and per-key rate (429 with Retry-After).
#include <gtest/gtest.h>

#include "test_util.h"

namespace fluxpipe::testing {
namespace {

json small(int steps = 1) {
  return {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", steps}};
}

TEST(Limits, BodyTooLargeIs413) {
  TestServer s([](server::ServeOptions& o) { o.max_body_bytes = 4096; });
  json body = small();
  body["prompt"] = std::string(5000, 'a');
  auto res = s.client().Post("/generate/v3", s.auth(), body.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_EQ(json::parse(res->body)["status"], "FAILURE");
}

TEST(Limits, PromptLengthIs400) {
  TestServer s([](server::ServeOptions& o) { o.limits.max_prompt_chars = 100; });
  json body = small();
  body["prompt"] = std::string(101, 'a');
  EXPECT_EQ(s.submit(body).first, 400);
}

TEST(Limits, FullQueueIs429WithRetryAfter) {
  TestServer s(
      [](server::ServeOptions& o) {
        o.max_queue = 2;
        o.rate_limit_per_minute = 0;
      },
      /*step_ms=*/100);
  EXPECT_EQ(s.submit(small(50)).first, 200);
  EXPECT_EQ(s.submit(small(50)).first, 200);
  auto res = s.client().Post("/generate/v3", s.auth(), small().dump(), "application/json");
  EXPECT_EQ(res->status, 429);
  EXPECT_GE(std::stoi(res->get_header_value("Retry-After")), 1);
  EXPECT_NE(json::parse(res->body)["error"].get<std::string>().find("queue"), std::string::npos);
}

TEST(Limits, PerKeyRateLimitIs429AndOtherKeysAreUnaffected) {
  TestServer s([](server::ServeOptions& o) { o.rate_limit_per_minute = 3; });
  for (int i = 0; i < 3; ++i) EXPECT_EQ(s.submit(small()).first, 200);
  auto res = s.client().Post("/generate/v3", s.auth(), small().dump(), "application/json");
  EXPECT_EQ(res->status, 429);
  EXPECT_GE(std::stoi(res->get_header_value("Retry-After")), 1);
  EXPECT_EQ(s.submit(small(), s.other_key).first, 200);
  // Polling is not rate limited.
  auto [code, j] = s.submit(small(), s.other_key);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.status(j["id"], s.other_key).first, 200);
}

TEST(Limits, PerKeyQueueCapIs429AndOtherKeysStillGetIn) {
  TestServer s(
      [](server::ServeOptions& o) {
        o.max_queued_per_key = 2;
        o.rate_limit_per_minute = 0;
      },
      /*step_ms=*/100);
  EXPECT_EQ(s.submit(small(50)).first, 200);
  EXPECT_EQ(s.submit(small(50)).first, 200);
  auto res = s.client().Post("/generate/v3", s.auth(), small().dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429);
  EXPECT_GE(std::stoi(res->get_header_value("Retry-After")), 1);
  EXPECT_NE(json::parse(res->body)["error"].get<std::string>().find("this key has 2"), std::string::npos) << res->body;
  EXPECT_EQ(s.submit(small(), s.other_key).first, 200);
}

TEST(Limits, RateLimiterRefills) {
  server::RateLimiter rl(60);   // one per second
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 60; ++i) EXPECT_EQ(rl.take("k", t0), 0);
  EXPECT_EQ(rl.take("k", t0), 1);
  EXPECT_EQ(rl.take("k", t0 + std::chrono::milliseconds(1001)), 0);
  EXPECT_EQ(rl.take("other", t0), 0);
}

}  // namespace
}  // namespace fluxpipe::testing
