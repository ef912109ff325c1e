// 2-D convolution through oneDNN in BF16 (activations and weights rounded to bf16, F32
// accumulation and output), used by the CPU backend for Compute::BF16: oneDNN's blocked
// layouts and AMX/AVX-512 kernels beat our im2col + GEMM by several times on the autoencoder
// (bench/flux_bench vae).
// Thread-safety: re-entrant (primitives are cached under a mutex).
#pragma once

#include "backend/backend.h"

namespace fluxpipe::cpu {

// x [B, Cin, H, W] F32, w [Cout, Cin, kh, kw] any float dtype, bias [Cout] or null, out
// [B, Cout, OH, OW] F32 preallocated (p.layout nhwc: x [B, H, W, Cin], out [B, OH, OW, Cout],
// which is oneDNN's own layout for these: no transposes). Returns false (nothing done) when
// oneDNN cannot run it.
bool onednn_conv2d_bf16(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out);
// The same products where the CPU (or FLUXPIPE_ISA) has no bf16 instructions: x and w rounded to
// bf16 values, then oneDNN's F32 convolution (exact bf16 products, F32 sums).
bool onednn_conv2d_bf16_values_f32(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out);

// Drops the reordered weight copies made from weights on `of` (nullptr: all), and those whose
// weights are gone; they are made again on next use. Returns the bytes freed.
size_t release_conv_weights(const Storage* of);

}  // namespace fluxpipe::cpu
