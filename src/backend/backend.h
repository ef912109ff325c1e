// fluxpipe backend: the small interface every compute backend implements (the CPU, and CUDA
// GPUs in builds that have it). Backends see tensors and kernels, never models.
//
// Every method receives tensors the ops layer has already validated (shapes, dtypes,
// contiguity, and that they live on this backend's device) and an output tensor of the right
// shape, allocated through allocate(), that it must fill; backends trust them.
// A backend may queue work (CUDA: one stream); results are complete once transfer() has
// copied them to the host or synchronize() has returned. Work is ordered: a method may read
// what an earlier call wrote.
// Thread-safety: a backend may be shared; calls are made by one engine thread at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace fluxpipe {

// How matrix products compute: F32 widens every weight exactly (for comparisons with the
// reference); BF16 rounds activations to bfloat16 and accumulates in F32 (the fast path).
enum class Compute { F32, BF16 };

enum class Unary { gelu_tanh, gelu_erf, silu, quick_gelu };
enum class Binary { add, sub, mul, div };

// Where an image tensor keeps its channels: nchw [B, C, H, W] (the models' and checkpoints'
// order) or nhwc [B, H, W, C] (channels last: what the CPU's convolutions compute in, so a
// decoder kept in it skips two transposes per convolution). Only backends whose has_nhwc() is
// true are ever given nhwc tensors (the ops layer refuses the others).
enum class Layout { nchw, nhwc };

struct Conv2dParams {
  int stride = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  Layout layout = Layout::nchw;   // of x and out; the weights are always [Cout, Cin, kh, kw]
};

// One stream's rows for Backend::qkv_heads: qkv F32 [B, L, 3 * heads * hd] contiguous, and the
// RMS-norm scales [hd] of its queries and keys.
struct QkvPart {
  Tensor qkv;
  Tensor q_scale, k_scale;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

  // ---- memory ----
  // `bytes` of this device's memory, uninitialised; freed (or returned to the backend's cache)
  // when the last tensor on it goes. Throws UserError naming the size when the device is full.
  virtual std::shared_ptr<Storage> allocate(size_t bytes) = 0;
  // Copies src into dst: both contiguous, the same dtype and size, each on the host or on this
  // device (host to device, device to host, or within the device). A copy to the host has
  // completed when this returns.
  virtual void transfer(const Tensor& src, Tensor& dst) = 0;
  // Sets every byte of `out` (contiguous, on this device) to zero.
  virtual void zero(Tensor& out) = 0;
  // Waits until all queued work is done (the CPU computes as it is called: nothing to wait for).
  virtual void synchronize() {}
  // Drops copies this backend made of weights on `of` to compute faster (the CPU backend keeps
  // BF16 weights of file mappings reordered for its products, in place of the mapped pages, and
  // the autoencoder's kernels reordered or Winograd-transformed for its convolutions);
  // they are made again on next use. The memory plan calls this when it releases a part.
  // Returns the bytes freed.
  virtual size_t release_weight_copies(const Storage& of) {
    (void)of;
    return 0;
  }
  // The most bytes this backend may come to hold, beyond the weights, for copies derived from
  // weight tensor `w` (the CPU's Winograd-transformed 3 x 3 kernels: 4x the kernel in F32); the
  // memory plan counts them with the weights' part.
  virtual size_t weight_copy_bytes(const Tensor& w) const {
    (void)w;
    return 0;
  }

  // out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]); x F32 or BF16, w any float or block dtype.
  virtual void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Compute c) = 0;
  // out[B,H,Lq,D] = softmax(scale · q kᵀ + bias, causal) v; q/k/v F32 [B,H,L,D];
  // bias (optional) F32 [1 or B, 1 or H, Lq, Lk], added before the softmax.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias,
                         bool causal, Tensor& out, Compute c) = 0;
  // Over the last dimension; weight/bias optional, [D].
  virtual void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) = 0;
  virtual void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& out) = 0;
  // FLUX's modulation in one pass: out = (1 + scale) * LayerNorm(x) + shift, the LayerNorm
  // without affine; x [B, L, D], shift and scale [B, 1, D]. Rounded as layer_norm, add, mul and
  // add one after another would be (the fused op is bit-identical to them).
  virtual void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out) = 0;
  // The gated residual in one pass: out = x + gate * y; x, y [B, L, D], gate [B, 1, D]; rounded
  // as mul then add.
  virtual void add_gated(const Tensor& x, const Tensor& gate, const Tensor& y, Tensor& out) = 0;
  // x [B,C,H,W]; statistics per (batch, group of C/groups channels); `silu` applies SiLU to the
  // result in the same pass (the autoencoder always follows a group norm with SiLU).
  virtual void group_norm(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Tensor& out) = 0;
  // Whether this backend takes nhwc image tensors: Conv2dParams::layout, group_norm_nhwc and
  // upsample_nearest2x_nhwc. The defaults below are never called when it is false.
  virtual bool has_nhwc() const { return false; }
  // group_norm of x [B,H,W,C] (the same statistics; summed in another order, so equal to the
  // nchw op within rounding).
  virtual void group_norm_nhwc(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Tensor& out);
  // x [B,H,L,D]; cos/sin [1 or B, L, D/2]; rotates interleaved pairs (x[2i], x[2i+1]).
  virtual void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) = 0;
  // Attention's inputs out of qkv rows: the parts' rows one after another along L (part 0's
  // first), split into heads; q = rope(rms_norm(q rows, q_scale, eps)), k the same with k_scale,
  // v as it is. q, k, v [B, heads, L, hd]; cos/sin [1 or B, L, hd/2]. The default is those ops
  // one after another (a permuting copy per part, rms_norm, concat, rope); the CPU backend does
  // it in one pass, bit-identical to them.
  virtual void qkv_heads(const std::vector<QkvPart>& parts, const Tensor& cos, const Tensor& sin, float eps, Tensor& q,
                         Tensor& k, Tensor& v);
  virtual void unary(Unary op, const Tensor& x, Tensor& out) = 0;
  // a and b broadcast numpy-style to out's shape.
  virtual void binary(Binary op, const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void softmax(const Tensor& x, Tensor& out) = 0;
  // x [B,Cin,H,W] (p.layout nhwc: [B,H,W,Cin], and out too), w [Cout,Cin,kh,kw] (any float
  // dtype), bias [Cout] optional.
  virtual void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out,
                      Compute c) = 0;
  virtual void upsample_nearest2x(const Tensor& x, Tensor& out) = 0;
  // x [B,H,W,C] -> out [B,2H,2W,C].
  virtual void upsample_nearest2x_nhwc(const Tensor& x, Tensor& out);
  virtual void concat(const std::vector<Tensor>& xs, int dim, Tensor& out) = 0;
  // Copies x (any layout) into out (contiguous), converting the dtype.
  virtual void copy(const Tensor& x, Tensor& out) = 0;

  // ---- tables and conversions the models need besides arithmetic ----
  // out[n, :] = table[ids[n], :] as F32; table [V, H] any float or block dtype, ids I32 [N]
  // already checked to lie in [0, V), out [N, H].
  virtual void embedding(const Tensor& table, const Tensor& ids, Tensor& out) = 0;
  // T5's attention bias: out[b, h, i, j] = table[buckets[i, j], h] + (mask ? (1 - mask[b, j]) *
  // lowest float : 0); table F32 [NB, heads], buckets I32 [Lq, Lk], mask F32 [B, Lk] or null,
  // out [B, heads, Lq, Lk].
  virtual void position_bias(const Tensor& table, const Tensor& buckets, const Tensor* mask, Tensor& out) = 0;
  // t F32 [B] -> out [B, dim] = [cos(args) | sin(args)], args = time_factor * t * freqs,
  // freqs[i] = exp(-ln(max_period) * i / (dim / 2)), float32 throughout.
  virtual void timestep_embedding(const Tensor& t, float time_factor, float max_period, Tensor& out) = 0;
  // ids F32 [B, L, A] -> cos, sin [B, L, sum(axes_dim) / 2]: axis a's pairs j use
  // angle = ids[.., a] * theta^(-2j / axes_dim[a]), computed in double, rounded to float32.
  virtual void rope_tables(const Tensor& ids, const std::vector<int>& axes_dim, double theta, Tensor& cos, Tensor& sin) = 0;
  // image F32 [B, 3, H, W] -> out U8 [B, H, W, 3]: clamp to [-1, 1], then 127.5 * (x + 1)
  // truncated (the reference's conversion).
  virtual void to_u8(const Tensor& image, Tensor& out) = 0;
  // Tiled decoding's blend: acc[b, c, y0 + y, x0 + x] += wy[y] * wx[x] * tile[0, c, y, x] over
  // the tile [1, C, th, tw]; with wsum [H, W] also wsum[y0 + y, x0 + x] += wy[y] * wx[x].
  // acc F32 [B, C, H, W], wy [th], wx [tw], all F32.
  virtual void blend_tile(const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0,
                          Tensor& acc, Tensor* wsum) = 0;
};

// The CPU backend (AVX-512 with avx512_bf16 where present, AVX2, scalar otherwise).
Backend& cpu_backend();

// ---- CUDA GPUs (src/backend/cuda; a build without the toolkit answers that it has none) ----
struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;   // compute capability
  size_t total_bytes = 0, free_bytes = 0;
  int driver_version = 0, runtime_version = 0;   // 13000 = 13.0
};
// Whether this build has the CUDA backend.
bool cuda_built();
// The GPUs present. Empty with `why` set to a sentence when there are none to use: the build
// has no CUDA, no driver is loaded, or no device is present.
std::vector<CudaDeviceInfo> cuda_devices(std::string* why);
// The backend of GPU `index`, made on first use and kept for the process (one stream, one
// memory cache per device). Throws UserError saying why when there is no such GPU or the build
// has no CUDA.
Backend& cuda_backend(int index);

}  // namespace fluxpipe
