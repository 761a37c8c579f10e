// CUDA kernels: fused LayerNorm over the last dim of (N, C), forward (saving mean and rstd; alone or after a residual
// add) and backward.
// One warp per row (8 rows to a block of 256 threads): a lane takes columns lane, lane + 32, ... (each load a
// warp-wide 128-byte run for f32), sums in double like the CPU, and the warp's butterfly sums give every lane the
// row's totals with no block barrier; a row's second and third reads hit the cache (bench/NOTES.md section 18).
// The backward sums dweight and dbias in the pass that writes dx (layernorm_backward_kernel: per-block f64 partial
// sums, then reduce.cuh's second kernel adds them in block order; no atomics), so repeated runs give identical bits;
// rows wider than kCudaLayerNormFusedMaxC take the dx kernel and reduce.cuh's column sums. bf16 rows are
// computed in float (C = acc_t<T>), with mean and rstd kept in float.
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/cuda/reduce.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::stream;
using tally::cuda::warp_sum;

constexpr int kRowsPerBlock = 8;  // warps of a 256-thread block, one row each

// This warp's row, or -1 past the last.
__device__ inline int64_t warp_row(int64_t N) {
  const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  return r < N ? r : -1;
}

// y = LayerNorm(x); or, given a residual, sum = x + residual (rounded as add() rounds it) is written in the first
// pass and the later passes read the row of sum back (this thread's own writes, from the cache): one kernel, so both
// forms run the same arithmetic on the same values and agree bit for bit.
// x, residual, sum (both null without a residual), y: (N, C); weight, bias: (C); mean, rstd: (N). One warp per row.
template <class T>
__global__ void layernorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ residual, T* __restrict__ sum,
                                         const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ y,
                                         acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd, int64_t N, int64_t C,
                                         double eps) {
  using A = acc_t<T>;
  const int64_t r = warp_row(N);
  if (r < 0) return;
  const int lane = threadIdx.x & 31;
  const T* xr = x + r * C;
  T* yr = y + r * C;
  double s = 0.0;
  if (residual) {
    const T* rr = residual + r * C;
    T* sr = sum + r * C;
    for (int64_t c = lane; c < C; c += 32) {
      const T v = from_acc<T>(to_acc(xr[c]) + to_acc(rr[c]));
      sr[c] = v;
      s += double(to_acc(v));
    }
    xr = sr;
  } else {
    for (int64_t c = lane; c < C; c += 32) s += double(to_acc(xr[c]));
  }
  const A m = A(warp_sum(s) / double(C));
  double v = 0.0;
  for (int64_t c = lane; c < C; c += 32) {
    const double d = double(to_acc(xr[c]) - m);
    v += d * d;
  }
  const A rs = A(1.0 / sqrt(warp_sum(v) / double(C) + eps));
  for (int64_t c = lane; c < C; c += 32)
    yr[c] = from_acc<T>((to_acc(xr[c]) - m) * rs * to_acc(weight[c]) + to_acc(bias[c]));
  if (lane == 0) {
    mean[r] = m;
    rstd[r] = rs;
  }
}

// A row's two means of the backward, over its C columns: of dnorm = dy * weight, and of dnorm * norm. Called by a
// whole warp (lane: its lane), summed in double in lane order and by the warp's butterfly: every lane gets both.
template <class T>
struct RowMeans {
  acc_t<T> g, gn;
};
template <class T>
__device__ inline RowMeans<T> backward_row_means(const T* __restrict__ dyr, const T* __restrict__ xr,
                                                 const T* __restrict__ weight, acc_t<T> m, acc_t<T> rs, int64_t C,
                                                 int lane) {
  using A = acc_t<T>;
  double sum_g = 0.0, sum_gn = 0.0;
  for (int64_t c = lane; c < C; c += 32) {
    const A g = to_acc(dyr[c]) * to_acc(weight[c]);
    sum_g += double(g);
    sum_gn += double(g) * double((to_acc(xr[c]) - m) * rs);
  }
  return {A(warp_sum(sum_g) / double(C)), A(warp_sum(sum_gn) / double(C))};
}

// dx = rstd * (dy * weight - mean_c(dy * weight) - norm * mean_c(dy * weight * norm)), norm = (x - mean) * rstd,
// one warp per row. dy, x, dx: (N, C); weight: (C); mean, rstd: (N).
template <class T>
__global__ void layernorm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
                                             const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                                             T* __restrict__ dx, int64_t N, int64_t C) {
  using A = acc_t<T>;
  const int64_t r = warp_row(N);
  if (r < 0) return;
  const int lane = threadIdx.x & 31;
  const T *dyr = dy + r * C, *xr = x + r * C;
  T* dxr = dx + r * C;
  const A m = mean[r], rs = rstd[r];
  const RowMeans<T> means = backward_row_means(dyr, xr, weight, m, rs, C, lane);
  for (int64_t c = lane; c < C; c += 32) {
    const A norm = (to_acc(xr[c]) - m) * rs;
    dxr[c] = from_acc<T>(rs * (to_acc(dyr[c]) * to_acc(weight[c]) - means.g - norm * means.gn));
  }
}

// dx, dweight and dbias in one pass (cuda_layernorm_backward_fused; kernels.h): a block takes tiles of kTileRows rows
// (tile, tile + blocks, ...). Per tile, its warps make each row's two means (backward_row_means, as the dx kernel),
// then each thread walks its columns c, c + 256, ... down the tile's rows: it writes dx (the arithmetic of
// layernorm_backward_dx_kernel) and adds dy * norm and dy for dweight and dbias, in f64, into the
// block's sums in shared memory (a column is one thread's alone: no atomics). At the end the block's sums go to
// partial (2, blocks, C), which column_sum_finish_kernel adds in block order. dx may be null (not wanted): then only
// the sums. One read of dy and x from memory, where the dx kernel and two column sums made three.
constexpr int kTileRows = int(kCudaLayerNormTileRows);

// dy, x, dx (null: not wanted): (N, C); weight: (C); mean, rstd: (N); partial: (2, gridDim.x, C) of double.
template <class T>
__global__ void layernorm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                          const T* __restrict__ weight, const acc_t<T>* __restrict__ mean,
                                          const acc_t<T>* __restrict__ rstd, T* __restrict__ dx,
                                          double* __restrict__ partial, int64_t N, int64_t C) {
  using A = acc_t<T>;
  __shared__ double sums_s[2 * kCudaLayerNormFusedMaxC];  // [0, C): dweight's, [C, 2C): dbias's
  __shared__ A mean_s[kTileRows], rstd_s[kTileRows], mg_s[kTileRows], mgn_s[kTileRows];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t c = threadIdx.x; c < 2 * C; c += blockDim.x) sums_s[c] = 0.0;
  for (int64_t row0 = int64_t(blockIdx.x) * kTileRows; row0 < N; row0 += int64_t(gridDim.x) * kTileRows) {
    const int rows = int(N - row0 < kTileRows ? N - row0 : kTileRows);
    for (int i = warp; i < rows; i += kRowsPerBlock) {  // the rows' statistics and sums
      const int64_t r = row0 + i;
      const A m = mean[r], rs = rstd[r];
      if (dx) {
        const RowMeans<T> means = backward_row_means(dy + r * C, x + r * C, weight, m, rs, C, lane);
        if (lane == 0) mg_s[i] = means.g, mgn_s[i] = means.gn;
      }
      if (lane == 0) mean_s[i] = m, rstd_s[i] = rs;
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {  // down the columns
      const A w = to_acc(weight[c]);
      double dw = 0.0, db = 0.0;
      for (int i = 0; i < rows; ++i) {
        const int64_t j = (row0 + i) * C + c;
        const A g = to_acc(dy[j]);
        const A norm = (to_acc(x[j]) - mean_s[i]) * rstd_s[i];
        if (dx) dx[j] = from_acc<T>(rstd_s[i] * (g * w - mg_s[i] - norm * mgn_s[i]));
        dw += double(g) * double(norm);
        db += double(g);
      }
      sums_s[c] += dw;
      sums_s[C + c] += db;
    }
    __syncthreads();  // the next tile's statistics overwrite this one's
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    partial[int64_t(blockIdx.x) * C + c] = sums_s[c];
    partial[(int64_t(gridDim.x) + blockIdx.x) * C + c] = sums_s[C + c];
  }
}

// Blocks of kRowsPerBlock warps for N rows.
unsigned row_blocks(int64_t N) { return unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock); }

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

// y (N, C) = (x - mean) * rstd * weight + bias per row of x (N, C); weight, bias: (C); mean, rstd (N) saved.
template <class T>
void layernorm_forward(const T* x, const T* weight, const T* bias, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t N,
                       int64_t C, double eps) {
  if (N == 0 || C == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[layernorm_forward] too many rows: ", N);
  layernorm_forward_kernel<T><<<row_blocks(N), 32 * kRowsPerBlock, 0, stream()>>>(x, nullptr, nullptr, weight, bias, y,
                                                                                 mean, rstd, N, C, eps);
  TALLY_CUDA_LAUNCH_CHECK("layernorm_forward_kernel");
}

// sum (N, C) = x + residual (N, C), then layernorm_forward of sum, in one kernel; y: (N, C); weight, bias: (C);
// mean, rstd: (N).
template <class T>
void add_layernorm_forward(const T* x, const T* residual, T* sum, const T* weight, const T* bias, T* y, acc_t<T>* mean,
                           acc_t<T>* rstd, int64_t N, int64_t C, double eps) {
  if (N == 0 || C == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[add_layernorm_forward] too many rows: ", N);
  layernorm_forward_kernel<T><<<row_blocks(N), 32 * kRowsPerBlock, 0, stream()>>>(x, residual, sum, weight, bias, y,
                                                                                 mean, rstd, N, C, eps);
  TALLY_CUDA_LAUNCH_CHECK("layernorm_forward_kernel");
}

// dx (N, C) and dweight, dbias (C), each may be null, from dy, x (N, C), weight (C) and the saved mean, rstd (N):
// layernorm_backward_kernel and column_sum_finish_kernel when dweight or dbias is wanted and
// cuda_layernorm_backward_fused(N, C), else the dx kernel and column_sum.
template <class T>
void layernorm_backward(const T* dy, const T* x, const T* weight, const acc_t<T>* mean, const acc_t<T>* rstd, T* dx,
                        T* dweight, T* dbias, void* workspace, int64_t N, int64_t C) {
  if (C == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX), "[layernorm_backward] too many rows: ", N);
  if ((dweight || dbias) && cuda_layernorm_backward_fused(N, C)) {
    TALLY_CHECK(workspace != nullptr, "[layernorm_backward] no workspace for the sums of dweight and dbias (", N, ", ",
                C, ")");
    const int64_t blocks = cuda_layernorm_backward_blocks(N);
    double* partial = static_cast<double*>(workspace);  // (2, blocks, C)
    layernorm_backward_kernel<T><<<unsigned(blocks), 32 * kRowsPerBlock, 0, stream()>>>(
        dy, x, weight, mean, rstd, dx, partial, N, C);
    TALLY_CUDA_LAUNCH_CHECK("layernorm_backward_kernel");
    const unsigned finish_blocks = tally::cuda::grid_for(C, 256);
    if (dweight) {
      column_sum_finish_kernel<T><<<finish_blocks, 256, 0, stream()>>>(partial, dweight, 1, blocks, C);
      TALLY_CUDA_LAUNCH_CHECK("column_sum_finish_kernel");
    }
    if (dbias) {
      column_sum_finish_kernel<T><<<finish_blocks, 256, 0, stream()>>>(partial + blocks * C, dbias, 1, blocks, C);
      TALLY_CUDA_LAUNCH_CHECK("column_sum_finish_kernel");
    }
    return;
  }
  if (dx && N > 0) {
    layernorm_backward_dx_kernel<T><<<row_blocks(N), 32 * kRowsPerBlock, 0, stream()>>>(dy, x, weight, mean, rstd, dx,
                                                                                      N, C);
    TALLY_CUDA_LAUNCH_CHECK("layernorm_backward_dx_kernel");
  }
  // One after the other on the stream: they share the workspace.
  if (dweight)
    column_sum(1, N, C, DweightValue<T>{dy, x, mean, rstd, C}, dweight, workspace, "layernorm_dweight_kernel");
  if (dbias) column_sum(1, N, C, DbiasValue<T>{dy, C}, dbias, workspace, "layernorm_dbias_kernel");
}

#define TALLY_INSTANTIATE(T)                                                                                      \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, acc_t<T>*, acc_t<T>*, int64_t, int64_t, double); \
  template void add_layernorm_forward<T>(const T*, const T*, T*, const T*, const T*, T*, acc_t<T>*, acc_t<T>*, int64_t, \
                                         int64_t, double);                                                          \
  template void layernorm_backward<T>(const T*, const T*, const T*, const acc_t<T>*, const acc_t<T>*, T*, T*, T*, void*, \
                                      int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
