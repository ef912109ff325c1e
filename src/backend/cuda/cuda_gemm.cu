// Matrix products through cuBLASLt: row-major C = alpha * A · Bᵀ (or A · B) + beta * C with F32
// accumulation, for F32 (true FP32, no TF32: the comparison path) and BF16 operands (tensor
// cores). The algorithm cuBLASLt's heuristic picks is cached per problem shape.
#include <cublasLt.h>

#include <map>
#include <tuple>

#include "backend/cuda/cuda_internal.h"
#include "core/error.h"

namespace fluxpipe::cuda {
namespace {

constexpr size_t kWorkspace = size_t{32} << 20;

// The largest power of two (at most 256) dividing the address: what the kernels may assume.
uint32_t alignment(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

std::string dims(const char* type, int64_t r, int64_t c) {
  return std::string(type) + "[" + std::to_string(r) + ", " + std::to_string(c) + "]";
}

}  // namespace

struct Blas::Impl {
  int device;
  cudaStream_t stream;
  cublasLtHandle_t lt = nullptr;
  std::shared_ptr<Storage> workspace;
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, uint32_t, uint32_t, uint32_t>;
  std::map<Key, cublasLtMatmulAlgo_t> algos;
};

Blas::Blas(int device, cudaStream_t stream, MemoryCache& memory) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  impl_->stream = stream;
  cublasStatus_t st = cublasLtCreate(&impl_->lt);
  if (st != CUBLAS_STATUS_SUCCESS) throw InternalError(std::string("[cuda] cublasLtCreate: ") + cublasLtGetStatusName(st));
  impl_->workspace = memory.allocate(kWorkspace, "cuda");
}

Blas::~Blas() {
  if (impl_ && impl_->lt) cublasLtDestroy(impl_->lt);
}

void Blas::gemm(const Gemm& g, const char* op) {
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  const bool bf16 = g.type == DType::BF16;
  const cudaDataType_t ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const char* tname = bf16 ? "BF16" : "F32";
  auto describe = [&] {
    return dims(tname, g.M, g.K) + (g.b_transposed ? " x " + dims(tname, g.N, g.K) + "ᵀ" : " x " + dims(tname, g.K, g.N)) +
           (g.batch > 1 ? " (batch " + std::to_string(g.batch) + ")" : "");
  };
  auto check = [&](cublasStatus_t st, const char* call) {
    if (st != CUBLAS_STATUS_SUCCESS) {
      throw InternalError(std::string("[") + op + "] " + call + ": " + cublasLtGetStatusName(st) + " for " + describe());
    }
  };
  // Column-major view: Cᵀ[N, M] = op(B)[N, K] · Aᵀ[K, M]. cuBLASLt's first operand is our B.
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  struct Cleanup {
    cublasLtMatmulDesc_t& d;
    cublasLtMatrixLayout_t &a, &b, &c;
    cublasLtMatmulPreference_t& p;
    ~Cleanup() {
      if (p) cublasLtMatmulPreferenceDestroy(p);
      if (c) cublasLtMatrixLayoutDestroy(c);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (d) cublasLtMatmulDescDestroy(d);
    }
  } cleanup{desc, la, lb, lc, pref};

  check(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  cublasOperation_t ta = g.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "cublasLtMatmulDescSetAttribute");
  check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "cublasLtMatmulDescSetAttribute");
  if (g.b_transposed) check(cublasLtMatrixLayoutCreate(&la, ab, g.K, g.N, g.ldb), "cublasLtMatrixLayoutCreate");
  else check(cublasLtMatrixLayoutCreate(&la, ab, g.N, g.K, g.ldb), "cublasLtMatrixLayoutCreate");
  check(cublasLtMatrixLayoutCreate(&lb, ab, g.K, g.M, g.lda), "cublasLtMatrixLayoutCreate");
  check(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, g.N, g.M, g.ldc), "cublasLtMatrixLayoutCreate");
  if (g.batch > 1) {
    const int32_t count = static_cast<int32_t>(g.batch);
    const int64_t strides[3] = {g.sb, g.sa, g.sc};
    cublasLtMatrixLayout_t layouts[3] = {la, lb, lc};
    for (int i = 0; i < 3; ++i) {
      check(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count),
            "cublasLtMatrixLayoutSetAttribute");
      check(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &strides[i], sizeof strides[i]),
            "cublasLtMatrixLayoutSetAttribute");
    }
  }

  const uint32_t al_a = alignment(g.B), al_b = alignment(g.A), al_c = alignment(g.C);
  Impl::Key key{bf16 ? 1 : 0, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.batch, g.b_transposed, g.beta != 0.0f, al_a, al_b, al_c};
  auto found = impl_->algos.find(key);
  if (found == impl_->algos.end()) {
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    size_t ws = kWorkspace;
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
          "cublasLtMatmulPreferenceSetAttribute");
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c}};
    for (const auto& [attr, v] : aligns) {
      check(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof v), "cublasLtMatmulPreferenceSetAttribute");
    }
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    check(cublasLtMatmulAlgoGetHeuristic(impl_->lt, desc, la, lb, lc, lc, pref, 1, &result, &returned),
          "cublasLtMatmulAlgoGetHeuristic");
    if (returned == 0) {
      throw InternalError(std::string("[") + op + "] cublasLtMatmulAlgoGetHeuristic: no algorithm for " + describe());
    }
    found = impl_->algos.emplace(key, result.algo).first;
  }
  check(cublasLtMatmul(impl_->lt, desc, &g.alpha, g.B, la, g.A, lb, &g.beta, g.C, lc, g.C, lc, &found->second,
                       impl_->workspace->data, kWorkspace, impl_->stream),
        "cublasLtMatmul");
}

}  // namespace fluxpipe::cuda
