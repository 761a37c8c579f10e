// CUDA finishing kernels shared by the optimizer steps (see common.cuh): EMAs of row/column means, row factors,
// the clip divisor, and adding block sums into the inspection statistics or a norm's accumulator. All single-pass
// over small vectors, deterministic (fixed summation order).
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda::detail {

namespace {

// stat[r] = beta*stat[r] + (1-beta)*mean of row r, its sum from `terms` partials (in order).
__device__ void ema_row(float* stat, const double* partials, int64_t r, int64_t rows, int64_t terms, int64_t count,
                        double beta) {
  if (r >= rows) return;
  double sum = 0;
  for (int64_t t = 0; t < terms; ++t) sum += partials[r * terms + t];
  const float mean = float(sum / double(count));
  stat[r] = fmaf(mean, float(1.0 - beta), stat[r] * float(beta));
}

// The 32 columns from c0: lane j adds row tiles j, j + kColLanes, ...; lane 0 adds the lanes in order.
__device__ void ema_col_group(float* stat, float* col_factor, const double* partials, const FactoredLayout& l,
                              const Plan& plan, int64_t c0, double beta) {
  __shared__ double lanes[kColLanes][32];
  const int lane = threadIdx.x / 32, x = threadIdx.x % 32;
  const int64_t c = c0 + x;  // p*K + k
  const bool valid = c < l.cols();
  const int64_t p = c / plan.K, k = c % plan.K;
  double sum = 0;
  if (valid)
    for (int64_t t = lane; t < plan.tiles_i; t += kColLanes) sum += partials[(p * plan.tiles_i + t) * plan.K + k];
  lanes[lane][x] = sum;
  __syncthreads();
  if (lane != 0 || !valid) return;
  double total = 0;
  for (int j = 0; j < kColLanes; ++j) total += lanes[j][x];
  const float mean = float(total / double(l.n));
  const float v = fmaf(mean, float(1.0 - beta), stat[c] * float(beta));
  stat[c] = v;
  col_factor[c] = 1.0f / sqrtf(v);
}

}  // namespace

__global__ void __launch_bounds__(kEmaThreads)
    ema_rows_cols(float* row_stat, const double* row_partials, float* col_stat, float* col_factor,
                  const double* col_partials, FactoredLayout l, Plan plan, double beta, unsigned row_blocks) {
  if (blockIdx.x < row_blocks)
    ema_row(row_stat, row_partials, blockIdx.x * int64_t(kEmaThreads) + threadIdx.x, l.rows(), plan.row_terms, l.m,
            beta);
  else
    ema_col_group(col_stat, col_factor, col_partials, l, plan, (blockIdx.x - row_blocks) * int64_t(32), beta);
}

__global__ void __launch_bounds__(kRowFactorThreads)
    row_factors(const float* row, float* row_factor, FactoredLayout l) {
  __shared__ double shared[kRowFactorThreads / 32];
  __shared__ float mean;
  const int64_t QS = l.Q * l.S, g = blockIdx.x, p = g / QS, qs = g % QS;
  double acc = 0;
  for (int64_t i = threadIdx.x; i < l.n; i += kRowFactorThreads) acc += double(row[(p * l.n + i) * QS + qs]);
  const double total = block_sum_to_first<kRowFactorThreads>(acc, shared);
  if (threadIdx.x == 0) mean = float(total / double(l.n));
  __syncthreads();
  for (int64_t i = threadIdx.x; i < l.n; i += kRowFactorThreads) {
    const int64_t x = (p * l.n + i) * QS + qs;
    row_factor[x] = 1.0f / sqrtf(row[x] / mean);
  }
}

namespace {

// The sum of slot `slot` over `blocks` block sums, valid in thread 0 of a kThreads block.
__device__ double sum_slot(const double* block_sums, int blocks, int slot, double* shared) {
  double acc = 0;
  for (int b = threadIdx.x; b < blocks; b += kThreads) acc += block_sums[b * kSums + slot];
  return block_sum_to_first<kThreads>(acc, shared);
}

__global__ void clip_divisor(const double* block_sums, int blocks, int64_t numel, double threshold, float* divisor,
                             double* stats) {
  __shared__ double shared[kWarps];
  const double sum = sum_slot(block_sums, blocks, 0, shared);
  if (threadIdx.x != 0) return;
  *divisor = clip_divisor_of(sum, numel, float(threshold));
  if (stats) stats[kStatUpdateSq] += sum;
}

__global__ void add_block_sums(const double* block_sums, int blocks, double* stats, int slot0, int slot1, int slot2,
                               int count) {
  __shared__ double shared[kWarps];
  const int slots[3] = {slot0, slot1, slot2};
  for (int e = 0; e < count; ++e) {
    const double sum = sum_slot(block_sums, blocks, e, shared);
    if (threadIdx.x == 0) stats[slots[e]] += sum;
  }
}

}  // namespace

void launch_clip_divisor(const double* block_sums, int blocks, int64_t numel, double threshold, float* divisor,
                         double* stats, const char* what) {
  clip_divisor<<<1, kThreads, 0, stream()>>>(block_sums, blocks, numel, threshold, divisor, stats);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

void launch_add_block_sums(const double* block_sums, int blocks, double* stats, int slot0, int slot1, int slot2,
                           int count, const char* what) {
  add_block_sums<<<1, kThreads, 0, stream()>>>(block_sums, blocks, stats, slot0, slot1, slot2, count);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

// Pass 2 of the factored methods (see common.cuh).
__global__ void update_sq(FactoredLayout l, int64_t K, const float* g, const float* rf, const float* cf, float gs,
                          bool vec, double* block_sums) {
  __shared__ double shared[kWarps];
  double acc = 0;
  const int64_t rows = l.P * l.n, chunks = (K + 4 * kThreads - 1) / (4 * kThreads);
  for (int64_t t = blockIdx.x; t < rows * chunks; t += gridDim.x) {
    const int64_t pi = t / chunks, k0 = (t % chunks) * 4 * kThreads + 4 * threadIdx.x;
    const int64_t p = pi / l.n, i = pi % l.n;
    const float* gr = g + pi * K;
    if (vec && k0 < K) {
      const float4 gv = *reinterpret_cast<const float4*>(gr + k0);
      const float r = rf[pi];
      const float* c = cf + p * K + k0;
      const float u0 = (r * c[0]) * (gv.x * gs), u1 = (r * c[1]) * (gv.y * gs);
      const float u2 = (r * c[2]) * (gv.z * gs), u3 = (r * c[3]) * (gv.w * gs);
      acc += double(u0) * u0 + double(u1) * u1 + double(u2) * u2 + double(u3) * u3;
    } else {
      for (int64_t k = k0; k < imin(K, k0 + 4); ++k) {
        const float u = (row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * (gr[k] * gs);
        acc += double(u) * u;
      }
    }
  }
  const double total = block_sum_to_first<kThreads>(acc, shared);
  if (threadIdx.x == 0) block_sums[blockIdx.x * kSums] = total;
}

// Dense pass 1: v = b2 v + (1-b2)(g^2+eps1), block sums of u^2.
__global__ void dense_second_moment(int64_t n, const float* g, float* v, float gs, float eps1, float b2, float one_b2,
                                    double* block_sums) {
  __shared__ double shared[kWarps];
  double acc = 0;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float u = dense_v_update(g[e] * gs, v + e, eps1, b2, one_b2);
    acc += double(u) * u;
  }
  const double total = block_sum_to_first<kThreads>(acc, shared);
  if (threadIdx.x == 0) block_sums[blockIdx.x * kSums] = total;
}

}  // namespace tally::optim::kernels::cuda::detail
