// The one place cuBLAS's column-major order is handled (used by gemm.cu, attention.cu and linear.cu): a row-major
// C (M, N) = op(A) (M, K) op(B) (K, N) is, read column-major, C^T = op(B)^T op(A)^T, so cuBLAS is called with
// the operands swapped and M, N exchanged. float products use TF32 tensor cores unless Fp32Matmul::strict; bf16
// products accumulate in float (CUBLAS_COMPUTE_32F) and may write float (attention's scores) or bf16.
#pragma once
#include "core/cuda/common.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

// Per element type: cuBLAS's data type, the compute type, and the host type of alpha and beta (the compute type's).
template <class T>
struct CublasTypes;
template <>
struct CublasTypes<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  using Scalar = float;
  static cublasComputeType_t compute() {
    return tally::cuda::fp32_matmul() == tally::cuda::Fp32Matmul::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }
};
template <>
struct CublasTypes<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  using Scalar = double;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_64F; }
};
template <>
struct CublasTypes<bf16> {
  static constexpr cudaDataType_t data = CUDA_R_16BF;
  using Scalar = float;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_32F; }
};

// Row-major batched product over device arrays of per-batch pointers (cublasGemmBatchedEx):
// C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C[i]; lda/ldb/ldc are row strides as stored. Operands are T, the
// product TC: T itself, or float for bf16 operands.
// A, B, C: (batch) device arrays of matrix pointers; op(A[i]): (M, K), op(B[i]): (K, N), C[i]: (M, N).
template <class T, class TC = T>
void gemm_batched_pointers(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                           const T* const* A, int64_t lda, const T* const* B, int64_t ldb, double beta, TC* const* C,
                           int64_t ldc, int64_t batch);

}  // namespace tally::kernels::cuda
