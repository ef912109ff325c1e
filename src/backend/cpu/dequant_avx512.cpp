// AVX-512 dequantization of the block types that dominate FLUX.1 GGUF files (Q8_0, Q4_0,
// Q4_K) and of F16. Bit-identical to the reference in core/dtype.cpp: the same float
// operations in the same order (this file is compiled with -ffp-contract=off so that no
// multiply-add is fused behind our back).
#include "backend/cpu/dequant_avx512.h"
#include "backend/cpu/isa.h"

#include <immintrin.h>

#include <cstring>

namespace fluxpipe::cpu {
namespace {

__attribute__((target("avx512f,avx512bw,f16c"))) inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

#define FP_DQ __attribute__((target("avx512f,avx512bw,f16c")))
#define FP_DQ_BF16 __attribute__((target("avx512f,avx512bw,f16c,avx512bf16")))

// Each block type as a function from one block to its values, 16 to a vector in order
// (v[i] holds values 16i .. 16i+15); the f32 and bf16 kernels below differ only in how they
// store them. They are compiled for the smaller instruction set so that both kernels can inline
// them (a callee needing more than its caller is called, not inlined — measured: the bf16
// widening ran as a call per 16 values before).
FP_DQ inline void q8_0_block(const uint8_t* b, __m512 v[2]) {
  __m512 d = _mm512_set1_ps(half(b));
  __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
  __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18));
  v[0] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)));
  v[1] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)));
}

FP_DQ inline void q4_0_block(const uint8_t* b, __m512 v[2]) {
  const __m128i low4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m512 d = _mm512_set1_ps(half(b));
  __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
  __m128i lo = _mm_sub_epi8(_mm_and_si128(q, low4), eight);
  __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), low4), eight);
  v[0] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)));
  v[1] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)));
}

FP_DQ inline void q4_k_block(const uint8_t* b, __m512 v[16]) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  float d = half(b), dmin = half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    __m512 d1 = _mm512_set1_ps(d * sc), m1 = _mm512_set1_ps(dmin * mn);
    scale_min_k4(is + 1, scales, &sc, &mn);
    __m512 d2 = _mm512_set1_ps(d * sc), m2 = _mm512_set1_ps(dmin * mn);
    for (int h = 0; h < 2; ++h) {
      __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * h));
      __m128i lo = _mm_and_si128(x, low4), hi = _mm_and_si128(_mm_srli_epi16(x, 4), low4);
      v[j / 16 + h] = _mm512_sub_ps(_mm512_mul_ps(d1, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo))), m1);
      v[j / 16 + 2 + h] = _mm512_sub_ps(_mm512_mul_ps(d2, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi))), m2);
    }
  }
}

// Runs `block` over `blocks` blocks of `bytes` bytes and 16 * Vectors values, storing F32.
template <int Vectors, typename Block>
FP_DQ void to_f32_blocks(const uint8_t* b, float* y, int64_t blocks, int64_t bytes, Block&& block) {
  __m512 v[Vectors];
  for (int64_t i = 0; i < blocks; ++i, b += bytes, y += 16 * Vectors) {
    block(b, v);
    for (int j = 0; j < Vectors; ++j) _mm512_storeu_ps(y + 16 * j, v[j]);
  }
}

// The same, storing bf16 rounded to nearest even (as f32_row_to_bf16 rounds the F32 values).
template <int Vectors, typename Block>
FP_DQ_BF16 void to_bf16_blocks(const uint8_t* b, uint16_t* y, int64_t blocks, int64_t bytes, Block&& block) {
  static_assert(Vectors % 2 == 0);
  __m512 v[Vectors];
  for (int64_t i = 0; i < blocks; ++i, b += bytes, y += 16 * Vectors) {
    block(b, v);
    for (int j = 0; j < Vectors; j += 2) {
      _mm512_storeu_si512(y + 16 * j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v[j + 1], v[j])));
    }
  }
}

__attribute__((target("avx512f,f16c"))) void f16(const uint8_t* b, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2 * i))));
  uint16_t h;
  for (; i < n; ++i) {
    std::memcpy(&h, b + 2 * i, 2);
    y[i] = f16_to_f32(h);
  }
}

__attribute__((target("avx512f"))) void bf16(const uint8_t* b, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2 * i)));
    _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  uint16_t h;
  for (; i < n; ++i) {
    std::memcpy(&h, b + 2 * i, 2);
    y[i] = bf16_to_f32(h);
  }
}

}  // namespace

bool dequantize_avx512(DType t, const uint8_t* src, float* dst, int64_t n) {
  if (!isa_at_least(Isa::avx512)) return false;
  switch (t) {
    case DType::Q8_0: to_f32_blocks<2>(src, dst, n / 32, 34, [](const uint8_t* b, __m512* v) FP_DQ { q8_0_block(b, v); }); return true;
    case DType::Q4_0: to_f32_blocks<2>(src, dst, n / 32, 18, [](const uint8_t* b, __m512* v) FP_DQ { q4_0_block(b, v); }); return true;
    case DType::Q4_K: to_f32_blocks<16>(src, dst, n / 256, 144, [](const uint8_t* b, __m512* v) FP_DQ { q4_k_block(b, v); }); return true;
    case DType::F16: f16(src, dst, n); return true;
    case DType::BF16: bf16(src, dst, n); return true;
    default: return false;
  }
}

// ---- AVX2 (+ F16C): 8 values to a vector ---------------------------------------------------

#define FP_AVX2 __attribute__((target("avx2,f16c")))

FP_AVX2 inline float half_avx2(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 8 signed bytes -> 8 floats times d (one multiply per value, as the reference).
FP_AVX2 inline void store8(float* y, __m256 d, __m128i bytes8) {
  _mm256_storeu_ps(y, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8))));
}

FP_AVX2 void q8_0_avx2(const uint8_t* src, float* y, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, y += 32) {
    __m256 d = _mm256_set1_ps(half_avx2(src));
    __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2));
    __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 18));
    store8(y, d, lo);
    store8(y + 8, d, _mm_srli_si128(lo, 8));
    store8(y + 16, d, hi);
    store8(y + 24, d, _mm_srli_si128(hi, 8));
  }
}

FP_AVX2 void q4_0_avx2(const uint8_t* src, float* y, int64_t blocks) {
  const __m128i low4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  for (int64_t b = 0; b < blocks; ++b, src += 18, y += 32) {
    __m256 d = _mm256_set1_ps(half_avx2(src));
    __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2));
    __m128i lo = _mm_sub_epi8(_mm_and_si128(q, low4), eight);                       // values 0..15
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), low4), eight);    // values 16..31
    store8(y, d, lo);
    store8(y + 8, d, _mm_srli_si128(lo, 8));
    store8(y + 16, d, hi);
    store8(y + 24, d, _mm_srli_si128(hi, 8));
  }
}

FP_AVX2 void f16_avx2(const uint8_t* b, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * i))));
  for (; i < n; ++i) y[i] = half_avx2(b + 2 * i);
}

FP_AVX2 void bf16_avx2(const uint8_t* b, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  uint16_t h;
  for (; i < n; ++i) {
    std::memcpy(&h, b + 2 * i, 2);
    y[i] = bf16_to_f32(h);
  }
}

FP_AVX2 void round_bf16_avx2(float* x, int64_t n) {
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF), keep = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000), quiet = _mm256_set1_epi32(0x00400000);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i v = _mm256_castps_si256(_mm256_loadu_ps(x + i));
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(v, 16), one);
    __m256i rounded = _mm256_and_si256(_mm256_add_epi32(v, _mm256_add_epi32(bias, lsb)), keep);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(v, abs_mask), inf);   // |x| above infinity: NaN
    __m256i quieted = _mm256_and_si256(_mm256_or_si256(v, quiet), keep);
    _mm256_storeu_ps(x + i, _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quieted, nan)));
  }
  for (; i < n; ++i) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

FP_DQ_BF16 void f16_to_bf16(const uint8_t* b, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2 * i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
  }
  uint16_t h;
  for (; i < n; ++i) {
    std::memcpy(&h, b + 2 * i, 2);
    y[i] = f32_to_bf16(f16_to_f32(h));
  }
}

bool dequantize_avx2(DType t, const uint8_t* src, float* dst, int64_t n) {
  if (!isa_at_least(Isa::avx2)) return false;
  switch (t) {
    case DType::Q8_0: q8_0_avx2(src, dst, n / 32); return true;
    case DType::Q4_0: q4_0_avx2(src, dst, n / 32); return true;
    case DType::F16: f16_avx2(src, dst, n); return true;
    case DType::BF16: bf16_avx2(src, dst, n); return true;
    default: return false;
  }
}

bool round_to_bf16_avx2(float* x, int64_t n) {
  if (!isa_at_least(Isa::avx2)) return false;
  round_bf16_avx2(x, n);
  return true;
}

void round_to_bf16_values(float* x, int64_t n) {
  if (round_to_bf16_avx2(x, n)) return;
  for (int64_t i = 0; i < n; ++i) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

bool has_dequantize_bf16_avx512(DType t) {
  return isa_at_least(Isa::avx512bf16) && (t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_K || t == DType::F16);
}

bool dequantize_bf16_avx512(DType t, const uint8_t* src, uint16_t* dst, int64_t n) {
  if (!has_dequantize_bf16_avx512(t)) return false;
  switch (t) {
    case DType::Q8_0: to_bf16_blocks<2>(src, dst, n / 32, 34, [](const uint8_t* b, __m512* v) FP_DQ { q8_0_block(b, v); }); return true;
    case DType::Q4_0: to_bf16_blocks<2>(src, dst, n / 32, 18, [](const uint8_t* b, __m512* v) FP_DQ { q4_0_block(b, v); }); return true;
    case DType::Q4_K: to_bf16_blocks<16>(src, dst, n / 256, 144, [](const uint8_t* b, __m512* v) FP_DQ { q4_k_block(b, v); }); return true;
    case DType::F16: f16_to_bf16(src, dst, n); return true;
    default: return false;
  }
}

}  // namespace fluxpipe::cpu
