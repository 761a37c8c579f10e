// CPU kernel: batched row-major GEMM through OpenBLAS (sgemm/dgemm). Small batched products run one per
// thread (the OpenMP build of OpenBLAS is serial inside a parallel region); large ones use BLAS's threads.
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

template void gemm<float>(const GemmArgs<float>&);
template void gemm<double>(const GemmArgs<double>&);

}  // namespace tally::kernels::cpu
