// fluxpipe backend: the small interface every compute backend implements (CPU now, CUDA
// next). Backends see tensors and kernels, never models.
//
// Every method receives tensors the ops layer has already validated (shapes, dtypes,
// contiguity) and an output tensor of the right shape it must fill; backends trust them.
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

struct Conv2dParams {
  int stride = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

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
  // x [B,H,L,D]; cos/sin [1 or B, L, D/2]; rotates interleaved pairs (x[2i], x[2i+1]).
  virtual void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) = 0;
  virtual void unary(Unary op, const Tensor& x, Tensor& out) = 0;
  // a and b broadcast numpy-style to out's shape.
  virtual void binary(Binary op, const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void softmax(const Tensor& x, Tensor& out) = 0;
  // x [B,Cin,H,W], w [Cout,Cin,kh,kw] (any float dtype), bias [Cout] optional.
  virtual void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out,
                      Compute c) = 0;
  virtual void upsample_nearest2x(const Tensor& x, Tensor& out) = 0;
  virtual void concat(const std::vector<Tensor>& xs, int dim, Tensor& out) = 0;
  // Copies x (any layout) into out (contiguous), converting the dtype.
  virtual void copy(const Tensor& x, Tensor& out) = 0;
};

// The CPU backend (AVX-512 with avx512_bf16 where present, AVX2, scalar otherwise).
Backend& cpu_backend();

}  // namespace fluxpipe
