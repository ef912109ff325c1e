// `fluxpipe pull` against a hub on loopback (tests/support/test_hub.h): a preset pulled end to end
// and generated from, resume after a cut (counting the bytes), a corrupt file rejected with
// nothing renamed, the token sent to the hub and never to the redirect host, offline mode, the
// disk check, paging, patterns, --model NAME resolution, `models` and `models rm`, serve --pull.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include "pipeline/pipeline.h"
#include "process_util.h"
#include "test_hub.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

namespace fs = std::filesystem;

std::string slurp_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

int64_t file_size_or_zero(const std::string& p) {
  std::error_code ec;
  auto s = fs::file_size(p, ec);
  return ec ? 0 : static_cast<int64_t>(s);
}

// Sets environment variables for one command, then restores them.
class Env {
 public:
  explicit Env(std::vector<std::pair<std::string, std::string>> vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k.c_str());
      saved_.push_back({k, old ? std::optional<std::string>(old) : std::nullopt});
      setenv(k.c_str(), v.c_str(), 1);
    }
  }
  ~Env() {
    for (const auto& [k, v] : saved_) {
      if (v) setenv(k.c_str(), v->c_str(), 1);
      else unsetenv(k.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

class Pull : public ::testing::Test {
 protected:
  void SetUp() override {
    // No test depends on the developer's own hub settings.
    for (const char* v : {"HF_TOKEN", "HF_HUB_OFFLINE", "FLUXPIPE_MODELS", "FLUXPIPE_PULL_FREE_BYTES", "http_proxy", "https_proxy",
                          "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}) {
      unsetenv(v);
    }
  }

  RunResult fluxpipe(std::vector<std::string> args, std::vector<std::pair<std::string, std::string>> env = {}) {
    env.push_back({"HF_ENDPOINT", hub.endpoint()});
    Env scoped(env);
    args.insert(args.begin(), FLUXPIPE_BIN);
    return run(args);
  }

  // The test model's four parts, with the file names the schnell-q4 preset asks for.
  void add_q4_repos() {
    TempDir m;
    TestModelOptions o;
    o.layout = "gguf";
    o.quant = "q4_0";
    o.text_quant = "q8_0";
    write_test_model(m.path(), o);
    std::string d = m.path() + "/";
    hub.add_repo("city96/FLUX.1-schnell-gguf", {"", {{"flux1-schnell-Q4_0.gguf", slurp_file(d + "flux1-test-Q4_0.gguf")},
                                                     {"fluxpipe.json", slurp_file(d + "fluxpipe.json")},
                                                     {"README.md", "not fetched"}}});
    hub.add_repo("city96/t5-v1_1-xxl-encoder-gguf", {"", {{"t5-v1_1-xxl-encoder-Q8_0.gguf", slurp_file(d + "t5xxl-Q8_0.gguf")}}});
    hub.add_repo("comfyanonymous/flux_text_encoders", {"", {{"clip_l.safetensors", slurp_file(d + "clip_l.safetensors")}}});
    hub.add_repo("black-forest-labs/FLUX.1-schnell", {"", {{"ae.safetensors", slurp_file(d + "ae.safetensors")}}});
  }

  // One repository with one large file (LFS: through the CDN) and one small one.
  std::string add_big_repo(const std::string& name, size_t size, bool gated = false) {
    std::string big(size, '\0');
    for (size_t i = 0; i < size; ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
    hub.add_repo(name, {"", {{"weights/big.bin", big}, {"config.json", "{\"x\": 1}"}}, gated});
    return big;
  }

  TestHub hub;
  TempDir models;
};

TEST_F(Pull, APresetEndToEndThenGenerateThenModelsAndRm) {
  add_q4_repos();
  std::string folder = models.path() + "/schnell-q4";
  // Not pulled yet: --model NAME says what to run.
  RunResult before = fluxpipe({"generate", "a boat", "--model", "schnell-q4", "--models", models.path(), "-o", models.path() + "/x.png"});
  EXPECT_NE(before.exit_code, 0);
  EXPECT_NE(before.output.find("fluxpipe pull schnell-q4 --models " + models.path()), std::string::npos) << before.output;

  RunResult r = fluxpipe({"pull", "schnell-q4", "--models", models.path()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(last_line(r.output), folder) << "pull prints the folder for --model last";
  for (const char* f : {"flux1-schnell-Q4_0.gguf", "t5-v1_1-xxl-encoder-Q8_0.gguf", "clip_l.safetensors", "ae.safetensors",
                        "fluxpipe.json", "fluxpipe-pull.json"}) {
    EXPECT_TRUE(fs::exists(folder + "/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(folder + "/README.md")) << "only the preset's files";
  for (const auto& e : fs::recursive_directory_iterator(folder)) EXPECT_NE(e.path().extension(), ".partial") << e.path();

  std::string png = models.path() + "/boat.png";
  RunResult g = fluxpipe({"generate", "a boat", "--model", "schnell-q4", "--models", models.path(), "--width", "64", "--height", "64",
                          "--steps", "1", "--seed", "5", "-o", png});
  ASSERT_EQ(g.exit_code, 0) << g.output;
  EXPECT_EQ(slurp_file(png).substr(1, 3), "PNG");

  // Again: verified against the listing, nothing downloaded.
  int64_t bytes = hub.cdn_bytes();
  RunResult again = fluxpipe({"pull", "schnell-q4", "--models", models.path()});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("up to date"), std::string::npos) << again.output;
  EXPECT_EQ(hub.cdn_bytes(), bytes);

  RunResult list = fluxpipe({"models", "--models", models.path()});
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find("schnell-q4"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("pulled (schnell-q4)"), std::string::npos) << list.output;
  RunResult rm = fluxpipe({"models", "rm", "schnell-q4", "--models", models.path()});
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  EXPECT_FALSE(fs::exists(folder));
  EXPECT_NE(fluxpipe({"models", "rm", "schnell-q4", "--models", models.path()}).exit_code, 0);
  EXPECT_NE(fluxpipe({"models", "rm", "..", "--models", models.path()}).exit_code, 0);
}

TEST_F(Pull, ResumesAfterACutFetchingOnlyTheRest) {
  const size_t size = 300000;
  std::string big = add_big_repo("acme/big", size);
  std::string folder = models.path() + "/hf--acme--big@main";
  hub.cut_after = 100000;
  RunResult cut = fluxpipe({"pull", "hf:acme/big", "--models", models.path(), "--retries", "0"});
  EXPECT_NE(cut.exit_code, 0) << cut.output;
  EXPECT_NE(cut.output.find("run the same command to resume"), std::string::npos) << cut.output;
  std::string partial = folder + "/weights/big.bin.partial";
  ASSERT_TRUE(fs::exists(partial));
  EXPECT_FALSE(fs::exists(folder + "/weights/big.bin")) << "nothing renamed before it is whole";
  EXPECT_FALSE(fs::exists(folder + "/fluxpipe-pull.json"));
  int64_t kept = static_cast<int64_t>(fs::file_size(partial));
  EXPECT_GT(kept, 0);
  EXPECT_LE(kept, 100000);

  ASSERT_TRUE(hub.wait_for_no_transfers());
  int64_t before = hub.cdn_bytes();
  RunResult resumed = fluxpipe({"pull", "hf:acme/big", "--models", models.path()});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(hub.cdn_bytes() - before, static_cast<int64_t>(size) - kept) << "the second run fetched only the missing bytes";
  EXPECT_EQ(slurp_file(folder + "/weights/big.bin"), big);
  EXPECT_EQ(slurp_file(folder + "/config.json"), "{\"x\": 1}");

  // Within one run (the default retries), a cut costs no byte twice either.
  fs::remove_all(folder);
  hub.cut_after = 50000;
  before = hub.cdn_bytes();
  RunResult retried = fluxpipe({"pull", "hf:acme/big", "--models", models.path()});
  ASSERT_EQ(retried.exit_code, 0) << retried.output;
  EXPECT_NE(retried.output.find("retrying"), std::string::npos) << retried.output;
  EXPECT_EQ(hub.cdn_bytes() - before, static_cast<int64_t>(size));
  EXPECT_EQ(slurp_file(folder + "/weights/big.bin"), big);
}

// Ctrl-C (SIGINT) stops the transfers and keeps what arrived; the next run resumes from there.
TEST_F(Pull, CtrlCLeavesAResumablePartialFile) {
  const size_t size = 400000;
  std::string big = add_big_repo("acme/big", size);
  std::string partial = models.path() + "/hf--acme--big@main/weights/big.bin.partial";
  hub.chunk_delay_ms = 20;   // about 0.8 MB/s: the transfer is under way when the signal comes
  Env scoped({{"HF_ENDPOINT", hub.endpoint()}});
  std::string log = models.path() + "/pull.log";
  pid_t pid = spawn({FLUXPIPE_BIN, "pull", "hf:acme/big", "--models", models.path()}, log);
  for (int i = 0; i < 500 && file_size_or_zero(partial) < 50000; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "the process ends by itself, not by the signal";
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(slurp_file(log).find("interrupted; the partial files are kept"), std::string::npos) << slurp_file(log);
  int64_t kept = file_size_or_zero(partial);
  EXPECT_GE(kept, 50000);
  EXPECT_LT(kept, static_cast<int64_t>(size));
  hub.chunk_delay_ms = 0;
  ASSERT_TRUE(hub.wait_for_no_transfers()) << "the interrupted transfer ends on the hub's side too";
  int64_t before = hub.cdn_bytes();
  ASSERT_EQ(fluxpipe({"pull", "hf:acme/big", "--models", models.path()}).exit_code, 0);
  EXPECT_EQ(hub.cdn_bytes() - before, static_cast<int64_t>(size) - kept);
  EXPECT_EQ(slurp_file(models.path() + "/hf--acme--big@main/weights/big.bin"), big);
}

TEST_F(Pull, ACorruptFileIsRejectedAndNothingRenamed) {
  std::string big = add_big_repo("acme/big", 5000);
  std::string folder = models.path() + "/hf--acme--big@main";
  hub.corrupt = true;
  RunResult r = fluxpipe({"pull", "hf:acme/big", "--models", models.path()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("weights/big.bin from 'acme/big' is corrupt"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(TestHub::sha256(big)), std::string::npos) << "the expected digest is named: " << r.output;
  std::string damaged = big;
  damaged[damaged.size() / 2] ^= 0x5a;
  EXPECT_NE(r.output.find(TestHub::sha256(damaged)), std::string::npos) << "and the one received: " << r.output;
  EXPECT_FALSE(fs::exists(folder + "/weights/big.bin"));
  EXPECT_FALSE(fs::exists(folder + "/weights/big.bin.partial")) << "the corrupt download is deleted";
  EXPECT_FALSE(fs::exists(folder + "/fluxpipe-pull.json"));
  hub.corrupt = false;
  ASSERT_EQ(fluxpipe({"pull", "hf:acme/big", "--models", models.path()}).exit_code, 0);
  EXPECT_EQ(slurp_file(folder + "/weights/big.bin"), big);
}

TEST_F(Pull, TheTokenGoesToTheHubOnlyNeverToTheRedirectHost) {
  add_big_repo("acme/gated", 4000, /*gated=*/true);
  RunResult anonymous = fluxpipe({"pull", "hf:acme/gated", "--models", models.path()});
  EXPECT_NE(anonymous.exit_code, 0);
  EXPECT_NE(anonymous.output.find("gated or private"), std::string::npos) << anonymous.output;
  EXPECT_NE(anonymous.output.find("set HF_TOKEN"), std::string::npos) << anonymous.output;
  EXPECT_EQ(anonymous.output.find("HTTP 401"), std::string::npos) << "a sentence, not a status code: " << anonymous.output;
  RunResult wrong = fluxpipe({"pull", "hf:acme/gated", "--models", models.path()}, {{"HF_TOKEN", "hf_not_this_one"}});
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_NE(wrong.output.find("refused the token in HF_TOKEN"), std::string::npos) << wrong.output;
  EXPECT_EQ(wrong.output.find("hf_not_this_one"), std::string::npos) << "the token is never printed";

  RunResult ok = fluxpipe({"pull", "hf:acme/gated", "--models", models.path()}, {{"HF_TOKEN", hub.token}});
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_EQ(ok.output.find(hub.token), std::string::npos) << "the token is never printed";
  std::vector<std::string> at_hub = hub.hub_authorizations(), at_cdn = hub.cdn_authorizations();
  EXPECT_NE(std::count(at_hub.begin(), at_hub.end(), "Bearer " + hub.token), 0);
  ASSERT_FALSE(at_cdn.empty()) << "the large file came through the redirect";
  for (const std::string& a : at_cdn) EXPECT_EQ(a, "") << "the redirect host on another port got an Authorization header";
}

TEST_F(Pull, OfflineModeNeverTouchesTheNetwork) {
  add_big_repo("acme/big", 3000);
  RunResult missing = fluxpipe({"pull", "hf:acme/big", "--models", models.path()}, {{"HF_HUB_OFFLINE", "1"}});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("HF_HUB_OFFLINE"), std::string::npos) << missing.output;
  EXPECT_EQ(hub.hub_requests(), 0);
  ASSERT_EQ(fluxpipe({"pull", "hf:acme/big", "--models", models.path()}).exit_code, 0);
  int hub_before = hub.hub_requests(), cdn_before = hub.cdn_requests();
  RunResult offline = fluxpipe({"pull", "hf:acme/big", "--models", models.path()}, {{"HF_HUB_OFFLINE", "1"}});
  ASSERT_EQ(offline.exit_code, 0) << offline.output;
  EXPECT_NE(offline.output.find("no request was made"), std::string::npos) << offline.output;
  EXPECT_EQ(hub.hub_requests(), hub_before);
  EXPECT_EQ(hub.cdn_requests(), cdn_before);
}

TEST_F(Pull, RefusesWhenTheDiskCannotHoldTheFiles) {
  add_big_repo("acme/big", 200000);
  RunResult r = fluxpipe({"pull", "hf:acme/big", "--models", models.path()}, {{"FLUXPIPE_PULL_FREE_BYTES", "150000"}});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not enough disk space"), std::string::npos) << r.output;
  const std::string needed = std::to_string(200000 + std::string("{\"x\": 1}").size()) + " bytes";
  EXPECT_NE(r.output.find(needed), std::string::npos) << "what is needed (both files): " << r.output;
  EXPECT_NE(r.output.find("150000 bytes"), std::string::npos) << "and what is free: " << r.output;
  EXPECT_EQ(hub.cdn_bytes(), 0) << "nothing downloaded";
}

TEST_F(Pull, PagedListingsPatternsAndMissingRepositories) {
  hub.add_repo("acme/many", {"", {{"a.json", "1"}, {"b.json", "2"}, {"c.txt", "3"}, {"sub/d.json", "4"}, {"sub/e.bin", "5"}}});
  hub.page_size = 2;
  ASSERT_EQ(fluxpipe({"pull", "hf:acme/many", "--models", models.path()}).exit_code, 0);
  std::string all = models.path() + "/hf--acme--many@main";
  for (const char* f : {"a.json", "b.json", "c.txt", "sub/d.json", "sub/e.bin"}) EXPECT_TRUE(fs::exists(all + "/" + f)) << f;
  RunResult some = fluxpipe({"pull", "hf:acme/many@main:*.json,sub/*.bin", "--models", models.path() + "/p"});
  ASSERT_EQ(some.exit_code, 0) << some.output;
  std::string part = models.path() + "/p/hf--acme--many@main";
  EXPECT_TRUE(fs::exists(part + "/a.json"));
  EXPECT_TRUE(fs::exists(part + "/sub/e.bin"));
  EXPECT_FALSE(fs::exists(part + "/c.txt"));
  RunResult nomatch = fluxpipe({"pull", "hf:acme/many:*.gguf", "--models", models.path()});
  EXPECT_NE(nomatch.exit_code, 0);
  EXPECT_NE(nomatch.output.find("has no file matching '*.gguf'"), std::string::npos) << nomatch.output;
  RunResult none = fluxpipe({"pull", "hf:acme/nothing", "--models", models.path()}, {{"HF_TOKEN", "hf_any"}});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.output.find("has no repository 'acme/nothing'"), std::string::npos) << none.output;
  EXPECT_NE(fluxpipe({"pull", "hf:not-a-repo", "--models", models.path()}).output.find("expected hf:OWNER/REPO"), std::string::npos);
  EXPECT_NE(fluxpipe({"pull", "nosuch", "--models", models.path()}).output.find("neither a preset"), std::string::npos);
}

TEST_F(Pull, TheSchnellPresetKeepsBflsFolderLayout) {
  TempDir m;
  write_test_model(m.path());
  std::string d = m.path() + "/", tok = std::string(FLUXPIPE_SOURCE_DIR) + "/share/tokenizers/";
  hub.add_repo("black-forest-labs/FLUX.1-schnell",
               {"", {{"flux1-schnell.safetensors", slurp_file(d + "flux1-test.safetensors")},
                     {"ae.safetensors", slurp_file(d + "ae.safetensors")},
                     {"text_encoder/model.safetensors", slurp_file(d + "clip_l.safetensors")},
                     {"text_encoder_2/model.safetensors", slurp_file(d + "t5xxl.safetensors")},
                     {"tokenizer/vocab.json", slurp_file(tok + "clip/vocab.json")},
                     {"tokenizer/merges.txt", slurp_file(tok + "clip/merges.txt")},
                     {"tokenizer_2/spiece.model", slurp_file(tok + "t5-v1_1-xxl/spiece.model")},
                     {"fluxpipe.json", slurp_file(d + "fluxpipe.json")},
                     {"transformer/diffusion_pytorch_model.safetensors", "not fetched by the preset"}}});
  RunResult r = fluxpipe({"pull", "schnell", "--models", models.path(), "--jobs", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(models.path() + "/schnell/text_encoder_2/model.safetensors"));
  EXPECT_FALSE(fs::exists(models.path() + "/schnell/transformer"));
  std::string png = models.path() + "/a.png";
  RunResult g = fluxpipe({"generate", "a boat", "--model", "schnell", "--models", models.path(), "--width", "64", "--height", "64",
                          "--steps", "1", "-o", png});
  ASSERT_EQ(g.exit_code, 0) << g.output;
  // The same image as from the test model's own folder: the layout changes nothing.
  std::string direct = models.path() + "/b.png";
  ASSERT_EQ(fluxpipe({"generate", "a boat", "--model", m.path(), "--width", "64", "--height", "64", "--steps", "1", "--seed",
                      "9", "-o", direct}).exit_code, 0);
  ASSERT_EQ(fluxpipe({"generate", "a boat", "--model", "schnell", "--models", models.path(), "--width", "64", "--height", "64",
                      "--steps", "1", "--seed", "9", "-o", png}).exit_code, 0);
  EXPECT_EQ(slurp_file(png), slurp_file(direct));
}

TEST_F(Pull, ServeRefusesAModelNotPulledAndPullsItWithPull) {
  add_q4_repos();
  TempDir data;
  RunResult refused = fluxpipe({"serve", "--data", data.path(), "--listen", "127.0.0.1:0", "--model", "schnell-q4", "--models", models.path()});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("fluxpipe pull schnell-q4"), std::string::npos) << refused.output;

  int port = free_port();
  Env scoped({{"HF_ENDPOINT", hub.endpoint()}});
  pid_t pid = spawn({FLUXPIPE_BIN, "serve", "--data", data.path(), "--listen", "127.0.0.1:" + std::to_string(port), "--model",
                     "schnell-q4", "--models", models.path(), "--pull"},
                    data.path() + "/serve.log");
  httplib::Client c("127.0.0.1", port);
  bool ready = false;
  for (int i = 0; i < 600 && !ready; ++i) {
    auto res = c.Get("/readyz");
    ready = res && res->status == 200 && res->body.find("test model") != std::string::npos;
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(ready) << slurp_file(data.path() + "/serve.log");
  EXPECT_TRUE(fs::exists(models.path() + "/schnell-q4/fluxpipe-pull.json"));
}

}  // namespace
}  // namespace fluxpipe::testing
