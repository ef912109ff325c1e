// What a review of the server found, each fixed and held here: file modes, the seed range,
// webhook URLs, stored rows that cannot be read or lack newer fields, image write failures,
// and the OpenAI route's shapes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "test_util.h"

namespace fluxpipe::testing {
namespace {

json small(int samples = 1) {
  return {{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", samples}, {"num_inference_steps", 1}};
}

int mode_of(const std::string& path) {
  struct stat st{};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

TEST(Hardening, DataFolderIsTheServersAlone) {
  TestServer s([](server::ServeOptions& o) { o.sync_wait_ms = 10000; });
  auto [code, j] = s.submit(small());
  ASSERT_EQ(j["status"], "SUCCESS") << j.dump();
  EXPECT_EQ(mode_of(s.dir.path()), 0700);
  EXPECT_EQ(mode_of(s.dir.path() + "/images"), 0700);
  EXPECT_EQ(mode_of(s.dir.path() + "/fluxpipe.db"), 0600);
  EXPECT_EQ(mode_of(s.dir.path() + "/lock"), 0600);
  EXPECT_EQ(mode_of(s.dir.path() + "/webhook_secret"), 0600);
  for (const auto& e : std::filesystem::recursive_directory_iterator(s.dir.path() + "/images")) {
    EXPECT_EQ(mode_of(e.path().string()), e.is_directory() ? 0700 : 0600) << e.path();
  }
}

TEST(Hardening, SeedsAre32BitAndWrap) {
  TestServer s;
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 2}, {"seed", 4294967295LL}});
  ASSERT_EQ(code, 200) << j.dump();
  EXPECT_EQ(j["seeds"], json({4294967295LL, 0}));
  EXPECT_EQ(s.submit({{"prompt", "p"}, {"seed", 4294967296LL}}).first, 400);
  EXPECT_EQ(s.submit({{"prompt", "p"}, {"seed", -2}}).first, 400);
}

TEST(Hardening, WebhookUrlsAreParsedStrictly) {
  TestServer s([](server::ServeOptions& o) { o.allow_private_webhooks = true; });
  for (const char* url : {"http://127.0.0.1:9/a\r\nX: y", "http://127.0.0.1:9/a b", "http://127.0.0.1:9/\x01"}) {
    json body = small();
    body["webhook"] = url;
    auto [code, j] = s.submit(body);
    EXPECT_EQ(code, 400) << url;
    EXPECT_NE(j.value("error", "").find("webhook"), std::string::npos) << j.dump();
  }
}

// Waits (up to 6 s) until the store says request `id` has ended.
void wait_final(TestServer& s, const std::string& id) {
  for (int i = 0; i < 300; ++i) {
    std::optional<server::RequestRecord> now = s.server->store().get_request(id);
    if (now && is_final(now->state)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

TEST(Hardening, UnreadableStoredRequestEndsFailureNotStuckRunning) {
  TestServer s;
  server::RequestRecord r;
  r.id = "0123456789abcdef0123456789abcdef";
  r.key_id = "k";
  r.download_token = "fedcba9876543210fedcba9876543210";
  r.params_json = "not json at all";
  r.seeds = {1};
  r.file_names = {"a.png"};
  r.created_ms = test_now_ms();
  s.server->store().insert_request(r);
  wait_final(s, r.id);
  std::optional<server::RequestRecord> now = s.server->store().get_request(r.id);
  ASSERT_TRUE(now);
  EXPECT_EQ(now->state, server::JobState::failed);
  EXPECT_NE(now->error.find("stored request cannot be read"), std::string::npos) << now->error;
}

TEST(Hardening, StoredRowsWithoutNewerFieldsStillRun) {
  TestServer s([](server::ServeOptions& o) { o.sync_wait_ms = 0; });
  server::RequestRecord r;
  r.id = "00000000000000000000000000000001";
  r.key_id = "k";
  r.download_token = "00000000000000000000000000000002";
  r.params_json = R"({"prompt":"old row","width":64,"height":64,"steps":1,"samples":1})";   // an older server's row
  r.seeds = {5};
  r.file_names = {"old.png"};
  r.created_ms = test_now_ms();
  s.server->store().insert_request(r);
  wait_final(s, r.id);
  EXPECT_EQ(s.server->store().get_request(r.id)->state, server::JobState::succeeded);
}

TEST(Hardening, ImageWriteFailuresSaySoWithoutLeakingPaths) {
  TestServer s([](server::ServeOptions& o) { o.sync_wait_ms = 10000; });
  std::filesystem::remove_all(s.dir.path() + "/images");
  std::ofstream(s.dir.path() + "/images") << "not a folder";
  auto [code, j] = s.submit(small());
  EXPECT_EQ(j["status"], "FAILURE") << j.dump();
  std::string error = j["error"];
  EXPECT_NE(error.find("could not be stored"), std::string::npos) << error;
  EXPECT_EQ(error.find(s.dir.path()), std::string::npos) << error;
  EXPECT_EQ(error.find("engine"), std::string::npos) << error;
}

// The OpenAI route answers in OpenAI's shapes, errors included.
json openai_post(TestServer& s, const json& body, int* status, bool with_key = true) {
  auto res = with_key ? s.client().Post("/v1/images/generations", {{"Authorization", "Bearer " + s.key}}, body.dump(), "application/json")
                      : s.client().Post("/v1/images/generations", body.dump(), "application/json");
  *status = res ? res->status : 0;
  return res ? json::parse(res->body, nullptr, false) : json();
}

void expect_openai_error(const json& j, const std::string& param) {
  ASSERT_TRUE(j.is_object() && j.contains("error")) << j.dump();
  for (const char* f : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(f)) << f << " in " << j.dump();
  if (!param.empty()) {
    EXPECT_EQ(j["error"]["param"], param) << j.dump();
  }
}

TEST(Hardening, OpenAiRouteIsOpenAiShaped) {
  TestServer s([](server::ServeOptions& o) {
    o.openai_wait_ms = 10000;
    o.max_body_bytes = 4096;
  });
  int st = 0;
  json j = openai_post(s, {{"prompt", "p"}, {"size", 512}}, &st);
  EXPECT_EQ(st, 400);
  expect_openai_error(j, "size");
  j = openai_post(s, {{"prompt", "p"}, {"size", "64x64"}, {"response_format", 5}}, &st);
  EXPECT_EQ(st, 400);
  expect_openai_error(j, "response_format");
  j = openai_post(s, {{"prompt", "p"}, {"size", "64x64"}, {"n", 9}}, &st);
  EXPECT_EQ(st, 400);
  expect_openai_error(j, "n");
  j = openai_post(s, {{"prompt", "p"}}, &st, /*with_key=*/false);
  EXPECT_EQ(st, 401);
  expect_openai_error(j, "");
  j = openai_post(s, {{"prompt", std::string(8000, 'a')}}, &st);
  EXPECT_EQ(st, 413);
  expect_openai_error(j, "");
  // n null is one image; size "auto" is the server's default size.
  j = openai_post(s, {{"prompt", "p"}, {"size", "64x64"}, {"n", nullptr}, {"num_inference_steps", 1}}, &st);
  ASSERT_EQ(st, 200) << j.dump();
  EXPECT_EQ(j["data"].size(), 1u);
  EXPECT_TRUE(j["data"][0].contains("url"));
  j = openai_post(s, {{"prompt", "p"}, {"model", "gpt-image-1"}, {"size", "64x64"}, {"num_inference_steps", 1}}, &st);
  ASSERT_EQ(st, 200) << j.dump();
  EXPECT_TRUE(j["data"][0].contains("b64_json"));
  j = openai_post(s, {{"prompt", "p"}, {"size", "64x64"}, {"output_format", "webp"}}, &st);
  EXPECT_EQ(st, 400);
  expect_openai_error(j, "output_format");
}

TEST(Hardening, OpenAiSizeAutoIsTheDefaultSize) {
  TestServer s([](server::ServeOptions& o) {
    o.openai_wait_ms = 10000;
    o.limits.default_side = 64;
  });
  int st = 0;
  json j = openai_post(s, {{"prompt", "p"}, {"size", "auto"}, {"num_inference_steps", 1}}, &st);
  ASSERT_EQ(st, 200) << j.dump();
  std::optional<server::RequestRecord> r = s.server->store().get_request(j["id"]);
  ASSERT_TRUE(r);
  EXPECT_NE(r->params_json.find("\"width\":64"), std::string::npos) << r->params_json;
}

}  // namespace
}  // namespace fluxpipe::testing
