// Dense BF16 GEMM through oneDNN (Debian's libdnnl), used where it is faster than our own
// kernels: measured in bench/core_bench, at M >= 64 on CPUs with AVX-512 BF16 but no AMX. Weights of
// any dtype are widened to bf16 in column chunks (never the whole matrix at once), so
// quantized weights stay quantized in memory; BF16 weights are read in place — or, when they lie
// in a file mapping (BMatrix::owner), reordered once into the blocked layout oneDNN's kernel reads
// and kept: a product on plain weights copies them into that layout on every call, about 10 % of
// its time at FLUX's shapes on a Zen 5 (measured: 670-700 plain, 730-780 GFLOP/s packed at
// M = 256-4096) and more at small M (M = 64, K = N = 3072: 569 vs 751), with bit-identical
// results. The copy replaces the mapped pages in memory (they are dropped from the process once
// it is made and read back only if another path wants them), so it costs no resident memory
// beyond the weights'. FLUXPIPE_PACK_WEIGHTS=0 turns it off (for measurements).
// Thread-safety: re-entrant; oneDNN runs on its own OpenMP threads.
#pragma once

#include "backend/cpu/gemm.h"

namespace fluxpipe::cpu {

// C[M,N] = A[M,K] · B[N,K]ᵀ (+ bias[N], F32, when set) with A and B rounded to bf16, F32
// accumulation. Returns false (and does nothing) when oneDNN cannot run it.
bool onednn_gemm_bf16(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N,
                      int64_t K, const float* bias = nullptr);

// C[M,N] = A[M,K] · B[N,K]ᵀ in F32 through oneDNN's sgemm, for CPUs without bf16 instructions
// (AVX2, AVX-512 F): weights of any dtype are widened to F32 in column chunks (about 8 MiB),
// never as a whole. `round_bf16`: A and the widened B rounded to bf16 values first, what the
// BF16 path computes (bf16 products, F32 sums). Returns false (nothing done) when oneDNN cannot.
bool onednn_gemm_f32(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
                     bool round_bf16, const float* bias = nullptr);

// C[M,N] (F32, row stride ldc) = alpha * A · B with A [M,K] bf16 (row stride lda) and B [K,N]
// bf16 with element (k, n) at B[k * b_k + n * b_n] — so Bᵀ and B alike are read in place
// (attention: Q·Kᵀ and P·V). Returns false (nothing done) when oneDNN cannot run it.
bool onednn_matmul_bf16(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t b_k, int64_t b_n, float* C, int64_t ldc,
                        int64_t M, int64_t N, int64_t K, float alpha);

// Drops the reordered copies made from weights on `of` (nullptr: all of them); they are made
// again on next use. Returns the bytes freed.
size_t release_packed_weights(const Storage* of);
// Bytes held in reordered copies now.
size_t packed_weight_bytes();
// For tests and benchmarks: whether BF16 weights are reordered and kept (default: on unless
// FLUXPIPE_PACK_WEIGHTS=0).
void set_pack_weights(bool on);

// Rounds rows of A to bf16 into `out` (row stride ldo); parallel over rows.
void convert_rows_bf16(const float* A, int64_t lda, int64_t M, int64_t K, uint16_t* out, int64_t ldo);
// B[n0 : n0+count, :] as bf16 rows of K into `out` (row stride K); parallel over rows.
void widen_rows_bf16(const BMatrix& B, int64_t n0, int64_t count, int64_t K, uint16_t* out);

}  // namespace fluxpipe::cpu
