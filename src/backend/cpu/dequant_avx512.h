// Vectorised dequantization for the CPU backend (see dequant_avx512.cpp).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace fluxpipe::cpu {

// Like to_f32, for the types it covers, where the CPU has AVX-512; false otherwise
// (the caller then uses to_f32). REQUIRES n a multiple of the block size.
bool dequantize_avx512(DType t, const uint8_t* src, float* dst, int64_t n);

// The same with AVX2 + F16C (Q8_0, Q4_0, F16, BF16), for CPUs or FLUXPIPE_ISA levels without
// AVX-512; bit-identical to to_f32 too. False where AVX2 is not allowed or `t` is not covered.
bool dequantize_avx2(DType t, const uint8_t* src, float* dst, int64_t n);

// x[i] = bf16_to_f32(f32_to_bf16(x[i])) (nearest even, NaN quieted), 8 at a time with AVX2;
// false (nothing done) where AVX2 is not allowed.
bool round_to_bf16_avx2(float* x, int64_t n);
// The same rounding with AVX2 where allowed, scalar otherwise: the one place the no-bf16-instructions
// paths make bf16 values.
void round_to_bf16_values(float* x, int64_t n);

// Straight to bf16 (Q8_0, Q4_0, Q4_K, F16) where the CPU has AVX-512 BF16: the values of
// dequantize_avx512 rounded to nearest even, in one pass. False otherwise.
bool dequantize_bf16_avx512(DType t, const uint8_t* src, uint16_t* dst, int64_t n);
// Whether dequantize_bf16_avx512 covers `t` on this CPU.
bool has_dequantize_bf16_avx512(DType t);

}  // namespace fluxpipe::cpu
