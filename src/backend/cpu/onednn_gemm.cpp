#include "backend/cpu/onednn_gemm.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <dnnl.hpp>

#include "backend/cpu/dequant_avx512.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/scratch.h"
#include "backend/cpu/weight_copies.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

// A bias row of N floats, added to every row of C.
dnnl::memory::desc bias_desc(int64_t N) { return dnnl::memory::desc({1, N}, dnnl::memory::data_type::f32, dnnl::memory::dims{N, 1}); }

// Runs a product made with (bias set) or without a bias of N floats, and waits for it.
void execute(const dnnl::matmul& mm, const dnnl::engine& eng, const dnnl::memory& a, const dnnl::memory& b,
             const dnnl::memory& c, const float* bias, int64_t N) {
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
  if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bias_desc(N), eng, const_cast<float*>(bias)));
  dnnl::stream stream(eng);
  mm.execute(stream, args);
  stream.wait();
}

struct Engine {
  bool isa_held = (isa_apply_to_onednn(), true);   // before the engine: FLUXPIPE_ISA holds oneDNN too
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::mutex mu;
  // (M, N, K, lda, ldc, input type, bias): A [M, K] row stride lda, B [N, K] rows of K, C F32,
  // bias F32 [1, N] or none.
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, bool>, dnnl::matmul> cache;

  dnnl::matmul get(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldc, dnnl::memory::data_type in, bool bias) {
    std::lock_guard lock(mu);
    auto key = std::make_tuple(M, N, K, lda, ldc, static_cast<int>(in), bias);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    using dt = dnnl::memory::data_type;
    dnnl::memory::desc a({M, K}, in, dnnl::memory::dims{lda, 1});
    dnnl::memory::desc b({K, N}, in, dnnl::memory::dims{1, K});   // B[n, k] row-major = Bᵀ
    dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{ldc, 1});
    dnnl::matmul mm(dnnl::matmul::primitive_desc(bias ? dnnl::matmul::desc(a, b, bias_desc(N), c) : dnnl::matmul::desc(a, b, c), eng));
    if (cache.size() > 256) cache.clear();
    cache.emplace(key, mm);
    return mm;
  }
};

Engine& engine() {
  static Engine e;
  return e;
}

// BF16 weights [N, K] of a file mapping, reordered once into the layout oneDNN's kernel reads
// (kept in a WeightCopies, which notices when the mapping is gone).
struct PackedWeights {
  int64_t N, K;
  dnnl::memory::desc desc;
  Tensor data;   // U8, desc.get_size() bytes
};

// Products on packed weights, by (M, N, K, ldc): the primitive made for the packed layout.
struct PackedProduct {
  dnnl::memory::desc weights;
  dnnl::matmul mm;
};

struct PackCache {
  std::mutex mu;
  std::atomic<bool> on = [] {
    const char* v = std::getenv("FLUXPIPE_PACK_WEIGHTS");
    return !(v && std::string(v) == "0");
  }();
  WeightCopies<PackedWeights> weights;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>, PackedProduct> products;   // (M, N, K, ldc, bias)
  std::set<std::pair<int64_t, int64_t>> plain_only;   // (N, K) for which oneDNN wants the plain layout
};

PackCache& pack_cache() {
  static PackCache p;
  return p;
}

// The packed copy of B (BF16 rows of K, in a file mapping), made on first use; an undefined
// result when oneDNN offers no blocked layout for this shape.
std::pair<dnnl::memory::desc, Tensor> packed_weights(Engine& e, const BMatrix& B, int64_t M, int64_t N, int64_t K) {
  using dt = dnnl::memory::data_type;
  PackCache& pc = pack_cache();
  std::lock_guard lock(pc.mu);
  const std::shared_ptr<Storage>& storage = *B.owner;
  const PackedWeights* hit = pc.weights.find(B.data, storage, [&](const PackedWeights& p) { return p.N == N && p.K == K; });
  if (hit) return {hit->desc, hit->data};
  if (pc.plain_only.count({N, K})) return {};
  dnnl::memory::desc a({M, K}, dt::bf16, dnnl::memory::dims{K, 1});
  dnnl::memory::desc any({K, N}, dt::bf16, dnnl::memory::format_tag::any);
  dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{N, 1});
  dnnl::memory::desc plain({K, N}, dt::bf16, dnnl::memory::dims{1, K});
  dnnl::memory::desc want = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, any, c), e.eng).weights_desc();
  if (want == plain) {   // asked once per shape, not on every product
    pc.plain_only.insert({N, K});
    return {};
  }
  PackedWeights p{N, K, want, Tensor::empty({static_cast<int64_t>(want.get_size())}, DType::U8)};
  dnnl::memory src(plain, e.eng, const_cast<uint8_t*>(B.data)), dst(want, e.eng, p.data.data<uint8_t>());
  dnnl::stream stream(e.eng);
  dnnl::reorder(src, dst).execute(stream, src, dst);
  stream.wait();
  drop_mapped_pages(B.data, static_cast<size_t>(N * K * 2));
  const size_t bytes = p.data.nbytes();
  const PackedWeights& kept = pc.weights.add(B.data, storage, std::move(p), bytes, SIZE_MAX);   // as many as the weights
  return {kept.desc, kept.data};
}

// C = A · Bᵀ (+ bias) with B's packed copy; false when there is none (then nothing was done).
bool packed_product(Engine& e, const uint16_t* a, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
                    const float* bias) {
  using dt = dnnl::memory::data_type;
  auto [desc, data] = packed_weights(e, B, M, N, K);
  if (!data.defined()) return false;
  dnnl::matmul mm;
  {
    PackCache& pc = pack_cache();
    std::lock_guard lock(pc.mu);
    auto key = std::make_tuple(M, N, K, ldc, bias != nullptr);
    auto it = pc.products.find(key);
    if (it == pc.products.end() || !(it->second.weights == desc)) {
      dnnl::memory::desc am({M, K}, dt::bf16, dnnl::memory::dims{K, 1}), cm({M, N}, dt::f32, dnnl::memory::dims{ldc, 1});
      if (pc.products.size() > 256) pc.products.clear();
      auto d = bias ? dnnl::matmul::desc(am, desc, bias_desc(N), cm) : dnnl::matmul::desc(am, desc, cm);
      it = pc.products.insert_or_assign(key, PackedProduct{desc, dnnl::matmul(dnnl::matmul::primitive_desc(d, e.eng))}).first;
    }
    mm = it->second.mm;
  }
  dnnl::memory am(dnnl::memory::desc({M, K}, dt::bf16, dnnl::memory::dims{K, 1}), e.eng, const_cast<uint16_t*>(a));
  dnnl::memory bm(desc, e.eng, data.data<uint8_t>());
  dnnl::memory cm(dnnl::memory::desc({M, N}, dt::f32, dnnl::memory::dims{ldc, 1}), e.eng, C);
  execute(mm, e.eng, am, bm, cm, bias, N);
  return true;
}

// Strided bf16 products with an output scale, cached by everything that shapes the primitive.
struct StridedEngine {
  std::mutex mu;
  std::map<std::vector<int64_t>, dnnl::matmul> cache;
};

StridedEngine& strided() {
  static StridedEngine e;
  return e;
}

}  // namespace

bool onednn_matmul_bf16(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t b_k, int64_t b_n, float* C, int64_t ldc,
                        int64_t M, int64_t N, int64_t K, float alpha) {
  try {
    using dt = dnnl::memory::data_type;
    Engine& e = engine();
    StridedEngine& se = strided();
    uint32_t alpha_bits;
    std::memcpy(&alpha_bits, &alpha, 4);
    std::vector<int64_t> key{M, N, K, lda, b_k, b_n, ldc, alpha_bits};
    dnnl::memory::desc a({M, K}, dt::bf16, dnnl::memory::dims{lda, 1});
    dnnl::memory::desc b({K, N}, dt::bf16, dnnl::memory::dims{b_k, b_n});
    dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{ldc, 1});
    dnnl::matmul mm;
    {
      std::lock_guard lock(se.mu);
      auto it = se.cache.find(key);
      if (it == se.cache.end()) {
        dnnl::primitive_attr attr;
        if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
        if (se.cache.size() > 256) se.cache.clear();
        it = se.cache.emplace(key, dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, e.eng))).first;
      }
      mm = it->second;
    }
    dnnl::memory am(a, e.eng, const_cast<uint16_t*>(A)), bm(b, e.eng, const_cast<uint16_t*>(B)), cm(c, e.eng, C);
    execute(mm, e.eng, am, bm, cm, nullptr, N);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

void convert_rows_bf16(const float* A, int64_t lda, int64_t M, int64_t K, uint16_t* out, int64_t ldo) {
  ThreadPool::global().parallel_for(M, [&](int, int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) f32_row_to_bf16(A + m * lda, out + m * ldo, K);
  });
}

void widen_rows_bf16(const BMatrix& B, int64_t n0, int64_t count, int64_t K, uint16_t* out) {
  ThreadPool::global().parallel_for(count, [&](int, int64_t b, int64_t e) {
    std::vector<float> tmp(has_dequantize_bf16_avx512(B.dtype) ? 0 : static_cast<size_t>(K));
    for (int64_t n = b; n < e; ++n) b_row_to_bf16(B, n0 + n, 0, K, out + n * K, tmp.data());
  });
}

bool onednn_gemm_bf16(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N,
                      int64_t K, const float* bias) {
  try {
    Engine& e = engine();
    uint16_t* a = scratch<uint16_t>(2, static_cast<size_t>(M * K));
    convert_rows_bf16(A, lda, M, K, a, K);
    if (B.dtype == DType::BF16 && B.row_bytes == K * 2 && B.owner && *B.owner && (*B.owner)->file_mapped && pack_cache().on &&
        packed_product(e, a, B, C, ldc, M, N, K, bias)) {
      return true;
    }
    // Column chunks of about 16 MiB of bf16 weights: BF16 weights are read in place, others are
    // widened into a buffer that oneDNN reads while it is still in the last-level cache. BF16
    // weights go in whole below 512 rows. (Measured, best of 6: for BF16 weights, chunks were 10-25%
    // slower than one whole-N product at M = 256 (the text stream) and as fast or up to 25% faster
    // at M = 512, 1280 and 4352; for quantized weights at M = 512, chunks of 4, 8 and 16 Mi weights
    // gave quantized / BF16 of 0.84-0.93, 0.86-1.04 and 0.83-1.00.)
    bool direct = B.dtype == DType::BF16 && B.row_bytes == K * 2;
    int64_t chunk = direct && M < 512 ? N : std::max<int64_t>(64, (int64_t{8} << 20) / std::max<int64_t>(K, 1));
    chunk = std::min(chunk, N);
    uint16_t* w = direct ? nullptr : scratch<uint16_t>(3, static_cast<size_t>(chunk * K));
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      int64_t nc = std::min(chunk, N - n0);
      const uint16_t* wp;
      if (direct) {
        wp = reinterpret_cast<const uint16_t*>(B.data + n0 * B.row_bytes);
      } else {
        widen_rows_bf16(B, n0, nc, K, w);
        wp = w;
      }
      dnnl::matmul mm = e.get(M, nc, K, K, ldc, dnnl::memory::data_type::bf16, bias != nullptr);
      dnnl::memory am(dnnl::memory::desc({M, K}, dnnl::memory::data_type::bf16, dnnl::memory::dims{K, 1}), e.eng, a);
      dnnl::memory bm(dnnl::memory::desc({K, nc}, dnnl::memory::data_type::bf16, dnnl::memory::dims{1, K}), e.eng,
                      const_cast<uint16_t*>(wp));
      dnnl::memory cm(dnnl::memory::desc({M, nc}, dnnl::memory::data_type::f32, dnnl::memory::dims{ldc, 1}), e.eng,
                      C + n0);
      execute(mm, e.eng, am, bm, cm, bias ? bias + n0 : nullptr, nc);
    }
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

bool onednn_gemm_f32(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
                     bool round_bf16, const float* bias) {
  try {
    using dt = dnnl::memory::data_type;
    Engine& e = engine();
    const float* a = A;
    int64_t a_ld = lda;
    if (round_bf16) {
      float* r = scratch<float>(2, static_cast<size_t>(M * K));
      ThreadPool::global().parallel_for(M, [&](int, int64_t b, int64_t end) {
        for (int64_t m = b; m < end; ++m) {
          std::memcpy(r + m * K, A + m * lda, static_cast<size_t>(K) * 4);
          round_to_bf16_values(r + m * K, K);
        }
      });
      a = r;
      a_ld = K;
    }
    bool direct = B.dtype == DType::F32 && B.row_bytes == K * 4 && !round_bf16;
    int64_t chunk = direct ? N : std::min(N, std::max<int64_t>(64, (int64_t{2} << 20) / std::max<int64_t>(K, 1)));
    float* w = direct ? nullptr : scratch<float>(3, static_cast<size_t>(chunk * K));
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      int64_t nc = std::min(chunk, N - n0);
      const float* wp;
      if (direct) {
        wp = reinterpret_cast<const float*>(B.data + n0 * B.row_bytes);
      } else {
        ThreadPool::global().parallel_for(nc, [&](int, int64_t b, int64_t end) {
          for (int64_t n = b; n < end; ++n) {
            float* row = w + n * K;
            b_row_to_f32(B, n0 + n, 0, K, row);
            if (round_bf16 && B.dtype != DType::BF16) round_to_bf16_values(row, K);
          }
        });
        wp = w;
      }
      dnnl::matmul mm = e.get(M, nc, K, a_ld, ldc, dt::f32, bias != nullptr);
      dnnl::memory am(dnnl::memory::desc({M, K}, dt::f32, dnnl::memory::dims{a_ld, 1}), e.eng, const_cast<float*>(a));
      dnnl::memory bm(dnnl::memory::desc({K, nc}, dt::f32, dnnl::memory::dims{1, K}), e.eng, const_cast<float*>(wp));
      dnnl::memory cm(dnnl::memory::desc({M, nc}, dt::f32, dnnl::memory::dims{ldc, 1}), e.eng, C + n0);
      execute(mm, e.eng, am, bm, cm, bias ? bias + n0 : nullptr, nc);
    }
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

size_t release_packed_weights(const Storage* of) {
  PackCache& pc = pack_cache();
  std::lock_guard lock(pc.mu);
  return pc.weights.release(of);
}

size_t packed_weight_bytes() {
  PackCache& pc = pack_cache();
  std::lock_guard lock(pc.mu);
  return pc.weights.bytes();
}

void set_pack_weights(bool on) { pack_cache().on = on; }

}  // namespace fluxpipe::cpu
