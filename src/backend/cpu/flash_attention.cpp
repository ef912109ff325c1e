#include "backend/cpu/flash_attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/gemm.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/scratch.h"
#include "backend/cpu/vec_math.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

#define FP_FLASH __attribute__((target("avx512f,avx512dq,avx512bw,avx512bf16")))

constexpr int64_t QR = 32;    // query rows per unit (one AMX C block)
constexpr int64_t PW = 32;    // columns per AMX panel

// Keys per chunk: a block's scores for a chunk (32 x 2048 F32, 256 KiB) and its probabilities
// stay in L2 between the products that write and read them. Up to this many keys the softmax is
// taken in one pass with the exact row maxima; longer sequences combine chunks online as
// FlashAttention does (rescaling a row's partial output when its maximum grows).
constexpr int64_t kChunkKeys = 2048;
// Query blocks that share each chunk of keys (see the driver).
constexpr int64_t kGroup = 4;

// Online softmax state of QR rows, in base 2: scores are taken as t = s * scale * log2(e), so
// that e^(scale (s - s_max)) = 2^(t - t_max) and the multiply by log2(e) folds into the scale's.
struct RowState {
  alignas(64) float m[QR];   // the max (in t) so far
  alignas(64) float l[QR];   // the sum of probabilities so far, against m
};

// Row maxima of the 32 x 32 block of scores at s (rows lds apart) folded into mx[r] (16 lanes
// per row, mx[r * 16 ..]), columns from `valid` on left out: taken right after the tile product
// stored the block, while it is in L1, instead of in a pass over the whole chunk from L2.
// first: mx is started afresh.
FP_FLASH void fold_row_max(const float* s, int64_t lds, int64_t valid, bool first, float* mx) {
  if (first) {
    for (int64_t r = 0; r < QR; ++r) _mm512_store_ps(mx + r * 16, _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
  }
  if (valid >= 32) {
    for (int64_t r = 0; r < QR; ++r) {
      __m512 m = _mm512_max_ps(_mm512_load_ps(s + r * lds), _mm512_load_ps(s + r * lds + 16));
      _mm512_store_ps(mx + r * 16, _mm512_max_ps(_mm512_load_ps(mx + r * 16), m));
    }
    return;
  }
  const __mmask16 k0 = lane_mask(valid), k1 = lane_mask(valid - 16);
  for (int64_t r = 0; r < QR; ++r) {
    __m512 m = _mm512_load_ps(mx + r * 16);
    m = _mm512_mask_max_ps(m, k0, m, _mm512_load_ps(s + r * lds));
    m = _mm512_mask_max_ps(m, k1, m, _mm512_load_ps(s + r * lds + 16));
    _mm512_store_ps(mx + r * 16, m);
  }
}

// One chunk of a block's softmax: scores s[r * lds + j], j < valid (raw Q·Kᵀ), with their row
// maxima in mx[r * 16 ..] -> probabilities p[r * ldp + j] = 2^(t - m) as bf16, zero from `valid` up to
// `padded`, with m each row's running max; st updated and each row's partial output
// acc[r * D ..] rescaled where its max grew. REQUIRES scale > 0, lds and ldp multiples of 16,
// s and p 64-byte aligned.
FP_FLASH void softmax_chunk(const float* s, int64_t lds, int64_t valid, int64_t padded, float scale, const float* mx,
                            uint16_t* p, int64_t ldp, RowState& st, float* acc, int64_t D) {
  const float scale2 = scale * 1.44269504088896341f;   // log2(e)
  const __m512 sc = _mm512_set1_ps(scale2);
  const int64_t whole = valid / 32 * 32;
  for (int64_t r = 0; r < QR; ++r) {
    const float* sr = s + r * lds;
    uint16_t* pr = p + r * ldp;
    const float m_old = st.m[r];
    const float m_new = std::max(m_old, _mm512_reduce_max_ps(_mm512_load_ps(mx + r * 16)) * scale2);   // scale2 > 0
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j < whole; j += 32) {   // two vectors to one bf16 store
      __m512 e0 = exp2_512(_mm512_fmsub_ps(_mm512_load_ps(sr + j), sc, mv));
      __m512 e1 = exp2_512(_mm512_fmsub_ps(_mm512_load_ps(sr + j + 16), sc, mv));
      sum0 = _mm512_add_ps(sum0, e0);
      sum1 = _mm512_add_ps(sum1, e1);
      _mm512_store_si512(pr + j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(e1, e0)));
    }
    for (; j < padded; j += 16) {   // the ragged end, then zeros
      const __mmask16 k = lane_mask(valid - j);
      __m512 e = _mm512_maskz_mov_ps(k, exp2_512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, sr + j), sc, mv)));
      sum0 = _mm512_add_ps(sum0, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(e)));
    }
    const float sum = _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    if (m_old == -std::numeric_limits<float>::infinity()) {   // the first chunk
      st.l[r] = sum;
    } else {
      const float alpha = std::exp2(m_old - m_new);
      st.l[r] = st.l[r] * alpha + sum;
      if (alpha != 1.0f) {
        const __m512 a = _mm512_set1_ps(alpha);
        for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(acc + r * D + d, _mm512_mul_ps(_mm512_loadu_ps(acc + r * D + d), a));
      }
    }
    st.m[r] = m_new;
  }
}

// The block's first `rows` output rows, each divided by its sum of probabilities, into out
// (rows D apart). D is a multiple of 32.
FP_FLASH void write_rows(const float* acc, const RowState& st, int64_t rows, int64_t D, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 inv = _mm512_set1_ps(1.0f / st.l[r]);
    for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(out + r * D + d, _mm512_mul_ps(_mm512_load_ps(acc + r * D + d), inv));
  }
}

// K of one head [L, D] -> panels of 32 keys: P[((panel * D/2 + p) * 32 + j) * 2 + e] = K[32 panel + j, 2p + e],
// rounded to bf16; keys past L are zero. `rows` is scratch for 32 x D values.
void pack_keys(const float* K, int64_t L, int64_t Lp, int64_t D, uint16_t* rows, uint16_t* out) {
  for (int64_t k0 = 0; k0 < Lp; k0 += PW) {
    for (int64_t j = 0; j < PW; ++j) {
      if (k0 + j < L) {
        f32_row_to_bf16(K + (k0 + j) * D, rows + j * D, D);
      } else {
        std::fill(rows + j * D, rows + (j + 1) * D, uint16_t{0});
      }
    }
    amx_pack_panel(rows, D, D / 2, out + k0 * D);
  }
}

// 32 values of a row of V (F32) as bf16, in one register.
FP_FLASH inline __m512i bf16x32(const float* v) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(v + 16), _mm512_loadu_ps(v)));
}

// V of one head [L, D] -> D/32 panels of 32 dims over all Lp keys:
// P[((t * Lp/2 + p) * 32 + j) * 2 + e] = V[2p + e, 32 t + j], rounded to bf16: a pair of keys'
// rows interleaved element by element. Keys past L are zero.
FP_FLASH void pack_values(const float* V, int64_t L, int64_t Lp, int64_t D, uint16_t* out) {
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                               24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_load_si512(kHi);
  for (int64_t key = 0; key < Lp; key += 2) {
    for (int64_t t = 0; t < D / PW; ++t) {
      __m512i a = key < L ? bf16x32(V + key * D + t * PW) : _mm512_setzero_si512();
      __m512i b = key + 1 < L ? bf16x32(V + (key + 1) * D + t * PW) : _mm512_setzero_si512();
      uint16_t* P = out + (t * (Lp / 2) + key / 2) * PW * 2;
      _mm512_storeu_si512(P, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(P + 32, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
}

void pack_queries(const float* Q, int64_t L, int64_t Lp, int64_t D, uint16_t* out) {
  for (int64_t i = 0; i < L; ++i) f32_row_to_bf16(Q + i * D, out + i * D, D);
  std::fill(out + L * D, out + Lp * D, uint16_t{0});
}

// The AMX tile product's contract (gemm.h: C[32 x 32] (+)= A[32 x kc] · P, the same panels) with
// AVX-512 BF16 dot products, for CPUs without AMX (AMD Zen 4 and 5): vdpbf16ps adds a pair of
// bf16 products to each F32 lane. Eight rows at a time: their 8 x 32 sums stay in 16 registers
// over the whole kc, each pair of k's two panel vectors is loaded once for the eight rows (the
// panel stays in L1 for the next eight), each row's pair of A values broadcast.
FP_FLASH void tile_product_dp(const uint16_t* A, int64_t lda, const uint16_t* P, int64_t kc, float* C, int64_t ldc, bool first) {
  constexpr int R = 8;
  for (int64_t r0 = 0; r0 < QR; r0 += R) {
    __m512 acc[R][2];
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    const uint16_t* a = A + r0 * lda;
    for (int64_t p = 0; p < kc / 2; ++p) {
      const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(P + p * 64));
      const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(P + p * 64 + 32));
      for (int i = 0; i < R; ++i) {
        int32_t pair;
        std::memcpy(&pair, a + i * lda + 2 * p, 4);
        const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
      }
    }
    for (int i = 0; i < R; ++i) {
      float* c = C + (r0 + i) * ldc;
      if (first) {
        _mm512_storeu_ps(c, acc[i][0]);
        _mm512_storeu_ps(c + 16, acc[i][1]);
      } else {
        _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), acc[i][0]));
        _mm512_storeu_ps(c + 16, _mm512_add_ps(_mm512_loadu_ps(c + 16), acc[i][1]));
      }
    }
  }
}

bool g_enabled = true;

}  // namespace

void flash_attention_enable(bool on) { g_enabled = on; }

bool flash_attention_bf16(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out) {
  // AMX implies AVX-512 BF16/BW/DQ (backend/cpu/isa.h); AVX-512 BF16 alone runs the dot-product tile.
  const bool amx = gemm_has_amx(), ok = amx || isa_at_least(Isa::avx512bf16);
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3);
  if (!ok || !g_enabled || D % PW != 0 || D > 256 || Lk == 0 || Lq == 0 || !(scale > 0.0f)) return false;
  auto tile = amx ? amx_tile_product : tile_product_dp;
  const int64_t BH = B * H, Lqp = (Lq + QR - 1) / QR * QR, Lkp = (Lk + PW - 1) / PW * PW;
  Tensor qb = Tensor::empty({BH * Lqp * D}, DType::I16), kb = Tensor::empty({BH * Lkp * D}, DType::I16),
         vb = Tensor::empty({BH * Lkp * D}, DType::I16);
  uint16_t *QB = reinterpret_cast<uint16_t*>(qb.data<int16_t>()), *KB = reinterpret_cast<uint16_t*>(kb.data<int16_t>()),
           *VB = reinterpret_cast<uint16_t*>(vb.data<int16_t>());
  const float *Q = q.data<float>(), *K = k.data<float>(), *V = v.data<float>();
  ThreadPool::global().parallel_for(BH, [&](int, int64_t b0, int64_t b1) {
    std::vector<uint16_t> rows(static_cast<size_t>(PW * D));
    for (int64_t bh = b0; bh < b1; ++bh) {
      pack_queries(Q + bh * Lq * D, Lq, Lqp, D, QB + bh * Lqp * D);
      pack_keys(K + bh * Lk * D, Lk, Lkp, D, rows.data(), KB + bh * Lkp * D);
      pack_values(V + bh * Lk * D, Lk, Lkp, D, VB + bh * Lkp * D);
    }
  });
  float* O = out.data<float>();
  const int64_t qblocks = Lqp / QR;
  // Row strides of the scores and probabilities, padded by a cache line so that the rows of a
  // tile do not fall into the same few L1 sets (strides that are multiples of 1 KiB would).
  // Chunks of equal length (multiples of 32), none longer than kChunkKeys: 4352 keys as 3 x 1472
  // rather than 2048 + 2048 + 256.
  const int64_t pieces = (Lkp + kChunkKeys - 1) / kChunkKeys;
  const int64_t chunk = ((Lkp + pieces - 1) / pieces + PW - 1) / PW * PW, lds = chunk + 16, ldp = chunk + 32;
  // Units of up to kGroup query blocks of one head: the blocks of a unit take each chunk of keys in
  // turn, so the chunk's K and V panels (750 KiB at 1472 keys) are read from L2 by all of them;
  // with one block per unit every block streamed the head's whole K and V (2.2 MiB at 4352 keys,
  // more than L2) from L3.
  const int64_t units_per_head = (qblocks + kGroup - 1) / kGroup;
  ThreadPool::global().parallel_for(BH * units_per_head, [&](int, int64_t u0, int64_t u1) {
    float* s = scratch<float>(4, static_cast<size_t>(QR * lds));      // a block's scores and probabilities for
    uint16_t* p = scratch<uint16_t>(5, static_cast<size_t>(QR * ldp));   // a chunk (64-byte aligned)
    float* accs = scratch<float>(6, static_cast<size_t>(kGroup * QR * D));   // each block's output so far
    alignas(64) float mx[QR * 16];   // a chunk's row maxima, 16 lanes each
    RowState states[kGroup];
    if (amx) amx_begin();
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t bh = u / units_per_head, b0 = (u % units_per_head) * kGroup, nb = std::min(kGroup, qblocks - b0);
      const uint16_t *keys = KB + bh * Lkp * D, *values = VB + bh * Lkp * D;
      for (int64_t g = 0; g < nb; ++g) std::fill(states[g].m, states[g].m + QR, -std::numeric_limits<float>::infinity());
      for (int64_t c0 = 0; c0 < Lkp; c0 += chunk) {
        const int64_t len = std::min(chunk, Lkp - c0);   // a multiple of 32
        const int64_t valid = std::min(len, Lk - c0);
        for (int64_t g = 0; g < nb; ++g) {
          const uint16_t* qrows = QB + (bh * Lqp + (b0 + g) * QR) * D;
          float* acc = accs + g * QR * D;
          for (int64_t j = 0; j < len; j += PW) {
            tile(qrows, D, keys + (c0 + j) * D, D, s + j, lds, true);
            fold_row_max(s + j, lds, valid - j, j == 0, mx);
          }
          softmax_chunk(s, lds, valid, len, scale, mx, p, ldp, states[g], acc, D);
          for (int64_t t = 0; t < D / PW; ++t) {
            tile(p, ldp, values + (t * Lkp + c0) * PW, len, acc + t * PW, D, c0 == 0);
          }
        }
      }
      for (int64_t g = 0; g < nb; ++g) {
        const int64_t i0 = (b0 + g) * QR;
        write_rows(accs + g * QR * D, states[g], std::min(QR, Lq - i0), D, O + (bh * Lq + i0) * D);
      }
    }
    if (amx) amx_end();
  });
  return true;
}

}  // namespace fluxpipe::cpu
