// Retention (ended requests and their images deleted after --retention; 410 afterwards; the
// cleanup counted in /metrics) and Idempotency-Key on submissions, over HTTP.
#include <gtest/gtest.h>

#include <filesystem>

#include "server/options.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

json small(int samples = 1) {
  return {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", samples}, {"num_inference_steps", 1}};
}

TEST(Retention, EndedRequestsAndImagesGoThenAnswer410) {
  TestServer s([](server::ServeOptions& o) { o.retention_ms = 1000; });
  auto [code, j] = s.submit(small(2));
  ASSERT_EQ(code, 200);
  std::string id = j["id"];
  json done = s.wait_done(id);
  ASSERT_EQ(done["status"], "SUCCESS");
  std::string image = s.path_of(done["download_urls"][0]);
  EXPECT_EQ(s.client().Get(image)->status, 200);
  std::string token = image.substr(std::string("/v3/images/").size(), 32);
  ASSERT_TRUE(std::filesystem::exists(s.dir.path() + "/images/" + token));
  int status = 0;
  for (int i = 0; i < 100 && status != 410; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = s.status(id).first;
  }
  ASSERT_EQ(status, 410);
  auto res = s.client().Get("/generate/v3/status/" + id, s.auth());
  EXPECT_NE(json::parse(res->body)["error"].get<std::string>().find("retention"), std::string::npos) << res->body;
  EXPECT_EQ(s.client().Get(image)->status, 410);
  EXPECT_FALSE(std::filesystem::exists(s.dir.path() + "/images/" + token));
  EXPECT_EQ(s.status(id, s.other_key).first, 404);   // another key learns nothing, as before
  std::string metrics = s.client().Get("/metrics")->body;
  EXPECT_NE(metrics.find("fluxpipe_retention_deleted_requests_total 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("fluxpipe_retention_deleted_images_total 2\n"), std::string::npos) << metrics;
}

TEST(Retention, ZeroKeepsEverything) {
  TestServer s([](server::ServeOptions& o) { o.retention_ms = 0; });
  auto [code, j] = s.submit(small());
  ASSERT_EQ(s.wait_done(j["id"])["status"], "SUCCESS");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));   // a maintenance period passes
  EXPECT_EQ(s.status(j["id"]).first, 200);
}

TEST(Retention, DurationsParse) {
  auto parse = [](const std::string& v) {
    return server::parse_serve_options({"--data", "/tmp/x", "--retention", v}).retention_ms;
  };
  EXPECT_EQ(parse("7d"), 7LL * 86400000);
  EXPECT_EQ(parse("36h"), 36LL * 3600000);
  EXPECT_EQ(parse("90m"), 90LL * 60000);
  EXPECT_EQ(parse("1500ms"), 1500);
  EXPECT_EQ(parse("0"), 0);
  EXPECT_EQ(server::parse_serve_options({"--data", "/tmp/x"}).retention_ms, 7LL * 86400000);
  EXPECT_THROW(parse("7 days"), UserError);
  EXPECT_THROW(parse("d"), UserError);
}

std::pair<int, json> post_with_key(const TestServer& s, const std::string& idem, const json& body,
                                   const std::string& key = "") {
  httplib::Headers h = s.auth(key);
  h.emplace("Idempotency-Key", idem);
  auto res = s.client().Post("/generate/v3", h, body.dump(), "application/json");
  if (!res) return {0, nullptr};
  return {res->status, json::parse(res->body, nullptr, false)};
}

TEST(Idempotency, SameKeyAndBodyAnswerTheSameRequest) {
  TestServer s([](server::ServeOptions& o) { o.rate_limit_per_minute = 0; });
  auto [c1, first] = post_with_key(s, "order-1", small());
  ASSERT_EQ(c1, 200) << first.dump();
  auto [c2, again] = post_with_key(s, "order-1", small());
  ASSERT_EQ(c2, 200) << again.dump();
  EXPECT_EQ(again["id"], first["id"]);
  EXPECT_EQ(again["seeds"], first["seeds"]);   // the random seed was drawn once
  json other = small();
  other["prompt"] = "something else";
  auto [c3, clash] = post_with_key(s, "order-1", other);
  EXPECT_EQ(c3, 409);
  EXPECT_NE(clash["error"].get<std::string>().find("Idempotency-Key"), std::string::npos);
  auto [c4, bobs] = post_with_key(s, "order-1", small(), s.other_key);   // keys are per API key
  EXPECT_EQ(c4, 200);
  EXPECT_NE(bobs["id"], first["id"]);
  EXPECT_EQ(post_with_key(s, "has space", small()).first, 400);
  EXPECT_EQ(post_with_key(s, std::string(256, 'k'), small()).first, 400);
  // Exactly two requests exist: Alice's one and Bob's one.
  s.wait_done(first["id"]);
  s.wait_done(bobs["id"]);
  int64_t total = 0;
  for (const auto& k : s.server->store().list_keys()) total += static_cast<int64_t>(
      s.server->store().list_batch(k.id, "").size());
  EXPECT_EQ(total, 2);
}

}  // namespace
}  // namespace fluxpipe::testing
