// The fluxpipe command line as a user meets it: --help and `help CMD` everywhere without side
// effects, errors that name the flag and its range, read-only commands that create nothing,
// -o checked before any work, --version.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>

#include "test_util.h"

namespace fluxpipe::testing {
namespace {

struct CliRun {
  int code = -1;
  std::string out;   // stdout and stderr together
};

CliRun fluxpipe_cli(const std::string& args, const std::string& cwd) {
  std::string cmd = "cd '" + cwd + "' && " + std::string(FLUXPIPE_BIN) + " " + args + " 2>&1";
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

size_t entries(const std::string& dir) {
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(dir); it != std::filesystem::directory_iterator(); ++it) ++n;
  return n;
}

TEST(CommandLine, HelpEverywhereWithoutSideEffects) {
  TempDir cwd;
  for (const char* cmd : {"generate --help", "quantize --help", "make-test-model --help", "tokenize clip --help",
                          "keys add --help", "keys list --help", "keys revoke --help", "webhook-secret --help",
                          "serve --help", "run --help", "help generate", "help keys", "help make-test-model",
                          "help serve", "help run", "generate -h"}) {
    CliRun r = fluxpipe_cli(cmd, cwd.path());
    EXPECT_EQ(r.code, 0) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("usage: fluxpipe"), std::string::npos) << cmd << ": " << r.out;
    EXPECT_EQ(r.out.find("unknown option"), std::string::npos) << cmd;
  }
  EXPECT_EQ(entries(cwd.path()), 0u);   // nothing was written (make-test-model --help made no folder)
  CliRun unknown = fluxpipe_cli("help nosuch", cwd.path());
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.out.find("unknown command 'nosuch'"), std::string::npos) << unknown.out;
}

TEST(CommandLine, ValuesAreCheckedWithTheFlagsNameAndRange) {
  TempDir cwd;
  CliRun cfg = fluxpipe_cli("generate x --model m --true-cfg abc", cwd.path());
  EXPECT_EQ(cfg.code, 2);
  EXPECT_NE(cfg.out.find("--true-cfg: 'abc' is not a number"), std::string::npos) << cfg.out;
  CliRun blocks = fluxpipe_cli("make-test-model m --blocks a,b", cwd.path());
  EXPECT_EQ(blocks.code, 2);
  EXPECT_NE(blocks.out.find("--blocks: 'a' is not an integer"), std::string::npos) << blocks.out;
  // The CLI's ranges are the server's: steps 1..50, seeds 0..2^32-1.
  CliRun steps = fluxpipe_cli("generate x --model m --steps 51", cwd.path());
  EXPECT_NE(steps.out.find("--steps: '51' is not an integer in 1..50"), std::string::npos) << steps.out;
  CliRun seed = fluxpipe_cli("generate x --model m --seed 4294967296", cwd.path());
  EXPECT_NE(seed.out.find("--seed: '4294967296' is not an integer in -1..4294967295"), std::string::npos) << seed.out;
  CliRun eq = fluxpipe_cli("generate x --model=m --steps=0", cwd.path());
  EXPECT_NE(eq.out.find("--steps: '0'"), std::string::npos) << eq.out;
}

TEST(CommandLine, ReadOnlyCommandsCreateNothing) {
  TempDir cwd;
  std::string missing = cwd.path() + "/typo";
  for (const std::string& cmd : {"keys list --data " + missing, "keys revoke --data " + missing + " k",
                                 "webhook-secret --data " + missing}) {
    CliRun r = fluxpipe_cli(cmd, cwd.path());
    EXPECT_EQ(r.code, 2) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("no data folder"), std::string::npos) << r.out;
    EXPECT_FALSE(std::filesystem::exists(missing)) << cmd;
  }
}

TEST(CommandLine, OutputIsCheckedBeforeTheWork) {
  TempDir cwd;
  // The model does not exist: an -o error must come first, before any loading.
  CliRun nodir = fluxpipe_cli("generate x --model /nonexistent -o nodir/a.png", cwd.path());
  EXPECT_EQ(nodir.code, 2);
  EXPECT_NE(nodir.out.find("-o 'nodir/a.png'"), std::string::npos) << nodir.out;
  CliRun gif = fluxpipe_cli("generate x --model /nonexistent -o a.gif", cwd.path());
  EXPECT_EQ(gif.code, 2);
  EXPECT_NE(gif.out.find(".png, .jpg/.jpeg or .webp"), std::string::npos) << gif.out;
}

TEST(CommandLine, VersionNamesTheBuild) {
  TempDir cwd;
  CliRun v = fluxpipe_cli("--version", cwd.path());
  EXPECT_EQ(v.code, 0);
  EXPECT_EQ(v.out.rfind("fluxpipe ", 0), 0u) << v.out;
  EXPECT_NE(v.out.find("backends"), std::string::npos) << v.out;
}

TEST(CommandLine, ServeTakesTheLockBeforeLoadingTheModel) {
  TestServer s;   // holds the data folder
  TempDir cwd;
  auto t0 = std::chrono::steady_clock::now();
  CliRun r = fluxpipe_cli("serve --data " + s.dir.path() + " --listen 127.0.0.1:0 --model /nonexistent/model", cwd.path());
  EXPECT_EQ(r.code, 2);
  // The lock answers, not the missing model: the model was never looked at.
  EXPECT_NE(r.out.find("in use by another fluxpipe server"), std::string::npos) << r.out;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

}  // namespace
}  // namespace fluxpipe::testing
