// The CUDA backend's own kernels: element-wise ops, row reductions (norms, softmax), the
// autoencoder's group norm, im2col, and the table builders. Plain and direct: one thread per
// element or one block per row; the speed work (fusion, bf16 activations) builds on these.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "backend/cuda/cuda_device.cuh"
#include "backend/cuda/cuda_internal.h"
#include "core/error.h"

namespace fluxpipe::cuda {
namespace {

// Sum over the block of one value per thread (kThreads threads); every thread gets the total.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();   // `part` may still be read from the previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  T t = lane < (blockDim.x >> 5) ? part[lane] : T(0);
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}
__device__ float block_max(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float t = lane < (blockDim.x >> 5) ? part[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

// ---- element-wise ----
__device__ inline float unary_f(UnaryOp op, float x) {
  switch (op) {
    case UnaryOp::gelu_tanh: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case UnaryOp::gelu_erf: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case UnaryOp::silu: return x / (1.0f + expf(-x));
    case UnaryOp::quick_gelu: return x / (1.0f + expf(-1.702f * x));
  }
  return x;
}
__global__ void k_unary(UnaryOp op, const float* x, float* out, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) out[i] = unary_f(op, x[i]);
}

struct Bcast {
  int nd;
  long long shape[8], sa[8], sb[8];
};
__device__ inline float binary_f(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
  }
  return a;
}
__global__ void k_binary(BinaryOp op, const float* a, const float* b, float* out, Bcast s, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) {
    int64_t rem = i, oa = 0, ob = 0;
    for (int d = s.nd - 1; d >= 0; --d) {
      int64_t k = rem % s.shape[d];
      rem /= s.shape[d];
      oa += k * s.sa[d];
      ob += k * s.sb[d];
    }
    out[i] = binary_f(op, a[oa], b[ob]);
  }
}
__global__ void k_binary_same(BinaryOp op, const float* a, const float* b, float* out, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) out[i] = binary_f(op, a[i], b[i]);
}

// ---- rows ----
// Mean and 1/sqrt(var + eps) of a row of D, in double as the CPU backend computes them.
__device__ void row_stats(const float* xr, int64_t D, float eps, float* mean_f, float* inv) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += xr[i];
  const double mean = block_sum(s) / static_cast<double>(D);
  double v = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    double d = xr[i] - mean;
    v += d * d;
  }
  const double var = block_sum(v) / static_cast<double>(D);
  *inv = static_cast<float>(1.0 / sqrt(var + eps));
  *mean_f = static_cast<float>(mean);
}
__global__ void k_layer_norm(const float* x, const float* w, const float* b, float eps, float* out, int64_t D) {
  const float* xr = x + blockIdx.x * D;
  float* o = out + blockIdx.x * D;
  float mf, inv;
  row_stats(xr, D, eps, &mf, &inv);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float y = (xr[i] - mf) * inv;
    if (w) y *= w[i];
    if (b) y += b[i];
    o[i] = y;
  }
}
__global__ void k_layer_norm_modulate(const float* x, const float* shift, const float* scale, float eps, float* out, int64_t L,
                                      int64_t D) {
  const int64_t r = blockIdx.x, bidx = r / L;
  const float* xr = x + r * D;
  const float *sh = shift + bidx * D, *sc = scale + bidx * D;
  float* o = out + r * D;
  float mf, inv;
  row_stats(xr, D, eps, &mf, &inv);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float y = (xr[i] - mf) * inv;
    o[i] = __fadd_rn(__fmul_rn(sc[i] + 1.0f, y), sh[i]);
  }
}
__global__ void k_rms_norm(const float* x, const float* w, float eps, float* out, int64_t D) {
  const float* xr = x + blockIdx.x * D;
  float* o = out + blockIdx.x * D;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += static_cast<double>(xr[i]) * xr[i];
  const float inv = static_cast<float>(1.0 / sqrt(block_sum(s) / static_cast<double>(D) + eps));
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) o[i] = xr[i] * inv * (w ? w[i] : 1.0f);
}
__global__ void k_add_gated(const float* x, const float* gate, const float* y, float* out, int64_t L, int64_t D, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) {
    const int64_t bidx = i / (L * D), d = i % D;
    out[i] = __fadd_rn(x[i], __fmul_rn(gate[bidx * D + d], y[i]));
  }
}

// Group norm: partial sums of each (batch, group) over many blocks (double atomics), then one
// pass that normalises (and applies SiLU).
__global__ void k_group_stats(const float* x, int64_t count, double* stats) {
  const int64_t g = blockIdx.y;
  const float* xs = x + g * count;
  double s = 0, q = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    double v = xs[i];
    s += v;
    q += v * v;
  }
  s = block_sum(s);
  q = block_sum(q);
  if (threadIdx.x == 0) {
    atomicAdd(&stats[2 * g], s);
    atomicAdd(&stats[2 * g + 1], q);
  }
}
__global__ void k_group_apply(const float* x, int64_t C, int64_t HW, int64_t cg, int groups, const float* w, const float* b,
                              float eps, bool silu, const double* stats, float* out, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) {
    const int64_t ch = (i / HW) % C, bidx = i / (HW * C), g = bidx * groups + ch / cg;
    const double cnt = static_cast<double>(cg * HW);
    const double mean = stats[2 * g] / cnt;
    const double var = fmax(stats[2 * g + 1] / cnt - mean * mean, 0.0);
    const float inv = static_cast<float>(1.0 / sqrt(var + eps));
    const float sc = inv * (w ? w[ch] : 1.0f), sh = b ? b[ch] : 0.0f;
    float o = (x[i] - static_cast<float>(mean)) * sc + sh;
    if (silu) o = o / (1.0f + expf(-o));
    out[i] = o;
  }
}

__global__ void k_rope(const float* x, const float* cs, const float* sn, float* out, int64_t H, int64_t L, int64_t P,
                       bool per_batch, int64_t n_pairs) {
  FLUXPIPE_GRID_STRIDE(i, n_pairs) {
    const int64_t p = i % P, r = i / P, l = r % L, bidx = r / (H * L);
    const int64_t t = ((per_batch ? bidx : 0) * L + l) * P + p;
    const float c = cs[t], s = sn[t], x0 = x[2 * i], x1 = x[2 * i + 1];
    out[2 * i] = c * x0 - s * x1;
    out[2 * i + 1] = s * x0 + c * x1;
  }
}

// Softmax of one row per block, F32 max, double sum (the CPU's arithmetic); a row of -inf
// (fully masked) gives zeros. Values are re-read from global memory (rows are at most a few
// thousand wide; the second read hits L2).
template <bool kAttention>
__global__ void k_softmax(const float* x, int64_t n, int64_t H, int64_t Lq, int64_t BH0, const float* bias, int64_t bias_sb,
                          int64_t bias_sh, bool causal, float* out_f32, uint16_t* out_bf16) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * n;
  const float* br = nullptr;
  int64_t qi = 0;
  if (kAttention) {
    const int64_t bh = BH0 + row / Lq, bidx = bh / H, h = bh % H;
    qi = row % Lq;
    if (bias) br = bias + bidx * bias_sb + h * bias_sh + qi * n;
  }
  auto value = [&](int64_t j) {
    float v = xr[j];
    if (kAttention) {
      if (br) v += br[j];
      if (causal && j > qi) v = -INFINITY;
    }
    return v;
  };
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, value(j));
  mx = block_max(mx);
  double sum = 0;
  if (mx != -INFINITY) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sum += expf(value(j) - mx);
  }
  sum = block_sum(sum);
  const float inv = mx == -INFINITY ? 0.0f : static_cast<float>(1.0 / sum);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    float p = mx == -INFINITY ? 0.0f : expf(value(j) - mx) * inv;
    if (out_bf16) out_bf16[row * n + j] = bf16_bits(p);
    else out_f32[row * n + j] = p;
  }
}

__global__ void k_im2col(const float* x, int64_t H, int64_t W, int64_t kh, int64_t kw, int stride, int pad_top, int pad_left,
                         int64_t OW, int64_t oy0, int64_t P, float* col_f32, uint16_t* col_bf16, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) {
    const int64_t p = i % P, k = i / P;   // col[k, p], k = (ci, ky, kx)
    const int64_t kx = k % kw, ky = (k / kw) % kh, ci = k / (kw * kh);
    const int64_t oy = oy0 + p / OW, ox = p % OW;
    const int64_t iy = oy * stride - pad_top + ky, ix = ox * stride - pad_left + kx;
    float v = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(ci * H + iy) * W + ix] : 0.0f;
    if (col_bf16) col_bf16[i] = bf16_bits(v);
    else col_f32[i] = v;
  }
}
__global__ void k_add_bias_cols(float* out, const float* bias, int64_t n, int64_t total) {
  FLUXPIPE_GRID_STRIDE(i, total) out[i] += bias[i % n];
}
__global__ void k_add_bias_channels(float* out, const float* bias, int64_t C, int64_t HW, int64_t total) {
  FLUXPIPE_GRID_STRIDE(i, total) out[i] += bias[(i / HW) % C];
}
__global__ void k_upsample(const float* x, float* out, int64_t H, int64_t W, int64_t total) {
  FLUXPIPE_GRID_STRIDE(i, total) {
    const int64_t ox = i % (2 * W), oy = (i / (2 * W)) % (2 * H), bc = i / (4 * H * W);
    out[i] = x[(bc * H + oy / 2) * W + ox / 2];
  }
}

// ---- tables ----
__global__ void k_position_bias(const float* table, int64_t heads, const int32_t* buckets, int64_t Lq, int64_t Lk,
                                const float* mask, float* out, int64_t total) {
  FLUXPIPE_GRID_STRIDE(i, total) {
    const int64_t j = i % Lk, qi = (i / Lk) % Lq, h = (i / (Lk * Lq)) % heads, bidx = i / (Lk * Lq * heads);
    float add = mask ? (1.0f - mask[bidx * Lk + j]) * -FLT_MAX : 0.0f;
    out[i] = table[static_cast<int64_t>(buckets[qi * Lk + j]) * heads + h] + add;
  }
}
__global__ void k_timestep(const float* t, int64_t dim, float time_factor, float neg_log, float* out, int64_t total) {
  FLUXPIPE_GRID_STRIDE(i, total) {
    const int64_t half = dim / 2, bidx = i / half, k = i % half;
    const float freq = expf(static_cast<float>(k) * neg_log / static_cast<float>(half));
    const float arg = (time_factor * t[bidx]) * freq;
    out[bidx * dim + k] = cosf(arg);
    out[bidx * dim + half + k] = sinf(arg);
  }
}
struct Axes {
  int n, dim[8];
};
__global__ void k_rope_tables(const float* ids, int64_t BL, Axes axes, int pairs, double theta, float* cs, float* sn) {
  FLUXPIPE_GRID_STRIDE(i, BL * pairs) {
    const int64_t bl = i / pairs;
    int j = static_cast<int>(i % pairs), a = 0;
    while (a < axes.n && j >= axes.dim[a] / 2) j -= axes.dim[a++] / 2;
    const int d = axes.dim[a];
    const double pos = ids[bl * axes.n + a];
    const double omega = 1.0 / pow(theta, static_cast<double>(2 * j) / d);
    const double angle = pos * omega;
    cs[i] = static_cast<float>(cos(angle));
    sn[i] = static_cast<float>(sin(angle));
  }
}
__global__ void k_to_u8(const float* img, int64_t H, int64_t W, uint8_t* out, int64_t total) {
  FLUXPIPE_GRID_STRIDE(i, total) {   // i over [B, H, W, 3]
    const int64_t ch = i % 3, x = (i / 3) % W, y = (i / (3 * W)) % H, bidx = i / (3 * W * H);
    float f = img[((bidx * 3 + ch) * H + y) * W + x];
    f = fminf(1.0f, fmaxf(-1.0f, f));
    out[i] = static_cast<uint8_t>(__fmul_rn(127.5f, f + 1.0f));
  }
}
__global__ void k_blend(const float* tile, int64_t C, int64_t th, int64_t tw, const float* wy, const float* wx, float* acc,
                        int64_t H, int64_t W, int64_t bidx, int64_t y0, int64_t x0, float* wsum, int64_t total) {
  FLUXPIPE_GRID_STRIDE(i, total) {   // i over [C, th, tw]
    const int64_t x = i % tw, y = (i / tw) % th, ch = i / (tw * th);
    const float wgt = __fmul_rn(wy[y], wx[x]);
    float* a = acc + ((bidx * C + ch) * H + y0 + y) * W + x0 + x;
    *a = __fadd_rn(*a, __fmul_rn(wgt, tile[i]));
    if (wsum && ch == 0) {
      float* s = wsum + (y0 + y) * W + x0 + x;
      *s = __fadd_rn(*s, wgt);
    }
  }
}

}  // namespace

void unary(UnaryOp op, const float* x, float* out, int64_t n, cudaStream_t s) {
  if (!n) return;
  k_unary<<<grid(n), kThreads, 0, s>>>(op, x, out, n);
  FLUXPIPE_CUDA_LAUNCHED("unary");
}

void binary(BinaryOp op, const float* a, const Shape& a_strides, const float* b, const Shape& b_strides, float* out,
            const Shape& out_shape, cudaStream_t s) {
  const int64_t n = numel(out_shape);
  if (!n) return;
  bool same = true;
  int64_t expect = 1;
  for (int d = static_cast<int>(out_shape.size()) - 1; d >= 0; --d) {
    if (out_shape[d] != 1 && (a_strides[d] != expect || b_strides[d] != expect)) same = false;
    expect *= out_shape[d];
  }
  if (same) {
    k_binary_same<<<grid(n), kThreads, 0, s>>>(op, a, b, out, n);
  } else {
    if (out_shape.size() > 8) throw InternalError("[binary] more than 8 dimensions");
    Bcast bc{};
    bc.nd = static_cast<int>(out_shape.size());
    for (int d = 0; d < bc.nd; ++d) {
      bc.shape[d] = out_shape[d];
      bc.sa[d] = a_strides[d];
      bc.sb[d] = b_strides[d];
    }
    k_binary<<<grid(n), kThreads, 0, s>>>(op, a, b, out, bc, n);
  }
  FLUXPIPE_CUDA_LAUNCHED("binary");
}

void layer_norm(const float* x, const float* w, const float* b, float eps, float* out, int64_t rows, int64_t D, cudaStream_t s) {
  if (!rows) return;
  k_layer_norm<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, w, b, eps, out, D);
  FLUXPIPE_CUDA_LAUNCHED("layer_norm");
}
void layer_norm_modulate(const float* x, const float* shift, const float* scale, float eps, float* out, int64_t B, int64_t L,
                         int64_t D, cudaStream_t s) {
  if (B * L == 0) return;
  k_layer_norm_modulate<<<static_cast<unsigned>(B * L), kThreads, 0, s>>>(x, shift, scale, eps, out, L, D);
  FLUXPIPE_CUDA_LAUNCHED("layer_norm_modulate");
}
void rms_norm(const float* x, const float* w, float eps, float* out, int64_t rows, int64_t D, cudaStream_t s) {
  if (!rows) return;
  k_rms_norm<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, w, eps, out, D);
  FLUXPIPE_CUDA_LAUNCHED("rms_norm");
}
void add_gated(const float* x, const float* gate, const float* y, float* out, int64_t B, int64_t L, int64_t D, cudaStream_t s) {
  const int64_t n = B * L * D;
  if (!n) return;
  k_add_gated<<<grid(n), kThreads, 0, s>>>(x, gate, y, out, L, D, n);
  FLUXPIPE_CUDA_LAUNCHED("add_gated");
}
void group_norm(const float* x, int64_t B, int64_t C, int64_t HW, int groups, const float* w, const float* b, float eps, bool silu,
                float* out, double* stats, cudaStream_t s) {
  const int64_t cg = C / groups, count = cg * HW, n = B * C * HW;
  if (!n) return;
  FLUXPIPE_CUDA_CHECK("group_norm", cudaMemsetAsync(stats, 0, sizeof(double) * 2 * B * groups, s));
  const int64_t chunks = std::min<int64_t>((count + kThreads * 8 - 1) / (kThreads * 8), 1024);
  k_group_stats<<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(B * groups)), kThreads, 0, s>>>(x, count, stats);
  FLUXPIPE_CUDA_LAUNCHED("group_norm");
  k_group_apply<<<grid(n), kThreads, 0, s>>>(x, C, HW, cg, groups, w, b, eps, silu, stats, out, n);
  FLUXPIPE_CUDA_LAUNCHED("group_norm");
}
void rope(const float* x, const float* cos, const float* sin, float* out, int64_t B, int64_t H, int64_t L, int64_t D,
          bool cos_per_batch, cudaStream_t s) {
  const int64_t n = B * H * L * (D / 2);
  if (!n) return;
  k_rope<<<grid(n), kThreads, 0, s>>>(x, cos, sin, out, H, L, D / 2, cos_per_batch, n);
  FLUXPIPE_CUDA_LAUNCHED("rope");
}
void softmax_rows(const float* x, int64_t rows, int64_t n, float* out_f32, uint16_t* out_bf16, cudaStream_t s) {
  if (!rows || !n) return;
  k_softmax<false><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, n, 1, 1, 0, nullptr, 0, 0, false, out_f32, out_bf16);
  FLUXPIPE_CUDA_LAUNCHED("softmax");
}
void attention_softmax(const float* scores, int64_t BH0, int64_t nBH, int64_t H, int64_t Lq, int64_t Lk, const float* bias,
                       int64_t bias_sb, int64_t bias_sh, bool causal, float* out_f32, uint16_t* out_bf16, cudaStream_t s) {
  if (!nBH || !Lq || !Lk) return;
  k_softmax<true><<<static_cast<unsigned>(nBH * Lq), kThreads, 0, s>>>(scores, Lk, H, Lq, BH0, bias, bias_sb, bias_sh, causal,
                                                                      out_f32, out_bf16);
  FLUXPIPE_CUDA_LAUNCHED("attention");
}
void im2col(const float* x, int64_t Cin, int64_t H, int64_t W, int64_t kh, int64_t kw, int stride, int pad_top, int pad_left,
            int64_t OW, int64_t oy0, int64_t oy1, float* col_f32, uint16_t* col_bf16, cudaStream_t s) {
  const int64_t P = (oy1 - oy0) * OW, n = Cin * kh * kw * P;
  if (!n) return;
  k_im2col<<<grid(n), kThreads, 0, s>>>(x, H, W, kh, kw, stride, pad_top, pad_left, OW, oy0, P, col_f32, col_bf16, n);
  FLUXPIPE_CUDA_LAUNCHED("conv2d");
}
void add_bias_cols(float* out, const float* bias, int64_t rows, int64_t n, cudaStream_t s) {
  if (!rows || !n) return;
  k_add_bias_cols<<<grid(rows * n), kThreads, 0, s>>>(out, bias, n, rows * n);
  FLUXPIPE_CUDA_LAUNCHED("linear");
}
void add_bias_channels(float* out, const float* bias, int64_t B, int64_t C, int64_t HW, cudaStream_t s) {
  if (!B || !C || !HW) return;
  k_add_bias_channels<<<grid(B * C * HW), kThreads, 0, s>>>(out, bias, C, HW, B * C * HW);
  FLUXPIPE_CUDA_LAUNCHED("conv2d");
}
void upsample_nearest2x(const float* x, float* out, int64_t BC, int64_t H, int64_t W, cudaStream_t s) {
  const int64_t n = BC * 4 * H * W;
  if (!n) return;
  k_upsample<<<grid(n), kThreads, 0, s>>>(x, out, H, W, n);
  FLUXPIPE_CUDA_LAUNCHED("upsample_nearest2x");
}
void position_bias(const float* table, int64_t heads, const int32_t* buckets, int64_t Lq, int64_t Lk, const float* mask,
                   int64_t B, float* out, cudaStream_t s) {
  const int64_t n = B * heads * Lq * Lk;
  if (!n) return;
  k_position_bias<<<grid(n), kThreads, 0, s>>>(table, heads, buckets, Lq, Lk, mask, out, n);
  FLUXPIPE_CUDA_LAUNCHED("t5_position_bias");
}
void timestep_embedding(const float* t, int64_t B, int64_t dim, float time_factor, float max_period, float* out,
                        cudaStream_t s) {
  const int64_t n = B * (dim / 2);
  if (!n) return;
  const float neg_log = static_cast<float>(-std::log(static_cast<double>(max_period)));
  k_timestep<<<grid(n), kThreads, 0, s>>>(t, dim, time_factor, neg_log, out, n);
  FLUXPIPE_CUDA_LAUNCHED("timestep_embedding");
}
void rope_tables(const float* ids, int64_t BL, const std::vector<int>& axes_dim, double theta, float* cos, float* sin,
                 cudaStream_t s) {
  if (axes_dim.size() > 8) throw InternalError("[rope_tables] more than 8 axes");
  Axes a{};
  a.n = static_cast<int>(axes_dim.size());
  int pairs = 0;
  for (int i = 0; i < a.n; ++i) {
    a.dim[i] = axes_dim[static_cast<size_t>(i)];
    pairs += a.dim[i] / 2;
  }
  if (!BL || !pairs) return;
  k_rope_tables<<<grid(BL * pairs), kThreads, 0, s>>>(ids, BL, a, pairs, theta, cos, sin);
  FLUXPIPE_CUDA_LAUNCHED("rope_tables");
}
void to_u8(const float* image, int64_t B, int64_t H, int64_t W, uint8_t* out, cudaStream_t s) {
  const int64_t n = B * H * W * 3;
  if (!n) return;
  k_to_u8<<<grid(n), kThreads, 0, s>>>(image, H, W, out, n);
  FLUXPIPE_CUDA_LAUNCHED("to_u8");
}
void blend_tile(const float* tile, int64_t C, int64_t th, int64_t tw, const float* wy, const float* wx, float* acc, int64_t H,
                int64_t W, int64_t b, int64_t y0, int64_t x0, float* wsum, cudaStream_t s) {
  const int64_t n = C * th * tw;
  if (!n) return;
  k_blend<<<grid(n), kThreads, 0, s>>>(tile, C, th, tw, wy, wx, acc, H, W, b, y0, x0, wsum, n);
  FLUXPIPE_CUDA_LAUNCHED("blend_tile");
}

}  // namespace fluxpipe::cuda
