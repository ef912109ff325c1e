// Dtype conversions and GGUF block dequantization against hand-made blocks whose values
// were worked out by hand from the format descriptions; quantizer round trips.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/dtype.h"

namespace fluxpipe {
namespace {

void put_f16(std::vector<uint8_t>& b, size_t at, uint16_t h) {
  b[at] = static_cast<uint8_t>(h);
  b[at + 1] = static_cast<uint8_t>(h >> 8);
}

std::vector<float> deq(DType t, const std::vector<uint8_t>& block) {
  std::vector<float> y(static_cast<size_t>(info(t).block_elems));
  EXPECT_EQ(block.size(), static_cast<size_t>(info(t).block_bytes));
  to_f32(t, block.data(), y.data(), info(t).block_elems);
  return y;
}

constexpr uint16_t kHalf = 0x3800, kOne = 0x3C00, kTwo = 0x4000, kMinusOne = 0xBC00;

TEST(Dtype, ScalarConversions) {
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7C00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  for (uint32_t h = 0; h < 0x10000; ++h) {   // every finite f16 survives f32 and back
    if ((h & 0x7C00) == 0x7C00) continue;
    ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);          // rounds up to infinity
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);   // tie to even
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3F80);      // exactly halfway: even
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3F82);      // halfway between 0x3F81 and 0x3F82: even
  EXPECT_EQ(bf16_to_f32(0xC040), -3.0f);
  EXPECT_EQ(f8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(f8_e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(f8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(f8_e4m3_to_f32(0xB8), -1.0f);
  EXPECT_TRUE(std::isnan(f8_e4m3_to_f32(0x7F)));
  EXPECT_EQ(f8_e5m2_to_f32(0x3C), 1.0f);
  EXPECT_EQ(f8_e5m2_to_f32(0x7B), 57344.0f);
  EXPECT_TRUE(std::isinf(f8_e5m2_to_f32(0x7C)));
  for (int v = 0; v < 256; ++v) {   // every finite fp8 value survives f32 and back
    float e4 = f8_e4m3_to_f32(static_cast<uint8_t>(v)), e5 = f8_e5m2_to_f32(static_cast<uint8_t>(v));
    if (!std::isnan(e4)) {
      EXPECT_EQ(f32_to_f8_e4m3(e4), v);
    }
    if (std::isfinite(e5)) {
      EXPECT_EQ(f32_to_f8_e5m2(e5), v);
    }
  }
  EXPECT_EQ(f32_to_f8_e4m3(1000.0f), 0x7E);   // saturates at the largest finite value
}

TEST(Dtype, Q8_0Block) {
  std::vector<uint8_t> b(34, 0);
  put_f16(b, 0, kHalf);
  b[2] = 1;
  b[3] = 0xFF;   // -1
  b[4] = 127;
  b[5] = 0x80;   // -128
  auto y = deq(DType::Q8_0, b);
  EXPECT_EQ(y[0], 0.5f);
  EXPECT_EQ(y[1], -0.5f);
  EXPECT_EQ(y[2], 63.5f);
  EXPECT_EQ(y[3], -64.0f);
  EXPECT_EQ(y[31], 0.0f);
}

TEST(Dtype, Q4_0Block) {
  std::vector<uint8_t> b(18, 0x88);   // every nibble 8 -> 0
  put_f16(b, 0, kTwo);
  b[2] = 0x9A;
  b[3] = 0x08;
  auto y = deq(DType::Q4_0, b);
  EXPECT_EQ(y[0], 4.0f);     // 2 * (10 - 8)
  EXPECT_EQ(y[16], 2.0f);    // 2 * (9 - 8)
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_EQ(y[17], -16.0f);  // 2 * (0 - 8)
  EXPECT_EQ(y[5], 0.0f);
}

TEST(Dtype, Q4_1Block) {
  std::vector<uint8_t> b(20, 0);
  put_f16(b, 0, kOne);
  put_f16(b, 2, kMinusOne);
  b[4] = 0x3F;
  auto y = deq(DType::Q4_1, b);
  EXPECT_EQ(y[0], 14.0f);
  EXPECT_EQ(y[16], 2.0f);
  EXPECT_EQ(y[1], -1.0f);
}

TEST(Dtype, Q5_0Block) {
  std::vector<uint8_t> b(22, 0);
  put_f16(b, 0, kOne);
  b[2] = 0x01;   // qh bit 0
  b[4] = 0x01;   // qh bit 16
  b[6] = 0x21;   // qs[0]
  auto y = deq(DType::Q5_0, b);
  EXPECT_EQ(y[0], 1.0f);     // (1 | 16) - 16
  EXPECT_EQ(y[16], 2.0f);    // (2 | 16) - 16
  EXPECT_EQ(y[1], -16.0f);
  EXPECT_EQ(y[17], -16.0f);
}

TEST(Dtype, Q5_1Block) {
  std::vector<uint8_t> b(24, 0);
  put_f16(b, 0, kHalf);
  put_f16(b, 2, kOne);
  b[7] = 0x80;    // qh bit 31 -> element 31
  b[8 + 15] = 0xF0;
  auto y = deq(DType::Q5_1, b);
  EXPECT_EQ(y[31], 16.5f);   // 0.5 * (15 + 16) + 1
  EXPECT_EQ(y[15], 1.0f);
  EXPECT_EQ(y[0], 1.0f);
}

TEST(Dtype, Q2_KBlock) {
  std::vector<uint8_t> b(84, 0);
  b[0] = 0x21;   // scale 1, min 2   (y[0..15])
  b[2] = 0x03;   // scale 3, min 0   (y[32..47])
  b[6] = 0x11;   // scale 1, min 1   (y[96..111])
  b[16] = 0xE4;  // q[0] = 11 10 01 00
  put_f16(b, 80, kOne);
  put_f16(b, 82, kHalf);
  auto y = deq(DType::Q2_K, b);
  EXPECT_EQ(y[0], -1.0f);    // 1*0 - 0.5*2
  EXPECT_EQ(y[32], 3.0f);    // 3*1 - 0
  EXPECT_EQ(y[64], 0.0f);    // scale 0
  EXPECT_EQ(y[96], 2.5f);    // 1*3 - 0.5*1
}

TEST(Dtype, Q3_KBlock) {
  std::vector<uint8_t> b(110, 0);
  b[0] = 0x01;        // hmask: element 0 has its high bit
  b[32] = 0x03;       // q of element 0
  b[33] = 0x03;       // q of element 1 (no high bit)
  b[96] = 0x05;       // scale 0 low bits
  b[104] = 0x02;      // scale 0 high bits -> (5 | 32) - 32 = 5
  put_f16(b, 108, kOne);
  auto y = deq(DType::Q3_K, b);
  EXPECT_EQ(y[0], 15.0f);     // 5 * 3
  EXPECT_EQ(y[1], -5.0f);     // 5 * (3 - 4)
  EXPECT_EQ(y[2], -20.0f);    // 5 * (0 - 4): elements 0..15 share scale 0
  EXPECT_EQ(y[16], 128.0f);   // scale 1 is (0 | 0) - 32 = -32; -32 * (0 - 4)
}

TEST(Dtype, Q4_KBlock) {
  std::vector<uint8_t> b(144, 0);
  put_f16(b, 0, kOne);
  put_f16(b, 2, kOne);
  b[4 + 0] = 3;      // sub-block 0: scale 3
  b[4 + 4] = 2;      //              min 2
  b[4 + 1] = 1;      // sub-block 1: scale 1, min 0
  b[4 + 8] = 0x12;   // sub-block 4: scale 2, min 1
  b[16] = 0x75;
  b[16 + 64] = 0x04;
  auto y = deq(DType::Q4_K, b);
  EXPECT_EQ(y[0], 13.0f);     // 3*5 - 2
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[32], 7.0f);     // 1*7 - 0
  EXPECT_EQ(y[128], 7.0f);    // 2*4 - 1
}

TEST(Dtype, Q5_KBlock) {
  std::vector<uint8_t> b(176, 0);
  put_f16(b, 0, kOne);
  b[4 + 0] = 1;
  b[4 + 1] = 1;
  b[16] = 0x03;    // qh[0]: bit 0 (first half) and bit 1 (second half)
  b[48] = 0x02;
  auto y = deq(DType::Q5_K, b);
  EXPECT_EQ(y[0], 18.0f);     // 1 * (2 + 16)
  EXPECT_EQ(y[32], 16.0f);    // 1 * (0 + 16)
  EXPECT_EQ(y[1], 0.0f);
}

TEST(Dtype, Q6_KBlock) {
  std::vector<uint8_t> b(210, 0);
  b[0] = 0x3A;                 // ql[0]
  b[128] = 0x01;               // qh[0]
  b[192 + 0] = 2;              // scale of elements 0..15
  b[192 + 2] = 0xFF;           // -1: elements 32..47
  put_f16(b, 208, kHalf);
  auto y = deq(DType::Q6_K, b);
  EXPECT_EQ(y[0], -6.0f);      // 0.5 * 2 * ((10 | 16) - 32)
  EXPECT_EQ(y[32], 16.0f);     // 0.5 * -1 * (0 - 32)
  EXPECT_EQ(y[64], 0.0f);      // scale 0
}

TEST(Dtype, QuantizersRoundTripWithinTheirStep) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(1024);
  for (float& v : x) v = nd(rng);
  struct Case { DType t; float tol; };
  for (Case c : {Case{DType::Q8_0, 0.02f}, {DType::Q4_0, 0.35f}, {DType::Q4_1, 0.3f}, {DType::Q5_0, 0.18f},
                 {DType::Q5_1, 0.15f}, {DType::Q4_K, 0.4f}, {DType::Q6_K, 0.1f}, {DType::F16, 1e-3f},
                 {DType::BF16, 1e-2f}, {DType::F8_E4M3, 0.25f}, {DType::F8_E5M2, 0.5f}}) {
    std::vector<uint8_t> q(bytes_for(c.t, 1024));
    from_f32(c.t, x.data(), q.data(), 1024);
    std::vector<float> y(1024);
    to_f32(c.t, q.data(), y.data(), 1024);
    double err = 0, ref = 0;
    for (int i = 0; i < 1024; ++i) {
      err += (y[i] - x[i]) * (y[i] - x[i]);
      ref += x[i] * x[i];
    }
    EXPECT_LT(std::sqrt(err / ref), c.tol) << name(c.t);
    EXPECT_GT(std::sqrt(err / ref), 0.0) << name(c.t) << " lost nothing?";
  }
}

TEST(Dtype, NamesAndIds) {
  EXPECT_EQ(dtype_from_safetensors("BF16"), DType::BF16);
  EXPECT_EQ(dtype_from_safetensors("F8_E4M3"), DType::F8_E4M3);
  EXPECT_FALSE(dtype_from_safetensors("Q4_0"));
  EXPECT_EQ(dtype_from_ggml(12), DType::Q4_K);
  EXPECT_EQ(dtype_from_ggml(30), DType::BF16);
  EXPECT_FALSE(dtype_from_ggml(9));   // Q8_1: not in FLUX files
  EXPECT_EQ(ggml_type_id(DType::Q6_K), 14u);
  EXPECT_EQ(bytes_for(DType::Q4_K, 512), 288u);
}

}  // namespace
}  // namespace fluxpipe
