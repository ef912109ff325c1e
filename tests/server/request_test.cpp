// The request parser: every field's good and bad values, defaults, rounding, and that
// each error names its field.
#include <gtest/gtest.h>

#include "core/error.h"
#include "server/request.h"

namespace fluxpipe::server {
namespace {

using nlohmann::json;

GenerateRequest parse(const json& body) { return parse_generate_request(body.dump(), RequestLimits{}); }

// Expects a UserError whose message names `field`.
void expect_bad(const json& body, const std::string& field) {
  try {
    parse(body);
    ADD_FAILURE() << "accepted " << body.dump();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'" + field + "'"), std::string::npos) << e.what();
  }
}

json with(const char* key, json value) {
  json b = {{"prompt", "a toucan"}};
  b[key] = std::move(value);
  return b;
}

TEST(Request, DefaultsFollowTheContract) {
  GenerateRequest r = parse({{"prompt", "a toucan"}});
  EXPECT_EQ(r.prompt, "a toucan");
  EXPECT_EQ(r.steps, 20);
  EXPECT_EQ(r.samples, 2);
  EXPECT_EQ(r.width, 1024);
  EXPECT_EQ(r.height, 1024);
  EXPECT_EQ(r.seed, -1);
  EXPECT_FALSE(r.direct_link);
  EXPECT_FALSE(r.queued_image_urls);
  EXPECT_TRUE(r.server_id.empty());
  EXPECT_FLOAT_EQ(r.true_cfg_scale, 1.0f);
  EXPECT_TRUE(r.warnings.empty());
}

TEST(Request, AllFieldsAccepted) {
  GenerateRequest r = parse({{"prompt", "p"},
                             {"negative_prompt", "blurry"},
                             {"num_inference_steps", 4},
                             {"samples", 4},
                             {"width", 512},
                             {"height", 768},
                             {"seed", 42},
                             {"direct_link", true},
                             {"server_id", "gpu-a"},
                             {"webhook", "https://example.com/hook"},
                             {"batch_id", "b1"},
                             {"file_prefix", "cat_1.v-2"},
                             {"queued_image_urls", true},
                             {"true_cfg_scale", 2.5}});
  EXPECT_EQ(r.negative_prompt, "blurry");
  EXPECT_EQ(r.steps, 4);
  EXPECT_EQ(r.samples, 4);
  EXPECT_EQ(r.width, 512);
  EXPECT_EQ(r.height, 768);
  EXPECT_EQ(r.seed, 42);
  EXPECT_TRUE(r.direct_link);
  EXPECT_EQ(r.server_id, "gpu-a");
  EXPECT_EQ(r.webhook, "https://example.com/hook");
  EXPECT_EQ(r.batch_id, "b1");
  EXPECT_EQ(r.file_prefix, "cat_1.v-2");
  EXPECT_TRUE(r.queued_image_urls);
  EXPECT_FLOAT_EQ(r.true_cfg_scale, 2.5f);
}

TEST(Request, NegativePromptTurnsOnGuidanceByDefault) {
  EXPECT_FLOAT_EQ(parse(with("negative_prompt", "blurry")).true_cfg_scale, 4.0f);
  EXPECT_FLOAT_EQ(parse(with("negative_prompt", "   ")).true_cfg_scale, 1.0f);
}

TEST(Request, PromptRules) {
  expect_bad(json::object(), "prompt");
  expect_bad({{"prompt", ""}}, "prompt");
  expect_bad({{"prompt", " \t\n"}}, "prompt");
  expect_bad({{"prompt", nullptr}}, "prompt");
  expect_bad({{"prompt", 5}}, "prompt");
  expect_bad({{"prompt", json::array({"a"})}}, "prompt");
  expect_bad({{"prompt", std::string(10001, 'a')}}, "prompt");
  EXPECT_NO_THROW(parse({{"prompt", std::string(10000, 'a')}}));
  // Characters, not bytes: 10,000 three-byte characters are allowed.
  std::string wide;
  for (int i = 0; i < 10000; ++i) wide += "\xe6\x97\xa5";
  EXPECT_NO_THROW(parse({{"prompt", wide}}));
  expect_bad(with("negative_prompt", 3), "negative_prompt");
  expect_bad(with("negative_prompt", std::string(10001, 'a')), "negative_prompt");
}

TEST(Request, IntegerFields) {
  for (const char* f : {"num_inference_steps", "samples", "width", "height", "seed"}) {
    expect_bad(with(f, "4"), f);
    expect_bad(with(f, 4.5), f);
    expect_bad(with(f, true), f);
    expect_bad(with(f, json::object()), f);
  }
  expect_bad(with("num_inference_steps", 0), "num_inference_steps");
  expect_bad(with("num_inference_steps", 51), "num_inference_steps");
  EXPECT_EQ(parse(with("num_inference_steps", 1)).steps, 1);
  EXPECT_EQ(parse(with("num_inference_steps", 50)).steps, 50);
  expect_bad(with("samples", 0), "samples");
  expect_bad(with("samples", 5), "samples");
  expect_bad(with("samples", -1), "samples");
  EXPECT_EQ(parse(with("samples", 1)).samples, 1);
  expect_bad(with("width", 63), "width");
  expect_bad(with("width", 1537), "width");
  expect_bad(with("height", 0), "height");
  expect_bad(with("height", 100000), "height");
  expect_bad(with("seed", -2), "seed");
  expect_bad(with("seed", json(uint64_t{18446744073709551615u})), "seed");
  EXPECT_EQ(parse(with("seed", 0)).seed, 0);
  EXPECT_EQ(parse(with("seed", 4294967295)).seed, 4294967295);
  // null counts as absent.
  EXPECT_EQ(parse(with("seed", nullptr)).seed, -1);
  EXPECT_EQ(parse(with("samples", nullptr)).samples, 2);
}

TEST(Request, SizesRoundToMultiplesOf16AndSaySo) {
  GenerateRequest r = parse({{"prompt", "p"}, {"width", 1000}, {"height", 65}});
  EXPECT_EQ(r.width, 1008);   // 1000 -> nearest multiple of 16 (ties up)
  EXPECT_EQ(r.height, 64);
  ASSERT_EQ(r.warnings.size(), 2u);
  EXPECT_NE(r.warnings[0].find("1008"), std::string::npos);
  EXPECT_EQ(parse(with("width", 1535)).width, 1536);
  EXPECT_EQ(parse(with("width", 64)).width, 64);
  EXPECT_EQ(parse(with("width", 72)).width, 80);   // tie rounds up
  EXPECT_EQ(round_to_16(71), 64);
}

TEST(Request, BooleanFields) {
  for (const char* f : {"direct_link", "queued_image_urls"}) {
    expect_bad(with(f, "true"), f);
    expect_bad(with(f, 1), f);
    EXPECT_NO_THROW(parse(with(f, false)));
  }
}

TEST(Request, StringFields) {
  expect_bad(with("server_id", 7), "server_id");
  EXPECT_TRUE(parse(with("server_id", "any")).server_id.empty());
  expect_bad(with("batch_id", 7), "batch_id");
  expect_bad(with("batch_id", std::string(129, 'b')), "batch_id");
  expect_bad(with("webhook", 7), "webhook");
  expect_bad(with("webhook", "ftp://example.com/x"), "webhook");
  expect_bad(with("webhook", "example.com/x"), "webhook");
  expect_bad(with("true_cfg_scale", "2"), "true_cfg_scale");
  expect_bad(with("true_cfg_scale", 0.5), "true_cfg_scale");
  expect_bad(with("true_cfg_scale", 21), "true_cfg_scale");
}

TEST(Request, FilePrefixIsNeverAPath) {
  for (const char* bad : {"../x", "a/b", "a\\b", "..", ".", "a b", "x\n", "caf\xc3\xa9"}) {
    expect_bad(with("file_prefix", bad), "file_prefix");
  }
  expect_bad(with("file_prefix", std::string(65, 'a')), "file_prefix");
  expect_bad(with("file_prefix", 3), "file_prefix");
  EXPECT_EQ(parse(with("file_prefix", std::string(64, 'a'))).file_prefix, std::string(64, 'a'));
}

TEST(Request, UnknownFieldsAreIgnored) {
  GenerateRequest r = parse({{"prompt", "p"}, {"guidance_scale", 7}, {"enhance_prompt", "yes"}, {"model_id", 3}});
  EXPECT_EQ(r.prompt, "p");
}

TEST(Request, BodyMustBeAJsonObject) {
  RequestLimits limits;
  for (const char* body : {"", "{", "not json", "[1,2]", "\"prompt\"", "null", "{\"prompt\": \"a\",}"}) {
    EXPECT_THROW(parse_generate_request(body, limits), UserError) << body;
  }
}

TEST(Request, ConfiguredLimitsApply) {
  RequestLimits limits;
  limits.max_steps = 8;
  limits.default_steps = 4;
  limits.max_prompt_chars = 5;
  EXPECT_EQ(parse_generate_request(R"({"prompt":"abc"})", limits).steps, 4);
  EXPECT_THROW(parse_generate_request(R"({"prompt":"abc","num_inference_steps":9})", limits), UserError);
  EXPECT_THROW(parse_generate_request(R"({"prompt":"abcdef"})", limits), UserError);
}

TEST(Request, StoredFormRoundTrips) {
  GenerateRequest r = parse({{"prompt", "p"}, {"negative_prompt", "n"}, {"width", 1000}, {"seed", 9},
                             {"file_prefix", "x"}, {"webhook", "http://h.example/"}, {"batch_id", "b"}});
  GenerateRequest back = generate_request_from_json(to_json(r));
  EXPECT_EQ(to_json(back), to_json(r));
}

}  // namespace
}  // namespace fluxpipe::server
