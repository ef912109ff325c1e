// 3 × 3 convolutions (stride 1, any padding up to 2) by Winograd's minimal filtering F(4 × 4, 3 × 3)
// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), in F32, for CPUs
// without AMX. Each 4 × 4 block of output pixels takes 36 multiplications per (input, output)
// channel pair instead of 144, so the autoencoder's convolutions — nearly all its time — do a
// quarter of the products: 36 matrix products [tiles, Ci] · [Ci, Co] (oneDNN's F32 GEMM) between
// an input transform (6 × 6 input patches) and an output transform, both vectorised over channels.
//
// Numerics: with round_bf16 the input and the weights are first rounded to bf16 values (what the
// BF16 path computes on), then everything is F32; the transforms' rounding adds an error of a few
// 1e-6 of the output's scale (tests allow 2e-5), far below the bf16 rounding of the inputs
// themselves (the tiny golden decode: 0.0049 of its scale from the reference, the direct bf16
// convolution 0.0061). Deterministic for a fixed thread count.
//
// Memory: the transformed weights (36 / 9 of the weights, in F32) are made on first use and kept
// per weight tensor (bounded; `owner` notices when the weights are gone): about 0.8 GB for
// FLUX.1's decoder.
// Thread-safety: re-entrant (the weight cache is under a mutex); parallel on the global ThreadPool.
#pragma once

#include <cstddef>
#include <string>

#include "backend/backend.h"

namespace fluxpipe::cpu {

// Whether winograd_conv3x3 can run this convolution: x [B, H, W, Ci] and out [B, OH, OW, Co] F32
// contiguous nhwc, w [Co, Ci, 3, 3], stride 1, paddings 0-2, Ci and Co multiples of 8 — and
// whether it is switched on: FLUXPIPE_WINOGRAD=0 never, =1 wherever it can run, unset: where
// the CPU (or FLUXPIPE_ISA) has no bf16 instructions, and with AVX-512 BF16 but no AMX for 256
// channels and more in and out on 64 x 64 output pixels and more (measured: winograd.cpp,
// switched_on).
bool winograd_applies(const Tensor& x, const Tensor& w, const Conv2dParams& p, const Tensor& out);

// out = conv(x, w) + bias (bias [Co] or null). REQUIRES winograd_applies(x, w, p, out) but for
// the switch.
void winograd_conv3x3(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out,
                      bool round_bf16);

// Which 3 x 3 convolutions take the Winograd path here and why, in words (`fluxpipe devices`).
std::string winograd_policy();

// Tests and benchmarks: override the switch (-1: back to FLUXPIPE_WINOGRAD / the default).
void winograd_force(int on);
// Bytes held in transformed weights now.
size_t winograd_weight_bytes();
// Drops the transformed weights made from weights on `of` (nullptr: all), and those whose weights
// are gone. Returns the bytes freed.
size_t winograd_release(const Storage* of);
// The bytes transformed weights of `w` would take if the switch lets any convolution on it run
// here (36 * Co * Ci floats for a [Co, Ci, 3, 3] kernel; 0 otherwise).
size_t winograd_copy_bytes(const Tensor& w);

}  // namespace fluxpipe::cpu
