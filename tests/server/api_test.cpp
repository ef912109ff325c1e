// The v3 API end to end over real HTTP on 127.0.0.1, with the test-double engine.
#include <gtest/gtest.h>
#include <png.h>

#include <cstring>
#include <set>
#include <thread>

#include "server/crypto.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

Image decode_png(const std::string& bytes) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, bytes.data(), bytes.size())) return {};
  img.format = PNG_FORMAT_RGB;
  Image out{static_cast<int>(img.width), static_cast<int>(img.height), std::vector<uint8_t>(PNG_IMAGE_SIZE(img))};
  if (!png_image_finish_read(&img, nullptr, out.rgb.data(), 0, nullptr)) return {};
  return out;
}

uint32_t prompt_hash(const std::string& prompt) {
  uint32_t h = 2166136261u;
  for (unsigned char c : prompt) h = (h ^ c) * 16777619u;
  return h;
}

auto sync_wait(int ms) {
  return [ms](server::ServeOptions& o) { o.sync_wait_ms = ms; };
}

TEST(Api, AuthHeadersAndFailures) {
  TestServer s;
  json body = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}};
  auto c = s.client();
  auto none = c.Post("/generate/v3", body.dump(), "application/json");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(json::parse(none->body)["status"], "FAILURE");
  auto wrong = c.Post("/generate/v3", {{"API-Key", "fpk_wrong"}}, body.dump(), "application/json");
  EXPECT_EQ(wrong->status, 401);
  for (httplib::Headers h : {httplib::Headers{{"API-Key", s.key}}, httplib::Headers{{"X-API-Key", s.key}},
                             httplib::Headers{{"Authorization", "Bearer " + s.key}},
                             httplib::Headers{{"authorization", "bearer " + s.key}}}) {
    auto res = c.Post("/generate/v3", h, body.dump(), "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(json::parse(res->body)["status"], "PENDING");
  }
}

// Prefer: respond-async (RFC 7240) skips the sync wait: PENDING at once, and the answer says so.
TEST(Api, PreferRespondAsyncAnswersPendingAtOnce) {
  TestServer s(sync_wait(10000), /*step_ms=*/200);
  json body = {{"prompt", "a toucan"}, {"width", 64}, {"height", 64}, {"num_inference_steps", 10}};
  auto started = std::chrono::steady_clock::now();
  httplib::Headers h = s.auth();
  h.emplace("Prefer", "respond-async");
  auto res = s.client().Post("/generate/v3", h, body.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(1500));
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["status"], "PENDING");
  EXPECT_EQ(res->get_header_value("Preference-Applied"), "respond-async");
}

TEST(Api, SuccessWithinTheSyncWaitServesTheImages) {
  TestServer s(sync_wait(10000));
  auto [code, j] = s.submit({{"prompt", "a toucan"}, {"width", 96}, {"height", 64}, {"seed", 7}, {"samples", 3},
                             {"num_inference_steps", 4}});
  ASSERT_EQ(code, 200) << j.dump();
  EXPECT_EQ(j["status"], "SUCCESS");
  EXPECT_EQ(j["id"].get<std::string>().size(), 32u);
  EXPECT_EQ(j["seeds"], json({7, 8, 9}));
  EXPECT_EQ(j["width"], 96);
  EXPECT_EQ(j["height"], 64);
  ASSERT_EQ(j["download_urls"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    std::string url = j["download_urls"][i];
    auto res = s.client().Get(s.path_of(url));   // no API key: the URL is the capability
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200);
    EXPECT_EQ(res->get_header_value("Content-Type"), "image/png");
    Image img = decode_png(res->body);
    EXPECT_EQ(img.width, 96);
    EXPECT_EQ(img.height, 64);
    EXPECT_EQ(img.rgb, FakeEngine::pattern(96, 64, 7 + i, prompt_hash("a toucan")).rgb);
  }
  // The status endpoint says the same, id included.
  auto [scode, st] = s.status(j["id"]);
  EXPECT_EQ(scode, 200);
  EXPECT_EQ(st["status"], "SUCCESS");
  EXPECT_EQ(st["id"], j["id"]);
  EXPECT_EQ(st["download_urls"], j["download_urls"]);
}

TEST(Api, PendingBeyondTheSyncWaitThenPollToSuccess) {
  TestServer s(sync_wait(50), /*step_ms=*/100);
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 5}});
  ASSERT_EQ(code, 200);
  EXPECT_EQ(j["status"], "PENDING");
  EXPECT_FALSE(j.contains("download_urls"));
  EXPECT_EQ(j["seeds"].size(), 1u);
  // While it runs, progress is reported.
  json running;
  for (int i = 0; i < 100; ++i) {
    running = s.status(j["id"]).second;
    if (running["state"] == "running" && running["progress"]["done"].get<int>() >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(running["status"], "PENDING");
  EXPECT_EQ(running["progress"]["total"], 5);
  EXPECT_GE(running["progress"]["done"].get<int>(), 1);
  EXPECT_TRUE(running.contains("eta_seconds"));
  json done = s.wait_done(j["id"]);
  EXPECT_EQ(done["status"], "SUCCESS");
  EXPECT_EQ(done["download_urls"].size(), 1u);
}

TEST(Api, RandomSeedsAreReportedAndConsecutive) {
  TestServer s(sync_wait(10000));
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 2}, {"num_inference_steps", 1}});
  ASSERT_EQ(j["seeds"].size(), 2u);
  EXPECT_GE(j["seeds"][0].get<int64_t>(), 0);
  EXPECT_EQ(j["seeds"][1].get<int64_t>(), j["seeds"][0].get<int64_t>() + 1);
}

TEST(Api, DirectLinksHaveFriendlyPngNames) {
  TestServer s(sync_wait(10000));
  auto [c1, direct] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 2}, {"num_inference_steps", 1},
                                {"direct_link", true}, {"file_prefix", "toucan_v1"}});
  ASSERT_EQ(direct["status"], "SUCCESS");
  for (const auto& u : direct["download_urls"]) {
    std::string url = u;
    EXPECT_EQ(url.substr(url.size() - 4), ".png") << url;
    EXPECT_NE(url.find("/toucan_v1-"), std::string::npos) << url;
    auto res = s.client().Get(s.path_of(url));
    EXPECT_EQ(res->status, 200);
    EXPECT_NE(res->get_header_value("Content-Disposition").find("toucan_v1-"), std::string::npos);
  }
  auto [c2, plain] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}});
  std::string url = plain["download_urls"][0];
  EXPECT_EQ(url.substr(url.size() - 2), "/0");
  EXPECT_EQ(s.client().Get(s.path_of(url))->status, 200);
  EXPECT_EQ(s.client().Get(s.path_of(url.substr(0, url.size() - 1) + "5"))->status, 404);
  EXPECT_EQ(s.client().Get("/v3/images/0123456789abcdef0123456789abcdef/0")->status, 404);
}

TEST(Api, QueuedImageUrlsAnswer202ThenTheImage) {
  TestServer s(sync_wait(0), /*step_ms=*/60);
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 5},
                             {"queued_image_urls", true}, {"direct_link", true}});
  ASSERT_EQ(j["status"], "PENDING");
  ASSERT_EQ(j["download_urls"].size(), 1u);
  std::string path = s.path_of(j["download_urls"][0]);
  auto early = s.client().Get(path);
  ASSERT_TRUE(early);
  EXPECT_EQ(early->status, 202);
  EXPECT_FALSE(early->get_header_value("Retry-After").empty());
  EXPECT_EQ(s.wait_done(j["id"])["status"], "SUCCESS");
  auto late = s.client().Get(path);
  EXPECT_EQ(late->status, 200);
  EXPECT_EQ(decode_png(late->body).width, 64);
}

TEST(Api, CancelQueuedAndRunningRequests) {
  TestServer s(sync_wait(0), /*step_ms=*/50);
  json body = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 40},
               {"queued_image_urls", true}};
  std::string running = s.submit(body).second["id"];
  std::string queued = s.submit(body).second["id"];
  json q = s.status(queued).second;
  EXPECT_EQ(q["state"], "queued");
  EXPECT_EQ(q["queue_position"], 1);   // one running ahead of it
  auto c = s.client();
  auto res = c.Delete("/generate/v3/status/" + queued, s.auth());
  ASSERT_EQ(res->status, 200);
  json cq = json::parse(res->body);
  EXPECT_EQ(cq["status"], "FAILURE");
  EXPECT_EQ(cq["state"], "cancelled");
  EXPECT_EQ(cq["cancel"], "cancelled");
  EXPECT_EQ(cq["id"], queued);
  EXPECT_FALSE(cq["error"].get<std::string>().empty());
  // Wait until the first one runs, then cancel it mid-way.
  for (int i = 0; i < 100 && s.status(running).second["state"] != "running"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto rr = c.Delete("/generate/v3/status/" + running, s.auth());
  json cr = json::parse(rr->body);
  EXPECT_EQ(cr["status"], "FAILURE");
  EXPECT_EQ(cr["state"], "cancelled");
  // Its queued image URL now says why there is no image.
  auto img = c.Get(s.path_of(cr["download_urls"].is_array() ? cr["download_urls"][0].get<std::string>()
                                                             : q["download_urls"][0].get<std::string>()));
  EXPECT_EQ(img->status, 404);
  // Cancelling a finished request changes nothing.
  auto again = c.Delete("/generate/v3/status/" + running, s.auth());
  EXPECT_EQ(json::parse(again->body)["cancel"], "already_finished");
  EXPECT_LT(s.fake_engine->calls(), 3);
}

TEST(Api, AKeySeesOnlyItsOwnRequests) {
  TestServer s(sync_wait(0), /*step_ms=*/20);
  json body = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1},
               {"batch_id", "shared-name"}};
  std::string mine = s.submit(body).second["id"];
  s.submit(body, s.other_key);
  auto [code, other_view] = s.status(mine, s.other_key);
  EXPECT_EQ(code, 404);
  EXPECT_EQ(other_view["status"], "FAILURE");
  auto [code2, unknown] = s.status("0123456789abcdef0123456789abcdef", s.other_key);
  EXPECT_EQ(code2, 404);
  EXPECT_EQ(unknown.dump().size(), other_view.dump().size() - 0);   // same shape, no hint
  EXPECT_EQ(s.client().Delete("/generate/v3/status/" + mine, s.auth(s.other_key))->status, 404);
  auto list = json::parse(s.client().Get("/generate/v3/batch/shared-name", s.auth(s.other_key))->body);
  EXPECT_EQ(list["count"], 1);
  for (const auto& r : list["requests"]) EXPECT_NE(r["id"], mine);
}

TEST(Api, BatchListing) {
  TestServer s(sync_wait(0));
  for (const char* b : {"b1", "b1", "b2", "b1"}) {
    s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}, {"batch_id", b}});
  }
  auto res = s.client().Get("/generate/v3/batch/b1", s.auth());
  ASSERT_EQ(res->status, 200);
  json list = json::parse(res->body);
  EXPECT_EQ(list["batch_id"], "b1");
  EXPECT_EQ(list["count"], 3);
  for (const auto& r : list["requests"]) EXPECT_EQ(r["batch_id"], "b1");
  EXPECT_EQ(json::parse(s.client().Get("/generate/v3/batch/none", s.auth())->body)["count"], 0);
  EXPECT_EQ(s.client().Get("/generate/v3/batch/b1")->status, 401);
}

TEST(Api, EngineFailureEndsAsFailureWithTheReason) {
  TestServer s(sync_wait(10000));
  auto [code, j] = s.submit({{"prompt", "please [fail]"}, {"width", 64}, {"height", 64}, {"samples", 1},
                             {"num_inference_steps", 1}, {"queued_image_urls", true}});
  EXPECT_EQ(code, 200);
  EXPECT_EQ(j["status"], "FAILURE");
  EXPECT_EQ(j["state"], "failed");
  EXPECT_NE(j["error"].get<std::string>().find("test double asked to fail"), std::string::npos);
  EXPECT_FALSE(j["id"].get<std::string>().empty());
}

TEST(Api, ValidationAnswers400NamingTheField) {
  TestServer s;
  auto bad = [&](const json& body, const std::string& field) {
    auto [code, j] = s.submit(body);
    EXPECT_EQ(code, 400) << body.dump();
    EXPECT_EQ(j["status"], "FAILURE");
    EXPECT_NE(j["error"].get<std::string>().find(field), std::string::npos) << j.dump();
  };
  bad({{"prompt", "p"}, {"width", "512"}}, "width");
  bad({{"prompt", "p"}, {"samples", 9}}, "samples");
  bad({{"prompt", ""}}, "prompt");
  bad({{"prompt", "p"}, {"server_id", "nowhere"}}, "server_id");
  bad({{"prompt", "p"}, {"file_prefix", "../../etc"}}, "file_prefix");
  auto raw = s.client().Post("/generate/v3", s.auth(), "{\"prompt\": ", "application/json");
  EXPECT_EQ(raw->status, 400);
  EXPECT_EQ(json::parse(raw->body)["status"], "FAILURE");
  // Unknown fields are ignored, sizes are rounded and the rounding reported.
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 1000}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1},
                             {"enhance_prompt", "yes"}, {"server_id", "any"}});
  EXPECT_EQ(code, 200);
  EXPECT_EQ(j["width"], 1008);
  EXPECT_EQ(j["warnings"].size(), 1u);
}

TEST(Api, ServerIdRouting) {
  TestServer s([](server::ServeOptions& o) {
    o.sync_wait_ms = 3000;
    o.server_id = "pool-a";
    o.known_server_ids = {"pool-b"};
  });
  json body = {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}};
  body["server_id"] = "pool-a";
  EXPECT_EQ(s.submit(body).second["status"], "SUCCESS");
  // A request for another pool is accepted but left for that pool's servers.
  body["server_id"] = "pool-b";
  auto [code, j] = s.submit(body);
  EXPECT_EQ(code, 200);
  EXPECT_EQ(j["status"], "PENDING");
  EXPECT_EQ(j["state"], "queued");
}

TEST(Api, NoModelAnswers503AndNotReady) {
  TestServer s({}, 0, /*with_engine=*/false);
  auto [code, j] = s.submit({{"prompt", "p"}});
  EXPECT_EQ(code, 503);
  EXPECT_EQ(j["status"], "FAILURE");
  EXPECT_NE(j["error"].get<std::string>().find("model"), std::string::npos);
  auto c = s.client();
  EXPECT_EQ(c.Get("/healthz")->status, 200);
  EXPECT_EQ(c.Get("/readyz")->status, 503);
}

TEST(Api, HealthReadinessMetricsOpenApiPlayground) {
  TestServer s(sync_wait(10000));
  s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 2}, {"num_inference_steps", 1}});
  auto c = s.client();
  EXPECT_EQ(json::parse(c.Get("/healthz")->body)["status"], "ok");
  auto ready = c.Get("/readyz");
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(json::parse(ready->body)["ready"], true);
  auto metrics = c.Get("/metrics");
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  for (const char* line : {"fluxpipe_http_requests_total{route=\"submit\",code=\"200\"} 1",
                           "fluxpipe_jobs_total{result=\"succeeded\"} 1", "fluxpipe_images_generated_total 2",
                           "fluxpipe_queue_depth 0", "fluxpipe_job_duration_seconds_count 1"}) {
    EXPECT_NE(metrics->body.find(line), std::string::npos) << line << "\n" << metrics->body;
  }
  json api = json::parse(c.Get("/openapi.json")->body);
  EXPECT_EQ(api["openapi"], "3.0.3");
  for (const char* p : {"/generate/v3", "/generate/v3/status/{id}", "/generate/v3/batch/{batch_id}", "/healthz"}) {
    EXPECT_TRUE(api["paths"].contains(p)) << p;
  }
  auto page = c.Get("/");
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("/generate/v3"), std::string::npos);
}

TEST(Api, OpenAiStyleImagesEndpoint) {
  TestServer s;
  auto post = [&](const json& body) {
    auto res = s.client().Post("/v1/images/generations", {{"Authorization", "Bearer " + s.key}}, body.dump(), "application/json");
    return std::pair{res->status, json::parse(res->body, nullptr, false)};
  };
  auto [code, j] = post({{"prompt", "a toucan"}, {"n", 2}, {"size", "64x96"}, {"model", "dall-e-3"}, {"num_inference_steps", 1}});
  ASSERT_EQ(code, 200) << j.dump();
  ASSERT_EQ(j["data"].size(), 2u);
  for (const auto& d : j["data"]) {
    auto img = s.client().Get(s.path_of(d["url"]));
    ASSERT_EQ(img->status, 200);
    Image decoded = decode_png(img->body);
    EXPECT_EQ(decoded.width, 64);
    EXPECT_EQ(decoded.height, 96);
  }
  auto [c2, b64] = post({{"prompt", "p"}, {"size", "64x64"}, {"response_format", "b64_json"}, {"num_inference_steps", 1}, {"seed", 5}});
  ASSERT_EQ(c2, 200) << b64.dump();
  std::string text = b64["data"][0]["b64_json"];
  std::vector<uint8_t> png = server::base64_decode(text);
  Image decoded = decode_png(std::string(png.begin(), png.end()));
  EXPECT_EQ(decoded.rgb, FakeEngine::pattern(64, 64, 5, prompt_hash("p")).rgb);
  for (auto [body, field] : {std::pair{json{{"prompt", "p"}, {"size", "big"}}, "size"},
                             {json{{"prompt", "p"}, {"n", 9}}, "'n'"},
                             {json{{"prompt", "p"}, {"response_format", "jpeg"}}, "response_format"},
                             {json{{"n", 1}}, "prompt"}}) {
    auto [c3, e] = post(body);
    EXPECT_EQ(c3, 400) << body.dump();
    EXPECT_NE(e["error"]["message"].get<std::string>().find(field), std::string::npos) << e.dump();
  }
}

TEST(Api, ManyThreadsSubmittingAtOnceLoseNothing) {
  TestServer s([](server::ServeOptions& o) {
    o.sync_wait_ms = 0;
    o.max_queue = 10000;
    o.max_queued_per_key = 10000;
    o.rate_limit_per_minute = 0;
  });
  constexpr int kThreads = 16, kEach = 15;
  std::vector<std::vector<std::string>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto [code, j] = s.submit({{"prompt", "p" + std::to_string(t)}, {"width", 64}, {"height", 64},
                                   {"samples", 1}, {"num_inference_steps", 1}, {"seed", t * 1000 + i}});
        if (code == 200) ids[t].push_back(j["id"]);
        else ADD_FAILURE() << "HTTP " << code << " " << j.dump();
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> all;
  for (auto& v : ids) all.insert(v.begin(), v.end());
  ASSERT_EQ(all.size(), static_cast<size_t>(kThreads * kEach));
  for (const std::string& id : all) EXPECT_EQ(s.wait_done(id)["status"], "SUCCESS") << id;
}

}  // namespace
}  // namespace fluxpipe::testing
