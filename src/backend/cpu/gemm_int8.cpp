// Integer GEMM for Q8_0 / Q4_0 weights (see gemm_int8.h for the arithmetic and when it runs).
//
// Layout. A is quantized once per call: qa[m][k] = q + 128 as unsigned bytes (vpdpbusd multiplies
// unsigned by signed bytes), da[m][block]. B is repacked panel by panel (8 weight rows, all of K)
// into a thread's buffer: for each block, 8 groups of 4 k's, each group 8 rows x 4 bytes (one
// ymm), so one vpdpbusd of a group against 4 bytes of an A row broadcast adds 4 products to each
// of the 8 outputs. The +128 offset is taken back per block with corr = 128 · Σ w (made at repack).
// Micro-kernel: up to 4 rows of A x 8 columns, the panel streamed from L1/L2 block by block.
#include "backend/cpu/gemm_int8.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/scratch.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

constexpr int QB = 32;       // values per block (Q8_0, Q4_0 and the activations' blocks)
constexpr int PN = 8;        // weight rows per panel
constexpr int MRI = 4;       // A rows per micro-tile

#define FP_VNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#define FP_AVX2 __attribute__((target("avx2,fma,f16c")))

std::atomic<bool> g_allowed{true};
std::atomic<bool> g_no_vnni{false};

// FLUXPIPE_INT8: unset or 1 = the default, 0 = off, avx2 = the plain AVX2 kernel even where
// AVX-VNNI exists (to measure it). Anything else is an error naming the variable.
int env_mode() {
  static const int mode = [] {
    const char* v = std::getenv("FLUXPIPE_INT8");
    std::string s = v ? v : "";
    if (s.empty() || s == "1") return 1;
    if (s == "0") return 0;
    if (s == "avx2") return 2;
    throw UserError("[cpu] FLUXPIPE_INT8='" + s + "' is not 0, 1 or avx2");
  }();
  return mode;
}
bool env_allows() { return env_mode() != 0; }

bool cpu_has_avxvnni() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avxvnni") != 0;
  }();
  return v;
}

// One weight block of row n as 32 signed bytes and its scale.
void weight_block(const BMatrix& B, int64_t n, int64_t b, int8_t* w, float* d) {
  const uint8_t* p = B.data + n * B.row_bytes + b * (B.dtype == DType::Q8_0 ? 34 : 18);
  uint16_t h;
  std::memcpy(&h, p, 2);
  *d = f16_to_f32(h);
  if (B.dtype == DType::Q8_0) {
    std::memcpy(w, p + 2, QB);
  } else {
    for (int j = 0; j < 16; ++j) {
      w[j] = static_cast<int8_t>((p[2 + j] & 15) - 8);
      w[j + 16] = static_cast<int8_t>((p[2 + j] >> 4) - 8);
    }
  }
}

// Quantizes x[0, K) into q (q + 128 as unsigned bytes) and d (one per block). Scalar; the vector
// version below computes the same values (x · (127 / amax) rounded to nearest even).
void quantize_row_scalar(const float* x, int64_t K, uint8_t* q, float* d) {
  for (int64_t b = 0; b < K / QB; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < QB; ++j) amax = std::max(amax, std::fabs(x[b * QB + j]));
    d[b] = amax / 127.0f;
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int j = 0; j < QB; ++j) {
      float v = std::nearbyint(x[b * QB + j] * inv);
      v = std::min(127.0f, std::max(-127.0f, v));
      q[b * QB + j] = static_cast<uint8_t>(static_cast<int>(v) + 128);
    }
  }
}

// nearest-even(v · inv) clamped to [-127, 127], as int32.
FP_AVX2 inline __m256i to_int(__m256 v, __m256 inv, __m256 lo, __m256 hi) {
  __m256 r = _mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, r)));
}

FP_AVX2 void quantize_row_avx2(const float* x, int64_t K, uint8_t* q, float* d) {
  const __m256 sign = _mm256_set1_ps(-0.0f), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < K / QB; ++b) {
    const float* p = x + b * QB;
    __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    d[b] = amax / 127.0f;
    __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m256i i0 = to_int(v0, inv, lo, hi), i1 = to_int(v1, inv, lo, hi), i2 = to_int(v2, inv, lo, hi), i3 = to_int(v3, inv, lo, hi);
    // packs work within 128-bit lanes: the permute puts the 32 bytes back in order.
    __m256i s16a = _mm256_packs_epi32(i0, i1), s16b = _mm256_packs_epi32(i2, i3);
    __m256i s8 = _mm256_packs_epi16(s16a, s16b);
    s8 = _mm256_permutevar8x32_epi32(s8, order);
    s8 = _mm256_xor_si256(s8, _mm256_set1_epi8(static_cast<char>(0x80)));   // q + 128
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * QB), s8);
  }
}

// Panel of rows n0 .. n0+7 (rows >= N are zeros): P[b][g][r][4], dw[b][r], corr[b][r].
struct Panel {
  std::vector<uint8_t> P;
  std::vector<float> dw;
  std::vector<int32_t> corr;
  void resize(int64_t nb) {
    P.resize(static_cast<size_t>(nb) * QB * PN);
    dw.resize(static_cast<size_t>(nb) * PN);
    corr.resize(static_cast<size_t>(nb) * PN);
  }
};

void repack_scalar(const BMatrix& B, int64_t n0, int64_t N, int64_t nb, Panel& pn) {
  int8_t w[QB];
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < PN; ++r) {
      float d = 0.0f;
      if (n0 + r < N) {
        weight_block(B, n0 + r, b, w, &d);
      } else {
        std::memset(w, 0, QB);
      }
      int32_t sum = 0;
      for (int j = 0; j < QB; ++j) {
        sum += w[j];
        pn.P[static_cast<size_t>(b * QB * PN + (j / 4) * 32 + r * 4 + j % 4)] = static_cast<uint8_t>(w[j]);
      }
      pn.dw[static_cast<size_t>(b * PN + r)] = d;
      pn.corr[static_cast<size_t>(b * PN + r)] = 128 * sum;
    }
  }
}

// The same panel with AVX2: each block of the 8 rows is an 8 x 8 transpose of 4-byte groups.
FP_AVX2 void repack_avx2(const BMatrix& B, int64_t n0, int64_t N, int64_t nb, Panel& pn) {
  if (n0 + PN > N) return repack_scalar(B, n0, N, nb, pn);
  const bool q8 = B.dtype == DType::Q8_0;
  const int64_t bb = q8 ? 34 : 18;
  const __m256i ones = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1), nib = _mm256_set1_epi8(15),
                eight = _mm256_set1_epi8(8);
  for (int64_t b = 0; b < nb; ++b) {
    __m256i row[PN];
    alignas(16) uint16_t h[PN];
    for (int r = 0; r < PN; ++r) {
      const uint8_t* p = B.data + (n0 + r) * B.row_bytes + b * bb;
      std::memcpy(&h[r], p, 2);
      if (q8) {
        row[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      } else {
        __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
        __m256i both = _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs);
        row[r] = _mm256_sub_epi8(_mm256_and_si256(both, nib), eight);
      }
    }
    _mm256_storeu_ps(&pn.dw[static_cast<size_t>(b * PN)], _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h))));
    // 8 x 8 transpose of 32-bit groups: out[g] lane r = row[r] group g.
    __m256i t0 = _mm256_unpacklo_epi32(row[0], row[1]), t1 = _mm256_unpackhi_epi32(row[0], row[1]);
    __m256i t2 = _mm256_unpacklo_epi32(row[2], row[3]), t3 = _mm256_unpackhi_epi32(row[2], row[3]);
    __m256i t4 = _mm256_unpacklo_epi32(row[4], row[5]), t5 = _mm256_unpackhi_epi32(row[4], row[5]);
    __m256i t6 = _mm256_unpacklo_epi32(row[6], row[7]), t7 = _mm256_unpackhi_epi32(row[6], row[7]);
    __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    __m256i g[8] = {_mm256_permute2x128_si256(u0, u4, 0x20), _mm256_permute2x128_si256(u1, u5, 0x20),
                    _mm256_permute2x128_si256(u2, u6, 0x20), _mm256_permute2x128_si256(u3, u7, 0x20),
                    _mm256_permute2x128_si256(u0, u4, 0x31), _mm256_permute2x128_si256(u1, u5, 0x31),
                    _mm256_permute2x128_si256(u2, u6, 0x31), _mm256_permute2x128_si256(u3, u7, 0x31)};
    __m256i sum = _mm256_setzero_si256();
    uint8_t* out = &pn.P[static_cast<size_t>(b * QB * PN)];
    for (int j = 0; j < 8; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j * 32), g[j]);
      sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones, g[j]), ones16));   // Σ w per row
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&pn.corr[static_cast<size_t>(b * PN)]), _mm256_slli_epi32(sum, 7));
  }
}

// R rows of A's block b (4 bytes of each broadcast per group) against the panel's 8 rows, into
// s[r] (int32 per output). With AVX-VNNI: one vpdpbusd per group and row. Plain AVX2 (Q4_0
// only): vpmaddubsw pairs summed in int16 over the block's 8 groups — for weights in [-8, 7]
// at most 8 · 2 · 255 · 8 = 32,640, no overflow — then one vpmaddwd to int32. (Two functions,
// not one template: the plain one must be compiled without AVX-VNNI, or the compiler may fuse
// vpmaddwd + vpaddd into a VNNI instruction.)
template <int R>
FP_VNNI inline void block_vnni(const uint8_t* pb, const uint8_t* ab, int64_t K, __m256i* s) {
  for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_si256();
  for (int g = 0; g < 8; ++g) {
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + g * 32));
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, ab + r * K + g * 4, 4);
      s[r] = _mm256_dpbusd_avx_epi32(s[r], _mm256_set1_epi32(four), w);
    }
  }
}

template <int R>
FP_AVX2 inline void block_avx2(const uint8_t* pb, const uint8_t* ab, int64_t K, __m256i* s) {
  for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_si256();
  for (int g = 0; g < 8; ++g) {
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + g * 32));
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, ab + r * K + g * 4, 4);
      s[r] = _mm256_add_epi16(s[r], _mm256_maddubs_epi16(_mm256_set1_epi32(four), w));
    }
  }
  for (int r = 0; r < R; ++r) s[r] = _mm256_madd_epi16(s[r], _mm256_set1_epi16(1));
}

// Plain AVX2 for Q8_0: with 8-bit weights the unsigned form's pair sums (255 · 127 · 2) overflow
// int16, so the activations are signed bytes here (gemm_int8 flips the top bit of q + 128) and
// each pair is |w| (an unsigned byte, 128 for -128 too) times q with w's sign (vpsignb; q is in
// [-127, 127], so its negation is exact): at most 2 · 128 · 127 = 32,512, which fits; every
// group's pairs go to int32 at once (vpmaddwd). The sums are Σ q·w exactly, with no correction
// for the offset: the same integers as the other kernels.
template <int R>
FP_AVX2 inline void block_avx2_signed(const uint8_t* pb, const uint8_t* ab, int64_t K, __m256i* s) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_si256();
  for (int g = 0; g < 8; ++g) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + g * 32)), wa = _mm256_abs_epi8(w);
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, ab + r * K + g * 4, 4);
      const __m256i q = _mm256_set1_epi32(four);
      const __m256i pairs = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(q, w));
      s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(pairs, ones16));
    }
  }
}

// acc[r] += float(s[r] - corr) · (dw · da[r]) for one block (`offset`: s holds (q + 128)·w sums,
// from which corr = 128 Σ w is taken; otherwise s is Σ q·w already).
template <int R, bool offset = true>
FP_AVX2 inline void scale_block(const __m256i* s, const Panel& pn, int64_t b, const float* da, int64_t nb, __m256* acc) {
  __m256i corr = offset ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&pn.corr[static_cast<size_t>(b * PN)]))
                        : _mm256_setzero_si256();
  __m256 dw = _mm256_loadu_ps(&pn.dw[static_cast<size_t>(b * PN)]);
  for (int r = 0; r < R; ++r) {
    __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(s[r], corr));
    acc[r] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, _mm256_set1_ps(da[r * nb + b])), acc[r]);
  }
}

template <int R>
FP_AVX2 inline void store_rows(const __m256* acc, float* C, int64_t ldc, int cols) {
  for (int r = 0; r < R; ++r) {
    if (cols == PN) {
      _mm256_storeu_ps(C + r * ldc, acc[r]);
    } else {
      alignas(32) float tmp[PN];
      _mm256_store_ps(tmp, acc[r]);
      std::memcpy(C + r * ldc, tmp, static_cast<size_t>(cols) * 4);
    }
  }
}

// C[m0 .. m0+R) x [n0 .. n0+cols) from the panel and R quantized rows of A.
template <int R>
FP_VNNI void kernel_vnni(const uint8_t* qa, int64_t K, const float* da, int64_t nb, const Panel& pn, float* C, int64_t ldc,
                         int cols) {
  __m256 acc[R];
  __m256i s[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    block_vnni<R>(pn.P.data() + b * QB * PN, qa + b * QB, K, s);
    scale_block<R>(s, pn, b, da, nb, acc);
  }
  store_rows<R>(acc, C, ldc, cols);
}

// `q8`: the signed-byte block (Q8_0, its sums need no offset correction); else the unsigned one (Q4_0).
template <int R, bool q8>
FP_AVX2 void kernel_avx2(const uint8_t* qa, int64_t K, const float* da, int64_t nb, const Panel& pn, float* C, int64_t ldc,
                         int cols) {
  __m256 acc[R];
  __m256i s[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if constexpr (q8) {
      block_avx2_signed<R>(pn.P.data() + b * QB * PN, qa + b * QB, K, s);
    } else {
      block_avx2<R>(pn.P.data() + b * QB * PN, qa + b * QB, K, s);
    }
    scale_block<R, !q8>(s, pn, b, da, nb, acc);
  }
  store_rows<R>(acc, C, ldc, cols);
}

template <int R>
void kernel(bool vnni, bool q8, const uint8_t* qa, int64_t K, const float* da, int64_t nb, const Panel& pn, float* C,
            int64_t ldc, int cols) {
  if (vnni) {
    kernel_vnni<R>(qa, K, da, nb, pn, C, ldc, cols);
  } else if (q8) {
    kernel_avx2<R, true>(qa, K, da, nb, pn, C, ldc, cols);
  } else {
    kernel_avx2<R, false>(qa, K, da, nb, pn, C, ldc, cols);
  }
}

bool use_vnni() { return cpu_has_avxvnni() && !g_no_vnni.load() && env_mode() != 2; }

}  // namespace

bool gemm_int8_available(DType w) {
  if (w != DType::Q8_0 && w != DType::Q4_0) return false;   // before the env: gemm runs inside parallel loops too
  if (!g_allowed.load() || !env_allows() || !isa_at_least(Isa::avx2) || isa_at_least(Isa::avx512bf16)) return false;
  return true;
}

void gemm_int8_allow(bool on) { g_allowed.store(on); }
void gemm_int8_force_no_vnni(bool on) { g_no_vnni.store(on); }
const char* gemm_int8_kernel_name() { return use_vnni() ? "avx-vnni" : "avx2"; }

void gemm_int8(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K) {
  const int64_t nb = K / QB;
  uint8_t* qa = scratch<uint8_t>(0, static_cast<size_t>(M * K));
  float* da = scratch<float>(1, static_cast<size_t>(M * nb));
  const bool vnni = use_vnni(), q8 = B.dtype == DType::Q8_0;
  ThreadPool::global().parallel_for(M, [&](int, int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      uint8_t* q = qa + m * K;
      quantize_row_avx2(A + m * lda, K, q, da + m * nb);
      if (q8 && !vnni) {   // the signed-byte kernel: q + 128 with its top bit flipped is q
        for (int64_t k = 0; k < K; ++k) q[k] ^= 0x80;
      }
    }
  });
  const int64_t panels = (N + PN - 1) / PN;
  ThreadPool::global().parallel_for(panels, [&](int, int64_t p0, int64_t p1) {
    Panel pn;
    pn.resize(nb);
    for (int64_t p = p0; p < p1; ++p) {
      int64_t n0 = p * PN;
      int cols = static_cast<int>(std::min<int64_t>(PN, N - n0));
      repack_avx2(B, n0, N, nb, pn);
      int64_t m = 0;
      for (; m + MRI <= M; m += MRI) kernel<MRI>(vnni, q8, qa + m * K, K, da + m * nb, nb, pn, C + m * ldc + n0, ldc, cols);
      switch (M - m) {
        case 3: kernel<3>(vnni, q8, qa + m * K, K, da + m * nb, nb, pn, C + m * ldc + n0, ldc, cols); break;
        case 2: kernel<2>(vnni, q8, qa + m * K, K, da + m * nb, nb, pn, C + m * ldc + n0, ldc, cols); break;
        case 1: kernel<1>(vnni, q8, qa + m * K, K, da + m * nb, nb, pn, C + m * ldc + n0, ldc, cols); break;
        default: break;
      }
    }
  });
}

void gemm_int8_reference(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N,
                         int64_t K) {
  const int64_t nb = K / QB;
  std::vector<uint8_t> q(static_cast<size_t>(K));
  std::vector<float> d(static_cast<size_t>(nb));
  int8_t w[QB];
  for (int64_t m = 0; m < M; ++m) {
    quantize_row_scalar(A + m * lda, K, q.data(), d.data());
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        float dw;
        weight_block(B, n, b, w, &dw);
        int32_t s = 0;
        for (int j = 0; j < QB; ++j) s += (static_cast<int32_t>(q[static_cast<size_t>(b * QB + j)]) - 128) * w[j];
        acc = std::fma(static_cast<float>(s), dw * d[static_cast<size_t>(b)], acc);
      }
      C[m * ldc + n] = acc;
    }
  }
}

double gemm_int8_error_bound(const float* A, int64_t lda, const BMatrix& B, int64_t m, int64_t n, int64_t K) {
  const int64_t nb = K / QB;
  std::vector<uint8_t> q(static_cast<size_t>(K));
  std::vector<float> d(static_cast<size_t>(nb));
  quantize_row_scalar(A + m * lda, K, q.data(), d.data());
  int8_t w[QB];
  double bound = 0;
  for (int64_t b = 0; b < nb; ++b) {
    float dw;
    weight_block(B, n, b, w, &dw);
    double sw = 0;
    for (int j = 0; j < QB; ++j) sw += std::fabs(static_cast<double>(w[j]) * dw);
    bound += 0.5 * d[static_cast<size_t>(b)] * sw;
  }
  return bound;
}

}  // namespace fluxpipe::cpu
