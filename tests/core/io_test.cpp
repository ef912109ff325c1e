// Weight files: round trips through the writers, the real test-data files, and files that
// lie (truncated, overlapping, oversized, wrong sizes) giving clear errors, never crashes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/weights.h"
#include "test_util.h"

namespace fluxpipe::io {
namespace {

using fluxpipe::testing::TempDir;

std::string read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_all(const std::string& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::shared_ptr<Storage> memory(const std::string& bytes) {
  auto s = allocate_cpu(bytes.size());
  std::memcpy(s->data, bytes.data(), bytes.size());
  return s;
}

// A safetensors image from a header JSON string and a data section.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

void expect_error(const std::string& bytes, const std::string& needle, bool gguf = false) {
  try {
    if (gguf) parse_gguf(memory(bytes), "test.gguf");
    else parse_safetensors(memory(bytes), "test.safetensors");
    ADD_FAILURE() << "accepted; expected an error containing '" << needle << "'";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Safetensors, WriteThenReadBack) {
  TempDir dir;
  Tensor a = Tensor::from_floats({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor b = Tensor::zeros({4}, DType::BF16);
  b.data<uint16_t>()[1] = f32_to_bf16(-2.5f);
  Tensor c = Tensor::zeros({3}, DType::U8);
  c.data<uint8_t>()[2] = 200;
  std::string path = dir.path() + "/w.safetensors";
  write_safetensors(path, {{"a", a}, {"b.weight", b}, {"img", c}}, {{"note", "test"}});
  WeightSet ws = load_safetensors(path);
  EXPECT_EQ(ws.tensors.size(), 3u);
  EXPECT_EQ(ws.at("a").shape(), (Shape{2, 3}));
  EXPECT_EQ(ws.at("a").to_floats(), a.to_floats());
  EXPECT_EQ(ws.at("b.weight").dtype(), DType::BF16);
  EXPECT_EQ(ws.at("b.weight").to_floats()[1], -2.5f);
  EXPECT_EQ(ws.at("img").to_floats()[2], 200.0f);
  EXPECT_EQ(ws.metadata["note"], "test");
  try {
    ws.at("missing");
    ADD_FAILURE();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos);
  }
  EXPECT_THROW(write_safetensors(path, {{"q", Tensor::zeros({32}, DType::Q8_0)}}), UserError);
}

TEST(Safetensors, ReadsTheReferenceTestData) {
  for (const char* f : {"transformer.safetensors", "ae.safetensors", "sample_io.safetensors"}) {
    std::string path = std::string(FLUXPIPE_SHARED_DIR) + "/testdata/flux-tiny/" + f;
    WeightSet ws = load_safetensors(path);
    EXPECT_GT(ws.tensors.size(), 3u) << f;
  }
  WeightSet t = load_weights(std::string(FLUXPIPE_SHARED_DIR) + "/testdata/flux-tiny/transformer.safetensors");
  EXPECT_EQ(t.at("img_in.weight").shape(), (Shape{32, 64}));
}

TEST(Safetensors, ShardedIndexFolder) {
  TempDir dir;
  write_safetensors(dir.path() + "/m-1.safetensors", {{"x", Tensor::from_floats({2}, {1, 2})}});
  write_safetensors(dir.path() + "/m-2.safetensors", {{"y", Tensor::from_floats({1}, {3})}});
  write_all(dir.path() + "/m.safetensors.index.json",
            R"({"metadata": {"total_size": 12}, "weight_map": {"x": "m-1.safetensors", "y": "m-2.safetensors"}})");
  WeightSet ws = load_weights(dir.path());
  EXPECT_EQ(ws.at("y").to_floats()[0], 3.0f);
  EXPECT_EQ(ws.files.size(), 3u);
  write_all(dir.path() + "/m.safetensors.index.json", R"({"weight_map": {"x": "m-2.safetensors"}})");
  EXPECT_THROW(load_weights(dir.path()), UserError);
  write_all(dir.path() + "/m.safetensors.index.json", R"({"weight_map": {"x": "../etc/passwd"}})");
  EXPECT_THROW(load_weights(dir.path()), UserError);
}

TEST(Safetensors, LyingFilesAreRefusedWithClearErrors) {
  std::string eight(8, '\0');
  expect_error("abc", "too short");
  expect_error(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8), "runs past the end");
  expect_error(safetensors_bytes("not json", ""), "not a JSON object");
  expect_error(safetensors_bytes(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", "1234"),
               "truncated");
  expect_error(safetensors_bytes(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", eight),
               "'t'");
  expect_error(safetensors_bytes(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", eight),
               "begin");
  expect_error(safetensors_bytes(R"({"t": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}})", eight),
               "unsupported dtype");
  expect_error(safetensors_bytes(R"({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", eight),
               "negative");
  expect_error(safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                 eight + "1234"),
               "overlap");
  expect_error(safetensors_bytes(R"({"t": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 8]}})", eight),
               "'t'");
  expect_error(safetensors_bytes(R"({"t": {"dtype": "F32", "shape": [2]}})", eight), "data_offsets");
}

TEST(Gguf, WriteThenReadBackEveryBlockType) {
  TempDir dir;
  NamedTensors ts;
  std::vector<float> values(512);
  for (size_t i = 0; i < values.size(); ++i) values[i] = std::sin(static_cast<float>(i));
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                  DType::Q5_1, DType::Q4_K, DType::Q6_K}) {
    Tensor q = Tensor::zeros({2, 256}, t);
    from_f32(t, values.data(), q.data<uint8_t>(), 512);
    ts.push_back({std::string("w.") + name(t), q});
  }
  std::string path = dir.path() + "/m.gguf";
  write_gguf(path, ts, {{"general.architecture", "flux"}, {"flux.depth", 19}, {"scale", 0.5}, {"list", {1, 2, 3}}});
  WeightSet ws = load_weights(path);
  EXPECT_EQ(ws.metadata["general.architecture"], "flux");
  EXPECT_EQ(ws.metadata["flux.depth"], 19);
  EXPECT_EQ(ws.metadata["general.alignment"], 32);
  EXPECT_EQ(ws.metadata["list"].size(), 3u);
  for (const auto& [n, t] : ts) {
    const Tensor& back = ws.at(n);
    EXPECT_EQ(back.dtype(), t.dtype()) << n;
    EXPECT_EQ(back.shape(), (Shape{2, 256})) << n;
    EXPECT_EQ(back.to_floats(), t.to_floats()) << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(back.data<uint8_t>()) % 32, 0u) << n;
  }
}

TEST(Gguf, LyingFilesAreRefusedWithClearErrors) {
  TempDir dir;
  std::string path = dir.path() + "/m.gguf";
  Tensor q = Tensor::zeros({4, 64}, DType::Q8_0);
  write_gguf(path, {{"a", q}, {"b", Tensor::from_floats({2}, {1, 2})}});
  std::string good = read_all(path);
  EXPECT_NO_THROW(parse_gguf(memory(good), "m.gguf"));
  expect_error("GGU", "magic", true);
  expect_error("XXXX" + good.substr(4), "magic", true);
  std::string bad_version = good;
  bad_version[4] = 9;
  expect_error(bad_version, "version 9", true);
  expect_error(good.substr(0, good.size() - 4), "truncated", true);
  for (size_t cut : {size_t{10}, size_t{24}, size_t{40}, good.size() / 2}) {
    EXPECT_THROW(parse_gguf(memory(good.substr(0, cut)), "m.gguf"), UserError) << cut;
  }
  std::string huge_count = good;
  huge_count[8 + 7] = 0x7F;   // tensor count's top byte
  expect_error(huge_count, "count", true);
  // Flip every byte in the header area one at a time: never a crash, only errors or success.
  size_t header_end = good.size() - 4 * 34 - 8;
  for (size_t i = 0; i < header_end; ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x5A);
    try {
      parse_gguf(memory(bad), "m.gguf");
    } catch (const UserError&) {
    }
  }
}

}  // namespace
}  // namespace fluxpipe::io
