// CUDA kernels: fused LayerNorm over the last dim of (N, C), forward (saving mean and rstd) and backward.
// One block per row, double accumulators like the CPU. dweight/dbias are column sums over the N rows, done by
// the deterministic chunked column reduction of reduce.cuh (per-block partials, then a second kernel; no
// atomics), so repeated runs give identical bits. bf16 rows are computed in float (C = acc_t<T>), with mean and
// rstd kept in float.
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/cuda/reduce.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::block_sum;
using tally::cuda::row_threads;
using tally::cuda::stream;

template <class T>
__global__ void layernorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                         T* __restrict__ y, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                                         int64_t C, double eps) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* xr = x + r * C;
  T* yr = y + r * C;
  double s = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += double(to_acc(xr[c]));
  const A m = A(block_sum(s) / double(C));
  double v = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const double d = double(to_acc(xr[c]) - m);
    v += d * d;
  }
  const A rs = A(1.0 / sqrt(block_sum(v) / double(C) + eps));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    yr[c] = from_acc<T>((to_acc(xr[c]) - m) * rs * to_acc(weight[c]) + to_acc(bias[c]));
  if (threadIdx.x == 0) {
    mean[r] = m;
    rstd[r] = rs;
  }
}

template <class T>
__global__ void layernorm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
                                             const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                                             T* __restrict__ dx, int64_t C) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T *dyr = dy + r * C, *xr = x + r * C;
  T* dxr = dx + r * C;
  const A m = mean[r], rs = rstd[r];
  double sum_g = 0.0, sum_gn = 0.0;  // sums of dnorm and dnorm * norm, dnorm = dy * weight
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A g = to_acc(dyr[c]) * to_acc(weight[c]);
    sum_g += double(g);
    sum_gn += double(g) * double((to_acc(xr[c]) - m) * rs);
  }
  const A mg = A(block_sum(sum_g) / double(C));
  const A mgn = A(block_sum(sum_gn) / double(C));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A norm = (to_acc(xr[c]) - m) * rs;
    dxr[c] = from_acc<T>(rs * (to_acc(dyr[c]) * to_acc(weight[c]) - mg - norm * mgn));
  }
}

// dweight[c] = sum_i dy[i, c] * norm[i, c]
template <class T>
struct DweightValue {
  const T *dy, *x;
  const acc_t<T> *mean, *rstd;
  int64_t C;
  __device__ double operator()(int64_t, int64_t i, int64_t c) const {
    const int64_t j = i * C + c;
    return double(to_acc(dy[j])) * double((to_acc(x[j]) - mean[i]) * rstd[i]);
  }
};

// dbias[c] = sum_i dy[i, c]
template <class T>
struct DbiasValue {
  const T* dy;
  int64_t C;
  __device__ double operator()(int64_t, int64_t i, int64_t c) const { return double(to_acc(dy[i * C + c])); }
};

}  // namespace

template <class T>
void layernorm_forward(const T* x, const T* weight, const T* bias, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t N,
                       int64_t C, double eps) {
  if (N == 0 || C == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[layernorm_forward] too many rows: ", N);
  layernorm_forward_kernel<T><<<unsigned(N), row_threads(C), 0, stream()>>>(x, weight, bias, y, mean, rstd, C, eps);
  TALLY_CUDA_LAUNCH_CHECK("layernorm_forward_kernel");
}

template <class T>
void layernorm_backward(const T* dy, const T* x, const T* weight, const acc_t<T>* mean, const acc_t<T>* rstd, T* dx,
                        T* dweight, T* dbias, void* workspace, int64_t N, int64_t C) {
  if (C == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[layernorm_backward] too many rows: ", N);
  if (dx && N > 0) {
    layernorm_backward_dx_kernel<T><<<unsigned(N), row_threads(C), 0, stream()>>>(dy, x, weight, mean, rstd, dx, C);
    TALLY_CUDA_LAUNCH_CHECK("layernorm_backward_dx_kernel");
  }
  // One after the other on the stream: they share the workspace.
  if (dweight)
    column_sum(1, N, C, DweightValue<T>{dy, x, mean, rstd, C}, dweight, workspace, "layernorm_dweight_kernel");
  if (dbias) column_sum(1, N, C, DbiasValue<T>{dy, C}, dbias, workspace, "layernorm_dbias_kernel");
}

#define TALLY_INSTANTIATE(T)                                                                                      \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, acc_t<T>*, acc_t<T>*, int64_t, int64_t, double); \
  template void layernorm_backward<T>(const T*, const T*, const T*, const acc_t<T>*, const acc_t<T>*, T*, T*, T*, void*, \
                                      int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
