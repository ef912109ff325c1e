#include "backend/cpu/flash_attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/gemm.h"
#include "backend/cpu/vec_math.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

#define FP_FLASH __attribute__((target("avx512f,avx512dq,avx512bw,avx512bf16")))

constexpr int64_t QR = 32;    // query rows per unit (one AMX C block)
constexpr int64_t KCH = 128;  // keys per chunk
constexpr int64_t PW = 32;    // columns per AMX panel

// Running state of the online softmax for QR query rows, in base 2: scores are taken as
// t = s * scale * log2(e), so that e^(scale (s - s_max)) = 2^(t - t_max) and the multiply by
// log2(e) folds into the one by the scale.
struct RowState {
  alignas(64) float m[QR];        // the max (in t) each row's probabilities are taken against
  alignas(64) float l[QR * 16];   // each row's sum of probabilities, as 16 partial sums
};

// Keep a row's max unless a chunk's scores exceed it by more than this (in t, i.e. log2 units):
// the probabilities then stay below 2^12 (fine in bf16 and F32) and the row's output is rescaled
// only when the max really moves — after the first chunks, rarely.
constexpr float kMaxSlack = 12.0f;

// One chunk of QR rows: scores s[r * KCH + j], j < valid (raw Q·Kᵀ) -> probabilities
// p[r * KCH + j] as bf16 (zero past `valid`), the running state updated and each row's output
// acc[r * D ..] rescaled where its max moved. REQUIRES scale > 0.
FP_FLASH void online_softmax_chunk(const float* s, int64_t valid, float scale, RowState& st, uint16_t* p, float* acc,
                                   int64_t D) {
  const float scale2 = scale * 1.44269504088896341f;   // log2(e)
  const __m512 sc = _mm512_set1_ps(scale2);
  alignas(64) float m_new[QR];
  for (int64_t r = 0; r < QR; ++r) {
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < valid; j += 16) {
      __mmask16 k = valid - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (valid - j)) - 1);
      mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, s + r * KCH + j));
    }
    const float chunk_max = _mm512_reduce_max_ps(mx) * scale2;   // scale2 > 0: the max of the products
    m_new[r] = chunk_max > st.m[r] + kMaxSlack ? chunk_max : st.m[r];   // -inf before the first chunk
  }
  alignas(64) float alpha[QR];   // 2^(m_old - m_new): 0 for the first chunk, 1 where the max stays
  for (int64_t r = 0; r < QR; r += 16) {
    _mm512_store_ps(alpha + r, exp2_512(_mm512_sub_ps(_mm512_load_ps(st.m + r), _mm512_load_ps(m_new + r))));
  }
  for (int64_t r = 0; r < QR; ++r) {
    const __m512 mv = _mm512_set1_ps(m_new[r]);
    __m512 sum = _mm512_setzero_ps();
    const float* sr = s + r * KCH;
    uint16_t* pr = p + r * KCH;
    if (valid == KCH) {   // a whole chunk: no masks, two vectors to one bf16 store
      __m512 sum1 = _mm512_setzero_ps();
      for (int64_t j = 0; j < KCH; j += 32) {
        __m512 e0 = exp2_512(_mm512_fmsub_ps(_mm512_load_ps(sr + j), sc, mv));
        __m512 e1 = exp2_512(_mm512_fmsub_ps(_mm512_load_ps(sr + j + 16), sc, mv));
        sum = _mm512_add_ps(sum, e0);
        sum1 = _mm512_add_ps(sum1, e1);
        _mm512_store_si512(pr + j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(e1, e0)));
      }
      sum = _mm512_add_ps(sum, sum1);
    } else {
      for (int64_t j = 0; j < KCH; j += 16) {
        __mmask16 k = valid - j >= 16 ? __mmask16(0xFFFF) : valid - j <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << (valid - j)) - 1);
        __m512 e = _mm512_maskz_mov_ps(k, exp2_512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, sr + j), sc, mv)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(e)));
      }
    }
    if (m_new[r] != st.m[r]) {
      const __m512 a = _mm512_set1_ps(alpha[r]);
      _mm512_store_ps(st.l + r * 16, _mm512_fmadd_ps(_mm512_load_ps(st.l + r * 16), a, sum));
      float* o = acc + r * D;
      for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), a));
      st.m[r] = m_new[r];
    } else {
      _mm512_store_ps(st.l + r * 16, _mm512_add_ps(_mm512_load_ps(st.l + r * 16), sum));
    }
  }
}

// A row's sum of probabilities from its partial sums.
FP_FLASH float row_sum(const RowState& st, int64_t r) { return _mm512_reduce_add_ps(_mm512_load_ps(st.l + r * 16)); }

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

// V of one head [L, D] -> per chunk of 128 keys, D/32 panels of 32 dims:
// P[(((c * D/32 + t) * KCH/2 + p) * 32 + j) * 2 + e] = V[c KCH + 2p + e, 32 t + j], rounded to bf16:
// a pair of keys' rows interleaved element by element. Keys past L are zero.
FP_FLASH void pack_values(const float* V, int64_t L, int64_t Lp, int64_t D, uint16_t* out) {
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                               24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_load_si512(kHi);
  for (int64_t key = 0; key < Lp; key += 2) {
    const int64_t c = key / KCH, pp = (key % KCH) / 2;
    for (int64_t t = 0; t < D / PW; ++t) {
      __m512i a = key < L ? bf16x32(V + key * D + t * PW) : _mm512_setzero_si512();
      __m512i b = key + 1 < L ? bf16x32(V + (key + 1) * D + t * PW) : _mm512_setzero_si512();
      uint16_t* P = out + ((c * (D / PW) + t) * (KCH / 2) + pp) * PW * 2;
      _mm512_storeu_si512(P, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(P + 32, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
}

void pack_queries(const float* Q, int64_t L, int64_t Lp, int64_t D, uint16_t* out) {
  for (int64_t i = 0; i < L; ++i) f32_row_to_bf16(Q + i * D, out + i * D, D);
  std::fill(out + L * D, out + Lp * D, uint16_t{0});
}

bool g_enabled = true;

}  // namespace

void flash_attention_enable(bool on) { g_enabled = on; }

bool flash_attention_amx(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out) {
  static const bool ok = gemm_has_amx() && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bw");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3);
  if (!ok || !g_enabled || D % PW != 0 || D > 256 || Lk == 0 || Lq == 0 || !(scale > 0.0f)) return false;
  const int64_t BH = B * H, Lqp = (Lq + QR - 1) / QR * QR, Lkp = (Lk + KCH - 1) / KCH * KCH, chunks = Lkp / KCH;
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
  ThreadPool::global().parallel_for(BH * qblocks, [&](int, int64_t u0, int64_t u1) {
    alignas(64) float s[QR * KCH], acc[QR * 256];
    alignas(64) uint16_t p[QR * KCH];
    RowState st;
    amx_begin();
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t bh = u / qblocks, i0 = (u % qblocks) * QR;
      const uint16_t* qrows = QB + (bh * Lqp + i0) * D;
      std::fill(acc, acc + QR * D, 0.0f);
      std::fill(st.m, st.m + QR, -std::numeric_limits<float>::infinity());
      std::fill(st.l, st.l + QR * 16, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        for (int64_t t = 0; t < KCH / PW; ++t) {
          amx_tile_product(qrows, D, KB + bh * Lkp * D + (c * (KCH / PW) + t) * D * PW, D, s + t * PW, KCH, true);
        }
        const int64_t valid = std::min(KCH, Lk - c * KCH);
        online_softmax_chunk(s, valid, scale, st, p, acc, D);
        for (int64_t t = 0; t < D / PW; ++t) {
          amx_tile_product(p, KCH, VB + bh * Lkp * D + (c * (D / PW) + t) * KCH * PW, KCH, acc + t * PW, D, false);
        }
      }
      const int64_t rows = std::min(QR, Lq - i0);
      for (int64_t r = 0; r < rows; ++r) {
        const float inv = 1.0f / row_sum(st, r);
        float* o = O + (bh * Lq + i0 + r) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[r * D + d] * inv;
      }
    }
    amx_end();
  });
  return true;
}

}  // namespace fluxpipe::cpu
