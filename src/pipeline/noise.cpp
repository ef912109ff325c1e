#include "pipeline/noise.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace fluxpipe {
namespace {

constexpr double kPi = 3.14159265358979323846;

// The standard 32-bit Mersenne Twister, seeded as PyTorch seeds it.
class Mt19937 {
 public:
  explicit Mt19937(uint64_t seed) {
    state_[0] = static_cast<uint32_t>(seed & 0xffffffffu);
    for (int j = 1; j < 624; ++j) state_[j] = 1812433253u * (state_[j - 1] ^ (state_[j - 1] >> 30)) + static_cast<uint32_t>(j);
  }
  uint32_t next() {
    if (index_ >= 624) twist();
    uint32_t y = state_[index_++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
  }
  uint64_t next64() {
    uint32_t hi = next();
    uint32_t lo = next();
    return (static_cast<uint64_t>(hi) << 32) | lo;
  }

 private:
  void twist() {
    for (int i = 0; i < 624; ++i) {
      uint32_t y = (state_[i] & 0x80000000u) | (state_[(i + 1) % 624] & 0x7fffffffu);
      state_[i] = state_[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1) ? 0x9908b0dfu : 0u);
    }
    index_ = 0;
  }
  uint32_t state_[624];
  int index_ = 624;
};

// Uniform in [0, 1) from the low `digits` bits, as PyTorch's uniform_real_distribution does.
float uniform_float(Mt19937& g) { return static_cast<float>((g.next() & ((1u << 24) - 1)) * (1.0 / (1u << 24))); }
double uniform_double(Mt19937& g) {
  return static_cast<double>(g.next64() & ((uint64_t{1} << 53) - 1)) * (1.0 / static_cast<double>(uint64_t{1} << 53));
}

// bf16 draws keep only 8 random bits per uniform (bfloat16's mantissa), exactly representable.
float uniform_bf16(Mt19937& g) { return static_cast<float>((g.next() & 0xFFu) * (1.0 / 256)); }

// Rounds to bfloat16 (kept as float): every step of the bf16 draw is computed in float and
// rounded back, as arithmetic on PyTorch's BFloat16 type does.
float bf(float f) { return bf16_to_f32(f32_to_bf16(f)); }
float same(float f) { return f; }

// Box-Muller over 16 uniforms in place: the first 8 become r*cos, the last 8 r*sin.
// `round` is the rounding after each operation (none for float32, bf16 for bfloat16).
template <float (*round)(float)>
void normal_fill_16(float* data) {
  const float two_pi = static_cast<float>(2.0 * kPi);
  for (int j = 0; j < 8; ++j) {
    float u1 = round(1.0f - data[j]);
    float u2 = data[j + 8];
    float radius = round(std::sqrt(round(-2.0f * round(std::log(u1)))));
    float theta = round(two_pi * u2);
    data[j] = round(radius * round(std::cos(theta)));
    data[j + 8] = round(radius * round(std::sin(theta)));
  }
}

template <float (*uniform)(Mt19937&), float (*round)(float)>
std::vector<float> fill_vectorised(Mt19937& g, int64_t n) {
  std::vector<float> data(static_cast<size_t>(n));
  for (float& v : data) v = uniform(g);
  for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16<round>(data.data() + i);
  if (n % 16 != 0) {   // the reference redraws the last 16 values
    float* tail = data.data() + n - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform(g);
    normal_fill_16<round>(tail);
  }
  return data;
}

// Double-precision normals one at a time, each Box-Muller pair's second value cached.
std::vector<double> fill_serial(Mt19937& g, int64_t n) {
  std::vector<double> out;
  bool have_cached = false;
  double cached = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (have_cached) {
      out.push_back(cached);
      have_cached = false;
      continue;
    }
    double u1 = uniform_double(g);
    double u2 = uniform_double(g);
    double r = std::sqrt(-2.0 * std::log1p(-u2));
    double theta = 2.0 * kPi * u1;
    cached = r * std::sin(theta);
    have_cached = true;
    out.push_back(r * std::cos(theta));
  }
  return out;
}

}  // namespace

Tensor torch_randn(uint64_t seed, const Shape& shape, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16) throw UserError(std::string("[randn] unsupported dtype ") + name(dtype));
  int64_t n = numel(shape);
  Mt19937 g(seed);
  Tensor out = Tensor::zeros(shape, dtype);
  if (n >= 16) {
    if (dtype == DType::F32) {
      std::vector<float> v = fill_vectorised<uniform_float, same>(g, n);
      std::memcpy(out.data<float>(), v.data(), v.size() * 4);
    } else {
      std::vector<float> v = fill_vectorised<uniform_bf16, bf>(g, n);
      for (int64_t i = 0; i < n; ++i) out.data<uint16_t>()[i] = f32_to_bf16(v[static_cast<size_t>(i)]);
    }
    return out;
  }
  std::vector<double> v = fill_serial(g, n);
  for (int64_t i = 0; i < n; ++i) {
    float f = static_cast<float>(v[static_cast<size_t>(i)]);
    if (dtype == DType::F32) out.data<float>()[i] = f;
    else out.data<uint16_t>()[i] = f32_to_bf16(f);
  }
  return out;
}

}  // namespace fluxpipe
