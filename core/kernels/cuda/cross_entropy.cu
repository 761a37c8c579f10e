// CUDA kernels: fused cross-entropy over logits (N, V) with row stride ld. Forward: one block per row with a
// running (max, sum of exp) per thread merged across the block; only lse and the loss are written, never the
// probabilities. Backward: one block per row writes scale * (softmax - onehot) from the saved lse, and zeros in
// the columns past the classes (a padded head's, as the CPU backend). bf16 logits are
// read as float; lse and the per-row losses are float (acc_t<T>), the gradient is rounded once, on store.
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::block_merge;
using tally::cuda::MaxSum;
using tally::cuda::row_threads;
using tally::cuda::stream;

// One block per row r: lse[r] = log(sum_c exp(logits[r, c])), losses[r] = lse[r] - logits[r, targets[r]], over
// c < V. logits: (N, ld); targets, losses, lse: (N).
template <class T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ logits, int64_t ld, const int32_t* __restrict__ targets,
                                             acc_t<T>* __restrict__ losses, acc_t<T>* __restrict__ lse, int64_t V) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* x = logits + r * ld;
  MaxSum<A> ms{A(-INFINITY), A(0)};
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const A v = to_acc(x[c]);
    if (v == A(-INFINITY)) continue;
    if (v > ms.max) {
      ms.sum = ms.sum * exp(ms.max - v) + A(1);
      ms.max = v;
    } else {
      ms.sum += exp(v - ms.max);
    }
  }
  ms = block_merge(ms);
  if (threadIdx.x == 0) {
    const A l = ms.max + log(ms.sum);
    lse[r] = l;
    losses[r] = l - to_acc(x[targets[r]]);
  }
}

// One block per row r: dlogits[r, c] = scale * (exp(logits[r, c] - lse[r]) - [c == targets[r]]) for c < V, 0 for
// c in [V, ld_grad); scale = *dloss (1 if null) * inv_count. logits: (N, ld); targets, lse: (N); dlogits: (N, ld_grad).
template <class T>
// logits and dlogits may be one buffer (each element is read, then written, by one thread): not __restrict__.
__global__ void cross_entropy_backward_kernel(const T* logits, int64_t ld, const int32_t* __restrict__ targets,
                                              const acc_t<T>* __restrict__ lse, const acc_t<T>* __restrict__ dloss,
                                              double inv_count, T* dlogits, int64_t ld_grad, int64_t V) {
  using A = acc_t<T>;
  const A scale = A((dloss ? double(*dloss) : 1.0) * inv_count);  // the loss's gradient, read on the device
  const int64_t r = blockIdx.x;
  const T* x = logits + r * ld;
  T* d = dlogits + r * ld_grad;
  const A l = lse[r];
  const int64_t t = targets[r];
  for (int64_t c = threadIdx.x; c < ld_grad; c += blockDim.x) {  // columns [V, ld_grad): a padded head's zeros
    A v = A(0);
    if (c < V) {
      v = scale * exp(to_acc(x[c]) - l);
      if (c == t) v -= scale;
    }
    d[c] = from_acc<T>(v);
  }
}

}  // namespace

// losses, lse (N) of logits (N, row stride ld) against targets (N): one block per row.
template <class T>
void cross_entropy_forward(const T* logits, int64_t ld, const int32_t* targets, acc_t<T>* losses, acc_t<T>* lse, int64_t N,
                           int64_t V) {
  if (N == 0 || V == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[cross_entropy_forward] too many rows: ", N);
  cross_entropy_forward_kernel<T><<<unsigned(N), row_threads(V), 0, stream()>>>(logits, ld, targets, losses, lse, V);
  TALLY_CUDA_LAUNCH_CHECK("cross_entropy_forward_kernel");
}

// dlogits (N, ld_grad) = (*dloss / mean_count) * (softmax(logits) - onehot(targets)), zeros past V; logits: (N, ld);
// targets, lse: (N).
template <class T>
void cross_entropy_backward(const T* logits, int64_t ld, const int32_t* targets, const acc_t<T>* lse,
                            const acc_t<T>* dloss, T* dlogits, int64_t ld_grad, int64_t N, int64_t V,
                            int64_t mean_count) {
  if (N == 0 || V == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[cross_entropy_backward] too many rows: ", N);
  cross_entropy_backward_kernel<T><<<unsigned(N), row_threads(V), 0, stream()>>>(logits, ld, targets, lse, dloss,
                                                                                1.0 / double(mean_count), dlogits,
                                                                                ld_grad, V);
  TALLY_CUDA_LAUNCH_CHECK("cross_entropy_backward_kernel");
}

#define TALLY_INSTANTIATE(T)                                                                                       \
  template void cross_entropy_forward<T>(const T*, int64_t, const int32_t*, acc_t<T>*, acc_t<T>*, int64_t, int64_t);    \
  template void cross_entropy_backward<T>(const T*, int64_t, const int32_t*, const acc_t<T>*, const acc_t<T>*, T*,   \
                                          int64_t, int64_t, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
