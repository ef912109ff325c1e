// The playground page in a real browser (tests/browser/playground.mjs drives Debian's chromium
// with playwright-core): one job per double-click, progress within the first second, a message
// and recovery when the server is killed mid-job, the images, a failure, the remembered key.
// Here: the script's verdict, and the screenshot it took — its size and that it is not blank.
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

#include "process_util.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

bool executable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

// The PNG's width and height from its IHDR chunk (big-endian at bytes 16..23).
std::pair<uint32_t, uint32_t> png_size(const std::string& bytes) {
  if (bytes.size() < 24 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return {0, 0};
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

TEST(Browser, PlaygroundInChromium) {
  const char* modules = std::getenv("FLUXPIPE_TEST_NODE_MODULES");
  const std::string node = "/usr/bin/node", chromium = "/usr/bin/chromium";
  if (!modules || !executable(node) || !executable(chromium)) {
    const char* ci = std::getenv("CI");
    if (ci && std::string(ci) == "true") {
      FAIL() << "CI=true but the browser test cannot run: FLUXPIPE_TEST_NODE_MODULES="
             << (modules ? modules : "(unset)") << ", " << node << " and " << chromium << " must exist";
    }
    GTEST_SKIP() << "no chromium or playwright-core (scripts/test.sh installs both)";
  }
  TempDir data, out;
  // FLUXPIPE_TEST_KEEP_SCREENSHOT=PATH keeps a copy of the screenshot (to look at by eye).
  RunResult key = run({FLUXPIPE_BIN, "keys", "add", "--data", data.path(), "--name", "browser"});
  ASSERT_EQ(key.exit_code, 0) << key.output;
  setenv("FLUXPIPE_TEST_NODE_MODULES", modules, 1);
  setenv("FLUXPIPE_TEST_SERVER_BIN", FLUXPIPE_TEST_SERVER_BIN, 1);
  setenv("PLAYGROUND_DATA", data.path().c_str(), 1);
  setenv("PLAYGROUND_PORT", std::to_string(free_port()).c_str(), 1);
  setenv("PLAYGROUND_KEY", last_line(key.output).c_str(), 1);
  setenv("PLAYGROUND_OUT", out.path().c_str(), 1);
  RunResult r = run({node, std::string(FLUXPIPE_SOURCE_DIR) + "/tests/browser/playground.mjs"});
  ASSERT_EQ(r.exit_code, 0) << r.output << "\n(server log: " << data.path() << "/server.log)";

  std::ifstream shot_in(out.path() + "/playground.png", std::ios::binary);
  std::string shot((std::istreambuf_iterator<char>(shot_in)), {});
  if (const char* keep = std::getenv("FLUXPIPE_TEST_KEEP_SCREENSHOT")) std::ofstream(keep, std::ios::binary) << shot;
  auto [w, h] = png_size(shot);
  EXPECT_EQ(w, 1000u) << "the screenshot is the 1000-pixel-wide viewport";
  EXPECT_GE(h, 600u);
  std::ifstream result_in(out.path() + "/result.json");
  json result = json::parse(result_in, nullptr, false);
  ASSERT_TRUE(result.is_object()) << r.output;
  EXPECT_EQ(result["width"], w);
  // The form, its text and the two 64x64 images: far from blank, far from one solid colour.
  EXPECT_GT(result["non_white"].get<double>(), 0.02) << result.dump();
  EXPECT_LT(result["non_white"].get<double>(), 0.9) << result.dump();
  EXPECT_EQ(result["submissions"], 1);
  EXPECT_LT(result["first_progress_ms"].get<int>(), 1500);
}

}  // namespace
}  // namespace fluxpipe::testing
