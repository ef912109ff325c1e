#include "backend/cpu/winograd.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend/cpu/dequant_avx512.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/onednn_gemm.h"
#include "backend/cpu/scratch.h"
#include "backend/cpu/weight_copies.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

// The transforms are written once over GCC vector types of L floats; the entry points below
// carry the target (AVX2 with L = 8, AVX-512 with L = 16) and inline them whole (`flatten`), so
// each copy is lowered to that ISA's registers.
template <int L>
struct Lanes {
  typedef float F __attribute__((vector_size(L * 4)));
  typedef uint32_t U __attribute__((vector_size(L * 4)));
};

template <int L>
inline typename Lanes<L>::F load(const float* p) {
  typename Lanes<L>::F v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int L>
inline void store(float* p, typename Lanes<L>::F v) {
  std::memcpy(p, &v, sizeof v);
}

// Round to the nearest bf16 value, ties to even; NaNs stay (quiet) NaNs — f32_to_bf16's rule.
template <int L>
inline typename Lanes<L>::F round_bf16(typename Lanes<L>::F v) {
  using U = typename Lanes<L>::U;
  U b;
  std::memcpy(&b, &v, sizeof b);
  U rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
  U quiet = (b | 0x400000u) & 0xFFFF0000u;
  U r = (b & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded;
  typename Lanes<L>::F out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

// o[k * os] = (Bᵀ d)[k] for the six values d[j * s]: the input transform along one axis.
template <class F>
inline void input_axis(const F* d, int s, F* o, int os) {
  const F d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
  o[0] = 4.0f * d0 - 5.0f * d2 + d4;
  o[os] = d3 + d4 - 4.0f * (d1 + d2);
  o[2 * os] = 4.0f * (d1 - d2) - d3 + d4;
  o[3 * os] = 2.0f * (d3 - d1) + d4 - d2;
  o[4 * os] = 2.0f * (d1 - d3) + d4 - d2;
  o[5 * os] = 4.0f * d1 - 5.0f * d3 + d5;
}

// o[k * os] = (Aᵀ m)[k] for the six values m[j * s]: the output transform along one axis.
template <class F>
inline void output_axis(const F* m, int s, F* o, int os) {
  const F m0 = m[0], m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s], m5 = m[5 * s];
  const F p12 = m1 + m2, d12 = m1 - m2, p34 = m3 + m4, d34 = m3 - m4;
  o[0] = m0 + p12 + p34;
  o[os] = d12 + 2.0f * d34;
  o[2 * os] = p12 + 4.0f * p34;
  o[3 * os] = d12 + 8.0f * d34 + m5;
}

// The image and its 4 × 4 output tiles, numbered row-major over (batch, tile row, tile column).
struct Geometry {
  int64_t B, H, W, Ci, Co, OH, OW, tiles_y, tiles_x, pad_top, pad_left;
  void tile(int64_t t, int64_t* b, int64_t* ty, int64_t* tx) const {
    const int64_t per_image = tiles_y * tiles_x;
    *b = t / per_image;
    *ty = t % per_image / tiles_x;
    *tx = t % tiles_x;
  }
};

// Tiles [first + tb, first + te) of a chunk of T: their 6 × 6 input patches, transformed, into
// V[36][T][Ci] (position-major, so each position is a row-major [T, Ci] matrix).
template <int L>
inline void input_tiles(const float* x, const Geometry& g, int64_t first, int64_t tb, int64_t te, int64_t T, bool round,
                        float* V) {
  using F = typename Lanes<L>::F;
  const F zero = {};
  for (int64_t t = tb; t < te; ++t) {
    int64_t b, ty, tx;
    g.tile(first + t, &b, &ty, &tx);
    const int64_t y0 = ty * 4 - g.pad_top, x0 = tx * 4 - g.pad_left;
    for (int64_t c = 0; c < g.Ci; c += L) {
      F d[36], u[36];
      for (int i = 0; i < 6; ++i) {
        const int64_t iy = y0 + i;
        for (int j = 0; j < 6; ++j) {
          const int64_t ix = x0 + j;
          if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) {
            d[i * 6 + j] = zero;
          } else {
            F v = load<L>(x + ((b * g.H + iy) * g.W + ix) * g.Ci + c);
            d[i * 6 + j] = round ? round_bf16<L>(v) : v;
          }
        }
      }
      for (int j = 0; j < 6; ++j) input_axis(d + j, 6, u + j, 6);      // columns: u = Bᵀ d
      for (int k = 0; k < 6; ++k) input_axis(u + k * 6, 1, d + k * 6, 1);   // rows: d = u B
      for (int p = 0; p < 36; ++p) store<L>(V + (p * T + t) * g.Ci + c, d[p]);
    }
  }
}

// The products' tiles M[36][T][Co] back to 4 × 4 output pixels, plus the bias.
template <int L>
inline void output_tiles(const float* M, const Geometry& g, int64_t first, int64_t tb, int64_t te, int64_t T,
                         const float* bias, float* out) {
  using F = typename Lanes<L>::F;
  for (int64_t t = tb; t < te; ++t) {
    int64_t b, ty, tx;
    g.tile(first + t, &b, &ty, &tx);
    const int64_t oy0 = ty * 4, ox0 = tx * 4;
    const int rows = static_cast<int>(std::min<int64_t>(4, g.OH - oy0)), cols = static_cast<int>(std::min<int64_t>(4, g.OW - ox0));
    for (int64_t c = 0; c < g.Co; c += L) {
      F m[36], s[24], o[16];
      for (int p = 0; p < 36; ++p) m[p] = load<L>(M + (p * T + t) * g.Co + c);
      for (int l = 0; l < 6; ++l) output_axis(m + l, 6, s + l, 6);        // columns: s [4][6] = Aᵀ m
      for (int a = 0; a < 4; ++a) output_axis(s + a * 6, 1, o + a * 4, 1);   // rows: o [4][4] = s A
      const F bv = bias ? load<L>(bias + c) : F{};
      for (int a = 0; a < rows; ++a) {
        float* row = out + ((b * g.OH + oy0 + a) * g.OW + ox0) * g.Co + c;
        for (int e = 0; e < cols; ++e) store<L>(row + e * g.Co, o[a * 4 + e] + bv);
      }
    }
  }
}

#define FP_WINO_AVX2 __attribute__((target("avx2,fma"), flatten))
#define FP_WINO_AVX512 __attribute__((target("avx512f"), flatten))

FP_WINO_AVX2 void input_tiles_avx2(const float* x, const Geometry& g, int64_t first, int64_t tb, int64_t te, int64_t T,
                                   bool round, float* V) {
  input_tiles<8>(x, g, first, tb, te, T, round, V);
}
FP_WINO_AVX512 void input_tiles_avx512(const float* x, const Geometry& g, int64_t first, int64_t tb, int64_t te, int64_t T,
                                       bool round, float* V) {
  input_tiles<16>(x, g, first, tb, te, T, round, V);
}
FP_WINO_AVX2 void output_tiles_avx2(const float* M, const Geometry& g, int64_t first, int64_t tb, int64_t te, int64_t T,
                                    const float* bias, float* out) {
  output_tiles<8>(M, g, first, tb, te, T, bias, out);
}
FP_WINO_AVX512 void output_tiles_avx512(const float* M, const Geometry& g, int64_t first, int64_t tb, int64_t te,
                                        int64_t T, const float* bias, float* out) {
  output_tiles<16>(M, g, first, tb, te, T, bias, out);
}

// G, the weight transform: U = G g Gᵀ for each 3 × 3 kernel g.
constexpr double kG[6][3] = {{1.0 / 4, 0, 0},
                             {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                             {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                             {1.0 / 24, 1.0 / 12, 1.0 / 6},
                             {1.0 / 24, -1.0 / 12, 1.0 / 6},
                             {0, 0, 1}};

// Transformed weights U[36][Co][Ci] (each position a [Co, Ci] matrix: the GEMM's B rows), with
// whether they were rounded to bf16 values first.
struct Transformed {
  bool rounded;
  std::shared_ptr<std::vector<float>> u;
};

struct WeightCache {
  std::mutex mu;
  WeightCopies<Transformed> copies;
};

WeightCache& cache() {
  static WeightCache c;
  return c;
}

constexpr size_t kMaxTransformedBytes = size_t{2} << 30;   // FLUX.1's decoder needs about 0.8 GB

std::shared_ptr<std::vector<float>> transform_weights(const Tensor& w, bool round) {
  const int64_t Co = w.size(0), Ci = w.size(1);
  std::vector<float> g = w.to_floats();
  if (round) round_to_bf16_values(g.data(), static_cast<int64_t>(g.size()));   // as onednn_conv.cpp rounds its kernels
  auto u = std::make_shared<std::vector<float>>(static_cast<size_t>(36 * Co * Ci));
  float* U = u->data();
  ThreadPool::global().parallel_for(Co, [&](int, int64_t b, int64_t e) {
    for (int64_t co = b; co < e; ++co) {
      for (int64_t ci = 0; ci < Ci; ++ci) {
        const float* k = g.data() + (co * Ci + ci) * 9;
        double t[6][3];   // G g
        for (int i = 0; i < 6; ++i) {
          for (int j = 0; j < 3; ++j) t[i][j] = kG[i][0] * k[j] + kG[i][1] * k[3 + j] + kG[i][2] * k[6 + j];
        }
        for (int i = 0; i < 6; ++i) {
          for (int l = 0; l < 6; ++l) {
            const double v = t[i][0] * kG[l][0] + t[i][1] * kG[l][1] + t[i][2] * kG[l][2];   // (G g Gᵀ)[i][l]
            U[((i * 6 + l) * Co + co) * Ci + ci] = static_cast<float>(v);
          }
        }
      }
    }
  });
  return u;
}

std::shared_ptr<std::vector<float>> weights_for(const Tensor& w, bool round) {
  WeightCache& c = cache();
  const void* addr = w.data<uint8_t>();
  {
    std::lock_guard lock(c.mu);
    const Transformed* hit = c.copies.find(addr, w.storage(), [&](const Transformed& t) { return t.rounded == round; });
    if (hit) return hit->u;
  }
  std::shared_ptr<std::vector<float>> u = transform_weights(w, round);   // outside the lock: it takes a while
  std::lock_guard lock(c.mu);
  c.copies.add(addr, w.storage(), Transformed{round, u}, u->size() * 4, kMaxTransformedBytes);
  return u;
}

// M[p][0:rows] = V[p][0:rows] · U[p]ᵀ for the 36 positions (V [36][T][Ci], U [36][Co][Ci], M
// [36][T][Co]), one oneDNN F32 GEMM each, one after another (see switched_on for what else was tried).
void products(const float* V, const float* U, float* M, int64_t rows, int64_t T, int64_t Ci, int64_t Co) {
  for (int64_t p = 0; p < 36; ++p) {
    const float* A = V + p * T * Ci;
    BMatrix Bm{DType::F32, reinterpret_cast<const uint8_t*>(U + p * Co * Ci), Ci * 4};
    float* C = M + p * T * Co;
    if (!onednn_gemm_f32(A, Ci, Bm, C, Co, rows, Co, Ci, false)) gemm(A, Ci, Bm, C, Co, rows, Co, Ci, Compute::F32, true);
  }
}

std::atomic<int> g_forced{-1};

int env_switch() {
  static const int v = [] {
    const char* s = std::getenv("FLUXPIPE_WINOGRAD");
    if (!s || !*s) return -1;
    std::string t(s);
    if (t == "0") return 0;
    if (t == "1") return 1;
    throw UserError("FLUXPIPE_WINOGRAD must be 0 or 1, not '" + t + "'");
  }();
  return v;
}

// The default, measured on a Zen 5 (`core_bench --conv 256`: the decoder's shapes, direct and
// Winograd interleaved, best of 3). Without bf16 dot products the F32 direct convolution does 4x
// the products: Winograd took 0.31-0.41 of its time at every shape (the decode at 256² from 3.73
// to 1.52 s). With AVX-512 BF16 but no AMX a Winograd product runs at about half the bf16 rate:
// 0.70-0.85 of the direct time at 256 channels and more in and out on 64² pixels and more, 0.98-1.05
// at 128 channels (the transforms' memory traffic is as large as the products there) and 1.04 on
// 32² (64 tiles: too few rows for the products). With AMX tiles the direct convolution is several
// times faster. One oneDNN call per position (36 per chunk) from several threads at once gave
// wrong results, and one batched matmul over the 36 was slower (0.99 against 0.89 s for the decode).
bool switched_on(int64_t Ci, int64_t Co, int64_t pixels) {
  int forced = g_forced.load();
  if (forced >= 0) return forced == 1;
  int env = env_switch();
  if (env >= 0) return env == 1;
  if (isa_at_least(Isa::amx)) return false;
  return !isa_at_least(Isa::avx512bf16) || (Ci >= 256 && Co >= 256 && pixels >= 64 * 64);
}

}  // namespace

bool winograd_applies(const Tensor& x, const Tensor& w, const Conv2dParams& p, const Tensor& out) {
  if (!isa_at_least(Isa::avx2)) return false;
  if (p.layout != Layout::nhwc || p.stride != 1 || x.dim() != 4 || w.dim() != 4 || out.dim() != 4) return false;
  if (x.dtype() != DType::F32 || out.dtype() != DType::F32 || !x.is_contiguous() || !out.is_contiguous()) return false;
  if (w.size(2) != 3 || w.size(3) != 3 || w.size(1) != x.size(3) || w.size(0) != out.size(3)) return false;
  for (int pad : {p.pad_top, p.pad_left, p.pad_bottom, p.pad_right}) {
    if (pad < 0 || pad > 2) return false;
  }
  if (x.size(3) % 8 != 0 || out.size(3) % 8 != 0 || !switched_on(x.size(3), out.size(3), out.size(1) * out.size(2))) return false;
  return out.size(1) == x.size(1) + p.pad_top + p.pad_bottom - 2 && out.size(2) == x.size(2) + p.pad_left + p.pad_right - 2 &&
         out.size(0) == x.size(0) && out.size(1) > 0 && out.size(2) > 0;
}

void winograd_conv3x3(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out,
                      bool round_bf16) {
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), out.size(3), out.size(1), out.size(2), 0, 0, p.pad_top, p.pad_left};
  g.tiles_y = (g.OH + 3) / 4;
  g.tiles_x = (g.OW + 3) / 4;
  const int64_t per_image = g.tiles_y * g.tiles_x;
  const bool wide = isa_at_least(Isa::avx512) && g.Ci % 16 == 0 && g.Co % 16 == 0;
  std::shared_ptr<std::vector<float>> u = weights_for(w, round_bf16);
  std::vector<float> bv = bias ? bias->to_floats() : std::vector<float>();
  // Tiles per chunk: the chunk's transformed input and products (36 × T × channels each) about
  // 16 MiB, so that a position's [T, Ci] and [T, Co] matrices stay near the cache while the
  // weights of that position (read once per chunk) are reused over T rows. Chunks never straddle
  // two images, so an image gets the same products, bit for bit, alone or in a batch (oneDNN's
  // F32 GEMM rounds a row differently for other row counts at some ISAs).
  const int64_t T = std::min<int64_t>(per_image, std::max<int64_t>(32, (int64_t{16} << 20) / (36 * std::max(g.Ci, g.Co))));
  float* V = scratch<float>(16, static_cast<size_t>(36 * T * g.Ci));
  float* M = scratch<float>(17, static_cast<size_t>(36 * T * g.Co));
  const float* X = x.data<float>();
  float* O = out.data<float>();
  ThreadPool& pool = ThreadPool::global();
  for (int64_t first = 0, n = 0; first < g.B * per_image; first += n) {
    n = std::min(T, per_image - first % per_image);
    pool.parallel_for(n, [&](int, int64_t b, int64_t e) {
      if (wide) {
        input_tiles_avx512(X, g, first, b, e, T, round_bf16, V);
      } else {
        input_tiles_avx2(X, g, first, b, e, T, round_bf16, V);
      }
    });
    products(V, u->data(), M, n, T, g.Ci, g.Co);
    pool.parallel_for(n, [&](int, int64_t b, int64_t e) {
      if (wide) {
        output_tiles_avx512(M, g, first, b, e, T, bias ? bv.data() : nullptr, O);
      } else {
        output_tiles_avx2(M, g, first, b, e, T, bias ? bv.data() : nullptr, O);
      }
    });
  }
}

std::string winograd_policy() {
  const int forced = g_forced.load(), env = forced >= 0 ? forced : env_switch();
  if (!isa_at_least(Isa::avx2)) return "direct (Winograd needs AVX2 + FMA)";
  if (env == 0) return "direct (FLUXPIPE_WINOGRAD=0)";
  if (env == 1) return "Winograd F(4x4, 3x3) wherever it applies (FLUXPIPE_WINOGRAD=1)";
  if (isa_at_least(Isa::amx)) return "direct (oneDNN on AMX tiles is faster; FLUXPIPE_WINOGRAD=1 forces Winograd)";
  if (isa_at_least(Isa::avx512bf16)) {
    return "Winograd F(4x4, 3x3) at 256+ channels on 64x64+ pixels, direct bf16 otherwise (FLUXPIPE_WINOGRAD=0|1)";
  }
  return "Winograd F(4x4, 3x3) (a quarter of the F32 products; FLUXPIPE_WINOGRAD=0 turns it off)";
}

void winograd_force(int on) { g_forced = on; }

size_t winograd_release(const Storage* of) {
  WeightCache& c = cache();
  std::lock_guard lock(c.mu);
  return c.copies.release(of);
}

size_t winograd_copy_bytes(const Tensor& w) {
  if (w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3 || w.size(0) % 8 != 0 || w.size(1) % 8 != 0) return 0;
  if (!isa_at_least(Isa::avx2)) return 0;
  // The widest case the default allows (pixels large enough): whether any call will run it.
  if (!switched_on(w.size(1), w.size(0), int64_t{1} << 40)) return 0;
  return static_cast<size_t>(36 * w.size(0) * w.size(1)) * 4;
}

size_t winograd_weight_bytes() {
  WeightCache& c = cache();
  std::lock_guard lock(c.mu);
  return c.copies.bytes();
}

}  // namespace fluxpipe::cpu
