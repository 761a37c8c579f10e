// CUDA kernel entries of a Linear layer (see kernels.inc): linear_forward and linear_weight_grad. With cuBLASLt's
// epilogues switched on (linear_epilogues.h), each is one cublasLtMatmul: the product with the bias added (BIAS),
// with the bias added and GELU applied, its input kept as the pre-activation (GELU_AUX_BIAS), or with the bias
// gradient summed from the product's operand (BGRADB). Otherwise, and for what cuBLASLt does not take, the product
// (gemm.cu), add_bias, gelu and bias_backward run one after the other, as on the CPU.
//
// Row-major to cuBLASLt's column-major as in gemm.cuh: row-major C (M, N) = op(A) op(B) is column-major
// C^T (N, M) = op(B)^T op(A)^T, so cuBLASLt's "A" is our B, its "B" our A, m = N, n = M. Its epilogue vectors run
// along D's rows (m = N: the Linear's OUT) for the bias, and along D's columns (n = M: OUT again, for the weight
// gradient's product dy^T x) for BGRADB, whose sum runs over k (the N rows of dy).
//
// Descriptors, layouts and the heuristic's algorithm are made once per problem (device, dtype, shape, epilogue, the
// operands' alignments) and cached; each call sets the bias and pre-activation pointers and runs on tally's stream
// with cuBLAS's own workspace (planned: the ledger does not change).
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "core/cuda/env_switch.h"
#include "core/kernels/cuda/gemm.cuh"
#include "core/kernels/cuda/linear_epilogues.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::cublas_workspace;
using tally::cuda::stream;

thread_local std::string g_refusal;

bool refuse(std::string why) {
  g_refusal = std::move(why);
  return false;
}

tally::cuda::EnvSwitch g_switch{"TALLY_CUBLASLT_EPILOGUES"};

// What a problem is cached by.
struct LtKey {
  int device = 0, dtype = 0, compute = 0, epilogue = 0;
  int trans_a = 0, trans_b = 0;
  int64_t M = 0, N = 0, K = 0, lda = 0, ldb = 0, ldc = 0;
  int align_a = 0, align_b = 0, align_c = 0, align_bias = 0, align_aux = 0;
  auto tie() const {
    return std::tie(device, dtype, compute, epilogue, trans_a, trans_b, M, N, K, lda, ldb, ldc, align_a, align_b,
                    align_c, align_bias, align_aux);
  }
  bool operator<(const LtKey& o) const { return tie() < o.tie(); }
};

// A problem's descriptors and algorithm; found == false when cuBLASLt has none for it (then it is not asked again).
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
  std::string why;
};

struct LtState {
  std::mutex mu;
  std::map<int, cublasLtHandle_t> handles;  // per device
  std::map<LtKey, LtPlan> plans;
};
LtState& lt_state() {
  static LtState* s = new LtState;  // never freed: handles outlive static destruction order
  return *s;
}

// The largest power of two (up to 256) that divides the address: cuBLASLt's heuristic picks by alignment.
int alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % uintptr_t(a) != 0) a /= 2;
  return a;
}

const char* epilogue_name(cublasLtEpilogue_t e) {
  switch (e) {
    case CUBLASLT_EPILOGUE_BIAS: return "BIAS";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: return "GELU_AUX_BIAS";
    case CUBLASLT_EPILOGUE_BGRADB: return "BGRADB";
    default: return "DEFAULT";
  }
}

template <class T>
LtPlan make_plan(cublasLtHandle_t h, const GemmArgs<T>& g, cublasLtEpilogue_t epilogue, const void* bias,
                 const void* aux) {
  using Types = CublasTypes<T>;
  LtPlan p;
  const cublasOperation_t op_a = g.trans_b == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  const cublasOperation_t op_b = g.trans_a == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B is our A
  const uint64_t m = uint64_t(g.N), n = uint64_t(g.M), k = uint64_t(g.K);
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescCreate(&p.desc, Types::compute(), CUDA_R_32F));
  const int32_t ta = op_a, tb = op_b;
  const uint32_t epi = uint32_t(epilogue);
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                              sizeof bias));
  if (aux) {
    const int64_t aux_ld = int64_t(m);
    TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
                                                                sizeof aux));
    TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld,
                                                                sizeof aux_ld));
  }
  // Stored shapes, column-major: an operand read transposed is stored (k, m) / (n, k).
  TALLY_CUBLAS_CHECK("linear", cublasLtMatrixLayoutCreate(&p.a, Types::data, op_a == CUBLAS_OP_N ? m : k,
                                                          op_a == CUBLAS_OP_N ? k : m, g.ldb));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatrixLayoutCreate(&p.b, Types::data, op_b == CUBLAS_OP_N ? k : n,
                                                          op_b == CUBLAS_OP_N ? n : k, g.lda));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatrixLayoutCreate(&p.d, Types::data, m, n, g.ldc));

  cublasLtMatmulPreference_t pref = nullptr;
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = uint64_t(tally::cuda::kCublasWorkspaceBytes);
  const uint32_t align_a = uint32_t(alignment(g.B)), align_b = uint32_t(alignment(g.A)), align_d = uint32_t(alignment(g.C));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                                    sizeof ws));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                                    &align_a, sizeof align_a));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                                    &align_b, sizeof align_b));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                                    &align_d, sizeof align_d));
  TALLY_CUBLAS_CHECK("linear", cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                                    &align_d, sizeof align_d));
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(h, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &returned);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || returned == 0) {
    p.why = cat("cuBLASLt has no algorithm for ", epilogue_name(epilogue), " at M=", g.M, " N=", g.N, " K=", g.K, " (",
                st == CUBLAS_STATUS_SUCCESS ? std::string("none returned") : std::string(cublasGetStatusName(st)), ")");
    return p;
  }
  p.algo = result.algo;
  p.found = true;
  return p;
}

// D = op(A) op(B) (row-major g, beta 0) with `epilogue` in one cublasLtMatmul; false, having done nothing, when the
// epilogues are off or cuBLASLt does not take the problem (the reason kept for linear_epilogues_last_refusal()).
template <class T>
bool lt_matmul(const GemmArgs<T>& g, cublasLtEpilogue_t epilogue, const void* bias, void* aux) {
  if (!linear_epilogues_enabled()) return refuse("off (TALLY_CUBLASLT_EPILOGUES=1 switches it on)");
  if constexpr (std::is_same_v<T, double>) {
    return refuse("double products run through cublasGemmEx");
  } else {
    if (g.K == 0) return refuse("K = 0");
    if (aux && g.N % 8 != 0) return refuse(cat("the pre-activation's rows (", g.N, ") are not a multiple of 8 elements"));
    const int device = tally::cuda::current_device();
    const LtKey key{device,          int(CublasTypes<T>::data), int(CublasTypes<T>::compute()), int(epilogue),
                    int(g.trans_a),  int(g.trans_b),        g.M,                         g.N,
                    g.K,             g.lda,                 g.ldb,                       g.ldc,
                    alignment(g.A),  alignment(g.B),        alignment(g.C),              alignment(bias),
                    aux ? alignment(aux) : 0};
    cudaStream_t st = stream();
    void* ws = cublas_workspace();
    LtState& s = lt_state();
    std::lock_guard<std::mutex> lock(s.mu);
    cublasLtHandle_t& h = s.handles[device];
    if (!h) TALLY_CUBLAS_CHECK("linear", cublasLtCreate(&h));
    auto it = s.plans.find(key);
    if (it == s.plans.end()) it = s.plans.emplace(key, make_plan<T>(h, g, epilogue, bias, aux)).first;
    LtPlan& p = it->second;
    if (!p.found) return refuse(p.why);
    TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                                sizeof bias));
    if (aux)
      TALLY_CUBLAS_CHECK("linear", cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
                                                                  sizeof aux));
    const float alpha = 1.0f, beta = 0.0f;
    TALLY_CUBLAS_CHECK("linear", cublasLtMatmul(h, p.desc, &alpha, g.B, p.a, g.A, p.b, &beta, g.C, p.d, g.C, p.d, &p.algo,
                                                ws, size_t(tally::cuda::kCublasWorkspaceBytes), st));
    g_refusal.clear();
    return true;
  }
}

}  // namespace

bool linear_epilogues_enabled() { return g_switch.on(); }

void set_linear_epilogues(LinearEpilogues m) {
  m == LinearEpilogues::cublaslt ? g_switch.turn_on() : g_switch.turn_off();
}

std::string linear_epilogues_last_refusal() { return g_refusal; }

template <class T>
void linear_forward(const T* x, const T* w, const T* b, T* y, T* pre, Activation act, int64_t N, int64_t IN,
                    int64_t OUT) {
  if (N == 0 || OUT == 0) return;
  const bool gelu = act == Activation::gelu;
  if (b) {  // the epilogues add a bias; a product alone is cublasGemmEx's
    if (gelu ? lt_matmul(linear_forward_product(x, w, y, N, IN, OUT), CUBLASLT_EPILOGUE_GELU_AUX_BIAS, b, pre)
             : lt_matmul(linear_forward_product(x, w, y, N, IN, OUT), CUBLASLT_EPILOGUE_BIAS, b, nullptr))
      return;
  } else {
    refuse("no bias");
  }
  T* sum = gelu ? pre : y;  // where x w^T + b goes
  gemm(linear_forward_product(x, w, sum, N, IN, OUT));
  if (b) add_bias(sum, b, N, OUT);
  if (gelu) unary(UnaryOp::gelu, pre, y, N * OUT, 0.0);
}

template <class T>
void linear_weight_grad(const T* dy, const T* x, T* dw, T* db, void* workspace, int64_t N, int64_t IN, int64_t OUT) {
  if (OUT == 0 || IN == 0) return;
  if (db) {
    if (lt_matmul(linear_weight_grad_product(dy, x, dw, N, IN, OUT), CUBLASLT_EPILOGUE_BGRADB, db, nullptr)) return;
  } else {
    refuse("no bias");
  }
  gemm(linear_weight_grad_product(dy, x, dw, N, IN, OUT));
  if (db) bias_backward(dy, db, workspace, N, OUT);
}

#define TALLY_INSTANTIATE(T)                                                                                    \
  template void linear_forward<T>(const T*, const T*, const T*, T*, T*, Activation, int64_t, int64_t, int64_t); \
  template void linear_weight_grad<T>(const T*, const T*, T*, T*, void*, int64_t, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
