// The CUDA backend: Backend's operations on one NVIDIA GPU, on one stream, with device memory
// from a cache (cuda_memory.cu), products through cuBLASLt (cuda_gemm.cu), conversions of
// every weight dtype (cuda_dequant.cu) and its own kernels for the rest (cuda_kernels.cu).
//
// Attention is unfused here: scores = scale · Q Kᵀ by a batched product, a softmax kernel
// (bias, causal mask), then P V, in chunks of heads that keep the scores under 1 GiB. The
// convolutions are im2col + product, in chunks of output rows. Weights of any dtype are read
// where they lie; those the product cannot take (block types, fp8, F16) are converted into a
// scratch buffer per call.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <mutex>

#include "backend/backend.h"
#include "backend/cuda/cuda_internal.h"
#include "core/error.h"

namespace fluxpipe {
namespace {

using cuda::Gemm;

constexpr size_t kScratchLimit = size_t{1} << 30;   // per chunk of attention scores / im2col columns

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int index) : index_(index), memory_(index) {
    FLUXPIPE_CUDA_CHECK("cuda", cudaSetDevice(index));
    cudaDeviceProp prop{};
    FLUXPIPE_CUDA_CHECK("cuda", cudaGetDeviceProperties(&prop, index));
    name_ = "cuda:" + std::to_string(index) + " (" + prop.name + ")";
    FLUXPIPE_CUDA_CHECK("cuda", cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    blas_ = std::make_unique<cuda::Blas>(index, stream_, memory_);
  }

  std::string name() const override { return name_; }
  Device device() const override { return Device::CUDA; }

  std::shared_ptr<Storage> allocate(size_t bytes) override {
    use();
    return memory_.allocate(bytes, "allocate");
  }

  void transfer(const Tensor& src, Tensor& dst) override {
    use();
    if (src.nbytes() != dst.nbytes() || src.dtype() != dst.dtype() || !src.is_contiguous() || !dst.is_contiguous()) {
      throw InternalError("[transfer] " + src.describe() + " -> " + dst.describe() + ": must be contiguous, same dtype and size");
    }
    if (!src.nbytes()) return;
    const bool from_dev = src.device() == Device::CUDA, to_dev = dst.device() == Device::CUDA;
    cudaMemcpyKind kind = from_dev ? (to_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                                   : (to_dev ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
    FLUXPIPE_CUDA_CHECK("transfer", cudaMemcpyAsync(dst.data<void>(), src.data<void>(), src.nbytes(), kind, stream_));
    // Pageable host memory: the host-to-device copy has read its source when the call returns;
    // a copy to the host is waited for, so the caller can read it.
    if (!to_dev) FLUXPIPE_CUDA_CHECK("transfer", cudaStreamSynchronize(stream_));
  }

  void zero(Tensor& out) override {
    use();
    if (out.nbytes()) FLUXPIPE_CUDA_CHECK("zero", cudaMemsetAsync(out.data<void>(), 0, out.nbytes(), stream_));
  }

  void synchronize() override {
    use();
    FLUXPIPE_CUDA_CHECK("synchronize", cudaStreamSynchronize(stream_));
  }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Compute c) override {
    use();
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    Tensor a = c == Compute::BF16 ? as_bf16(x) : as_f32(x);
    Tensor b = c == Compute::BF16 ? as_bf16(w) : as_f32(w);
    Gemm g;
    g.type = c == Compute::BF16 ? DType::BF16 : DType::F32;
    g.M = M, g.N = N, g.K = K;
    g.A = a.data<void>(), g.lda = K;
    g.B = b.data<void>(), g.ldb = K;
    g.C = out.data<float>(), g.ldc = N;
    blas_->gemm(g, "linear");
    if (bias) cuda::add_bias_cols(out.data<float>(), as_f32(*bias).data<float>(), M, N, stream_);
  }

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias, bool causal, Tensor& out,
                 Compute c) override {
    use();
    const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), BH = B * H;
    if (BH == 0 || Lq == 0) return;
    const bool bf16 = c == Compute::BF16;
    Tensor qq = bf16 ? as_bf16(q) : q, kk = bf16 ? as_bf16(k) : k, vv = bf16 ? as_bf16(v) : v;
    const size_t elem = bf16 ? 2 : 4;
    const int64_t per_head = Lq * Lk * static_cast<int64_t>(4 + elem);
    const int64_t chunk = std::clamp<int64_t>(static_cast<int64_t>(kScratchLimit) / std::max<int64_t>(per_head, 1), 1, BH);
    int64_t bias_sb = 0, bias_sh = 0;
    if (bias) {
      bias_sb = bias->size(0) == 1 ? 0 : bias->size(1) * Lq * Lk;
      bias_sh = bias->size(1) == 1 ? 0 : Lq * Lk;
    }
    for (int64_t bh0 = 0; bh0 < BH; bh0 += chunk) {
      const int64_t n = std::min(chunk, BH - bh0);
      Tensor scores = scratch({n, Lq, Lk}, DType::F32);
      Tensor probs = scratch({n, Lq, Lk}, bf16 ? DType::BF16 : DType::F32);
      Gemm s;
      s.type = bf16 ? DType::BF16 : DType::F32;
      s.M = Lq, s.N = Lk, s.K = D, s.batch = n, s.alpha = scale;
      s.A = qq.data<uint8_t>() + bh0 * Lq * D * elem, s.lda = D, s.sa = Lq * D;
      s.B = kk.data<uint8_t>() + bh0 * Lk * D * elem, s.ldb = D, s.sb = Lk * D;
      s.C = scores.data<float>(), s.ldc = Lk, s.sc = Lq * Lk;
      blas_->gemm(s, "attention");
      cuda::attention_softmax(scores.data<float>(), bh0, n, H, Lq, Lk, bias ? bias->data<float>() : nullptr, bias_sb, bias_sh,
                              causal, bf16 ? nullptr : probs.data<float>(), bf16 ? probs.data<uint16_t>() : nullptr, stream_);
      Gemm o;
      o.type = s.type;
      o.M = Lq, o.N = D, o.K = Lk, o.batch = n, o.b_transposed = false;
      o.A = probs.data<void>(), o.lda = Lk, o.sa = Lq * Lk;
      o.B = vv.data<uint8_t>() + bh0 * Lk * D * elem, o.ldb = D, o.sb = Lk * D;
      o.C = out.data<float>() + bh0 * Lq * D, o.ldc = D, o.sc = Lq * D;
      blas_->gemm(o, "attention");
    }
  }

  void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) override {
    use();
    const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
    Tensor wf = w ? as_f32(*w) : Tensor(), bf = b ? as_f32(*b) : Tensor();
    cuda::layer_norm(x.data<float>(), w ? wf.data<float>() : nullptr, b ? bf.data<float>() : nullptr, eps, out.data<float>(), rows,
                     D, stream_);
  }
  void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& out) override {
    use();
    const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
    Tensor wf = w ? as_f32(*w) : Tensor();
    cuda::rms_norm(x.data<float>(), w ? wf.data<float>() : nullptr, eps, out.data<float>(), rows, D, stream_);
  }
  void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out) override {
    use();
    cuda::layer_norm_modulate(x.data<float>(), shift.data<float>(), scale.data<float>(), eps, out.data<float>(), x.size(0), x.size(1),
                              x.size(2), stream_);
  }
  void add_gated(const Tensor& x, const Tensor& gate, const Tensor& y, Tensor& out) override {
    use();
    cuda::add_gated(x.data<float>(), gate.data<float>(), y.data<float>(), out.data<float>(), x.size(0), x.size(1), x.size(2), stream_);
  }
  void group_norm(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Tensor& out) override {
    use();
    Tensor wf = w ? as_f32(*w) : Tensor(), bf = b ? as_f32(*b) : Tensor();
    Tensor stats = scratch({2 * x.size(0) * groups}, DType::F64);
    cuda::group_norm(x.data<float>(), x.size(0), x.size(1), x.size(2) * x.size(3), groups, w ? wf.data<float>() : nullptr,
                     b ? bf.data<float>() : nullptr, eps, silu, out.data<float>(), stats.data<double>(), stream_);
  }
  void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) override {
    use();
    cuda::rope(x.data<float>(), cos.data<float>(), sin.data<float>(), out.data<float>(), x.size(0), x.size(1), x.size(2), x.size(3),
               cos.size(0) != 1, stream_);
  }
  void unary(Unary op, const Tensor& x, Tensor& out) override {
    use();
    cuda::unary(static_cast<cuda::UnaryOp>(op), x.data<float>(), out.data<float>(), x.numel(), stream_);
  }
  void binary(Binary op, const Tensor& a, const Tensor& b, Tensor& out) override {
    use();
    cuda::binary(static_cast<cuda::BinaryOp>(op), a.data<float>(), broadcast_strides(a, out.shape()), b.data<float>(),
                 broadcast_strides(b, out.shape()), out.data<float>(), out.shape(), stream_);
  }
  void softmax(const Tensor& x, Tensor& out) override {
    use();
    const int64_t n = x.dim() ? x.size(-1) : 1, rows = n ? x.numel() / n : 0;
    cuda::softmax_rows(x.data<float>(), rows, n, out.data<float>(), nullptr, stream_);
  }

  void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out, Compute c) override {
    use();
    const int64_t B = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
    const int64_t Cout = w.size(0), kh = w.size(2), kw = w.size(3), OH = out.size(2), OW = out.size(3), P = OH * OW;
    const int64_t Kc = Cin * kh * kw;
    const bool bf16 = c == Compute::BF16;
    const size_t elem = bf16 ? 2 : 4;
    Tensor wm = bf16 ? as_bf16(w) : as_f32(w);   // [Cout, Kc]
    const bool pointwise = kh == 1 && kw == 1 && p.stride == 1 && p.pad_top == 0 && p.pad_left == 0 && p.pad_bottom == 0 &&
                           p.pad_right == 0;
    Tensor xin = pointwise && bf16 ? as_bf16(x) : x;   // a 1x1 convolution reads x as [Cin, P] directly
    const int64_t rows_per_chunk =
        pointwise ? OH : std::clamp<int64_t>(static_cast<int64_t>(kScratchLimit / elem) / std::max<int64_t>(Kc * OW, 1), 1, OH);
    Tensor col;
    if (!pointwise) col = scratch({Kc, rows_per_chunk * OW}, bf16 ? DType::BF16 : DType::F32);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t oy0 = 0; oy0 < OH; oy0 += rows_per_chunk) {
        const int64_t oy1 = std::min(OH, oy0 + rows_per_chunk), Pc = (oy1 - oy0) * OW;
        const void* cols = nullptr;
        if (pointwise) {
          cols = xin.data<uint8_t>() + b * Cin * H * W * elem;
        } else {
          cuda::im2col(x.data<float>() + b * Cin * H * W, Cin, H, W, kh, kw, p.stride, p.pad_top, p.pad_left, OW, oy0, oy1,
                       bf16 ? nullptr : col.data<float>(), bf16 ? col.data<uint16_t>() : nullptr, stream_);
          cols = col.data<void>();
        }
        Gemm g;
        g.type = bf16 ? DType::BF16 : DType::F32;
        g.M = Cout, g.N = Pc, g.K = Kc, g.b_transposed = false;
        g.A = wm.data<void>(), g.lda = Kc;
        g.B = cols, g.ldb = Pc;
        g.C = out.data<float>() + b * Cout * P + oy0 * OW, g.ldc = P;
        blas_->gemm(g, "conv2d");
      }
    }
    if (bias) cuda::add_bias_channels(out.data<float>(), as_f32(*bias).data<float>(), B, Cout, P, stream_);
  }

  void upsample_nearest2x(const Tensor& x, Tensor& out) override {
    use();
    cuda::upsample_nearest2x(x.data<float>(), out.data<float>(), x.size(0) * x.size(1), x.size(2), x.size(3), stream_);
  }

  void concat(const std::vector<Tensor>& xs, int dim, Tensor& out) override {
    use();
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < dim; ++d) outer *= out.size(d);
    for (int d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
    const size_t es = bytes_for(out.dtype(), 1);
    const size_t dpitch = static_cast<size_t>(out.size(dim) * inner) * es;
    size_t offset = 0;
    for (const Tensor& t : xs) {
      const size_t width = static_cast<size_t>(t.size(dim) * inner) * es;
      if (width && outer) {
        FLUXPIPE_CUDA_CHECK("concat", cudaMemcpy2DAsync(out.data<uint8_t>() + offset, dpitch, t.data<void>(), width, width,
                                                        static_cast<size_t>(outer), cudaMemcpyDeviceToDevice, stream_));
      }
      offset += width;
    }
  }

  void copy(const Tensor& x, Tensor& out) override {
    use();
    if (x.dtype() == out.dtype() && x.is_contiguous()) {
      if (x.nbytes()) {
        FLUXPIPE_CUDA_CHECK("copy", cudaMemcpyAsync(out.data<void>(), x.data<void>(), x.nbytes(), cudaMemcpyDeviceToDevice, stream_));
      }
      return;
    }
    // Contiguous sources of any dtype (block types included) decode element by element.
    if (x.is_contiguous() && out.dtype() == DType::F32) return cuda::to_f32(x.dtype(), x.data<void>(), out.data<float>(), x.numel(), stream_);
    if (x.is_contiguous() && out.dtype() == DType::BF16) return cuda::to_bf16(x.dtype(), x.data<void>(), out.data<uint16_t>(), x.numel(), stream_);
    if (is_quantized(x.dtype())) {
      Tensor f = scratch(x.shape(), DType::F32);
      cuda::to_f32(x.dtype(), x.data<void>(), f.data<float>(), x.numel(), stream_);
      if (cuda::from_f32(out.dtype(), f.data<float>(), out.data<void>(), x.numel(), stream_)) return;
    } else if (cuda::strided_copy(x.dtype(), x.data<void>(), x.shape(), x.strides(), out.dtype(), out.data<void>(), stream_)) {
      return;
    }
    throw UserError("[copy] the CUDA backend cannot convert " + x.describe() + " to " + fluxpipe::name(out.dtype()));
  }

  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override {
    use();
    cuda::gather_rows(table.dtype(), table.data<void>(), table.size(1), ids.data<int32_t>(), ids.numel(), out.data<float>(), stream_);
  }
  void position_bias(const Tensor& table, const Tensor& buckets, const Tensor* mask, Tensor& out) override {
    use();
    cuda::position_bias(table.data<float>(), table.size(1), buckets.data<int32_t>(), buckets.size(0), buckets.size(1),
                        mask ? mask->data<float>() : nullptr, out.size(0), out.data<float>(), stream_);
  }
  void timestep_embedding(const Tensor& t, float time_factor, float max_period, Tensor& out) override {
    use();
    cuda::timestep_embedding(t.data<float>(), t.size(0), out.size(1), time_factor, max_period, out.data<float>(), stream_);
  }
  void rope_tables(const Tensor& ids, const std::vector<int>& axes_dim, double theta, Tensor& cos, Tensor& sin) override {
    use();
    cuda::rope_tables(ids.data<float>(), ids.size(0) * ids.size(1), axes_dim, theta, cos.data<float>(), sin.data<float>(), stream_);
  }
  void to_u8(const Tensor& image, Tensor& out) override {
    use();
    cuda::to_u8(image.data<float>(), image.size(0), image.size(2), image.size(3), out.data<uint8_t>(), stream_);
  }
  void blend_tile(const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0, Tensor& acc,
                  Tensor* wsum) override {
    use();
    cuda::blend_tile(tile.data<float>(), tile.size(1), tile.size(2), tile.size(3), wy.data<float>(), wx.data<float>(),
                     acc.data<float>(), acc.size(2), acc.size(3), b, y0, x0, wsum ? wsum->data<float>() : nullptr, stream_);
  }

 private:
  // The engine thread may not be the one that made the backend: every call selects the device.
  void use() { FLUXPIPE_CUDA_CHECK("cuda", cudaSetDevice(index_)); }

  Tensor scratch(const Shape& shape, DType dtype) {
    return Tensor::view_of(memory_.allocate(std::max<size_t>(bytes_for(dtype, numel(shape)), 1), "scratch"), 0, shape, dtype);
  }
  // The tensor as contiguous F32 / BF16 on the device: itself when it is that already, else a
  // converted scratch copy (its memory returns to the cache when the call's last use is queued).
  Tensor as_f32(const Tensor& t) {
    if (t.dtype() == DType::F32 && t.is_contiguous()) return t;
    Tensor o = scratch(t.shape(), DType::F32);
    copy(t, o);
    return o;
  }
  Tensor as_bf16(const Tensor& t) {
    if (t.dtype() == DType::BF16 && t.is_contiguous()) return t;
    Tensor o = scratch(t.shape(), DType::BF16);
    copy(t, o);
    return o;
  }
  // Element strides of contiguous `t` read at the (right-aligned) positions of `shape`; 0 where
  // it broadcasts.
  static Shape broadcast_strides(const Tensor& t, const Shape& shape) {
    Shape st(shape.size(), 0);
    const size_t off = shape.size() - t.shape().size();
    int64_t s = 1;
    for (int d = static_cast<int>(t.shape().size()) - 1; d >= 0; --d) {
      st[off + static_cast<size_t>(d)] = t.shape()[static_cast<size_t>(d)] == 1 ? 0 : s;
      s *= t.shape()[static_cast<size_t>(d)];
    }
    return st;
  }

  int index_;
  std::string name_;
  cuda::MemoryCache memory_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Blas> blas_;
};

}  // namespace

bool cuda_built() { return true; }

std::vector<CudaDeviceInfo> cuda_devices(std::string* why) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = std::string("no CUDA GPU can be used: ") + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
    return {};
  }
  if (count == 0) {
    if (why) *why = "no CUDA GPU is present";
    return {};
  }
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::vector<CudaDeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    CudaDeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.total_bytes = prop.totalGlobalMem;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) d.free_bytes = free_b;
    d.driver_version = driver;
    d.runtime_version = runtime;
    out.push_back(d);
  }
  (void)cudaGetLastError();
  if (out.empty() && why) *why = "no CUDA GPU could be queried";
  return out;
}

Backend& cuda_backend(int index) {
  static std::mutex mu;
  static std::vector<CudaBackend*> made;   // kept for the process: queued work and cached memory live with them
  std::lock_guard<std::mutex> lock(mu);
  std::string why;
  std::vector<CudaDeviceInfo> devs = cuda_devices(&why);
  if (devs.empty()) throw UserError("[device] cuda:" + std::to_string(index) + ": " + why);
  if (index < 0 || index >= static_cast<int>(devs.size())) {
    throw UserError("[device] cuda:" + std::to_string(index) + ": this machine has " + std::to_string(devs.size()) + " CUDA GPU" +
                    (devs.size() == 1 ? "" : "s") + " (cuda:0" + (devs.size() > 1 ? "..cuda:" + std::to_string(devs.size() - 1) : "") +
                    ")");
  }
  if (made.size() <= static_cast<size_t>(index)) made.resize(static_cast<size_t>(index) + 1, nullptr);
  if (!made[static_cast<size_t>(index)]) made[static_cast<size_t>(index)] = new CudaBackend(index);
  return *made[static_cast<size_t>(index)];
}

}  // namespace fluxpipe
