// CUDA kernels: fused cross-entropy over logits (N, V) with row stride ld. Forward: one block per row with a
// running (max, sum of exp) per thread merged across the block; only lse and the loss are written, never the
// probabilities. Backward: one block per row writes scale * (softmax - onehot) from the saved lse.
#include "core/cuda/common.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::block_merge;
using tally::cuda::MaxSum;
using tally::cuda::row_threads;
using tally::cuda::stream;

template <class T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ logits, int64_t ld, const int32_t* __restrict__ targets,
                                             T* __restrict__ losses, T* __restrict__ lse, int64_t V) {
  const int64_t r = blockIdx.x;
  const T* x = logits + r * ld;
  MaxSum<T> ms{T(-INFINITY), T(0)};
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const T v = x[c];
    if (v == T(-INFINITY)) continue;
    if (v > ms.max) {
      ms.sum = ms.sum * exp(ms.max - v) + T(1);
      ms.max = v;
    } else {
      ms.sum += exp(v - ms.max);
    }
  }
  ms = block_merge(ms);
  if (threadIdx.x == 0) {
    const T l = ms.max + log(ms.sum);
    lse[r] = l;
    losses[r] = l - x[targets[r]];
  }
}

template <class T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ logits, int64_t ld, const int32_t* __restrict__ targets,
                                              const T* __restrict__ lse, T scale, T* __restrict__ dlogits, int64_t ld_grad,
                                              int64_t V) {
  const int64_t r = blockIdx.x;
  const T* x = logits + r * ld;
  T* d = dlogits + r * ld_grad;
  const T l = lse[r];
  const int64_t t = targets[r];
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    T v = scale * exp(x[c] - l);
    if (c == t) v -= scale;
    d[c] = v;
  }
}

}  // namespace

template <class T>
void cross_entropy_forward(const T* logits, int64_t ld, const int32_t* targets, T* losses, T* lse, int64_t N, int64_t V) {
  if (N == 0 || V == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[cross_entropy_forward] too many rows: ", N);
  cross_entropy_forward_kernel<T><<<unsigned(N), row_threads(V), 0, stream()>>>(logits, ld, targets, losses, lse, V);
  TALLY_CUDA_LAUNCH_CHECK("cross_entropy_forward_kernel");
}

template <class T>
void cross_entropy_backward(const T* logits, int64_t ld, const int32_t* targets, const T* lse, double scale, T* dlogits,
                            int64_t ld_grad, int64_t N, int64_t V) {
  if (N == 0 || V == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[cross_entropy_backward] too many rows: ", N);
  cross_entropy_backward_kernel<T><<<unsigned(N), row_threads(V), 0, stream()>>>(logits, ld, targets, lse, T(scale),
                                                                                dlogits, ld_grad, V);
  TALLY_CUDA_LAUNCH_CHECK("cross_entropy_backward_kernel");
}

#define TALLY_INSTANTIATE(T)                                                                                     \
  template void cross_entropy_forward<T>(const T*, int64_t, const int32_t*, T*, T*, int64_t, int64_t);           \
  template void cross_entropy_backward<T>(const T*, int64_t, const int32_t*, const T*, double, T*, int64_t, int64_t, \
                                          int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
