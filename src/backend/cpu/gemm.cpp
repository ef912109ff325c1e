#include "backend/cpu/gemm.h"

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "backend/cpu/dequant_avx512.h"
#include "backend/cpu/gemm_int8.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/onednn_gemm.h"
#include "backend/cpu/scratch.h"
#include "backend/cpu/vec_math.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

constexpr int MR = 8;      // rows per micro-tile
constexpr int NR = 32;     // columns per packed panel (two 16-lane vectors)
constexpr int NC = 128;    // columns per thread work unit
constexpr int KC = 512;    // K per packed chunk (a multiple of every block size)
// The AMX kernel's K chunk: C stays in the tiles for a whole chunk and is reloaded between chunks,
// so longer is better while a thread's packed weights (NC x KC_AMX bf16, 1 MiB) stay in L2.
// Measured at M = 512 (K = N = 3072 / K = 12288, N = 3072): KC 512 -> 1,080 / 830 GFLOP/s,
// 1,024 -> 1,140 / 960, 4,096 -> 1,390 / 1,180, 8,192 with NC 64 -> 1,280 / 1,050.
constexpr int KC_AMX = 4096;

std::atomic<bool> g_force_portable{false};

// What the kernels may use: this CPU's instruction sets capped by FLUXPIPE_ISA (backend/cpu/isa.h).
bool cpu_has_avx512() { return isa_at_least(Isa::avx512); }
bool cpu_has_avx512bf16() { return isa_at_least(Isa::avx512bf16); }
bool cpu_has_amx() { return isa_at_least(Isa::amx); }
bool cpu_has_avx2() { return isa_at_least(Isa::avx2); }

// ---- packing -----------------------------------------------------------------------------

}  // namespace

// Row chunk B[n, k0 : k0+kc] as floats into `row` (kc floats).
void b_row_to_f32(const BMatrix& B, int64_t n, int64_t k0, int64_t kc, float* row) {
  const uint8_t* p = B.data + n * B.row_bytes + bytes_for(B.dtype, k0);
  if (!dequantize_avx512(B.dtype, p, row, kc) && !dequantize_avx2(B.dtype, p, row, kc)) to_f32(B.dtype, p, row, kc);
}

namespace {

// F32 panel: Bp[k * NR + j] = B[n0 + j, k0 + k], zero beyond N.
void pack_f32(const BMatrix& B, int64_t n0, int64_t N, int64_t k0, int64_t kc, float* Bp, float* row) {
  for (int j = 0; j < NR; ++j) {
    if (n0 + j >= N) {
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = 0.0f;
      continue;
    }
    if (B.dtype == DType::F32) {
      const float* src = reinterpret_cast<const float*>(B.data + (n0 + j) * B.row_bytes) + k0;
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = src[k];
    } else {
      b_row_to_f32(B, n0 + j, k0, kc, row);
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = row[k];
    }
  }
}

// Rounds n floats to bf16 (nearest even), 32 at a time where AVX-512 BF16 exists.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void f32_to_bf16_avx512(const float* src, uint16_t* dst,
                                                                              int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512(dst + i, (__m512i)v);
  }
  for (; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

}  // namespace

void f32_row_to_bf16(const float* src, uint16_t* dst, int64_t n) {
  if (cpu_has_avx512bf16()) {
    f32_to_bf16_avx512(src, dst, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

void b_row_to_bf16(const BMatrix& B, int64_t n, int64_t k0, int64_t kc, uint16_t* out, float* tmp) {
  const uint8_t* p = B.data + n * B.row_bytes + bytes_for(B.dtype, k0);
  if (B.dtype == DType::BF16) {
    std::memcpy(out, p, static_cast<size_t>(kc) * 2);
  } else if (!dequantize_bf16_avx512(B.dtype, p, out, kc)) {   // one pass where the CPU can
    b_row_to_f32(B, n, k0, kc, tmp);
    f32_row_to_bf16(tmp, out, kc);
  }
}

namespace {

// Sixteen rows of sixteen dwords, transposed in three rounds of shuffles (dwords, then qwords
// within 128-bit lanes, then the lanes themselves). The zero-masking forms with a full mask are
// the plain instructions; GCC 12's unmasked intrinsics warn of an uninitialised operand here.
__attribute__((target("avx512f"))) inline void transpose_16x16_dwords(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_epi32(0xFFFF, r[2 * i], r[2 * i + 1]);       // per lane: a0 b0 a1 b1
    t[2 * i + 1] = _mm512_maskz_unpackhi_epi32(0xFFFF, r[2 * i], r[2 * i + 1]);   //           a2 b2 a3 b3
  }
  for (int i = 0; i < 4; ++i) {   // u[4i + c], lane L: column 4L + c of rows 4i .. 4i+3
    u[4 * i] = _mm512_maskz_unpacklo_epi64(0xFF, t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_maskz_unpackhi_epi64(0xFF, t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_maskz_unpacklo_epi64(0xFF, t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_maskz_unpackhi_epi64(0xFF, t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {   // 0x88: lanes 0 and 2 of each source; 0xdd: lanes 1 and 3
    __m512i v0 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[c], u[4 + c], 0x88);
    __m512i w0 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[c], u[4 + c], 0xdd);
    __m512i v1 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[8 + c], u[12 + c], 0x88);
    __m512i w1 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_maskz_shuffle_i32x4(0xFFFF, v0, v1, 0x88);        // column c
    r[4 + c] = _mm512_maskz_shuffle_i32x4(0xFFFF, w0, w1, 0x88);    // column 4 + c
    r[8 + c] = _mm512_maskz_shuffle_i32x4(0xFFFF, v0, v1, 0xdd);    // column 8 + c
    r[12 + c] = _mm512_maskz_shuffle_i32x4(0xFFFF, w0, w1, 0xdd);   // column 12 + c
  }
}

// Pairs p0 .. pairs of the panel below, a word at a time: the portable path, and the ragged end
// of the AVX-512 one.
void interleave_pairs_from(const uint16_t* rows, int64_t ld, int64_t p0, int64_t pairs, uint16_t* Bp) {
  uint32_t* out = reinterpret_cast<uint32_t*>(Bp);
  for (int64_t p = p0; p < pairs; ++p)
    for (int j = 0; j < NR; ++j) std::memcpy(out + p * NR + j, rows + j * ld + 2 * p, 4);
}

// Interleaves NR bf16 rows (one per output column, row j at rows + j * ld) into the panel: the
// pair (k, k+1) of column j is one 32-bit word, so panel row p is word p of every column's row —
// a transpose of words, 16 x 16 at a time. (It replaced a gather per 16 words: measured 6% of a
// quantized FLUX step at 256x256 before.)
__attribute__((target("avx512f"))) void interleave_pairs_avx512(const uint16_t* rows, int64_t ld, int64_t pairs,
                                                               uint16_t* Bp) {
  int64_t p = 0;
  for (; p + 16 <= pairs; p += 16) {
    for (int h = 0; h < 2; ++h) {   // columns 16h .. 16h+15
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(rows + (16 * h + i) * ld + 2 * p);
      transpose_16x16_dwords(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(Bp + (p + j) * NR * 2 + 16 * h * 2, r[j]);
    }
  }
  interleave_pairs_from(rows, ld, p, pairs, Bp);
}

// BF16 panel, K in pairs: Bp[(p * NR + j) * 2 + e] = bf16(B[n0 + j, k0 + 2p + e]); zero beyond N
// and K, up to `kc_padded` (a multiple of 32 for the AMX tiles). `rows` is scratch for
// NR x kc_padded bf16 values.
void pack_bf16(const BMatrix& B, int64_t n0, int64_t N, int64_t k0, int64_t kc, int64_t kc_padded, uint16_t* Bp,
               float* row, uint16_t* rows) {
  int64_t pairs = (kc_padded + 1) / 2;
  int64_t stride = (kc_padded + 1) & ~int64_t{1};   // even, so that pairs are aligned words
  const uint16_t* base = rows;
  int64_t ld = stride;
  bool direct = B.dtype == DType::BF16 && kc == kc_padded && (B.row_bytes % 4) == 0 && (k0 % 2) == 0 && n0 + NR <= N;
  if (direct) {   // straight from the weight rows
    base = reinterpret_cast<const uint16_t*>(B.data + n0 * B.row_bytes) + k0;
    ld = B.row_bytes / 2;
  } else {
    for (int j = 0; j < NR; ++j) {
      uint16_t* dst = rows + j * stride;
      if (n0 + j >= N) {
        std::memset(dst, 0, static_cast<size_t>(stride) * 2);
        continue;
      }
      b_row_to_bf16(B, n0 + j, k0, kc, dst, row);
      std::memset(dst + kc, 0, static_cast<size_t>(stride - kc) * 2);
    }
  }
  if (cpu_has_avx512()) {
    interleave_pairs_avx512(base, ld, pairs, Bp);
  } else {
    interleave_pairs_from(base, ld, 0, pairs, Bp);
  }
}

// ---- micro-kernels: C[rows x 32] (+)= A[rows x kc] · panel --------------------------------

// The accumulators of an MR x 32 tile: C's valid columns when accumulating, zeros otherwise.
__attribute__((target("avx512f,avx512bw"))) inline void load_tile(__m512 (&acc)[MR][2], int rows, const float* C,
                                                                  int64_t ldc, __mmask16 m0, __mmask16 m1, bool first) {
  for (int r = 0; r < MR; ++r) {
    if (r < rows && !first) {
      acc[r][0] = _mm512_maskz_loadu_ps(m0, C + r * ldc);
      acc[r][1] = _mm512_maskz_loadu_ps(m1, C + r * ldc + 16);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
}
// `first`: C is overwritten (first K chunk), otherwise accumulated. `nv`: valid columns.

__attribute__((target("avx512f,avx512bw"))) void ukernel_f32_avx512(int rows, const float* A, int64_t lda,
                                                                   const float* Bp, int64_t kc, float* C,
                                                                   int64_t ldc, int nv, bool first) {
  __m512 acc[MR][2];
  const __mmask16 m0 = lane_mask(nv), m1 = lane_mask(nv - 16);
  load_tile(acc, rows, C, ldc, m0, m1, first);
#define FP_F32_KERNEL(R)                                                    \
  for (int64_t k = 0; k < kc; ++k) {                                        \
    __m512 b0 = _mm512_loadu_ps(Bp + k * NR), b1 = _mm512_loadu_ps(Bp + k * NR + 16); \
    for (int r = 0; r < R; ++r) {                                           \
      __m512 a = _mm512_set1_ps(A[r * lda + k]);                            \
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);                        \
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);                        \
    }                                                                       \
  }
  switch (rows) {
    case 8: FP_F32_KERNEL(8) break;
    case 7: FP_F32_KERNEL(7) break;
    case 6: FP_F32_KERNEL(6) break;
    case 5: FP_F32_KERNEL(5) break;
    case 4: FP_F32_KERNEL(4) break;
    case 3: FP_F32_KERNEL(3) break;
    case 2: FP_F32_KERNEL(2) break;
    default: FP_F32_KERNEL(1) break;
  }
#undef FP_F32_KERNEL
  for (int r = 0; r < rows; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, acc[r][0]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, acc[r][1]);
  }
}

// A is bf16 with K padded to even (lda in elements, even); pairs are read as 32-bit words.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void ukernel_bf16_avx512(int rows, const uint16_t* A,
                                                                              int64_t lda, const uint16_t* Bp,
                                                                              int64_t pairs, float* C, int64_t ldc,
                                                                              int nv, bool first) {
  __m512 acc[MR][2];
  const __mmask16 m0 = lane_mask(nv), m1 = lane_mask(nv - 16);
  load_tile(acc, rows, C, ldc, m0, m1, first);
#define FP_BF16_KERNEL(R)                                                                         \
  for (int64_t p = 0; p < pairs; ++p) {                                                           \
    __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + p * 2 * NR);                                  \
    __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + p * 2 * NR + 32);                             \
    for (int r = 0; r < R; ++r) {                                                                 \
      int32_t pair;                                                                               \
      std::memcpy(&pair, A + r * lda + 2 * p, 4);                                                 \
      __m512bh a = (__m512bh)_mm512_set1_epi32(pair);                                             \
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);                                             \
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);                                             \
    }                                                                                             \
  }
  switch (rows) {
    case 8: FP_BF16_KERNEL(8) break;
    case 7: FP_BF16_KERNEL(7) break;
    case 6: FP_BF16_KERNEL(6) break;
    case 5: FP_BF16_KERNEL(5) break;
    case 4: FP_BF16_KERNEL(4) break;
    case 3: FP_BF16_KERNEL(3) break;
    case 2: FP_BF16_KERNEL(2) break;
    default: FP_BF16_KERNEL(1) break;
  }
#undef FP_BF16_KERNEL
  for (int r = 0; r < rows; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, acc[r][0]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, acc[r][1]);
  }
}

// The same product over two adjacent panels (64 columns) and up to 6 rows: 24 accumulators, 4
// panel loads and 6 broadcasts per 24 dot products instead of 2 and 8 per 16 above. (On Zen 4 both
// tiles reach the dot-product peak with their operands in L1/L2; the wide one halves the
// broadcasts, which leaves more issue slots to the prefetches the caller interleaves.)
constexpr int MR_WIDE = 6;

template <int R>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void bf16_wide_rows(const uint16_t* A, int64_t lda,
                                                                                const uint16_t* P0, const uint16_t* P1,
                                                                                int64_t pairs, __m512 (&acc)[MR_WIDE][4]) {
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh b0 = (__m512bh)_mm512_loadu_si512(P0 + p * 2 * NR);
    __m512bh b1 = (__m512bh)_mm512_loadu_si512(P0 + p * 2 * NR + 32);
    __m512bh b2 = (__m512bh)_mm512_loadu_si512(P1 + p * 2 * NR);
    __m512bh b3 = (__m512bh)_mm512_loadu_si512(P1 + p * 2 * NR + 32);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * p, 4);
      __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, b2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], a, b3);
    }
  }
}

// C[rows x 64] (+)= A[rows x 2·pairs] · (panel P0 | panel P1); `nv` valid columns (33..64).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void ukernel_bf16_avx512_wide(int rows, const uint16_t* A,
                                                                                   int64_t lda, const uint16_t* P0,
                                                                                   const uint16_t* P1, int64_t pairs,
                                                                                   float* C, int64_t ldc, int nv,
                                                                                   bool first) {
  __m512 acc[MR_WIDE][4];
  __mmask16 m[4];
  for (int v = 0; v < 4; ++v) m[v] = lane_mask(nv - 16 * v);
  for (int r = 0; r < MR_WIDE; ++r)
    for (int v = 0; v < 4; ++v)
      acc[r][v] = (r < rows && !first) ? _mm512_maskz_loadu_ps(m[v], C + r * ldc + 16 * v) : _mm512_setzero_ps();
  switch (rows) {
    case 6: bf16_wide_rows<6>(A, lda, P0, P1, pairs, acc); break;
    case 5: bf16_wide_rows<5>(A, lda, P0, P1, pairs, acc); break;
    case 4: bf16_wide_rows<4>(A, lda, P0, P1, pairs, acc); break;
    case 3: bf16_wide_rows<3>(A, lda, P0, P1, pairs, acc); break;
    case 2: bf16_wide_rows<2>(A, lda, P0, P1, pairs, acc); break;
    default: bf16_wide_rows<1>(A, lda, P0, P1, pairs, acc); break;
  }
  for (int r = 0; r < rows; ++r)
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(C + r * ldc + 16 * v, m[v], acc[r][v]);
}

// AMX: C[32 x 32] (+)= A[32 x kc] · panel, kc a multiple of 32. Tiles 0-3 hold C as 2x2 blocks
// of 16x16 floats; 4-5 hold 16 rows x 32 bf16 of A; 6-7 hold 16 k-pairs x 16 columns of the
// panel, which is already in the pair-interleaved layout the tiles expect.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-bf16"))) void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  // GCC 12's _tile_loadconfig tells the compiler it reads only 8 bytes, so the stores above
  // were dropped as dead; an asm operand naming the whole struct keeps them.
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

__attribute__((target("amx-tile,amx-bf16"))) void amx_release() { _tile_release(); }

__attribute__((target("amx-tile,amx-bf16"))) void ukernel_amx(const uint16_t* A, int64_t lda, const uint16_t* Bp,
                                                               int64_t kc_padded, float* C, int64_t ldc, bool first) {
  const int64_t cs = ldc * 4, as = lda * 2;
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, C, cs);
    _tile_loadd(1, C + 16, cs);
    _tile_loadd(2, C + 16 * ldc, cs);
    _tile_loadd(3, C + 16 * ldc + 16, cs);
  }
  for (int64_t k = 0; k < kc_padded; k += 32) {
    _tile_loadd(4, A + k, as);
    _tile_loadd(5, A + 16 * lda + k, as);
    _tile_loadd(6, Bp + (k / 2) * NR * 2, NR * 4);
    _tile_loadd(7, Bp + (k / 2) * NR * 2 + 32, NR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, cs);
  _tile_stored(1, C + 16, cs);
  _tile_stored(2, C + 16 * ldc, cs);
  _tile_stored(3, C + 16 * ldc + 16, cs);
}

// Portable kernel, plain loops the compiler vectorises; cloned for AVX2+FMA and baseline.
__attribute__((target_clones("avx2,fma", "default"))) void ukernel_f32_portable(int rows, const float* A,
                                                                                int64_t lda, const float* Bp,
                                                                                int64_t kc, float* C, int64_t ldc,
                                                                                int nv, bool first) {
  float acc[MR][NR];
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < NR; ++j) acc[r][j] = (!first && j < nv) ? C[r * ldc + j] : 0.0f;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = Bp + k * NR;
    for (int r = 0; r < rows; ++r) {
      float a = A[r * lda + k];
      for (int j = 0; j < NR; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < nv; ++j) C[r * ldc + j] = acc[r][j];
  }
}

// A few rows (the modulation vectors, M = batch): the product is bound by reading the weights
// once, so each weight row is widened (to floats, or to bf16 for BF16 compute) and dotted with the
// rows of A directly, without packing. Four accumulators of 16 lanes (one would wait on the latency
// of each multiply-add), added in a fixed order.
__attribute__((target("avx512f"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 load16(const uint16_t* p) {   // bf16: exact, a shift
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
inline float value(float v) { return v; }
inline float value(uint16_t v) { return bf16_to_f32(v); }

template <typename T>
__attribute__((target("avx512f"))) float dot_avx512(const float* a, const T* b, int64_t n) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int u = 0; u < 4; ++u) acc[u] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * u), load16(b + i + 16 * u), acc[u]);
  for (; i + 16 <= n; i += 16) acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load16(b + i), acc[0]);
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) s += a[i] * value(b[i]);
  return s;
}

__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

template <typename T>
__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const T* b, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; ++u) acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * u), load8(b + i + 8 * u), acc[u]);
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc[0]);
  __m256 t = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float s = _mm_cvtss_f32(h);
  for (; i < n; ++i) s += a[i] * value(b[i]);
  return s;
}

// a · b with b in F32 or bf16.
template <typename T>
float dot(const float* a, const T* b, int64_t n) {
  if (cpu_has_avx512()) return dot_avx512(a, b, n);
  if (cpu_has_avx2()) return dot_avx2(a, b, n);
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * value(b[i]);
  return s;
}

// `round_bf16`: B's values rounded to bf16 first (BF16 compute with weights of another dtype) —
// widened straight to bf16 in one pass where the CPU can.
void gemv_rows(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
               bool round_bf16, bool parallel) {
  // Without bf16 instructions the one-pass bf16 widening is scalar: widen to floats and round
  // them in place instead (the same values).
  const bool via_f32 = !round_bf16 || !has_dequantize_bf16_avx512(B.dtype);
  // F32 and BF16 weights (not rounded) are dotted where they lie: the dot widens bf16 exactly as
  // the copy would, so the sums are the same, without a pass over a copy of every row.
  const bool in_place = !round_bf16 && (B.dtype == DType::F32 || B.dtype == DType::BF16);
  auto work = [&](int, int64_t n0, int64_t n1) {
    if (in_place) {
      for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* w = B.data + n * B.row_bytes;
        for (int64_t m = 0; m < M; ++m) {
          C[m * ldc + n] = B.dtype == DType::F32 ? dot(A + m * lda, reinterpret_cast<const float*>(w), K)
                                                 : dot(A + m * lda, reinterpret_cast<const uint16_t*>(w), K);
        }
      }
      return;
    }
    std::vector<float> row(static_cast<size_t>(K));
    std::vector<uint16_t> row16(via_f32 ? 0 : static_cast<size_t>(K));
    for (int64_t n = n0; n < n1; ++n) {
      if (via_f32) {
        b_row_to_f32(B, n, 0, K, row.data());
        if (round_bf16) round_to_bf16_values(row.data(), K);
        for (int64_t m = 0; m < M; ++m) C[m * ldc + n] = dot(A + m * lda, row.data(), K);
        continue;
      }
      b_row_to_bf16(B, n, 0, K, row16.data(), row.data());
      for (int64_t m = 0; m < M; ++m) C[m * ldc + n] = dot(A + m * lda, row16.data(), K);
    }
  };
  if (parallel) {
    ThreadPool::global().parallel_for(N, work);
  } else {
    work(0, 0, N);
  }
}

enum class Kernel { f32_avx512, bf16_avx512, bf16_amx, f32_portable };

std::atomic<bool> g_force_no_amx{false};
std::atomic<GemmPath> g_path{GemmPath::automatic};

Kernel pick(Compute c) {
  if (g_force_portable || !cpu_has_avx512()) return Kernel::f32_portable;
  if (c == Compute::BF16 && !g_force_no_amx && cpu_has_amx()) return Kernel::bf16_amx;
  if (c == Compute::BF16 && cpu_has_avx512bf16()) return Kernel::bf16_avx512;
  return Kernel::f32_avx512;
}

// Rounds A to bf16 values kept as floats, so that portable/F32 kernels compute what the BF16
// path computes when the CPU has no bf16 instructions.
std::vector<float> round_rows_bf16(const float* A, int64_t lda, int64_t M, int64_t K) {
  std::vector<float> out(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    std::copy(A + m * lda, A + m * lda + K, out.begin() + m * K);
    round_to_bf16_values(out.data() + m * K, K);
  }
  return out;
}

}  // namespace

const char* gemm_kernel_name(Compute c) {
  switch (pick(c)) {
    case Kernel::bf16_amx: return "amx-bf16";
    case Kernel::bf16_avx512: return "avx512-bf16";
    case Kernel::f32_avx512: return "avx512";
    case Kernel::f32_portable: return cpu_has_avx2() ? "avx2" : "generic";
  }
  return "generic";
}

void amx_begin() { amx_configure(); }
void amx_end() { amx_release(); }
void amx_tile_product(const uint16_t* A, int64_t lda, const uint16_t* P, int64_t kc, float* C, int64_t ldc, bool first) {
  ukernel_amx(A, lda, P, kc, C, ldc, first);
}

void amx_pack_panel(const uint16_t* rows, int64_t ld, int64_t pairs, uint16_t* P) {
  interleave_pairs_avx512(rows, ld, pairs, P);
}

void gemm_force_portable(bool on) { g_force_portable = on; }
bool gemm_has_amx() { return cpu_has_amx(); }
void gemm_force_no_amx(bool on) { g_force_no_amx = on; }
void gemm_force_path(GemmPath p) { g_path = p; }

namespace {

// The product into C; true when it added `bias` too (oneDNN adds it while C is in cache), false
// when the caller must.
bool product(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
             Compute compute, bool parallel, const float* bias) {
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, 0.0f);
    return false;
  }
  // Q8_0 / Q4_0 weights on a CPU without bf16 dot products: integer products (activations
  // quantized per block of 32, as llama.cpp and stable-diffusion.cpp compute them), 1.6-3x the F32
  // path's rate there (gemm_int8.h says where each runs), matrix-vector products included.
  if (compute == Compute::BF16 && !g_force_portable && g_path != GemmPath::onednn && gemm_int8_available(B.dtype)) {
    gemm_int8(A, lda, B, C, ldc, M, N, K);
    return false;
  }
  Kernel kernel = pick(compute);
  // Large products (M >= 64) where the CPU has bf16 instructions: with AMX our kernel, which
  // widens the weights tile by tile while they are in L2, is about as fast as oneDNN on BF16
  // weights and faster on all others (oneDNN needs them widened in memory first); without AMX,
  // oneDNN's AVX-512 BF16 GEMM is the faster. Measured side by side in bench/core_bench.
  const GemmPath path = g_path;
  // Without bf16 instructions (FLUXPIPE_ISA=avx512 or avx2, or such a CPU), oneDNN's sgemm on
  // widened weights beats our F32 kernels at these sizes (bench/flux_bench under FLUXPIPE_ISA).
  const bool no_bf16_isa = !cpu_has_avx512bf16();
  const bool large = parallel && M >= 64 && !g_force_portable &&
                     ((compute == Compute::BF16 && (kernel == Kernel::bf16_amx || kernel == Kernel::bf16_avx512)) || no_bf16_isa);
  const bool library = path == GemmPath::onednn || (path == GemmPath::automatic && kernel != Kernel::bf16_amx);
  if (large && library) {
    if (no_bf16_isa) {
      if (onednn_gemm_f32(A, lda, B, C, ldc, M, N, K, compute == Compute::BF16, bias)) return true;
    } else if (onednn_gemm_bf16(A, lda, B, C, ldc, M, N, K, bias)) {
      return true;
    }
  }
  const bool bf16_kernel = kernel == Kernel::bf16_avx512 || kernel == Kernel::bf16_amx;
  std::vector<float> rounded;
  if (M <= 4 && !g_force_portable) {
    if (compute == Compute::BF16) {
      rounded = round_rows_bf16(A, lda, M, K);
      A = rounded.data();
      lda = K;
    }
    gemv_rows(A, lda, B, C, ldc, M, N, K, compute == Compute::BF16 && B.dtype != DType::BF16, parallel);
    return false;
  }
  // BF16 compute without bf16 instructions: the same rounding of A (and of B while packing).
  bool round_b = false;
  if (compute == Compute::BF16 && !bf16_kernel) {
    rounded = round_rows_bf16(A, lda, M, K);
    A = rounded.data();
    lda = K;
    round_b = true;
  }
  // bf16 copy of A, K padded to even. For AMX, to a multiple of 32 plus 32 more: tile rows whose
  // stride is a multiple of 2 KiB (K = 3072: 6 KiB) fall into the same few L1 sets and evict each
  // other between the panels that reuse them (measured at M = 512, K = N = 3072: 5-9% faster).
  uint16_t* abf = nullptr;
  int64_t lda16 = kernel == Kernel::bf16_amx ? (K + 31) / 32 * 32 + 32 : (K + 1) & ~int64_t{1};
  if (bf16_kernel) {
    abf = scratch<uint16_t>(0, static_cast<size_t>(M * lda16));
    auto convert = [&](int, int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        f32_row_to_bf16(A + m * lda, abf + m * lda16, K);
        std::fill(abf + m * lda16 + K, abf + (m + 1) * lda16, uint16_t{0});   // padding
      }
    };
    if (parallel && M * K > 65536) {
      ThreadPool::global().parallel_for(M, convert);
    } else {
      convert(0, 0, M);
    }
  }
  // Work items: blocks of NC columns, and where those are too few to keep every thread busy
  // (N = 64 at M = 4096: the last layer), row ranges of them. Each item packs its own weights,
  // so rows are split only as far as needed. Every element of C is still computed by one item in
  // one fixed order.
  const int64_t blocks = (N + NC - 1) / NC;
  const int64_t threads = parallel ? ThreadPool::global().size() : 1;
  int64_t m_step = M;
  if (blocks < 4 * threads && M > 64) {
    int64_t parts = std::min<int64_t>((4 * threads + blocks - 1) / blocks, (M + 63) / 64);
    m_step = ((M + parts - 1) / parts + 31) / 32 * 32;
  }
  const int64_t m_parts = (M + m_step - 1) / m_step;
  const int64_t kc_max = kernel == Kernel::bf16_amx ? KC_AMX : KC;
  auto work = [&](int, int64_t i_begin, int64_t i_end) {
    // This thread's packing buffers (scratch slots 10-15), kept between calls.
    float* row = scratch<float>(10, static_cast<size_t>(kc_max));
    float* packed_f32 = bf16_kernel ? nullptr : scratch<float>(11, static_cast<size_t>(NC * kc_max));
    uint16_t* packed_bf16 = bf16_kernel ? scratch<uint16_t>(12, static_cast<size_t>(NC * kc_max)) : nullptr;
    uint16_t* rows_bf16 = bf16_kernel ? scratch<uint16_t>(13, static_cast<size_t>(NR * (kc_max + 2))) : nullptr;
    uint16_t* a_tail = scratch<uint16_t>(14, static_cast<size_t>(32 * (kc_max + 32)));   // AMX: the last rows, zero-padded to 32
    float* c_tail = scratch<float>(15, 32 * NR);
    if (kernel == Kernel::bf16_amx) {
      amx_configure();
    }
    for (int64_t item = i_begin; item < i_end; ++item) {
      const int64_t blk = item / m_parts, m_begin = item % m_parts * m_step, m_end = std::min(M, m_begin + m_step);
      int64_t n_begin = blk * NC, n_end = std::min(N, n_begin + NC);
      for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
        int64_t kc = std::min<int64_t>(kc_max, K - k0);
        int64_t kc_padded = kernel == Kernel::bf16_amx ? (kc + 31) / 32 * 32 : kc;
        bool first = k0 == 0;
        int panels = static_cast<int>((n_end - n_begin + NR - 1) / NR);
        for (int pnl = 0; pnl < panels; ++pnl) {
          int64_t n0 = n_begin + pnl * NR;
          if (bf16_kernel) {
            pack_bf16(B, n0, N, k0, kc, kc_padded, packed_bf16 + static_cast<size_t>(pnl) * NR * kc_max, row,
                      rows_bf16);
          } else {
            float* dst = packed_f32 + static_cast<size_t>(pnl) * NR * kc_max;
            pack_f32(B, n0, N, k0, kc, dst, row);
            if (round_b) round_to_bf16_values(dst, kc * NR);
          }
        }
        if (kernel == Kernel::bf16_amx) {
          for (int64_t m0 = m_begin; m0 < m_end; m0 += 32) {
            int rows = static_cast<int>(std::min<int64_t>(32, m_end - m0));
            const uint16_t* a = abf + m0 * lda16 + k0;
            int64_t lda_used = lda16;
            if (rows < 32) {
              for (int r = 0; r < 32; ++r) {   // the rows there are, then zeros (only what the tiles read)
                uint16_t* dst = a_tail + r * (kc_max + 32);
                if (r < rows) {
                  std::memcpy(dst, a + r * lda16, static_cast<size_t>(kc_padded) * 2);
                } else {
                  std::fill(dst, dst + kc_padded, uint16_t{0});
                }
              }
              a = a_tail;
              lda_used = kc_max + 32;
            }
            for (int pnl = 0; pnl < panels; ++pnl) {
              int64_t n0 = n_begin + pnl * NR;
              int nv = static_cast<int>(std::min<int64_t>(NR, N - n0));
              float* c = C + m0 * ldc + n0;
              const uint16_t* bp = packed_bf16 + static_cast<size_t>(pnl) * NR * kc_max;
              if (rows == 32 && nv == NR) {
                ukernel_amx(a, lda_used, bp, kc_padded, c, ldc, first);
                continue;
              }
              for (int r = 0; r < 32; ++r)
                for (int j = 0; j < NR; ++j) c_tail[static_cast<size_t>(r * NR + j)] = (!first && r < rows && j < nv) ? c[r * ldc + j] : 0.0f;
              ukernel_amx(a, lda_used, bp, kc_padded, c_tail, NR, /*first=*/false);   // c_tail holds the start
              for (int r = 0; r < rows; ++r)
                for (int j = 0; j < nv; ++j) c[r * ldc + j] = c_tail[static_cast<size_t>(r * NR + j)];
            }
          }
          continue;
        }
        if (kernel == Kernel::bf16_avx512) {
          // The weights this thread packs next (the next K chunk of this block, else the next
          // item's first), fetched into L2 a slice per micro-tile while these are computed: at
          // M = 256 reading them from memory when packing was most of the gap to the kernel's
          // peak (measured in bench/core_bench, "own" column).
          const uint8_t* next_base = nullptr;
          int64_t next_rows = 0, next_bytes = 0;
          if (k0 + kc < K) {
            next_base = B.data + n_begin * B.row_bytes + bytes_for(B.dtype, k0 + kc);
            next_rows = n_end - n_begin;
            next_bytes = bytes_for(B.dtype, std::min<int64_t>(kc_max, K - k0 - kc));
          } else if (item + 1 < i_end) {
            const int64_t nb = (item + 1) / m_parts * NC;
            next_base = B.data + nb * B.row_bytes;
            next_rows = std::min(N, nb + NC) - nb;
            next_bytes = bytes_for(B.dtype, std::min<int64_t>(kc_max, K));
          }
          const int64_t line_per_row = (next_bytes + 63) / 64, lines = next_rows * line_per_row;
          const int64_t tiles = (m_end - m_begin + MR_WIDE - 1) / MR_WIDE;
          const int64_t per_tile = tiles > 0 ? (lines + tiles - 1) / tiles : 0;
          int64_t line = 0;
          for (int64_t m0 = m_begin; m0 < m_end; m0 += MR_WIDE) {
            int rows = static_cast<int>(std::min<int64_t>(MR_WIDE, m_end - m0));
            for (int64_t e = std::min(lines, line + per_tile); line < e; ++line)
              _mm_prefetch(reinterpret_cast<const char*>(next_base + line / line_per_row * B.row_bytes + line % line_per_row * 64),
                           _MM_HINT_T1);
            for (int pnl = 0; pnl < panels; pnl += 2) {
              int64_t n0 = n_begin + pnl * NR;
              int nv = static_cast<int>(std::min<int64_t>(2 * NR, N - n0));
              const uint16_t* bp = packed_bf16 + static_cast<size_t>(pnl) * NR * kc_max;
              float* c = C + m0 * ldc + n0;
              if (nv > NR) {
                ukernel_bf16_avx512_wide(rows, abf + m0 * lda16 + k0, lda16, bp, bp + NR * kc_max, (kc + 1) / 2, c,
                                         ldc, nv, first);
              } else {
                ukernel_bf16_avx512(rows, abf + m0 * lda16 + k0, lda16, bp, (kc + 1) / 2, c, ldc, nv, first);
              }
            }
          }
          continue;
        }
        for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
          int rows = static_cast<int>(std::min<int64_t>(MR, m_end - m0));
          for (int pnl = 0; pnl < panels; ++pnl) {
            int64_t n0 = n_begin + pnl * NR;
            int nv = static_cast<int>(std::min<int64_t>(NR, N - n0));
            float* c = C + m0 * ldc + n0;
            switch (kernel) {
              case Kernel::bf16_avx512:
                ukernel_bf16_avx512(rows, abf + m0 * lda16 + k0, lda16,
                                    packed_bf16 + static_cast<size_t>(pnl) * NR * kc_max, (kc + 1) / 2, c, ldc, nv,
                                    first);
                break;
              case Kernel::f32_avx512:
                ukernel_f32_avx512(rows, A + m0 * lda + k0, lda, packed_f32 + static_cast<size_t>(pnl) * NR * kc_max,
                                   kc, c, ldc, nv, first);
                break;
              case Kernel::bf16_amx:   // handled above
                break;
              case Kernel::f32_portable:
                ukernel_f32_portable(rows, A + m0 * lda + k0, lda,
                                     packed_f32 + static_cast<size_t>(pnl) * NR * kc_max, kc, c, ldc, nv, first);
                break;
            }
          }
        }
      }
    }
  };
  auto run = [&](int t, int64_t b, int64_t e) {
    work(t, b, e);
    if (kernel == Kernel::bf16_amx) amx_release();
  };
  if (parallel) {
    ThreadPool::global().parallel_for(blocks * m_parts, run);
  } else {
    run(0, 0, blocks * m_parts);
  }
  return false;
}

}  // namespace

void gemm(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
          Compute compute, bool parallel, const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (product(A, lda, B, C, ldc, M, N, K, compute, parallel, bias) || !bias) return;
  auto add = [&](int, int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      float* c = C + m * ldc;
      for (int64_t n = 0; n < N; ++n) c[n] += bias[n];
    }
  };
  if (parallel && M * N > 32768) {
    ThreadPool::global().parallel_for(M, add);
  } else {
    add(0, 0, M);
  }
}

}  // namespace fluxpipe::cpu
