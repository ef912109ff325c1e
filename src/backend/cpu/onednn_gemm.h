// Dense BF16 GEMM through oneDNN (Debian's libdnnl), used where it is faster than our own
// kernels: measured in bench/core_bench, at M >= 64 on CPUs with AVX-512 BF16 but no AMX. Weights of
// any dtype are widened to bf16 in column chunks (never the whole matrix at once), so
// quantized weights stay quantized in memory; BF16 weights are read in place.
// Thread-safety: re-entrant; oneDNN runs on its own OpenMP threads.
#pragma once

#include "backend/cpu/gemm.h"

namespace fluxpipe::cpu {

// C[M,N] = A[M,K] · B[N,K]ᵀ with A and B rounded to bf16, F32 accumulation.
// Returns false (and does nothing) when oneDNN cannot run it.
bool onednn_gemm_bf16(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N,
                      int64_t K);

// C[M,N] = A[M,K] · B[N,K]ᵀ in F32 through oneDNN's sgemm, for CPUs without bf16 instructions
// (AVX2, AVX-512 F): weights of any dtype are widened to F32 in column chunks (about 8 MiB),
// never as a whole. `round_bf16`: A and the widened B rounded to bf16 values first, what the
// BF16 path computes (bf16 products, F32 sums). Returns false (nothing done) when oneDNN cannot.
bool onednn_gemm_f32(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
                     bool round_bf16);

// C[M,N] (F32, row stride ldc) = alpha * A · B with A [M,K] bf16 (row stride lda) and B [K,N]
// bf16 with element (k, n) at B[k * b_k + n * b_n] — so Bᵀ and B alike are read in place
// (attention: Q·Kᵀ and P·V). Returns false (nothing done) when oneDNN cannot run it.
bool onednn_matmul_bf16(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t b_k, int64_t b_n, float* C, int64_t ldc,
                        int64_t M, int64_t N, int64_t K, float alpha);

// Rounds rows of A to bf16 into `out` (row stride ldo); parallel over rows.
void convert_rows_bf16(const float* A, int64_t lda, int64_t M, int64_t K, uint16_t* out, int64_t ldo);
// B[n0 : n0+count, :] as bf16 rows of K into `out` (row stride K); parallel over rows.
void widen_rows_bf16(const BMatrix& B, int64_t n0, int64_t count, int64_t K, uint16_t* out);

}  // namespace fluxpipe::cpu
