// Images in an S3-compatible bucket: the wire protocol against s3rver (npm) on 127.0.0.1 and
// the whole server storing and serving images through the bucket. s3rver accepts any signature
// (a wrong secret passes), which is why the signer has its own tests (sigv4_test.cpp).
#include <signal.h>

#include <cstdlib>

#include "process_util.h"
#include "server/s3_images.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

// s3rver on a free port with one bucket, "fluxpipe"; FLUXPIPE_TEST_S3RVER names its script
// (scripts/test.sh installs it with npm).
class S3rver {
 public:
  S3rver() {
    port_ = free_port();
    std::string script = std::getenv("FLUXPIPE_TEST_S3RVER");
    pid_ = spawn({"/usr/bin/env", "node", script, "-d", dir_.path(), "-a", "127.0.0.1", "-p", std::to_string(port_),
                  "--configure-bucket", "fluxpipe", "--silent"},
                 dir_.path() + "/../s3rver-" + std::to_string(port_) + ".log");
    for (int i = 0; i < 300; ++i) {   // up to 15 s for node to start
      httplib::Client c("127.0.0.1", port_);
      if (auto res = c.Get("/")) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "s3rver did not start on port " << port_;
  }
  ~S3rver() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // s3rver's default credentials.
  server::S3Location location(const std::string& bucket = "fluxpipe") const {
    server::S3Location loc;
    loc.bucket = bucket;
    loc.prefix = "imgs";
    loc.endpoint = endpoint();
    loc.path_style = true;
    loc.credentials.access_key_id = "S3RVER";
    loc.credentials.secret_access_key = "S3RVER";
    loc.timeout_ms = 10000;
    return loc;
  }

 private:
  TempDir dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

#define FLUXPIPE_REQUIRE_S3RVER()                                                                  \
  do {                                                                                             \
    if (!std::getenv("FLUXPIPE_TEST_S3RVER")) {                                                    \
      const char* ci = std::getenv("CI");                                                          \
      if (ci && std::string(ci) == "true") FAIL() << "CI=true but FLUXPIPE_TEST_S3RVER is unset"; \
      GTEST_SKIP() << "no s3rver (scripts/test.sh installs it with npm)";                          \
    }                                                                                              \
  } while (0)

TEST(S3Images, WriteReadAndMissingAgainstS3rver) {
  FLUXPIPE_REQUIRE_S3RVER();
  S3rver s3;
  auto store = server::open_s3_image_store(s3.location());
  std::vector<uint8_t> bytes = {0x89, 'P', 'N', 'G', 0, 1, 2, 255};
  store->write("0123abcd", "img-0.png", bytes);
  std::optional<std::string> back = store->read("0123abcd", "img-0.png");
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, std::string(bytes.begin(), bytes.end()));
  EXPECT_FALSE(store->read("0123abcd", "img-1.png"));
  EXPECT_THROW(store->write("../x", "a.png", bytes), UserError);
  store->remove("0123abcd", {"img-0.png", "never-written.png"});   // retention: objects go
  EXPECT_FALSE(store->read("0123abcd", "img-0.png"));
}

TEST(S3Images, AMissingBucketOrServerIsAClearError) {
  FLUXPIPE_REQUIRE_S3RVER();
  S3rver s3;
  try {
    server::open_s3_image_store(s3.location("no-such-bucket"))->write("ab", "a.png", {1, 2, 3});
    ADD_FAILURE() << "a write to a missing bucket succeeded";
  } catch (const IoError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("404"), std::string::npos) << what;
    EXPECT_NE(what.find("NoSuchBucket"), std::string::npos) << what;
  }
  server::S3Location nowhere = s3.location();
  nowhere.endpoint = "http://127.0.0.1:" + std::to_string(free_port());
  EXPECT_THROW(server::open_s3_image_store(nowhere)->read("ab", "a.png"), IoError);
  try {
    server::open_s3_image_store(s3.location("no-such-bucket"))->read("ab", "a.png");
    ADD_FAILURE() << "a missing bucket read as a missing image";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("NoSuchBucket"), std::string::npos) << e.what();
  }
}

TEST(S3Images, TheServerStoresAndServesImagesThroughTheBucket) {
  FLUXPIPE_REQUIRE_S3RVER();
  S3rver s3;
  setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
  std::string endpoint = s3.endpoint();
  TestServer s([&](server::ServeOptions& o) {
    o.images_dir = "s3://fluxpipe/served";
    o.s3_endpoint = endpoint;
    o.s3_path_style = true;
  });
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SECRET_ACCESS_KEY");
  auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 2}, {"num_inference_steps", 1}});
  ASSERT_EQ(code, 200) << j.dump();
  json done = s.wait_done(j["id"]);
  ASSERT_EQ(done["status"], "SUCCESS") << done.dump();
  auto img = s.client().Get(s.path_of(done["download_urls"][1]));
  ASSERT_TRUE(img);
  EXPECT_EQ(img->status, 200);
  EXPECT_EQ(img->get_header_value("Content-Type"), "image/png");
  EXPECT_EQ(img->body.substr(1, 3), "PNG");
  // The object is in the bucket under the prefix, byte for byte what the API served.
  server::S3Location loc = s3.location();
  loc.prefix = "served";
  std::string url = done["download_urls"][1];
  std::string token = url.substr(url.find("/v3/images/") + 11, 32);
  std::optional<server::RequestRecord> rec = s.server->store().get_request(done["id"]);
  std::optional<std::string> object = server::open_s3_image_store(loc)->read(token, rec->file_names[1]);
  ASSERT_TRUE(object);
  EXPECT_EQ(*object, img->body);
}

}  // namespace
}  // namespace fluxpipe::testing
