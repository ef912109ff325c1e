// The memory plan (pipeline/memory_plan.h): which parts are released before each phase, the
// release of a mapped file's pages, tiled decoding, and a whole job under a tight budget
// giving the same image as with memory to spare.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include "core/parse.h"
#include "golden.h"
#include "io/weights.h"
#include "models/vae/vae.h"
#include "pipeline/memory_plan.h"
#include "pipeline/pipeline.h"
#include <sys/stat.h>
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

constexpr size_t MiB = size_t{1} << 20;

TEST(MemoryPlanner, KeepsEverythingWhenItFits) {
  MemoryPlanner p(10000 * MiB);
  std::vector<std::string> released;
  int t = p.add_part("transformer", 6000 * MiB, [&] { released.push_back("transformer"); });
  int e = p.add_part("T5 encoder", 3000 * MiB, [&] { released.push_back("T5"); });
  EXPECT_TRUE(p.enter({e}, 500 * MiB).empty());
  EXPECT_TRUE(p.enter({t}, 500 * MiB).empty());
  EXPECT_TRUE(p.enter({e}, 500 * MiB).empty());
  EXPECT_TRUE(released.empty());
  EXPECT_TRUE(p.resident(t));
  EXPECT_TRUE(p.resident(e));
}

TEST(MemoryPlanner, ReleasesTheLargestUnneededPartsOnlyAsFarAsNeeded) {
  MemoryPlanner p(8000 * MiB);
  std::vector<std::string> released;
  int t = p.add_part("transformer", 6000 * MiB, [&] { released.push_back("transformer"); });
  int t5 = p.add_part("T5", 5000 * MiB, [&] { released.push_back("T5"); });
  int clip = p.add_part("CLIP", 250 * MiB, [&] { released.push_back("CLIP"); });
  int ae = p.add_part("AE", 170 * MiB, [&] { released.push_back("AE"); });
  EXPECT_TRUE(p.enter({clip, t5}, 500 * MiB).empty());
  // 6000 + 5000 + 250 > 8000: the T5 must go; then 6000 + 250 + 500 fits, so CLIP stays.
  EXPECT_EQ(p.enter({t}, 500 * MiB), std::vector<std::string>{"T5"});
  EXPECT_FALSE(p.resident(t5));
  EXPECT_TRUE(p.resident(clip));
  // Decoding next to the transformer fits: nothing released.
  EXPECT_TRUE(p.enter({ae}, 1000 * MiB).empty());
  EXPECT_EQ(p.room_keeping({ae}), 8000 * MiB - 6000 * MiB - 250 * MiB - 170 * MiB);
  EXPECT_EQ(p.room_with_only({ae}), 8000 * MiB - 170 * MiB);
  // The next job's encoders: the transformer goes first (largest), which is enough.
  EXPECT_EQ(p.enter({clip, t5}, 500 * MiB), std::vector<std::string>{"transformer"});
  EXPECT_EQ(released, (std::vector<std::string>{"T5", "transformer"}));
  // Reserved memory counts in every phase.
  MemoryPlanner r(8000 * MiB, 1000 * MiB);
  int rt = r.add_part("transformer", 6000 * MiB, [] {});
  int rc = r.add_part("CLIP", 250 * MiB, [] {});
  EXPECT_TRUE(r.enter({rc}, 100 * MiB).empty());
  EXPECT_EQ(r.enter({rt}, 1000 * MiB), std::vector<std::string>{"CLIP"});   // 1000 + 6000 + 250 + 1000 > 8000
  EXPECT_EQ(r.room_with_only({rt}), 1000 * MiB);
  // A part that is needed is never released, even over budget.
  MemoryPlanner tiny(1);
  int only = tiny.add_part("x", 100, [] { ADD_FAILURE() << "released a needed part"; });
  EXPECT_TRUE(tiny.enter({only}, 100).empty());
}

TEST(MemoryPlan, Estimates) {
  // The decoder estimate grows with pixels and batch; a tile fits the room it was sized for.
  EXPECT_GT(decode_activation_bytes(1, 1024 * 1024), 3 * decode_activation_bytes(1, 512 * 512) - (256 * MiB));
  EXPECT_EQ(decode_activation_bytes(2, 512 * 512) - decode_activation_bytes(1, 512 * 512),
            decode_activation_bytes(1, 512 * 512) - (192 * MiB));
  for (size_t room : {size_t{300} * MiB, size_t{1000} * MiB, size_t{4000} * MiB}) {
    int64_t tile = decode_tile_for(room, 8);
    EXPECT_EQ(tile % 8, 0);
    EXPECT_GE(tile, 32);
    if (tile > 32) {
      EXPECT_LE(decode_activation_bytes(1, tile * tile * 64), room);
    }
  }
  EXPECT_GT(denoise_activation_bytes(2, 4096, 256, 3072), denoise_activation_bytes(1, 4096, 256, 3072));
  EXPECT_GT(machine_memory_bytes(), 256 * MiB);
}

TEST(MemoryPlan, ParsesSizes) {
  EXPECT_EQ(parse_bytes("t", "--m", "8G"), size_t{8} << 30);
  EXPECT_EQ(parse_bytes("t", "--m", "8GiB"), size_t{8} << 30);
  EXPECT_EQ(parse_bytes("t", "--m", "7500m"), size_t{7500} << 20);
  EXPECT_EQ(parse_bytes("t", "--m", "4096"), size_t{4096});
  for (const char* bad : {"", "G", "8X", "-8G", "8.5G", "8 G"}) {
    EXPECT_THROW(parse_bytes("t", "--m", bad), UserError) << bad;
  }
}

// Resident bytes of this process's mappings of `path` (/proc/self/smaps "Rss:").
size_t mapped_rss(const std::string& path) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool ours = false;
  size_t total = 0;
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') != std::string::npos &&
        line.find(' ') != std::string::npos && line.rfind("Rss:", 0) != 0) {
      ours = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
    } else if (ours && line.rfind("Rss:", 0) == 0) {
      total += std::stoull(line.substr(4)) * 1024;
    }
  }
  return total;
}

TEST(MemoryPlan, ReleasingAMappedPartDropsItsPagesAndKeepsItsData) {
  TempDir dir;
  const std::string path = dir.path() + "/w.safetensors";
  const int64_t n = 8 << 20;   // 32 MiB of F32
  Tensor t = Tensor::zeros({n}, DType::F32);
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = static_cast<float>(i % 1000);
  Tensor heap = Tensor::from_floats({4}, {1, 2, 3, 4});
  io::write_safetensors(path, {{"w", t}});
  io::WeightSet w = io::load_weights(path);
  w.tensors.emplace("in_memory", heap);   // process memory: must be left alone
  auto sum = [&] {
    double s = 0;
    const float* p = w.at("w").data<float>();
    for (int64_t i = 0; i < n; ++i) s += p[i];
    return s;
  };
  const double want = sum();
  const std::string real = std::filesystem::canonical(path).string();
  EXPECT_GT(mapped_rss(real), 30 * MiB);
  EXPECT_GE(io::release_resident_pages(w), 31 * MiB);
  EXPECT_LT(mapped_rss(real), 1 * MiB);
  EXPECT_EQ(sum(), want);   // read back from the file
  EXPECT_EQ(w.at("in_memory").to_floats(), (std::vector<float>{1, 2, 3, 4}));
}

TEST(TiledDecoding, SpansCoverTheSideWithTheOverlap) {
  for (int64_t size : {8, 31, 64, 65, 100, 192}) {
    for (auto [tile, overlap] : {std::pair<int64_t, int64_t>{16, 4}, {32, 8}, {24, 0}}) {
      std::vector<vae::Span> s = vae::tile_spans(size, tile, overlap);
      ASSERT_FALSE(s.empty());
      EXPECT_EQ(s.front().begin, 0);
      EXPECT_EQ(s.back().end, size);
      for (size_t i = 0; i < s.size(); ++i) {
        EXPECT_LE(s[i].end - s[i].begin, tile);
        if (i > 0) {
          EXPECT_GE(s[i - 1].end - s[i].begin, overlap) << size << " " << tile;
          EXPECT_GT(s[i].begin, s[i - 1].begin);
        }
      }
    }
  }
  EXPECT_THROW(vae::tile_spans(10, 4, 4), UserError);
}

TEST(TiledDecoding, BlendingReproducesALocalDecoderExactly) {
  // A decoder that is local (each latent pixel alone makes its f x f image pixels) has nothing
  // to lose by tiling: the blend of its tiles must be its whole output, whatever the tiles.
  Ctx c;
  const int64_t f = 4, C = 5, h = 37, w = 50;
  std::vector<float> v(static_cast<size_t>(2 * C * h * w));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.37f * static_cast<float>(i));
  Tensor z = Tensor::from_floats({2, C, h, w}, v);
  auto local = [&](const Tensor& t) {   // channels 0..2, each latent pixel repeated f x f
    Tensor first = ops::contiguous(c, t.slice(1, 0, 3));
    for (int i = 0; i < 2; ++i) first = ops::upsample_nearest2x(c, first);
    return first;
  };
  std::vector<float> want;
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<float> one = local(ops::contiguous(c, z.slice(0, b, 1))).to_floats();
    want.insert(want.end(), one.begin(), one.end());
  }
  for (auto [tile, overlap] : {std::pair<int64_t, int64_t>{16, 4}, {12, 6}, {20, 0}}) {
    std::vector<float> got = vae::decode_in_tiles(c, z, f, tile, overlap, local).to_floats();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-6f) << "tile " << tile << " at " << i;
  }
}

TEST(TiledDecoding, TheAutoencoderInTiles) {
  io::WeightSet aw = io::load_weights(testdata("flux-tiny/ae.safetensors"));
  nlohmann::json ap = read_json(testdata("flux-tiny/ae_params.json"));
  vae::Model ae{vae::Config::from_weights(aw, &ap), aw};
  Ctx c;
  const int64_t h = 40, w = 56, C = ae.config().z_channels;
  std::vector<float> v(static_cast<size_t>(C * h * w));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.05f * static_cast<float>(i));
  Tensor z = Tensor::from_floats({1, C, h, w}, v);
  Tensor whole = ae.decode(c, z);
  // A tile covering the latent is the whole decode, exactly.
  EXPECT_EQ(ae.decode_tiled(c, z, 64, 16).to_floats(), whole.to_floats());
  // Real tiles: the image's shape, every pixel finite. (Not equal to the whole decode: each
  // tile has its own group-norm statistics and attention; on this random-weight toy model the
  // difference says nothing about the real autoencoder, so it is not asserted.)
  Tensor tiled = ae.decode_tiled(c, z, 24, 6);
  ASSERT_EQ(tiled.shape(), whole.shape());
  for (float x : tiled.to_floats()) ASSERT_TRUE(std::isfinite(x));
  EXPECT_THROW(ae.decode_tiled(c, z, 4, 1), UserError);
  EXPECT_THROW(ae.decode_tiled(c, z, 16, 9), UserError);
}

// The tiny test model's transformer: hidden 32, schnell (256 T5 tokens).
size_t tiny_denoise_bytes(int64_t images, int64_t width, int64_t height) {
  return denoise_activation_bytes(images, (width / 16) * (height / 16), 256, 32);
}

// The jobs these tests run: a 96x80 image (30 image tokens) of the test model.
GenerateJob lighthouse(int steps, std::vector<int64_t> seeds) {
  GenerateJob job;
  job.prompt = "a lighthouse";
  job.width = 96;
  job.height = 80;
  job.steps = steps;
  job.seeds = std::move(seeds);
  return job;
}

// A budget with room for `activations` and nothing else: the process holds 1 byte besides.
EngineOptions budget_of(size_t activations) {
  EngineOptions o;
  o.held_bytes = 1;
  o.memory_budget = 1 + activations;
  return o;
}

TEST(MemoryPlan, BatchThatFits) {
  auto act = [](int64_t b) { return static_cast<size_t>(b) * 10; };
  EXPECT_EQ(batch_that_fits(4, 100, 1000, act), 4);   // all at once beside the weights
  EXPECT_EQ(batch_that_fits(4, 100, 125, act), 2);    // 100 + 20 fits, 100 + 30 does not
  EXPECT_EQ(batch_that_fits(4, 100, 105, act), 1);    // the weights do not fit beside one: stream them
  EXPECT_EQ(batch_that_fits(4, 100, 9, act), 0);      // one image's activations alone do not fit
  EXPECT_EQ(batch_that_fits(1, 0, 1000, act), 1);
}

TEST(MemoryPlan, ATightBudgetGivesTheSameImage) {
  TempDir dir;
  write_test_model(dir.path());
  GenerateJob job = lighthouse(2, {7});
  auto keep = load_engine(dir.path());
  std::vector<Image> a = keep->generate(job, [](int, int) { return true; });
  EXPECT_EQ(keep->last_memory_plan(), "kept every part resident");
  // Room for one image's denoising and nothing else: release everything not in use, tile the decode.
  EngineOptions tight = budget_of(tiny_denoise_bytes(1, 96, 80));
  auto lean = load_engine(dir.path(), tight);
  std::vector<Image> b = lean->generate(job, [](int, int) { return true; });
  std::string plan = lean->last_memory_plan();
  EXPECT_NE(plan.find("released the T5 encoder before denoising"), std::string::npos) << plan;
  EXPECT_NE(plan.find("released the transformer before decoding"), std::string::npos) << plan;
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0].rgb, b[0].rgb) << "releasing pages must not change the image";
  // A second job brings the encoders back (they are re-read from the files).
  std::vector<Image> b2 = lean->generate(job, [](int, int) { return true; });
  EXPECT_EQ(b2[0].rgb, a[0].rgb);
  // The first job ended with only the autoencoder resident; it makes way for the encoders.
  EXPECT_NE(lean->last_memory_plan().find("released the autoencoder before text encoding"), std::string::npos)
      << lean->last_memory_plan();
}

TEST(MemoryPlan, DecodesInTilesWhenAWholeDecodeWouldNotFit) {
  TempDir dir;
  write_test_model(dir.path());
  GenerateJob job;
  job.prompt = "a harbour";
  job.width = job.height = 640;   // an 80 x 80 latent: more than one smallest tile (32)
  job.steps = 1;
  job.seeds = {5};
  EngineOptions tight = budget_of(tiny_denoise_bytes(1, 640, 640));
  auto engine = load_engine(dir.path(), tight);
  std::vector<Image> img = engine->generate(job, [](int, int) { return true; });
  ASSERT_EQ(img.size(), 1u);
  EXPECT_EQ(img[0].width, 640);
  EXPECT_EQ(img[0].height, 640);
  EXPECT_EQ(img[0].rgb.size(), size_t{640 * 640 * 3});
  // Tiles of 32 latent pixels overlapping by 8: starts 0, 24, 48 on each side.
  EXPECT_NE(engine->last_memory_plan().find("decoded in 9 tiles of 256 pixels (overlap 64)"), std::string::npos)
      << engine->last_memory_plan();
  // Forced off, the same budget decodes whole.
  tight.vae_tiling = Tiling::off;
  auto whole = load_engine(dir.path(), tight);
  whole->generate(job, [](int, int) { return true; });
  EXPECT_EQ(whole->last_memory_plan().find("tiles"), std::string::npos) << whole->last_memory_plan();
}

TEST(MemoryPlan, AJobThatCannotFitIsRefusedWithWhatWould) {
  TempDir dir;
  write_test_model(dir.path());
  GenerateJob job = lighthouse(1, {7});
  // One byte short of one image's denoising.
  auto engine = load_engine(dir.path(), budget_of(tiny_denoise_bytes(1, 96, 80) - 1));
  JobFit fit = engine->check_fit(job);
  EXPECT_FALSE(fit.fits);
  EXPECT_NE(fit.reason.find("a 96x80 image needs about"), std::string::npos) << fit.reason;
  // 80x80 has fewer tokens than 96x80 (25 < 30), so it is the largest square that fits.
  EXPECT_NE(fit.reason.find("the largest square image that fits is 80x80"), std::string::npos) << fit.reason;
  EXPECT_THROW(engine->generate(job, [](int, int) { return true; }), UserError);
  job.width = 80;
  EXPECT_TRUE(engine->check_fit(job).fits);
  // A negative prompt runs the model on two conditionings: twice the memory.
  job.negative_prompt = "fog";
  job.true_cfg_scale = 2.0f;
  fit = engine->check_fit(job);
  EXPECT_FALSE(fit.fits);
  EXPECT_NE(fit.reason.find("a negative prompt doubles it"), std::string::npos) << fit.reason;
}

TEST(MemoryPlan, SamplesRunInBatchesThatFitAndGiveTheSameImages) {
  TempDir dir;
  write_test_model(dir.path());
  GenerateJob job = lighthouse(2, {7, 8, 9, 10});
  auto roomy = load_engine(dir.path());
  EXPECT_EQ(roomy->check_fit(job).batch, 4);
  std::vector<Image> all = roomy->generate(job, [](int, int) { return true; });
  EXPECT_EQ(roomy->last_memory_plan().find("batches"), std::string::npos) << roomy->last_memory_plan();

  // Room for the transformer (its file is its tensors plus a small header) beside two images.
  struct stat st{};
  ASSERT_EQ(stat((dir.path() + "/flux1-test.safetensors").c_str(), &st), 0);
  auto pairs = load_engine(dir.path(), budget_of(static_cast<size_t>(st.st_size) + tiny_denoise_bytes(2, 96, 80)));
  EXPECT_EQ(pairs->check_fit(job).batch, 2);
  std::vector<std::pair<int, int>> progress;
  std::vector<Image> two = pairs->generate(job, [&](int done, int total) {
    progress.push_back({done, total});
    return true;
  });
  EXPECT_NE(pairs->last_memory_plan().find("denoised in 2 batches of at most 2 images"), std::string::npos)
      << pairs->last_memory_plan();
  // Progress runs over both batches: 1..4 of 4.
  ASSERT_EQ(progress.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(progress[static_cast<size_t>(i)], std::make_pair(i + 1, 4));

  // Room for one image's activations only: the weights stream, one image at a time.
  auto ones = load_engine(dir.path(), budget_of(tiny_denoise_bytes(1, 96, 80)));
  EXPECT_EQ(ones->check_fit(job).batch, 1);
  std::vector<Image> one = ones->generate(job, [](int, int) { return true; });
  ASSERT_EQ(all.size(), 4u);
  ASSERT_EQ(two.size(), 4u);
  ASSERT_EQ(one.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(two[i].rgb, all[i].rgb) << "image " << i << " differs when denoised in pairs";
    EXPECT_EQ(one[i].rgb, all[i].rgb) << "image " << i << " differs when denoised alone";
  }
  EXPECT_NE(all[0].rgb, all[1].rgb);
}

// The text cache (EngineOptions::text_cache): a prompt seen again skips the encoders and gives
// the image the encoders would have given; the least recently used prompt goes first.
TEST(TextCache, APromptSeenAgainSkipsTheEncodersAndChangesNoImage) {
  TempDir dir;
  write_test_model(dir.path());
  auto ok = [](int, int) { return true; };
  auto first_stage = [](const Engine& e) { return e.last_stage_seconds().at(0).first; };
  EngineOptions one;
  one.text_cache = 1;
  auto e = load_engine(dir.path(), one);
  GenerateJob a = lighthouse(1, {7}), a_other_seed = lighthouse(1, {8}), b = lighthouse(1, {7});
  b.prompt = "a harbour at night";
  std::vector<Image> fresh = e->generate(a, ok);
  EXPECT_EQ(first_stage(*e), "text encoders");
  std::vector<Image> cached = e->generate(a, ok);
  EXPECT_EQ(first_stage(*e), "text encoders (cached)");
  EXPECT_EQ(cached.at(0).rgb, fresh.at(0).rgb);
  std::vector<Image> other = e->generate(a_other_seed, ok);
  EXPECT_EQ(first_stage(*e), "text encoders (cached)");
  EXPECT_NE(other.at(0).rgb, fresh.at(0).rgb);
  e->generate(b, ok);
  EXPECT_EQ(first_stage(*e), "text encoders");
  EXPECT_EQ(e->generate(a, ok).at(0).rgb, fresh.at(0).rgb);
  EXPECT_EQ(first_stage(*e), "text encoders") << "a capacity of one keeps only the latest prompt";
  // Without a cache (the engine's default) every job encodes, to the same image.
  auto plain = load_engine(dir.path());
  EXPECT_EQ(plain->generate(a, ok).at(0).rgb, fresh.at(0).rgb);
  plain->generate(a, ok);
  EXPECT_EQ(first_stage(*plain), "text encoders");
}

}  // namespace
}  // namespace fluxpipe::testing
