// CPU GEMM with Q8_0 / Q4_0 weights in integer arithmetic, for CPUs without bf16 dot products
// (AVX2 desktops and laptops, or any CPU under FLUXPIPE_ISA=avx2 / avx512). With AVX-VNNI (Intel
// since Alder Lake, AMD since Zen 5) vpdpbusd; on plain AVX2 vpmaddubsw — for Q4_0 with the
// pairs summed in int16 (they cannot overflow for 4-bit weights), for Q8_0 on signed bytes
// (|q| times w with q's sign, each group's pairs widened to int32 at once) — at a lower rate.
//
// C[M,N] = A[M,K] · B[N,K]ᵀ where A's rows are first quantized to Q8_0 blocks (per 32 values
// d_a = max|x| / 127, q = nearest(x / d_a) in [-127, 127]), each block's 32 products q_a · q_w are
// summed exactly in int32 (vpdpbusd), and C accumulates float(sum) · (d_a · d_w) block after
// block in K order with one fused multiply-add each. This is the arithmetic llama.cpp and
// stable-diffusion.cpp use for these weights on the CPU; against the exact product it adds at most
// Σ_blocks d_a/2 · Σ|w| per output (the activation rounding), which gemm_int8_error_bound gives.
// On these CPUs an F32 product (the alternative: weights widened, activations rounded to bf16)
// runs two FMAs per 16 products; vpdpbusd does 32 in one instruction, vpmaddubsw 32 in three
// (with the int16 sums).
//
// Used by gemm() for every Compute::BF16 product when gemm_int8_available(B.dtype);
// FLUXPIPE_INT8=0 turns it off (then the F32 path runs), FLUXPIPE_INT8=avx2 runs the plain AVX2
// kernel even where AVX-VNNI exists (for measuring it). Compute::F32 never comes here.
// Thread-safety: re-entrant; uses the global ThreadPool.
#pragma once

#include <cstdint>

#include "backend/cpu/gemm.h"

namespace fluxpipe::cpu {

// Whether this CPU (at the FLUXPIPE_ISA level in force) runs the integer path for weights of
// type `w` (Q8_0 or Q4_0): AVX2, no bf16 dot products allowed, FLUXPIPE_INT8 not 0.
bool gemm_int8_available(DType w);

// REQUIRES gemm_int8_available(B.dtype), K a multiple of 32, lda >= K, ldc >= N.
void gemm_int8(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K);

// The same arithmetic in plain scalar code, bit for bit (tests compare the two exactly).
void gemm_int8_reference(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N,
                         int64_t K);

// The largest |C_int8 - C_exact| that activation rounding can cause for output (m, n):
// Σ_blocks d_a(m, block) / 2 · Σ_{k in block} |w(n, k)| (float; tests add float rounding slack).
double gemm_int8_error_bound(const float* A, int64_t lda, const BMatrix& B, int64_t m, int64_t n, int64_t K);

// For tests: force the integer path off (false) or back to the default (true).
void gemm_int8_allow(bool on);
// For tests: run as on a CPU without AVX-VNNI (the plain AVX2 kernels).
void gemm_int8_force_no_vnni(bool on);
// "avx-vnni" or "avx2": the instructions the integer products use here.
const char* gemm_int8_kernel_name();

}  // namespace fluxpipe::cpu
