// fluxpipe ops: the op set models are written in. Each op validates shapes and dtypes once,
// with errors naming the op and the shapes ("[linear] x F32[4, 30] and w BF16[64, 32]: ..."),
// allocates its output (from the context's arena when there is one) and dispatches to the
// backend. Models call these, never kernels, and never touch tensor memory.
// Thread-safety: a Ctx is used by one thread.
#pragma once

#include <array>

#include <vector>

#include "backend/backend.h"
#include "core/arena.h"
#include "core/tensor.h"

namespace fluxpipe {

struct Ctx {
  Backend* backend = &cpu_backend();
  Arena* arena = nullptr;          // host outputs come from it when set (CPU backend only); else fresh allocations
  Compute compute = Compute::F32;

  // An uninitialised tensor on the backend's device.
  Tensor empty(const Shape& shape, DType dtype) const;
};

// Every op's tensor inputs must live on the context's device (an error names the op and the
// tensor otherwise), except where a comment says "host": token ids and the like are the job's
// inputs, read and checked on the host, and uploaded by the op.
namespace ops {

// ---- moving data (the only ops that cross between host and device) ----
// `t` on the context's device: `t` itself when it is there already, else a contiguous copy.
Tensor to_device(Ctx& c, const Tensor& t);
// `t` on the host: itself when it is there already, else a contiguous copy (waits for the device).
Tensor to_host(Ctx& c, const Tensor& t);
// F32 `values` of `shape` on the context's device (constants such as a step's dt).
Tensor constant(Ctx& c, const Shape& shape, const std::vector<float>& values);
// Zero-filled, on the context's device.
Tensor zeros(Ctx& c, const Shape& shape, DType dtype);

// x [..., K], w [N, K], bias [N] -> [..., N] F32.
Tensor linear(Ctx& c, const Tensor& x, const Tensor& w, const Tensor* bias = nullptr);
// q [B,H,Lq,D], k/v [B,H,Lk,D] -> [B,H,Lq,D]. See Backend::attention for bias and causal.
Tensor attention(Ctx& c, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                 const Tensor* bias = nullptr, bool causal = false);
Tensor layer_norm(Ctx& c, const Tensor& x, const Tensor* w, const Tensor* b, float eps);
Tensor rms_norm(Ctx& c, const Tensor& x, const Tensor* w, float eps);
// (1 + scale) * LayerNorm(x) + shift (no affine); x [B, L, D], shift/scale [B, 1, D]. Equal, bit
// for bit, to add(mul(add(scale, 1), layer_norm(x)), shift), in one pass over x.
Tensor layer_norm_modulate(Ctx& c, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps);
// x + gate * y; x/y [B, L, D], gate [B, 1, D]. Equal, bit for bit, to add(x, mul(gate, y)).
Tensor add_gated(Ctx& c, const Tensor& x, const Tensor& gate, const Tensor& y);
// x [B, C, H, W] (layout nhwc: [B, H, W, C]); statistics per batch and group of C / groups channels.
Tensor group_norm(Ctx& c, const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu = false,
                  Layout layout = Layout::nchw);
Tensor rope(Ctx& c, const Tensor& x, const Tensor& cos, const Tensor& sin);
// Attention's q, k, v [B, heads, L, hd] from the parts' qkv rows [B, L_p, 3 * heads * hd] placed one
// after another along L: q = rope(rms_norm(queries, q_scale, eps)), k likewise, v as it is;
// cos/sin [1 or B, L, hd/2] with L the parts' total. Equal, bit for bit, to the permuted copies,
// rms_norm, concat and rope one after another.
std::array<Tensor, 3> qkv_heads(Ctx& c, const std::vector<QkvPart>& parts, int64_t heads, const Tensor& cos,
                                const Tensor& sin, float eps);
Tensor gelu_tanh(Ctx& c, const Tensor& x);
Tensor gelu_erf(Ctx& c, const Tensor& x);
Tensor silu(Ctx& c, const Tensor& x);
Tensor quick_gelu(Ctx& c, const Tensor& x);
Tensor softmax(Ctx& c, const Tensor& x);
Tensor add(Ctx& c, const Tensor& a, const Tensor& b);
Tensor sub(Ctx& c, const Tensor& a, const Tensor& b);
Tensor mul(Ctx& c, const Tensor& a, const Tensor& b);
Tensor div(Ctx& c, const Tensor& a, const Tensor& b);
// x [B, Cin, H, W] (p.layout nhwc: [B, H, W, Cin]), w [Cout, Cin, kh, kw] -> [B, Cout, Ho, Wo]
// ([B, Ho, Wo, Cout]).
Tensor conv2d(Ctx& c, const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p);
// Each pixel repeated 2 x 2; x [B, C, H, W] (nhwc: [B, H, W, C]).
Tensor upsample_nearest2x(Ctx& c, const Tensor& x, Layout layout = Layout::nchw);
// The layout image tensors are best kept in on the context's backend: nhwc where it has
// channels-last ops (the CPU), else nchw.
Layout image_layout(const Ctx& c);
Tensor concat(Ctx& c, const std::vector<Tensor>& xs, int dim);
// Sinusoidal embedding of t [B] -> [B, dim] = [cos(args) | sin(args)], args = factor*t * freqs,
// freqs[i] = exp(-ln(max_period) * i / (dim/2)), all in float32 as the reference computes it.
Tensor timestep_embedding(Ctx& c, const Tensor& t, int dim, float time_factor = 1000.0f, float max_period = 10000.0f);
// RoPE tables for position ids [B, L, n_axes]: axis a uses axes_dim[a] dims (pairs),
// omega_j = theta^(-2j/d_a); returns {cos, sin}, each [B, L, sum(axes_dim)/2], computed in
// double from the float ids and rounded to float32.
std::pair<Tensor, Tensor> rope_tables(Ctx& c, const Tensor& ids, const std::vector<int>& axes_dim, double theta);
// Rows of `table` [V, H] (any float or block dtype) picked by `ids` [B, T] (host; integer or
// float values) -> [B, T, H] F32. UserError naming the first id outside [0, V).
Tensor embedding(Ctx& c, const Tensor& table, const Tensor& ids);
// Position ids 0..T-1 for each of B rows -> [B, T] (F32 values, on the host: ids for embedding).
Tensor arange_ids(Ctx& c, int64_t B, int64_t T);
// x [B, T, H] -> [B, H]: for each b the row at the first position of the largest id in ids[b]
// (host ids; CLIP's pooling: the first end-of-text token).
Tensor gather_rows_at_argmax(Ctx& c, const Tensor& x, const Tensor& ids);
// T5's bidirectional relative-position bucket of key j for query i (HF's arithmetic, float32 logs).
int t5_bucket(int64_t i, int64_t j, int num_buckets, int max_distance);
// T5's attention bias: table [buckets, heads] -> [1, heads, Lq, Lk] (bias[h,i,j] = table[bucket(i,j), h]);
// with mask [B, Lk] (host or device; 1 = attend), [B, heads, Lq, Lk] with (1 - mask) * lowest float added.
// The bucket of each (i, j) is integer arithmetic on positions alone, computed on the host.
Tensor t5_position_bias(Ctx& c, const Tensor& table, int64_t Lq, int64_t Lk, int max_distance, const Tensor* mask);
// The 8-bit image: image F32 [B, 3, H, W] in [-1, 1] -> U8 [B, H, W, 3] (see Backend::to_u8).
Tensor to_u8(Ctx& c, const Tensor& image);
// Tiled decoding's blend (see Backend::blend_tile): adds the weighted tile into acc (and the
// weights into wsum when given) in place. wy/wx on the context's device.
void blend_tile(Ctx& c, const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0,
                Tensor& acc, Tensor* wsum);
// A contiguous copy in `dtype` (dense float types).
Tensor to_dtype(Ctx& c, const Tensor& x, DType dtype);
Tensor contiguous(Ctx& c, const Tensor& x);

}  // namespace ops
}  // namespace fluxpipe
