// Vector math shared by the CPU kernels (AVX-512, inline): lane masks and the exponential, base e
// and base 2.
#pragma once

#include <immintrin.h>

namespace fluxpipe::cpu {

// The first `valid` of 16 lanes (valid may be <= 0 or >= 16).
inline __mmask16 lane_mask(int64_t valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << valid) - 1);
}

// e^x: x = n ln2 + r, |r| <= ln2/2; e^r by its Taylor polynomial to degree 6 (error ~1e-7
// relative), scaled by 2^n with scalef (which also handles overflow and underflow).
__attribute__((target("avx512f,avx512dq"))) inline __m512 exp512(__m512 x) {
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-103.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
  r = _mm512_fnmadd_ps(n, ln2_lo, r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 2^t for finite t < 128: t = floor(t) + f with f in [0, 1) taken in one instruction (vreduceps,
// rounding down); 2^f by a degree-5 polynomial fitted for relative error (7.5e-8 on [0, 1),
// 1.6e-7 evaluated in F32); scaled by 2^floor(t) with scalef, which takes the floor itself and
// gives 0 far below. Cheaper than exp512 where the caller can fold log2(e) into a multiply it
// does anyway: ten instructions, no clamps.
__attribute__((target("avx512f,avx512dq"))) inline __m512 exp2_512(__m512 t) {
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(1.8775717780178836e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.989358924755128e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.582629448652238e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4015362912806515e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931530707744913e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.99999925197803e-1f));
  return _mm512_scalef_ps(p, t);
}

}  // namespace fluxpipe::cpu
