// Reference conversions and GGUF block (de)quantization. The block layouts are the GGML
// formats as written into GGUF files (little-endian, fp16 scales); each function below
// states its layout.
#include "core/dtype.h"

#include <cctype>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace fluxpipe {

namespace {

constexpr int QK = 32;     // elements per block of the classic quants
constexpr int QK_K = 256;  // elements per super-block of the k-quants

const DTypeInfo kInfo[] = {
    {"F32", 1, 4, false, true},      {"F16", 1, 2, false, true},      {"BF16", 1, 2, false, true},
    {"F8_E4M3", 1, 1, false, true},  {"F8_E5M2", 1, 1, false, true},  {"F64", 1, 8, false, true},
    {"I8", 1, 1, false, false},      {"U8", 1, 1, false, false},      {"I16", 1, 2, false, false},
    {"I32", 1, 4, false, false},     {"I64", 1, 8, false, false},     {"BOOL", 1, 1, false, false},
    {"Q8_0", QK, 34, true, true},    {"Q4_0", QK, 18, true, true},    {"Q4_1", QK, 20, true, true},
    {"Q5_0", QK, 22, true, true},    {"Q5_1", QK, 24, true, true},    {"Q2_K", QK_K, 84, true, true},
    {"Q3_K", QK_K, 110, true, true}, {"Q4_K", QK_K, 144, true, true}, {"Q5_K", QK_K, 176, true, true},
    {"Q6_K", QK_K, 210, true, true},
};

uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
float load_f16(const uint8_t* p) { return f16_to_f32(load_u16(p)); }
void store_f16(uint8_t* p, float f) {
  uint16_t h = f32_to_f16(f);
  p[0] = static_cast<uint8_t>(h);
  p[1] = static_cast<uint8_t>(h >> 8);
}

// ---- classic 32-element blocks ---------------------------------------------------------
// Q8_0: f16 d | i8 q[32]                      x = d*q
// Q4_0: f16 d | u8 qs[16]                     x[j] = d*(lo(qs[j])-8), x[j+16] = d*(hi(qs[j])-8)
// Q4_1: f16 d | f16 m | u8 qs[16]             x = d*nibble + m (same nibble order)
// Q5_0: f16 d | u32 qh | u8 qs[16]            5th bit of x[j] is bit j of qh; x = d*(q-16)
// Q5_1: f16 d | f16 m | u32 qh | u8 qs[16]    x = d*q + m

void dequant_q8_0(const uint8_t* b, float* y) {
  float d = load_f16(b);
  for (int j = 0; j < QK; ++j) y[j] = d * static_cast<int8_t>(b[2 + j]);
}
void dequant_q4_0(const uint8_t* b, float* y) {
  float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * ((qs[j] & 0xF) - 8);
    y[j + 16] = d * ((qs[j] >> 4) - 8);
  }
}
void dequant_q4_1(const uint8_t* b, float* y) {
  float d = load_f16(b), m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * (qs[j] & 0xF) + m;
    y[j + 16] = d * (qs[j] >> 4) + m;
  }
}
uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
void dequant_q5(const uint8_t* b, float* y, bool has_min) {
  float d = load_f16(b);
  float m = has_min ? load_f16(b + 2) : 0.0f;
  const uint8_t* p = b + (has_min ? 4 : 2);
  uint32_t qh = load_u32(p);
  const uint8_t* qs = p + 4;
  int offset = has_min ? 0 : 16;
  for (int j = 0; j < 16; ++j) {
    int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * (lo - offset) + m;
    y[j + 16] = d * (hi - offset) + m;
  }
}

// ---- k-quants: 256-element super-blocks --------------------------------------------------
// Q2_K: u8 scales[16] (lo nibble scale, hi nibble min) | u8 qs[64] | f16 d | f16 dmin.
void dequant_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  float d = load_f16(b + 80), dmin = load_f16(b + 82);
  int is = 0;
  for (int n = 0; n < QK_K; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        uint8_t sc = scales[is++];
        float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
      }
    }
    q += 32;
  }
}

// Q3_K: u8 hmask[32] | u8 qs[64] | u8 scales[12] (16 6-bit scales) | f16 d.
void dequant_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* packed = b + 96;
  float d = load_f16(b + 108);
  int8_t scales[16];
  for (int i = 0; i < 16; ++i) {
    // Low 4 bits: nibble i%8 of bytes 0..7; high 2 bits: bits 2*(i/4)..+1 of byte 8 + i%4.
    int lo = (i < 8) ? (packed[i] & 0xF) : (packed[i - 8] >> 4);
    int hi = (packed[8 + (i % 4)] >> (2 * (i / 4))) & 3;
    scales[i] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < QK_K; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        float dl = d * scales[is++];
        for (int l = 0; l < 16; ++l) {
          int k = l + 16 * half;
          *y++ = dl * (((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4));
        }
      }
      m = static_cast<uint8_t>(m << 1);
    }
    q += 32;
  }
}

// Q4_K: f16 d | f16 dmin | u8 scales[12] | u8 qs[128].
void dequant_q4_k(const uint8_t* b, float* y) {
  float d = load_f16(b), dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, scales, &sc, &mn);
    float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
  }
}

// Q5_K: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128].
void dequant_q5_k(const uint8_t* b, float* y) {
  float d = load_f16(b), dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, ql += 32) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, scales, &sc, &mn);
    float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

// Q6_K: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d.
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  float d = load_f16(b + 208);
  for (int n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      int is = l / 16;
      int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
  }
}

// ---- quantizers (round to nearest; simple, not the error-minimising search of ggml) ----
void quant_q8_0(const float* x, uint8_t* b) {
  float amax = 0;
  for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
  float d = amax / 127.0f;
  store_f16(b, d);
  float id = d ? 1.0f / d : 0.0f;
  for (int j = 0; j < QK; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::lrintf(x[j] * id)));
}
// The classic blocks' quant layout after the scales: for 5 bits a u32 of fifth bits (bit j =
// element j), then 16 bytes of nibbles (element j low, element j + 16 high).
void store_quants(const uint8_t* q, uint8_t* qs, int bits) {
  if (bits == 5) {
    uint32_t qh = 0;
    for (int j = 0; j < QK; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    for (int i = 0; i < 4; ++i) qs[i] = static_cast<uint8_t>(qh >> (8 * i));
    qs += 4;
  }
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
}

// Symmetric 4/5-bit: d = signed max / -(2^(bits-1)), as the format's zero point allows.
void quant_sym(const float* x, uint8_t* b, int bits) {
  float amax = 0, vmax = 0;
  for (int j = 0; j < QK; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      vmax = x[j];
    }
  }
  int half = 1 << (bits - 1), top = (1 << bits) - 1;
  float d = vmax / -static_cast<float>(half);
  float id = d ? 1.0f / d : 0.0f;
  store_f16(b, d);
  uint8_t q[QK];
  for (int j = 0; j < QK; ++j) q[j] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lrintf(x[j] * id)) + half, 0, top));
  store_quants(q, b + 2, bits);
}
void quant_affine(const float* x, uint8_t* b, int bits) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < QK; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  int top = (1 << bits) - 1;
  float d = (hi - lo) / static_cast<float>(top);
  float id = d ? 1.0f / d : 0.0f;
  store_f16(b, d);
  store_f16(b + 2, lo);
  uint8_t q[QK];
  for (int j = 0; j < QK; ++j) q[j] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lrintf((x[j] - lo) * id)), 0, top));
  store_quants(q, b + 4, bits);
}

// Q4_K: each 32-element sub-block gets an affine (scale, min) with min >= 0 subtracted;
// the 8 scales and 8 mins are 6-bit multiples of the super-block's d and dmin.
void quant_q4_k(const float* x, uint8_t* b) {
  float scales[8], mins[8];
  for (int s = 0; s < 8; ++s) {
    float lo = 0, hi = 0;   // include 0 so that min <= 0 and -min >= 0
    for (int l = 0; l < 32; ++l) {
      lo = std::min(lo, x[32 * s + l]);
      hi = std::max(hi, x[32 * s + l]);
    }
    scales[s] = (hi - lo) / 15.0f;
    mins[s] = -lo;
  }
  float max_scale = *std::max_element(scales, scales + 8), max_min = *std::max_element(mins, mins + 8);
  float d = max_scale / 63.0f, dmin = max_min / 63.0f;
  store_f16(b, d);
  store_f16(b + 2, dmin);
  d = load_f16(b);   // quantize against the stored (rounded) values
  dmin = load_f16(b + 2);
  uint8_t ls[8], lm[8];
  for (int s = 0; s < 8; ++s) {
    ls[s] = static_cast<uint8_t>(std::clamp(d ? static_cast<int>(std::lrintf(scales[s] / d)) : 0, 0, 63));
    lm[s] = static_cast<uint8_t>(std::clamp(dmin ? static_cast<int>(std::lrintf(mins[s] / dmin)) : 0, 0, 63));
  }
  uint8_t* sc = b + 4;
  for (int j = 0; j < 4; ++j) {
    sc[j] = static_cast<uint8_t>((ls[j] & 63) | ((ls[j + 4] >> 4) << 6));
    sc[j + 4] = static_cast<uint8_t>((lm[j] & 63) | ((lm[j + 4] >> 4) << 6));
    sc[j + 8] = static_cast<uint8_t>((ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4));
  }
  uint8_t q[QK_K];
  for (int s = 0; s < 8; ++s) {
    float ds = d * ls[s], dm = dmin * lm[s];
    float id = ds ? 1.0f / ds : 0.0f;
    for (int l = 0; l < 32; ++l) {
      q[32 * s + l] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lrintf((x[32 * s + l] + dm) * id)), 0, 15));
    }
  }
  uint8_t* qs = b + 16;
  for (int j = 0; j < QK_K; j += 64) {
    for (int l = 0; l < 32; ++l) qs[l] = static_cast<uint8_t>(q[j + l] | (q[j + 32 + l] << 4));
    qs += 32;
  }
}

// Q6_K: 16 sub-blocks of 16 with int8 scales (multiples of d); 6-bit values offset by 32.
void quant_q6_k(const float* x, uint8_t* b) {
  float sub[16];
  for (int s = 0; s < 16; ++s) {
    float amax = 0, vmax = 0;
    for (int l = 0; l < 16; ++l) {
      if (std::fabs(x[16 * s + l]) > amax) {
        amax = std::fabs(x[16 * s + l]);
        vmax = x[16 * s + l];
      }
    }
    sub[s] = vmax / -32.0f;
  }
  float amax = 0, vmax = 0;
  for (float v : sub) {
    if (std::fabs(v) > amax) {
      amax = std::fabs(v);
      vmax = v;
    }
  }
  float d = vmax / -128.0f;
  store_f16(b + 208, d);
  d = load_f16(b + 208);
  int8_t* sc = reinterpret_cast<int8_t*>(b + 192);
  uint8_t q[QK_K];
  for (int s = 0; s < 16; ++s) {
    sc[s] = static_cast<int8_t>(std::clamp(d ? static_cast<int>(std::lrintf(sub[s] / d)) : 0, -128, 127));
    float ds = d * sc[s];
    float id = ds ? 1.0f / ds : 0.0f;
    for (int l = 0; l < 16; ++l) {
      q[16 * s + l] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lrintf(x[16 * s + l] * id)) + 32, 0, 63));
    }
  }
  uint8_t* ql = b;
  uint8_t* qh = b + 128;
  for (int n = 0; n < QK_K; n += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      uint8_t q1 = q[n + l], q2 = q[n + l + 32], q3 = q[n + l + 64], q4 = q[n + l + 96];
      ql[l] = static_cast<uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((q2 & 0xF) | ((q4 & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

struct Fp8Tables {
  float e4m3[256], e5m2[256];
  Fp8Tables() {
    for (int v = 0; v < 256; ++v) {
      float sign = (v & 0x80) ? -1.0f : 1.0f;
      int e = (v >> 3) & 0xF, m = v & 7;
      // E4M3 "fn": no infinities; S.1111.111 is NaN.
      if (e == 15 && m == 7) e4m3[v] = NAN;
      else if (e == 0) e4m3[v] = sign * std::ldexp(static_cast<float>(m) / 8.0f, -6);
      else e4m3[v] = sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
      int e5 = (v >> 2) & 0x1F, m5 = v & 3;
      if (e5 == 31) e5m2[v] = m5 ? NAN : sign * INFINITY;
      else if (e5 == 0) e5m2[v] = sign * std::ldexp(static_cast<float>(m5) / 4.0f, -14);
      else e5m2[v] = sign * std::ldexp(1.0f + static_cast<float>(m5) / 4.0f, e5 - 15);
    }
  }
};
const Fp8Tables& fp8() {
  static const Fp8Tables t;
  return t;
}

// Nearest representable value by search over the 128 non-negative codes (ties to even code).
uint8_t nearest_fp8(float f, const float* table, float max_finite) {
  if (std::isnan(f)) return 0x7F;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::min(std::fabs(f), max_finite);
  int best = 0;
  float best_err = INFINITY;
  for (int c = 0; c < 128; ++c) {
    float v = table[c];
    if (!std::isfinite(v)) continue;
    float err = std::fabs(v - a);
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(sign | best);
}

}  // namespace

const DTypeInfo& info(DType t) { return kInfo[static_cast<int>(t)]; }

std::optional<DType> dtype_from_safetensors(std::string_view n) {
  static const std::pair<const char*, DType> names[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F8_E4M3", DType::F8_E4M3},
      {"F8_E5M2", DType::F8_E5M2}, {"F64", DType::F64}, {"I8", DType::I8}, {"U8", DType::U8},
      {"I16", DType::I16}, {"I32", DType::I32}, {"I64", DType::I64}, {"BOOL", DType::BOOL}};
  for (auto& [s, t] : names) {
    if (n == s) return t;
  }
  return std::nullopt;
}

const char* safetensors_name(DType t) { return is_quantized(t) ? nullptr : info(t).name; }

namespace {
const std::pair<uint32_t, DType> kGgml[] = {
    {0, DType::F32},   {1, DType::F16},   {2, DType::Q4_0},  {3, DType::Q4_1},  {6, DType::Q5_0},
    {7, DType::Q5_1},  {8, DType::Q8_0},  {10, DType::Q2_K}, {11, DType::Q3_K}, {12, DType::Q4_K},
    {13, DType::Q5_K}, {14, DType::Q6_K}, {24, DType::I8},   {25, DType::I16},  {26, DType::I32},
    {27, DType::I64},  {28, DType::F64},  {30, DType::BF16}};
}

std::optional<DType> dtype_from_ggml(uint32_t id) {
  for (auto& [g, t] : kGgml) {
    if (g == id) return t;
  }
  return std::nullopt;
}

std::optional<uint32_t> ggml_type_id(DType t) {
  for (auto& [g, d] : kGgml) {
    if (d == t) return g;
  }
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  int exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {   // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | (static_cast<uint32_t>(exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00 | (ax > 0x7F800000u ? 0x200 : 0));
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00);   // rounds to inf
  if (ax < 0x38800000u) {                                               // subnormal or zero in f16
    float a;
    std::memcpy(&a, &ax, 4);
    // Scale so that the f16 subnormal step (2^-24) becomes 1, then round to nearest even.
    float scaled = a * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  uint32_t exp = ((ax >> 23) - 127 + 15);
  uint32_t mant = ax & 0x7FFFFF;
  uint32_t half = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;   // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | half);
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40);   // quiet NaN
  x += 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

float f8_e4m3_to_f32(uint8_t v) { return fp8().e4m3[v]; }
float f8_e5m2_to_f32(uint8_t v) { return fp8().e5m2[v]; }
uint8_t f32_to_f8_e4m3(float f) { return nearest_fp8(f, fp8().e4m3, 448.0f); }
uint8_t f32_to_f8_e5m2(float f) {
  if (std::isinf(f)) return std::signbit(f) ? 0xFC : 0x7C;
  return nearest_fp8(f, fp8().e5m2, 57344.0f);
}

void to_f32(DType t, const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  auto blocks = [&](auto fn, int bytes, int elems) {
    for (int64_t i = 0; i < n / elems; ++i) fn(p + i * bytes, dst + i * elems);
  };
  switch (t) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16: for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(p + 2 * i)); return;
    case DType::BF16: for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(p + 2 * i)); return;
    case DType::F8_E4M3: for (int64_t i = 0; i < n; ++i) dst[i] = f8_e4m3_to_f32(p[i]); return;
    case DType::F8_E5M2: for (int64_t i = 0; i < n; ++i) dst[i] = f8_e5m2_to_f32(p[i]); return;
    case DType::F64: for (int64_t i = 0; i < n; ++i) { double d; std::memcpy(&d, p + 8 * i, 8); dst[i] = static_cast<float>(d); } return;
    case DType::I8: for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<int8_t>(p[i]); return;
    case DType::U8: case DType::BOOL: for (int64_t i = 0; i < n; ++i) dst[i] = p[i]; return;
    case DType::I16: for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<int16_t>(load_u16(p + 2 * i)); return;
    case DType::I32: for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<int32_t>(load_u32(p + 4 * i))); return;
    case DType::I64: for (int64_t i = 0; i < n; ++i) { int64_t v; std::memcpy(&v, p + 8 * i, 8); dst[i] = static_cast<float>(v); } return;
    case DType::Q8_0: blocks(dequant_q8_0, 34, QK); return;
    case DType::Q4_0: blocks(dequant_q4_0, 18, QK); return;
    case DType::Q4_1: blocks(dequant_q4_1, 20, QK); return;
    case DType::Q5_0: blocks([](const uint8_t* b, float* y) { dequant_q5(b, y, false); }, 22, QK); return;
    case DType::Q5_1: blocks([](const uint8_t* b, float* y) { dequant_q5(b, y, true); }, 24, QK); return;
    case DType::Q2_K: blocks(dequant_q2_k, 84, QK_K); return;
    case DType::Q3_K: blocks(dequant_q3_k, 110, QK_K); return;
    case DType::Q4_K: blocks(dequant_q4_k, 144, QK_K); return;
    case DType::Q5_K: blocks(dequant_q5_k, 176, QK_K); return;
    case DType::Q6_K: blocks(dequant_q6_k, 210, QK_K); return;
  }
}

bool can_encode(DType t) {
  switch (t) {
    case DType::F32: case DType::F16: case DType::BF16: case DType::F8_E4M3: case DType::F8_E5M2:
    case DType::Q8_0: case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1:
    case DType::Q4_K: case DType::Q6_K:
      return true;
    default:
      return false;
  }
}

void from_f32(DType t, const float* src, void* dst, int64_t n) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  auto blocks = [&](auto fn, int bytes, int elems) {
    for (int64_t i = 0; i < n / elems; ++i) fn(src + i * elems, p + i * bytes);
  };
  switch (t) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16: for (int64_t i = 0; i < n; ++i) { uint16_t h = f32_to_f16(src[i]); std::memcpy(p + 2 * i, &h, 2); } return;
    case DType::BF16: for (int64_t i = 0; i < n; ++i) { uint16_t h = f32_to_bf16(src[i]); std::memcpy(p + 2 * i, &h, 2); } return;
    case DType::F8_E4M3: for (int64_t i = 0; i < n; ++i) p[i] = f32_to_f8_e4m3(src[i]); return;
    case DType::F8_E5M2: for (int64_t i = 0; i < n; ++i) p[i] = f32_to_f8_e5m2(src[i]); return;
    case DType::Q8_0: blocks(quant_q8_0, 34, QK); return;
    case DType::Q4_0: blocks([](const float* x, uint8_t* b) { quant_sym(x, b, 4); }, 18, QK); return;
    case DType::Q5_0: blocks([](const float* x, uint8_t* b) { quant_sym(x, b, 5); }, 22, QK); return;
    case DType::Q4_1: blocks([](const float* x, uint8_t* b) { quant_affine(x, b, 4); }, 20, QK); return;
    case DType::Q5_1: blocks([](const float* x, uint8_t* b) { quant_affine(x, b, 5); }, 24, QK); return;
    case DType::Q4_K: blocks(quant_q4_k, 144, QK_K); return;
    case DType::Q6_K: blocks(quant_q6_k, 210, QK_K); return;
    default: throw UserError(std::string("[from_f32] cannot encode to ") + name(t));
  }
}

std::optional<DType> quant_type_from_name(std::string_view type) {
  for (DType d : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q6_K}) {
    std::string n = name(d), lower;
    for (char ch : n) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (type == n || type == lower) return d;
  }
  return std::nullopt;
}

}  // namespace fluxpipe
