// CPU GEMM core: C[M,N] = A[M,K] · B[N,K]ᵀ, A and C float, B in any float or block dtype
// (dequantized tile by tile while packing, never as a whole).
//
// Blocking: N in blocks of 128 columns (a thread owns whole blocks, so every element of C is
// computed by one thread in one fixed order: results do not depend on the thread count),
// K in chunks of 256 packed into an L1/L2-resident panel, M in micro-tiles of 8 rows.
// Kernels: AVX-512 F32 FMA and AVX-512 BF16 (vdpbf16ps) where the CPU has them, and a
// portable kernel (compiled for AVX2+FMA and for baseline x86-64) otherwise.
// Thread-safety: re-entrant; `parallel` uses the global ThreadPool.
#pragma once

#include <cstdint>

#include "backend/backend.h"

namespace fluxpipe::cpu {

// The B operand: row n (an output column) holds K elements at data + n * row_bytes.
struct BMatrix {
  DType dtype;
  const uint8_t* data;
  int64_t row_bytes;
};

// REQUIRES: K is a multiple of B's block size; lda >= K; ldc >= N.
void gemm(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
          Compute compute, bool parallel);

// Which kernels this CPU runs ("avx512-bf16", "avx512", "avx2", "generic").
const char* gemm_kernel_name(Compute compute);
// For tests: force the portable kernels even where AVX-512 exists.
void gemm_force_portable(bool on);

}  // namespace fluxpipe::cpu
