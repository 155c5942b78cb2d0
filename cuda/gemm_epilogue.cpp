// cuda/ops.hpp section h: GEMMs whose epilogue does the elementwise work around them. The shape checks and, on a
// GPU, one cuBLASLt matmul each; their definitions (a GEMM and ATen ops) are in cuda/reference.cpp. cuBLASLt works column-major: a row-major
// [R, C] matrix is its column-major [C, R], so y = x w^T (row-major [M, O]) is the column-major y^T = w^T' x^T with
// m = O, n = M, k = K, where w^T' reads the stored w transposed.
#include <ATen/ATen.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "cuda/ops.hpp"
#if defined(OPENDIT_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <cublasLt.h>

#include "cuda/launch.hpp"
#endif

namespace opendit::kernels {

#if defined(OPENDIT_WITH_CUDA)
namespace cuda_impl {
namespace {

void check(cublasStatus_t s, const char* what) {
  TORCH_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt ", what, " failed: ", cublasLtGetStatusString(s));
}

template <typename T, cublasStatus_t (*Destroy)(T)>
struct Owned {  // a cuBLASLt descriptor, destroyed with its scope
  T h = nullptr;
  Owned() = default;
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() {
    if (h) Destroy(h);
  }
};
using OpDesc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Pref = Owned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// Column-major D [m, n] = op(A) [m, k] op(B) [k, n] + beta D, then the epilogue; float32 accumulation. bias: the bias read (BIAS) or the bias gradient written (BGRAD*); aux: the GELU input.
struct Gemm {
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* d = nullptr;
  int64_t ldd = 0;
  cudaDataType_t type = CUDA_R_16BF, out_type = CUDA_R_16BF;  // A and B; C and D
  float beta = 0;                                            // 1: D += op(A) op(B)
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  void* bias = nullptr;
  void* aux = nullptr;
  int64_t ldaux = 0;
};

int64_t alignment(const void* p) {  // the largest power of two up to 256 that divides the address
  const auto v = reinterpret_cast<uintptr_t>(p);
  int64_t a = 256;
  while (a > 1 && v % a) a /= 2;
  return a;
}

// A problem's descriptors and the algorithm cuBLASLt's heuristic picked for it (none: no algorithm), made once per
// distinct problem: the heuristic's pick depends on the shapes, types, epilogue and the pointers' alignments, not on
// the pointers themselves, which are set on each call. (Descriptors per call cost host time that the GPU then waits
// for at small batches.)
using Key = std::array<int64_t, 16>;
struct Plan {
  OpDesc op;
  Layout la, lb, ld;
  std::optional<cublasLtMatmulAlgo_t> algo;
};

template <typename T>
void set(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const T& value) {
  check(cublasLtMatmulDescSetAttribute(op, attr, &value, sizeof(value)), "set attribute");
}

std::unique_ptr<Plan> make_plan(const Gemm& g, cublasLtHandle_t handle, size_t workspace_size) {
  auto p = std::make_unique<Plan>();
  check(cublasLtMatmulDescCreate(&p->op.h, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
  set(p->op.h, CUBLASLT_MATMUL_DESC_TRANSA, g.ta ? CUBLAS_OP_T : CUBLAS_OP_N);
  set(p->op.h, CUBLASLT_MATMUL_DESC_TRANSB, g.tb ? CUBLAS_OP_T : CUBLAS_OP_N);
  set(p->op.h, CUBLASLT_MATMUL_DESC_EPILOGUE, g.epilogue);
  if (g.bias) set(p->op.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);  // the heuristic reads their alignment
  if (g.aux) {
    set(p->op.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set(p->op.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.ldaux);
  }
  check(cublasLtMatrixLayoutCreate(&p->la.h, g.type, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda), "layout A");
  check(cublasLtMatrixLayoutCreate(&p->lb.h, g.type, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb), "layout B");
  check(cublasLtMatrixLayoutCreate(&p->ld.h, g.out_type, g.m, g.n, g.ldd), "layout D");
  Pref pref;
  check(cublasLtMatmulPreferenceCreate(&pref.h), "preference");
  const uint64_t ws = workspace_size;
  check(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
        "workspace preference");
  const std::array<std::pair<cublasLtMatmulPreferenceAttributes_t, const void*>, 4> aligned = {
      {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, g.a},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, g.b},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, g.d},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, g.d}}};
  for (const auto& [attr, ptr] : aligned) {
    const uint32_t bytes = uint32_t(alignment(ptr));
    check(cublasLtMatmulPreferenceSetAttribute(pref.h, attr, &bytes, sizeof(bytes)), "alignment preference");
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, p->op.h, p->la.h, p->lb.h, p->ld.h, p->ld.h, pref.h, 1, &result, &found);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) p->algo = result.algo;
  return p;
}

// False when cuBLASLt offers no algorithm for this problem (the caller then runs the definition).
bool run(const Gemm& g) {
  static std::mutex mutex;
  static auto& plans = *new std::map<Key, std::unique_ptr<Plan>>;  // never freed: used until the process ends
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  const size_t workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();
  void* workspace = at::cuda::getCUDABlasLtWorkspace();
  const Key key = {g.ta + 2 * g.tb + 4 * (g.beta != 0), g.m, g.n, g.k, g.lda, g.ldb, g.ldd,
                   int64_t(g.type) * 1000 + int64_t(g.out_type), int64_t(g.epilogue), alignment(g.a), alignment(g.b),
                   alignment(g.d), alignment(g.bias), alignment(g.aux), int64_t(workspace_size), g.ldaux};
  // Held through the enqueue: the plan's descriptor gets this call's pointers.
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<Plan>& plan = plans[key];
  if (!plan) plan = make_plan(g, handle, workspace_size);
  if (!plan->algo) return false;
  if (g.bias) set(plan->op.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux) set(plan->op.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
  const float alpha = 1, beta = g.beta;
  check(cublasLtMatmul(handle, plan->op.h, &alpha, g.a, plan->la.h, g.b, plan->lb.h, &beta, g.d, plan->ld.h, g.d,
                       plan->ld.h, &*plan->algo, workspace, workspace_size, at::cuda::getCurrentCUDAStream()),
        "matmul");
  return true;
}

cudaDataType_t lt_type(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_32F; }

// The GEMM of linear_wgrad: dw^T [K, O] = x^T (column-major [K, M]) dy (column-major [O, M], read transposed).
Gemm wgrad_gemm(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw) {
  const int64_t M = dy.size(0), O = dy.size(1), K = x.size(1);
  Gemm g;
  g.tb = true, g.m = K, g.n = O, g.k = M;
  g.a = x.data_ptr(), g.lda = K, g.b = dy.data_ptr(), g.ldb = O, g.d = dw.data_ptr(), g.ldd = K;
  g.type = lt_type(dy), g.out_type = lt_type(dw);
  return g;
}

std::atomic<int64_t> fallbacks{0};

// Once per operation and shape: the run is correct but slower than it could be.
void note_fallback(const char* op, const at::Tensor& a, const at::Tensor& b) {
  static std::mutex m;
  static std::set<std::string> told;
  const std::string what = std::string(op) + " " + c10::str(a.sizes()) + " x " + c10::str(b.sizes()) + " " +
                           std::string(c10::toString(a.scalar_type()));
  std::lock_guard<std::mutex> lock(m);
  ++fallbacks;
  if (told.insert(what).second)
    std::fprintf(stderr, "opendit: cuBLASLt offers no fused epilogue for %s; running separate passes\n",
                 what.c_str());
}

}  // namespace

LinearGelu linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int64_t M = x.size(0), K = x.size(1), O = w.size(0);
  at::Tensor out = at::empty({M, O}, x.options()), pre = at::empty({M, O}, x.options());
  Gemm g;
  g.ta = true, g.m = O, g.n = M, g.k = K;
  g.a = w.data_ptr(), g.lda = K, g.b = x.data_ptr(), g.ldb = K, g.d = out.data_ptr(), g.ldd = O;
  g.type = g.out_type = lt_type(x), g.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  g.bias = b.data_ptr(), g.aux = pre.data_ptr(), g.ldaux = O;
  if (O % 8 == 0 && run(g)) return {out, pre};  // the aux leading dimension must be a multiple of 8
  note_fallback("linear_gelu", x, w);
  return reference::linear_gelu(x, w, b);
}

LinearGrads linear_wgrad(const at::Tensor& dy, const at::Tensor& x, bool bias) {
  if (!bias) return reference::linear_wgrad(dy, x, bias);  // a plain GEMM: torch's own call
  const int64_t O = dy.size(1), K = x.size(1);
  at::Tensor dw = at::empty({O, K}, dy.options()), db = at::empty({O}, dy.options());
  Gemm g = wgrad_gemm(dy, x, dw);
  g.epilogue = CUBLASLT_EPILOGUE_BGRADB, g.bias = db.data_ptr();  // db: dy summed over M, in D's dtype
  if (run(g)) return {dw, db};
  note_fallback("linear_wgrad", dy, x);
  return reference::linear_wgrad(dy, x, bias);
}

void linear_wgrad_into(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw, const at::Tensor& db,
                       bool accumulate) {
  Gemm g = wgrad_gemm(dy, x, dw);
  g.beta = accumulate ? 1 : 0;
  // The bias-gradient epilogue overwrites its vector: when accumulating it goes to a temporary first.
  at::Tensor db_out = db.defined() && accumulate ? at::empty_like(db) : db;
  if (db.defined()) g.epilogue = CUBLASLT_EPILOGUE_BGRADB, g.bias = db_out.data_ptr();
  if (run(g)) {
    if (accumulate && db.defined()) db.add_(db_out);
    return;
  }
  note_fallback("linear_wgrad_into", dy, x);
  reference::linear_wgrad_into(dy, x, dw, db, accumulate);
}

}  // namespace cuda_impl
#else
namespace cuda_impl {
using reference::linear_gelu;
using reference::linear_wgrad;
using reference::linear_wgrad_into;
}  // namespace cuda_impl
#endif

int64_t gemm_epilogue_fallbacks() {
#if defined(OPENDIT_WITH_CUDA)
  return cuda_impl::fallbacks.load();
#else
  return 0;
#endif
}

namespace {
void check_rows(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), what, " must be a contiguous 2-D tensor, got ", t.sizes(),
              t.is_contiguous() ? "" : " (not contiguous)");
}
void check_alike(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), what, " must be ",
              like.scalar_type(), " on ", like.device(), ", got ", t.scalar_type(), " on ", t.device());
}
// dy [M, O] and x [M, K], contiguous, one dtype and device.
void check_wgrad_inputs(const at::Tensor& dy, const at::Tensor& x, const std::string& op) {
  check_rows(dy, (op + ": dy").c_str());
  check_rows(x, (op + ": x").c_str());
  TORCH_CHECK(x.size(0) == dy.size(0), op, ": dy [M, O] and x [M, K] differ in M: ", dy.sizes(), ", ", x.sizes());
  check_alike(x, dy, (op + ": x").c_str());
}
// The cuBLASLt path: float32 or bfloat16 CUDA tensors, no empty dimension.
bool use_lt(const at::Tensor& a, const at::Tensor& b) { return fused_available(a) && a.numel() > 0 && b.numel() > 0; }
}  // namespace

LinearGelu linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  check_rows(x, "linear_gelu: x");
  check_rows(w, "linear_gelu: w");
  TORCH_CHECK(w.size(1) == x.size(1), "linear_gelu: w must be [O, ", x.size(1), "], got ", w.sizes());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0) && b.is_contiguous(), "linear_gelu: b must be a contiguous [",
              w.size(0), "], got ", b.sizes());
  check_alike(w, x, "linear_gelu: w");
  check_alike(b, x, "linear_gelu: b");
  return use_lt(x, w) ? cuda_impl::linear_gelu(x, w, b) : reference::linear_gelu(x, w, b);
}

LinearGrads linear_wgrad(const at::Tensor& dy, const at::Tensor& x, bool bias) {
  check_wgrad_inputs(dy, x, "linear_wgrad");
  return use_lt(dy, x) ? cuda_impl::linear_wgrad(dy, x, bias) : reference::linear_wgrad(dy, x, bias);
}

void linear_wgrad_into(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw, const at::Tensor& db,
                       bool accumulate) {
  check_wgrad_inputs(dy, x, "linear_wgrad_into");
  TORCH_CHECK(dw.dim() == 2 && dw.size(0) == dy.size(1) && dw.size(1) == x.size(1) && dw.is_contiguous() &&
                  dw.scalar_type() == at::kFloat && dw.device() == dy.device(),
              "linear_wgrad_into: dw must be a contiguous float32 [", dy.size(1), ", ", x.size(1), "] on ",
              dy.device(), ", got ", dw.sizes(), " ", dw.scalar_type());
  TORCH_CHECK(!db.defined() || (db.dim() == 1 && db.size(0) == dy.size(1) && db.is_contiguous() &&
                                db.scalar_type() == at::kFloat && db.device() == dy.device()),
              "linear_wgrad_into: db must be a contiguous float32 [", dy.size(1), "] on ", dy.device());
  // float32 out of bfloat16 or float32 inputs on the GPU; elsewhere (float64 inputs, the CPU) the definition.
  if (use_lt(dy, x)) cuda_impl::linear_wgrad_into(dy, x, dw, db, accumulate);
  else reference::linear_wgrad_into(dy, x, dw, db, accumulate);
}

}  // namespace opendit::kernels
