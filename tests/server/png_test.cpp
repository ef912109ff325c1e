// PNG encoding: decode with libpng and compare pixels and text chunks.
#include <gtest/gtest.h>
#include <png.h>

#include <cstring>

#include "fake_engine.h"
#include "pipeline/pipeline.h"

namespace fluxpipe {
namespace {

struct Decoded {
  Image image;
  std::vector<std::pair<std::string, std::string>> text;
  std::vector<bool> itxt;   // per chunk: iTXt (UTF-8) rather than tEXt (Latin-1)
};

Decoded decode(const std::vector<uint8_t>& png) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  EXPECT_TRUE(png_image_begin_read_from_memory(&img, png.data(), png.size()));
  img.format = PNG_FORMAT_RGB;
  Decoded d;
  d.image.width = static_cast<int>(img.width);
  d.image.height = static_cast<int>(img.height);
  d.image.rgb.resize(PNG_IMAGE_SIZE(img));
  EXPECT_TRUE(png_image_finish_read(&img, nullptr, d.image.rgb.data(), 0, nullptr));
  // Text chunks need the full API.
  png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(p);
  struct Reader {
    const std::vector<uint8_t>* data;
    size_t off;
  } reader{&png, 0};
  png_set_read_fn(p, &reader, [](png_structp ps, png_bytep out, png_size_t n) {
    auto* r = static_cast<Reader*>(png_get_io_ptr(ps));
    std::memcpy(out, r->data->data() + r->off, n);
    r->off += n;
  });
  png_read_info(p, info);
  png_textp text = nullptr;
  int n = png_get_text(p, info, &text, nullptr);
  for (int i = 0; i < n; ++i) {
    size_t len = text[i].compression >= PNG_ITXT_COMPRESSION_NONE ? text[i].itxt_length : text[i].text_length;
    d.text.push_back({text[i].key, std::string(text[i].text, len)});
    d.itxt.push_back(text[i].compression >= PNG_ITXT_COMPRESSION_NONE);
  }
  png_destroy_read_struct(&p, &info, nullptr);
  return d;
}

TEST(Png, PixelsAndTextSurviveARoundTrip) {
  for (auto [w, h] : {std::pair{1, 1}, {17, 5}, {64, 48}}) {
    Image img = testing::FakeEngine::pattern(w, h, 1234, 99);
    auto png = encode_png(img, {{"parameters", "a toucan\nSteps: 4, Seed: 1234"}, {"Software", "fluxpipe"}});
    ASSERT_GT(png.size(), 8u);
    EXPECT_EQ(std::memcmp(png.data(), "\x89PNG\r\n\x1a\n", 8), 0);
    Decoded d = decode(png);
    EXPECT_EQ(d.image.width, w);
    EXPECT_EQ(d.image.height, h);
    EXPECT_EQ(d.image.rgb, img.rgb);
    ASSERT_EQ(d.text.size(), 2u);
    EXPECT_EQ(d.text[0].first, "parameters");
    EXPECT_EQ(d.text[0].second, "a toucan\nSteps: 4, Seed: 1234");
  }
}

TEST(Png, NonAsciiGoesToITxtAndControlCharactersAreEscaped) {
  Image img = testing::FakeEngine::pattern(8, 8, 1, 2);
  std::string prompt = std::string("a caf\xc3\xa9 \xe2\x98\x95", 11) + std::string("\0after", 6) + "\x01!\ttab";
  Decoded d = decode(encode_png(img, {{"parameters", prompt}, {"Software", "fluxpipe"}}));
  ASSERT_EQ(d.text.size(), 2u);
  EXPECT_TRUE(d.itxt[0]);
  EXPECT_FALSE(d.itxt[1]);
  // NUL no longer cuts the text short: everything after it survives, the NUL as \x00.
  EXPECT_EQ(d.text[0].second, std::string("a caf\xc3\xa9 \xe2\x98\x95") + "\\x00after\\x01!\ttab");
}

TEST(Png, ParametersTextCarriesTheTrueCfgScale) {
  GenerateJob job;
  job.prompt = "p";
  job.negative_prompt = "blurry";
  job.true_cfg_scale = 4.5f;
  job.width = 512;
  job.height = 256;
  job.steps = 4;
  EXPECT_EQ(parameters_text(job, 7, "m"),
            "p\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, Seed: 7, Size: 512x256, Model: m, True CFG scale: 4.5");
  job.negative_prompt.clear();
  EXPECT_EQ(parameters_text(job, 7, "m"), "p\nSteps: 4, Sampler: Euler, Seed: 7, Size: 512x256, Model: m");
}

TEST(Png, RejectsInconsistentImages) {
  Image bad{4, 4, std::vector<uint8_t>(10)};
  EXPECT_THROW(encode_png(bad, {}), std::exception);
}

}  // namespace
}  // namespace fluxpipe
