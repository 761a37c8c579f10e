// CUDA kernel entry: batched row-major GEMM through cuBLAS (cublasGemmEx / cublasGemmStridedBatchedEx /
// cublasGemmBatchedEx), with the row-major -> column-major swap hidden here (see gemm.cuh). K == 0 (C = beta C)
// is handled by a small kernel, as the CPU backend does it. bf16: CUDA_R_16BF operands, float accumulation.
#include <climits>

#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/cuda/gemm.cuh"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::cublas_handle;
using tally::cuda::grid_for;
using tally::cuda::stream;

cublasOperation_t op(Trans t) { return t == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N; }

int as_int(int64_t v, const char* what) {
  TALLY_CHECK(v >= 0 && v <= int64_t(INT_MAX), "[gemm] ", what, " = ", v, " is beyond cuBLAS's 32-bit range");
  return int(v);
}

// C (per batch, row stride ldc) = beta * C; beta == 0 writes zeros (C may hold NaN garbage).
// C: (batch, M, N) with row stride ldc and batch stride batch_stride.
template <class T>
__global__ void scale_matrix_kernel(T* C, int64_t M, int64_t N, int64_t ldc, int64_t batch_stride, int64_t batch,
                                    acc_t<T> beta) {
  using A = acc_t<T>;
  const int64_t total = batch * M * N;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = j % N, row = (j / N) % M, b = j / (M * N);
    T& c = C[b * batch_stride + row * ldc + col];
    c = from_acc<T>(beta == A(0) ? A(0) : beta * to_acc(c));
  }
}

}  // namespace

// C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C per batch (GemmArgs' strides): cublasGemmEx, or
// cublasGemmStridedBatchedEx for batch > 1; scale_matrix_kernel when K == 0.
template <class T>
void gemm(const GemmArgs<T>& g) {
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  if (g.K == 0) {
    const int64_t total = g.batch * g.M * g.N;
    scale_matrix_kernel<T><<<grid_for(total, 256), 256, 0, stream()>>>(g.C, g.M, g.N, g.ldc, g.batch_stride_c, g.batch,
                                                                      acc_t<T>(g.beta));
    TALLY_CUDA_LAUNCH_CHECK("scale_matrix_kernel");
    return;
  }
  using Types = CublasTypes<T>;
  using S = typename Types::Scalar;  // alpha and beta: host scalars of the compute type
  const S alpha = S(g.alpha), beta = S(g.beta);
  const int m = as_int(g.N, "N"), n = as_int(g.M, "M"), k = as_int(g.K, "K");
  const int lda = as_int(g.lda, "lda"), ldb = as_int(g.ldb, "ldb"), ldc = as_int(g.ldc, "ldc");
  cublasHandle_t h = cublas_handle();
  if (g.batch == 1) {
    TALLY_CUBLAS_CHECK("gemm", cublasGemmEx(h, op(g.trans_b), op(g.trans_a), m, n, k, &alpha, g.B, Types::data, ldb, g.A,
                                            Types::data, lda, &beta, g.C, Types::data, ldc, Types::compute(),
                                            CUBLAS_GEMM_DEFAULT));
    return;
  }
  const int batch = as_int(g.batch, "batch");
  TALLY_CUBLAS_CHECK("gemm", cublasGemmStridedBatchedEx(h, op(g.trans_b), op(g.trans_a), m, n, k, &alpha, g.B, Types::data,
                                                        ldb, g.batch_stride_b, g.A, Types::data, lda, g.batch_stride_a,
                                                        &beta, g.C, Types::data, ldc, g.batch_stride_c, batch,
                                                        Types::compute(), CUBLAS_GEMM_DEFAULT));
}

// One cublasGemmBatchedEx over the device pointer arrays A, B, C (batch), shapes as in gemm.cuh.
template <class T, class TC>
void gemm_batched_pointers(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, double alpha_d,
                           const T* const* A, int64_t lda_, const T* const* B, int64_t ldb_, double beta_d, TC* const* C,
                           int64_t ldc_, int64_t batch_) {
  if (M == 0 || N == 0 || batch_ == 0) return;
  TALLY_CHECK(K > 0, "[gemm_batched_pointers] K must be positive, got ", K);
  using Types = CublasTypes<T>;
  using S = typename Types::Scalar;
  const S alpha = S(alpha_d), beta = S(beta_d);
  const int m = as_int(N, "N"), n = as_int(M, "M"), k = as_int(K, "K");
  const int lda = as_int(lda_, "lda"), ldb = as_int(ldb_, "ldb"), ldc = as_int(ldc_, "ldc");
  const int batch = as_int(batch_, "batch");
  TALLY_CUBLAS_CHECK("gemm_batched_pointers",
                     cublasGemmBatchedEx(cublas_handle(), op(trans_b), op(trans_a), m, n, k, &alpha,
                                         reinterpret_cast<const void* const*>(B), Types::data, ldb,
                                         reinterpret_cast<const void* const*>(A), Types::data, lda, &beta,
                                         reinterpret_cast<void* const*>(C), CublasTypes<TC>::data, ldc, batch,
                                         Types::compute(),
                                         CUBLAS_GEMM_DEFAULT));
}

template void gemm<float>(const GemmArgs<float>&);
template void gemm<double>(const GemmArgs<double>&);
template void gemm<bf16>(const GemmArgs<bf16>&);
#define TALLY_INSTANTIATE(T, TC)                                                                                    \
  template void gemm_batched_pointers<T, TC>(Trans, Trans, int64_t, int64_t, int64_t, double, const T* const*, int64_t, \
                                             const T* const*, int64_t, double, TC* const*, int64_t, int64_t);
TALLY_INSTANTIATE(float, float)
TALLY_INSTANTIATE(double, double)
TALLY_INSTANTIATE(bf16, bf16)
TALLY_INSTANTIATE(bf16, float)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
