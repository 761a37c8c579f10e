// CUDA kernels: sums and maxima over one dim of an (outer, n, inner) contiguous view; bias add and its
// backward. All deterministic (fixed trees and chunking, double accumulators like the CPU, no atomics).
// Row sums (inner == 1) run one block per row, or split into chunks with a second pass when there are few,
// long rows; column sums share reduce.cuh with layernorm's parameter gradients. bf16 inputs are read through
// to_acc (exact) and results rounded once, on store.
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/cuda/reduce.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::aligned16;
using tally::cuda::block_sum;
using tally::cuda::ceil_div;
using tally::cuda::grid_for;
using tally::cuda::kPackSize;
using tally::cuda::row_threads;
using tally::cuda::stream;
using tally::cuda::Vec;

constexpr int64_t kRowChunk = kCudaRowChunk;  // elements per block when long rows are split

// Block r sums elements [c0, c1) of row (r / parts) where part = r % parts; writes out[r] (T or double).
// in: (outer, n); out: (outer, parts) (with parts == 1: (outer)).
template <class T, class Out>
__global__ void row_sum_kernel(const T* __restrict__ in, Out* __restrict__ out, int64_t n, int64_t parts,
                               int64_t part_len) {
  const int64_t row = blockIdx.x / parts, part = blockIdx.x % parts;
  const int64_t c0 = part * part_len, c1 = c0 + part_len < n ? c0 + part_len : n;
  const T* p = in + row * n;
  double acc = 0.0;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) acc += double(to_acc(p[c]));
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[blockIdx.x] = from_double_dev<Out>(acc);
}

// out[r] = the sum of partial[r, 0..parts) in a fixed order, one block per row; partial: (outer, parts), out: (outer).
template <class T>
__global__ void partial_finish_kernel(const double* __restrict__ partial, T* __restrict__ out, int64_t parts) {
  const double* p = partial + int64_t(blockIdx.x) * parts;
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < parts; k += blockDim.x) acc += p[k];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[blockIdx.x] = from_double_dev<T>(acc);
}

template <class T>
struct ReadValue {
  const T* in;
  int64_t n, inner;
  __device__ double operator()(int64_t o, int64_t i, int64_t c) const {
    return double(to_acc(in[(o * n + i) * inner + c]));
  }
};

// (value, index) of the first maximum, NaN winning (first NaN), as the CPU's sequential scan.
template <class T>
__device__ __forceinline__ bool better(T v, int64_t i, T best, int64_t bi) {
  const bool vn = v != v, bn = best != best;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > best || (v == best && i < bi);
}

// One block per row: out[r] = the maximum of in[r, :], argmax[r] its first index (NaN wins); in: (outer, n);
// out, argmax: (outer).
// Values are compared as acc_t<T> (bf16 widens exactly, so the order is that of the stored values).
template <class T>
__global__ void max_rows_kernel(const T* __restrict__ in, T* __restrict__ out, int32_t* __restrict__ argmax, int64_t n) {
  using C = acc_t<T>;
  __shared__ C best_s[1024];
  __shared__ int64_t arg_s[1024];
  const T* p = in + int64_t(blockIdx.x) * n;
  C best = to_acc(p[0]);
  int64_t arg = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    C v = to_acc(p[i]);
    if (better(v, i, best, arg)) {
      best = v;
      arg = i;
    }
  }
  best_s[threadIdx.x] = best;
  arg_s[threadIdx.x] = arg;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s && better(best_s[threadIdx.x + s], arg_s[threadIdx.x + s], best_s[threadIdx.x], arg_s[threadIdx.x])) {
      best_s[threadIdx.x] = best_s[threadIdx.x + s];
      arg_s[threadIdx.x] = arg_s[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[blockIdx.x] = from_acc<T>(best_s[0]);
    argmax[blockIdx.x] = int32_t(arg_s[0]);
  }
}

// One thread per (o, c): the CPU's sequential scan over n (coalesced across c).
// in: (outer, n, inner); out, argmax: (outer, inner).
template <class T>
__global__ void max_columns_kernel(const T* __restrict__ in, T* __restrict__ out, int32_t* __restrict__ argmax,
                                   int64_t outer, int64_t n, int64_t inner) {
  const int64_t total = outer * inner;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = j / inner, c = j % inner;
    const T* p = in + o * n * inner + c;
    acc_t<T> best = to_acc(p[0]);
    int32_t arg = 0;
    for (int64_t i = 1; i < n; ++i) {
      acc_t<T> v = to_acc(p[i * inner]);
      if (v > best || (v != v && best == best)) {
        best = v;
        arg = int32_t(i);
      }
    }
    out[j] = from_acc<T>(best);
    argmax[j] = arg;
  }
}

// dx[o, argmax[o, c], c] = dy[o, c] (the rest of dx zeroed before); dy, argmax: (outer, inner); dx: (outer, n, inner).
template <class T>
__global__ void max_backward_kernel(const T* __restrict__ dy, const int32_t* __restrict__ argmax, T* __restrict__ dx,
                                    int64_t outer, int64_t n, int64_t inner) {
  const int64_t total = outer * inner;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = j / inner, c = j % inner;
    dx[(o * n + argmax[j]) * inner + c] = dy[j];
  }
}

// y (N, C) += bias (C): blockIdx.y walks rows, threads walk W-wide column groups (no per-element division).
template <class T, int W>
__global__ void add_bias_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t N, int64_t C) {
  const int64_t groups = C / W;
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  const Vec<T, W> b = reinterpret_cast<const Vec<T, W>*>(bias)[g];
  for (int64_t r = blockIdx.y; r < N; r += gridDim.y) {
    Vec<T, W>* row = reinterpret_cast<Vec<T, W>*>(y + r * C);
    Vec<T, W> v = row[g];
#pragma unroll
    for (int k = 0; k < W; ++k) v.v[k] = from_acc<T>(to_acc(v.v[k]) + to_acc(b.v[k]));
    row[g] = v;
  }
}

}  // namespace

// out (outer, inner) = the sum over n of in (outer, n, inner): column sums (reduce.cuh) when inner > 1, else row
// sums (split into parts with a second pass for a few long rows).
template <class T>
void sum_dim(const T* in, T* out, void* workspace, int64_t outer, int64_t n, int64_t inner) {
  if (outer == 0 || inner == 0) return;
  if (n == 0) {
    TALLY_CUDA_CHECK("sum_dim", cudaMemsetAsync(out, 0, size_t(outer * inner) * sizeof(T), stream()));
    return;
  }
  if (inner > 1) {
    column_sum(outer, n, inner, ReadValue<T>{in, n, inner}, out, workspace, "sum_dim_columns_kernel");
    return;
  }
  // Rows: split long rows when there are too few of them to fill a GPU (decided by the sizes only, so the
  // summation order, hence the bits, are the same on every device).
  const int threads = row_threads(n);
  const int64_t parts = cuda_sum_dim_row_parts(outer, n);
  TALLY_CHECK(outer * parts <= int64_t(INT32_MAX), "[sum_dim] too many rows: ", outer);
  if (parts == 1) {
    row_sum_kernel<T, T><<<unsigned(outer), threads, 0, stream()>>>(in, out, n, 1, n);
    TALLY_CUDA_LAUNCH_CHECK("row_sum_kernel");
    return;
  }
  TALLY_CHECK(workspace != nullptr, "[sum_dim] no workspace for ", outer, " rows of ", n);
  double* partial = static_cast<double*>(workspace);  // (outer, parts)
  row_sum_kernel<T, double><<<unsigned(outer * parts), 512, 0, stream()>>>(in, partial, n, parts, kRowChunk);
  TALLY_CUDA_LAUNCH_CHECK("row_sum_kernel");
  partial_finish_kernel<T><<<unsigned(outer), 256, 0, stream()>>>(partial, out, parts);
  TALLY_CUDA_LAUNCH_CHECK("partial_finish_kernel");
}

// out, argmax (outer, inner) = the maximum over n of in (outer, n, inner) and its first index.
template <class T>
void max_dim(const T* in, T* out, int32_t* argmax, int64_t outer, int64_t n, int64_t inner) {
  if (outer == 0 || inner == 0 || n == 0) return;
  if (inner == 1) {
    TALLY_CHECK(outer <= int64_t(INT32_MAX), "[max_dim] too many rows: ", outer);
    max_rows_kernel<T><<<unsigned(outer), row_threads(n), 0, stream()>>>(in, out, argmax, n);
    TALLY_CUDA_LAUNCH_CHECK("max_rows_kernel");
    return;
  }
  max_columns_kernel<T><<<grid_for(outer * inner, 256), 256, 0, stream()>>>(in, out, argmax, outer, n, inner);
  TALLY_CUDA_LAUNCH_CHECK("max_columns_kernel");
}

// dx (outer, n, inner) = dy (outer, inner) at the argmax (outer, inner) positions, zero elsewhere.
template <class T>
void max_dim_backward(const T* dy, const int32_t* argmax, T* dx, int64_t outer, int64_t n, int64_t inner) {
  if (outer * n * inner == 0) return;
  TALLY_CUDA_CHECK("max_dim_backward", cudaMemsetAsync(dx, 0, size_t(outer * n * inner) * sizeof(T), stream()));
  max_backward_kernel<T><<<grid_for(outer * inner, 256), 256, 0, stream()>>>(dy, argmax, dx, outer, n, inner);
  TALLY_CUDA_LAUNCH_CHECK("max_backward_kernel");
}

// y (N, C) += bias (C) on every row, in 16-byte vectors when C and the pointers allow.
template <class T>
void add_bias(T* y, const T* bias, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  constexpr int P = kPackSize<T>;
  const unsigned rows = unsigned(N < 65535 ? N : 65535);
  if (C % P == 0 && aligned16(y) && aligned16(bias)) {
    const int64_t groups = C / P;
    const int threads = groups >= 256 ? 256 : int(ceil_div(groups, 32) * 32);
    add_bias_kernel<T, P><<<dim3(unsigned(ceil_div(groups, threads)), rows), threads, 0, stream()>>>(y, bias, N, C);
  } else {
    const int threads = C >= 256 ? 256 : int(ceil_div(C, 32) * 32);
    add_bias_kernel<T, 1><<<dim3(unsigned(ceil_div(C, threads)), rows), threads, 0, stream()>>>(y, bias, N, C);
  }
  TALLY_CUDA_LAUNCH_CHECK("add_bias_kernel");
}

// dbias (C) = the sum over rows of dy (N, C): sum_dim of (1, N, C).
template <class T>
void bias_backward(const T* dy, T* dbias, void* workspace, int64_t N, int64_t C) {
  sum_dim(dy, dbias, workspace, 1, N, C);
}

#define TALLY_INSTANTIATE(T)                                                                   \
  template void sum_dim<T>(const T*, T*, void*, int64_t, int64_t, int64_t);                           \
  template void max_dim<T>(const T*, T*, int32_t*, int64_t, int64_t, int64_t);                 \
  template void max_dim_backward<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t);  \
  template void add_bias<T>(T*, const T*, int64_t, int64_t);                                   \
  template void bias_backward<T>(const T*, T*, void*, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
