#include "backend/cpu/activations.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/isa.h"
#include "backend/cpu/vec_math.h"

namespace fluxpipe::cpu {
namespace {

#define FP_AVX512 __attribute__((target("avx512f,avx512dq")))

// x * sigmoid(k x) = x / (1 + e^(-k x)).
FP_AVX512 inline __m512 x_sigmoid(__m512 x, float k) {
  __m512 e = exp512(_mm512_mul_ps(x, _mm512_set1_ps(-k)));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// 0.5 x (1 + tanh(u)) = x * sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3): the same
// function without tanh's cancellation near zero.
FP_AVX512 inline __m512 gelu_tanh512(__m512 x) {
  const __m512 c = _mm512_set1_ps(0.7978845608028654f), a = _mm512_set1_ps(0.044715f);
  __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  __m512 u = _mm512_mul_ps(c, _mm512_fmadd_ps(a, x3, x));
  __m512 e = exp512(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f)));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

template <Unary op>
FP_AVX512 inline __m512 act(__m512 v) {
  if constexpr (op == Unary::gelu_tanh) return gelu_tanh512(v);
  if constexpr (op == Unary::silu) return x_sigmoid(v, 1.0f);
  return x_sigmoid(v, 1.702f);   // quick_gelu
}

template <Unary op>
FP_AVX512 void apply(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, act<op>(_mm512_loadu_ps(x + i)));
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, m, act<op>(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

FP_AVX512 void run(Unary op, const float* x, float* out, int64_t n) {
  switch (op) {
    case Unary::gelu_tanh: apply<Unary::gelu_tanh>(x, out, n); return;
    case Unary::silu: apply<Unary::silu>(x, out, n); return;
    case Unary::quick_gelu: apply<Unary::quick_gelu>(x, out, n); return;
    case Unary::gelu_erf: return;
  }
}

FP_AVX512 float max_of(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
  float r = _mm512_reduce_max_ps(m);
  for (; i < n; ++i) r = std::max(r, x[i]);
  return r;
}

FP_AVX512 void scale_by(float* x, int64_t n, float k) {
  const __m512 kv = _mm512_set1_ps(k);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), kv));
  for (; i < n; ++i) x[i] *= k;
}

FP_AVX512 double exp_shifted(float* x, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    _mm512_storeu_ps(x + i, e);
    acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  double sum = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
  for (; i < n; ++i) sum += (x[i] = std::exp(x[i] - shift));
  return sum;
}

FP_AVX512 inline __m512d lo_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
FP_AVX512 inline __m512d hi_pd(__m512 v) { return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))); }

FP_AVX512 double sum_of(const float* x, int64_t n) {
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    a0 = _mm512_add_pd(a0, lo_pd(v));
    a1 = _mm512_add_pd(a1, hi_pd(v));
  }
  double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  for (; i < n; ++i) s += x[i];
  return s;
}

FP_AVX512 double squared_deviation(const float* x, int64_t n, double mean) {
  const __m512d m = _mm512_set1_pd(mean);
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    __m512d d0 = _mm512_sub_pd(lo_pd(v), m), d1 = _mm512_sub_pd(hi_pd(v), m);
    a0 = _mm512_fmadd_pd(d0, d0, a0);
    a1 = _mm512_fmadd_pd(d1, d1, a1);
  }
  double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

template <bool silu>
FP_AVX512 inline __m512 normalized(__m512 v, __m512 mean, __m512 scale, __m512 shift) {
  __m512 y = _mm512_fmadd_ps(_mm512_sub_ps(v, mean), scale, shift);
  if constexpr (silu) y = x_sigmoid(y, 1.0f);
  return y;
}

template <bool silu>
FP_AVX512 void normalize(const float* x, float* out, int64_t n, float mean, float scale, float shift) {
  const __m512 m = _mm512_set1_ps(mean), sc = _mm512_set1_ps(scale), sh = _mm512_set1_ps(shift);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, normalized<silu>(_mm512_loadu_ps(x + i), m, sc, sh));
  if (i < n) {
    __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, k, normalized<silu>(_mm512_maskz_loadu_ps(k, x + i), m, sc, sh));
  }
}

// Sixteen channels at a time down the pixels; the running sums stay in `sums` (C doubles, in L1).
template <bool squares>
FP_AVX512 void channel_sums(const float* x, int64_t pixels, int64_t C, const double* mean, double* sums) {
  for (int64_t c = 0; c < C; ++c) sums[c] = 0.0;
  for (int64_t p = 0; p < pixels; ++p) {
    const float* row = x + p * C;
    for (int64_t c = 0; c < C; c += 16) {
      __m512 v = _mm512_loadu_ps(row + c);
      __m512d lo = lo_pd(v), hi = hi_pd(v);
      __m512d s0 = _mm512_loadu_pd(sums + c), s1 = _mm512_loadu_pd(sums + c + 8);
      if constexpr (squares) {
        lo = _mm512_sub_pd(lo, _mm512_loadu_pd(mean + c));
        hi = _mm512_sub_pd(hi, _mm512_loadu_pd(mean + c + 8));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
      } else {
        s0 = _mm512_add_pd(s0, lo);
        s1 = _mm512_add_pd(s1, hi);
      }
      _mm512_storeu_pd(sums + c, s0);
      _mm512_storeu_pd(sums + c + 8, s1);
    }
  }
}

template <bool silu>
FP_AVX512 void normalize_channels(const float* x, float* out, int64_t pixels, int64_t C, const float* mean, const float* scale,
                                  const float* shift) {
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t c = 0; c < C; c += 16) {
      __m512 v = _mm512_loadu_ps(x + p * C + c);
      _mm512_storeu_ps(out + p * C + c,
                       normalized<silu>(v, _mm512_loadu_ps(mean + c), _mm512_loadu_ps(scale + c), _mm512_loadu_ps(shift + c)));
    }
  }
}

bool have_avx512() { return isa_at_least(Isa::avx512); }

}  // namespace

bool channel_sums_avx512(const float* x, int64_t pixels, int64_t C, const double* mean, double* sums) {
  if (!have_avx512() || C % 16 != 0) return false;
  if (mean) {
    channel_sums<true>(x, pixels, C, mean, sums);
  } else {
    channel_sums<false>(x, pixels, C, nullptr, sums);
  }
  return true;
}

bool normalize_channels_avx512(const float* x, float* out, int64_t pixels, int64_t C, const float* mean, const float* scale,
                               const float* shift, bool silu) {
  if (!have_avx512() || C % 16 != 0) return false;
  if (silu) {
    normalize_channels<true>(x, out, pixels, C, mean, scale, shift);
  } else {
    normalize_channels<false>(x, out, pixels, C, mean, scale, shift);
  }
  return true;
}

bool sum_avx512(const float* x, int64_t n, double* sum) {
  if (!have_avx512()) return false;
  *sum = sum_of(x, n);
  return true;
}

bool squared_deviation_avx512(const float* x, int64_t n, double mean, double* squares) {
  if (!have_avx512()) return false;
  *squares = squared_deviation(x, n, mean);
  return true;
}

bool normalize_avx512(const float* x, float* out, int64_t n, float mean, float scale, float shift, bool silu) {
  if (!have_avx512()) return false;
  if (silu) {
    normalize<true>(x, out, n, mean, scale, shift);
  } else {
    normalize<false>(x, out, n, mean, scale, shift);
  }
  return true;
}

bool softmax_avx512(float* x, int64_t n) {
  if (!have_avx512()) return false;
  float mx = max_of(x, n);
  if (mx == -INFINITY) {   // fully masked row: no attention
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
    return true;
  }
  double sum = exp_shifted(x, n, mx);
  scale_by(x, n, static_cast<float>(1.0 / sum));
  return true;
}

bool exp_shifted_avx512(float* x, int64_t n, float shift, double* sum) {
  if (!have_avx512()) return false;
  *sum = exp_shifted(x, n, shift);
  return true;
}

bool activation_avx512(Unary op, const float* x, float* out, int64_t n) {
  if (!have_avx512() || op == Unary::gelu_erf) return false;
  run(op, x, out, n);
  return true;
}

// ---- AVX2 + FMA ------------------------------------------------------------------------------

namespace {

#define FP_AVX2 __attribute__((target("avx2,fma")))

// e^x as exp512: x = n ln2 + r, the degree-6 Taylor polynomial of e^r, times 2^n — built from the
// exponent bits (AVX2 has no scalef), with x clamped so that 2^n stays a normal number.
FP_AVX2 inline __m256 exp256(__m256 x) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
  r = _mm256_fnmadd_ps(n, ln2_lo, r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

FP_AVX2 inline __m256 x_sigmoid256(__m256 x, float k) {
  __m256 e = exp256(_mm256_mul_ps(x, _mm256_set1_ps(-k)));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

FP_AVX2 inline __m256 gelu_tanh256(__m256 x) {
  const __m256 c = _mm256_set1_ps(0.7978845608028654f), a = _mm256_set1_ps(0.044715f);
  __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
  __m256 u = _mm256_mul_ps(c, _mm256_fmadd_ps(a, x3, x));
  __m256 e = exp256(_mm256_mul_ps(u, _mm256_set1_ps(-2.0f)));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

template <Unary op>
FP_AVX2 inline __m256 act256(__m256 v) {
  if constexpr (op == Unary::gelu_tanh) return gelu_tanh256(v);
  if constexpr (op == Unary::silu) return x_sigmoid256(v, 1.0f);
  return x_sigmoid256(v, 1.702f);   // quick_gelu
}

template <Unary op>
FP_AVX2 void apply256(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, act256<op>(_mm256_loadu_ps(x + i)));
  if (i < n) {   // the tail through a zero-padded buffer
    alignas(32) float in[8] = {}, res[8];
    for (int64_t j = i; j < n; ++j) in[j - i] = x[j];
    _mm256_store_ps(res, act256<op>(_mm256_load_ps(in)));
    for (int64_t j = i; j < n; ++j) out[j] = res[j - i];
  }
}

FP_AVX2 float max256(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float mx = lanes[0];
  for (int j = 1; j < 8; ++j) mx = std::max(mx, lanes[j]);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  return mx;
}

// x[i] = e^(x[i] - shift) in place; returns their sum, in double over 8 lanes (two 4-lane halves).
FP_AVX2 double exp_shifted256(float* x, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
    _mm256_storeu_ps(x + i, e);
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double l[4], h[4];
  _mm256_store_pd(l, lo);
  _mm256_store_pd(h, hi);
  double sum = (l[0] + l[1]) + (l[2] + l[3]) + (h[0] + h[1]) + (h[2] + h[3]);
  if (i < n) {   // the tail through a padded buffer, so every element gets the same exponential
    alignas(32) float in[8], res[8];
    for (int j = 0; j < 8; ++j) in[j] = i + j < n ? x[i + j] : shift;
    _mm256_store_ps(res, exp256(_mm256_sub_ps(_mm256_load_ps(in), sh)));
    for (int64_t j = i; j < n; ++j) sum += (x[j] = res[j - i]);
  }
  return sum;
}

FP_AVX2 void scale256(float* x, int64_t n, float k) {
  const __m256 kv = _mm256_set1_ps(k);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), kv));
  for (; i < n; ++i) x[i] *= k;
}

}  // namespace

bool softmax_avx2(float* x, int64_t n) {
  if (!isa_at_least(Isa::avx2)) return false;
  float mx = max256(x, n);
  if (mx == -INFINITY) {   // fully masked row: no attention
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
    return true;
  }
  double sum = exp_shifted256(x, n, mx);
  scale256(x, n, static_cast<float>(1.0 / sum));
  return true;
}

bool activation_avx2(Unary op, const float* x, float* out, int64_t n) {
  if (!isa_at_least(Isa::avx2)) return false;
  switch (op) {
    case Unary::gelu_tanh: apply256<Unary::gelu_tanh>(x, out, n); return true;
    case Unary::silu: apply256<Unary::silu>(x, out, n); return true;
    case Unary::quick_gelu: apply256<Unary::quick_gelu>(x, out, n); return true;
    case Unary::gelu_erf: return false;
  }
  return false;
}

}  // namespace fluxpipe::cpu
