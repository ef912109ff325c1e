// Vector math shared by the CPU kernels (AVX-512, inline): the exponential, base e and base 2.
#pragma once

#include <immintrin.h>

namespace fluxpipe::cpu {

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

// 2^t (0 below t = -150): t = n + r, |r| <= 1/2; 2^r by a degree-5 polynomial fitted for
// relative error (7.5e-8 on [-1/2, 1/2], as good as degree-6 Taylor with one multiply-add less),
// scaled by 2^n with scalef. Cheaper than exp512 where the caller can fold log2(e) into a
// multiply it does anyway; no upper clamp, so REQUIRES t < 128.
__attribute__((target("avx512f,avx512dq"))) inline __m512 exp2_512(__m512 t) {
  t = _mm512_max_ps(t, _mm512_set1_ps(-150.0f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(t, n);   // exact
  __m512 p = _mm512_set1_ps(1.327642136431831e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.67554293962259e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.550713418324483e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022119703448508e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.931469669896437e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0000000716561726f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace fluxpipe::cpu
