// Fused attention for the long, unmasked sequences of the FLUX transformer, on AMX or, without
// it, AVX-512 BF16 dot products (the same driver; only the 32 x 32 tile product differs):
// softmax(scale · Q·Kᵀ)·V computed 32 query rows at a time against chunks of up to 2048 keys:
// the block's scores and probabilities for a chunk (256 KiB and 128 KiB) stay in the core's L2
// between the products that write and read them, and the softmax of a chunk is exact (one pass
// for the row maxima, one for the exponentials); longer sequences combine chunks online as
// FlashAttention does. Q, K, V are rounded to bf16 and K and V packed into pair-interleaved
// panels once per head; the probabilities are bf16, the scores, row sums and output F32. Each
// 32-row block is computed by one thread in a fixed order, so results do not depend on the
// thread count.
// Thread-safety: re-entrant; runs on the global ThreadPool.
#pragma once

#include "core/tensor.h"

namespace fluxpipe::cpu {

// q [B,H,Lq,D], k/v [B,H,Lk,D], out [B,H,Lq,D], all contiguous F32. Applies when the CPU (or
// FLUXPIPE_ISA) has AMX or AVX-512 BF16, D is a multiple of 32 up to 256 and scale > 0; returns
// false (nothing written) otherwise.
bool flash_attention_bf16(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out);

// Benchmarks compare against the unfused path in the same run: false turns the fused kernel off
// for this process (it then returns false). Not for concurrent use.
void flash_attention_enable(bool on);

}  // namespace fluxpipe::cpu
