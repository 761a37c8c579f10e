// CUDA kernels: softmax and log-softmax over the last dim of (N, C), forward and backward; one block per row.
// Forward keeps a running (max, sum of exp) per thread and merges them across the block, so the row is read
// twice (statistics, then output) instead of three times. bf16 rows are computed in float (C = acc_t<T>).
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::block_merge;
using tally::cuda::block_sum;
using tally::cuda::MaxSum;
using tally::cuda::row_threads;
using tally::cuda::stream;

// Adds x to a running (max, sum); -inf contributes nothing.
template <class T>
__device__ __forceinline__ void accumulate(MaxSum<T>& ms, T x) {
  if (x == T(-INFINITY)) return;
  if (x > ms.max) {
    ms.sum = ms.sum * exp(ms.max - x) + T(1);
    ms.max = x;
  } else {
    ms.sum += exp(x - ms.max);
  }
}

// One block per row: y = softmax(x) or log_softmax(x) over the row's C values; x, y: (N, C).
template <class T>
__global__ void softmax_forward_kernel(SoftmaxKind kind, const T* __restrict__ x, T* __restrict__ y, int64_t C) {
  using A = acc_t<T>;
  const T* xr = x + int64_t(blockIdx.x) * C;
  T* yr = y + int64_t(blockIdx.x) * C;
  MaxSum<A> ms{A(-INFINITY), A(0)};
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) accumulate(ms, to_acc(xr[c]));
  ms = block_merge(ms);
  if (kind == SoftmaxKind::softmax) {
    const A inv = A(1) / ms.sum;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = from_acc<T>(exp(to_acc(xr[c]) - ms.max) * inv);
  } else {
    const A lse = ms.max + log(ms.sum);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = from_acc<T>(to_acc(xr[c]) - lse);
  }
}

// One block per row: softmax dx = y * (dy - sum(dy * y)); log_softmax dx = dy - exp(y) * sum(dy); y, dy, dx: (N, C).
template <class T>
__global__ void softmax_backward_kernel(SoftmaxKind kind, const T* __restrict__ y, const T* __restrict__ dy,
                                        T* __restrict__ dx, int64_t C) {
  const int64_t off = int64_t(blockIdx.x) * C;
  const T *yr = y + off, *dyr = dy + off;
  T* dxr = dx + off;
  using A = acc_t<T>;
  double dot = 0.0;
  if (kind == SoftmaxKind::softmax) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += double(to_acc(dyr[c])) * double(to_acc(yr[c]));
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += double(to_acc(dyr[c]));
  }
  const A d = A(block_sum(dot));
  if (kind == SoftmaxKind::softmax) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dxr[c] = from_acc<T>(to_acc(yr[c]) * (to_acc(dyr[c]) - d));
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dxr[c] = from_acc<T>(to_acc(dyr[c]) - exp(to_acc(yr[c])) * d);
  }
}

}  // namespace

// y (N, C) = softmax or log_softmax of x (N, C) over the last dim.
template <class T>
void softmax_forward(SoftmaxKind kind, const T* x, T* y, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[softmax_forward] too many rows: ", N);
  softmax_forward_kernel<T><<<unsigned(N), row_threads(C), 0, stream()>>>(kind, x, y, C);
  TALLY_CUDA_LAUNCH_CHECK("softmax_forward_kernel");
}

// dx (N, C) from the saved output y (N, C) and dy (N, C).
template <class T>
void softmax_backward(SoftmaxKind kind, const T* y, const T* dy, T* dx, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[softmax_backward] too many rows: ", N);
  softmax_backward_kernel<T><<<unsigned(N), row_threads(C), 0, stream()>>>(kind, y, dy, dx, C);
  TALLY_CUDA_LAUNCH_CHECK("softmax_backward_kernel");
}

#define TALLY_INSTANTIATE(T)                                                              \
  template void softmax_forward<T>(SoftmaxKind, const T*, T*, int64_t, int64_t);          \
  template void softmax_backward<T>(SoftmaxKind, const T*, const T*, T*, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
