// CPU kernels: batched row-major GEMM through OpenBLAS (sgemm/dgemm). Small batched products run one per
// thread (the OpenMP build of OpenBLAS is serial inside a parallel region); large ones use BLAS's threads.
// A Linear layer's forward and weight gradient are the product followed by the bias (and GELU) kernels.
#include <cblas.h>
#include <omp.h>

#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

namespace {

CBLAS_TRANSPOSE trans(Trans t) { return t == Trans::yes ? CblasTrans : CblasNoTrans; }

void call_blas(const GemmArgs<float>& g, const float* A, const float* B, float* C) {
  cblas_sgemm(CblasRowMajor, trans(g.trans_a), trans(g.trans_b), int(g.M), int(g.N), int(g.K), float(g.alpha), A,
              int(g.lda), B, int(g.ldb), float(g.beta), C, int(g.ldc));
}
void call_blas(const GemmArgs<double>& g, const double* A, const double* B, double* C) {
  cblas_dgemm(CblasRowMajor, trans(g.trans_a), trans(g.trans_b), int(g.M), int(g.N), int(g.K), g.alpha, A, int(g.lda), B,
              int(g.ldb), g.beta, C, int(g.ldc));
}

}  // namespace

template <class T>
void gemm(const GemmArgs<T>& g) {
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  if (g.K == 0) {  // C = beta * C
    for (int64_t b = 0; b < g.batch; ++b)
      for (int64_t i = 0; i < g.M; ++i)
        for (int64_t j = 0; j < g.N; ++j) {
          T& c = g.C[b * g.batch_stride_c + i * g.ldc + j];
          c = g.beta == 0.0 ? T(0) : T(g.beta) * c;
        }
    return;
  }
  const int64_t work = g.M * g.N * g.K;
  const bool per_thread = g.batch > 1 && work <= (int64_t(1) << 21);
#pragma omp parallel for if (per_thread)
  for (int64_t b = 0; b < g.batch; ++b)
    call_blas(g, g.A + b * g.batch_stride_a, g.B + b * g.batch_stride_b, g.C + b * g.batch_stride_c);
}

template <class T>
void linear_forward(const T* x, const T* w, const T* b, T* y, T* pre, Activation act, int64_t N, int64_t IN,
                    int64_t OUT) {
  T* sum = act == Activation::gelu ? pre : y;  // where x w^T + b goes
  gemm(linear_forward_product(x, w, sum, N, IN, OUT));
  if (b) add_bias(sum, b, N, OUT);
  if (act == Activation::gelu) unary(UnaryOp::gelu, pre, y, N * OUT, 0.0);
}

template <class T>
void linear_weight_grad(const T* dy, const T* x, T* dw, T* db, void* /*workspace: none needed*/, int64_t N, int64_t IN,
                        int64_t OUT) {
  gemm(linear_weight_grad_product(dy, x, dw, N, IN, OUT));
  if (db) bias_backward(dy, db, nullptr, N, OUT);
}

#define TALLY_INSTANTIATE(T)                                                                                \
  template void gemm<T>(const GemmArgs<T>&);                                                                \
  template void linear_forward<T>(const T*, const T*, const T*, T*, T*, Activation, int64_t, int64_t, int64_t); \
  template void linear_weight_grad<T>(const T*, const T*, T*, T*, void*, int64_t, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
