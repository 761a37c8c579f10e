// The kernel contract: raw pointers and sizes only (no Tensor, no autograd). Every kernel is declared once in
// kernels.inc and exists twice with identical signatures: kernels::cpu (core/kernels/cpu/*.cpp) and
// kernels::cuda (core/kernels/cuda/*.cu, when built). Templates are instantiated for float and double on both,
// and for bf16 on CUDA only (mixed precision: bf16 storage, arithmetic and statistics in float, see acc_t).
// Ops (core/ops/) validate, allocate and dispatch; kernels trust their arguments.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace tally::kernels {

inline constexpr int kMaxDims = 8;

// The type a kernel computes in and keeps per-row statistics in (layer-norm mean/rstd, log-sum-exp, per-row
// losses, attention scores): the element type itself, except float for bf16 storage (a bf16 log-sum-exp would
// be off by up to 1/256 of its value, a bf16 rstd by as much: too coarse for the backward passes that reuse them).
template <class T> struct acc_type { using type = T; };
template <> struct acc_type<bf16> { using type = float; };
template <class T> using acc_t = typename acc_type<T>::type;

// Shape and strides (in elements) of an N-d traversal, outermost first.
struct StridedLayout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t dst_stride[kMaxDims] = {};
  int64_t src_stride[kMaxDims] = {};
};

// Output contiguous of `shape`; a and b read with their (possibly zero, for broadcast) strides.
struct BroadcastLayout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t a_stride[kMaxDims] = {};
  int64_t b_stride[kMaxDims] = {};
};

enum class BinaryOp : uint8_t { add, sub, mul, div };
enum class UnaryOp : uint8_t { neg, exp, log, sqrt, rsqrt, tanh, gelu, add_scalar, mul_scalar, rsub_scalar, rdiv_scalar, pow_scalar };
enum class Trans : uint8_t { no, yes };
enum class SoftmaxKind : uint8_t { softmax, log_softmax };

// Row-major batched C = alpha * op(A) @ op(B) + beta * C. op(A) is (M, K), op(B) is (K, N), C is (M, N).
// lda/ldb/ldc are the row strides of A, B, C as stored; batch strides of 0 share one matrix across the batch.
template <class T>
struct GemmArgs {
  Trans trans_a = Trans::no, trans_b = Trans::no;
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  int64_t lda = 0, batch_stride_a = 0;
  const T* B = nullptr;
  int64_t ldb = 0, batch_stride_b = 0;
  T* C = nullptr;
  int64_t ldc = 0, batch_stride_c = 0;
  int64_t batch = 1;
  double alpha = 1.0, beta = 0.0;
};

// Attention over (B, NH, T, HS) operands addressed through strides (last dim contiguous).
struct AttentionLayout {
  int64_t B = 0, NH = 0, Tq = 0, Tk = 0, HS = 0;
  int64_t q_strides[3] = {}, k_strides[3] = {}, v_strides[3] = {}, out_strides[3] = {};  // b, h, t
  bool causal = true;  // query i sees keys j <= i + (Tk - Tq)
  double scale = 1.0;
};

namespace cpu {
#include "core/kernels/kernels.inc"
}  // namespace cpu

#ifdef TALLY_HAS_CUDA
namespace cuda {
#include "core/kernels/kernels.inc"
}  // namespace cuda
#endif

}  // namespace tally::kernels
