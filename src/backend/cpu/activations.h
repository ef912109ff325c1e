// Vectorised activations for the CPU backend: GELU (tanh), SiLU and quick-GELU over float
// arrays, with AVX-512 where present (exp by range reduction and a degree-6 polynomial,
// within 2 ulp of expf) and scalar libm otherwise. Tested against the reference.
#pragma once

#include <cstdint>

#include "backend/backend.h"

namespace fluxpipe::cpu {

// out[i] = op(x[i]) for i < n. Returns false when the op has no vector version here.
bool activation_avx512(Unary op, const float* x, float* out, int64_t n);

// The same with AVX2 + FMA (8 lanes; the exponential as in the AVX-512 version, 2^n built from
// the exponent bits), for CPUs or FLUXPIPE_ISA levels without AVX-512. False otherwise.
bool activation_avx2(Unary op, const float* x, float* out, int64_t n);

// Softmax of a row in place (a row of -inf becomes zeros). False without AVX-512.
bool softmax_avx512(float* x, int64_t n);
// The same with AVX2 + FMA (sum in double over 8 lanes). False without AVX2.
bool softmax_avx2(float* x, int64_t n);

// x[i] = exp(x[i] - shift) in place, *sum = their sum (in double, over 16 float lanes).
// False (nothing done) without AVX-512.
bool exp_shifted_avx512(float* x, int64_t n, float shift, double* sum);

// Group-norm helpers, false (nothing done) without AVX-512. Sums are in double over 16 float
// lanes widened, in a fixed order (deterministic).
// *sum = sum of x[i]; *squares = sum of (x[i] - mean)^2.
bool sum_avx512(const float* x, int64_t n, double* sum);
bool squared_deviation_avx512(const float* x, int64_t n, double mean, double* squares);
// out[i] = y or silu(y) with y = (x[i] - mean) * scale + shift.
bool normalize_avx512(const float* x, float* out, int64_t n, float mean, float scale, float shift, bool silu);

// The same for channels-last rows, x [pixels, C] with C a multiple of 16 (false otherwise, or
// without AVX-512): sums[c] = sum over pixels of x[p, c] (mean null) or of (x[p, c] - mean[c])^2,
// per channel in double, pixels in order.
bool channel_sums_avx512(const float* x, int64_t pixels, int64_t C, const double* mean, double* sums);
// out[p, c] = y or silu(y) with y = (x[p, c] - mean[c]) * scale[c] + shift[c].
bool normalize_channels_avx512(const float* x, float* out, int64_t pixels, int64_t C, const float* mean, const float* scale,
                               const float* shift, bool silu);

}  // namespace fluxpipe::cpu
