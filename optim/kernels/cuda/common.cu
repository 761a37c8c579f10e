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

// stat[c] = beta*stat[c] + (1-beta)*mean of column c over `rows` rows, its sum given; col_factor[c] = rsqrt(stat[c]).
__device__ void ema_col(float* stat, float* col_factor, int64_t c, double sum, int64_t rows, double beta) {
  const float mean = float(sum / double(rows));
  const float v = fmaf(mean, float(1.0 - beta), stat[c] * float(beta));
  stat[c] = v;
  col_factor[c] = 1.0f / sqrtf(v);
}

// The 32 columns from c0: lane j adds row tiles j, j + kColLanes, ...; lane 0 adds the lanes in order, then
// finishes the column, or (col_sums) writes its sum there.
__device__ void ema_col_group(float* stat, float* col_factor, const double* partials, const FactoredLayout& l,
                              const Plan& plan, int64_t c0, double beta, double* col_sums) {
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
  if (col_sums) col_sums[c] = total;
  else ema_col(stat, col_factor, c, total, l.n, beta);
}

}  // namespace

__global__ void __launch_bounds__(kEmaThreads)
    ema_rows_cols(float* row_stat, const double* row_partials, float* col_stat, float* col_factor,
                  const double* col_partials, FactoredLayout l, Plan plan, double beta, unsigned row_blocks,
                  double* col_sums) {
  if (blockIdx.x < row_blocks)
    ema_row(row_stat, row_partials, blockIdx.x * int64_t(kEmaThreads) + threadIdx.x, l.rows(), plan.row_terms, l.m,
            beta);
  else
    ema_col_group(col_stat, col_factor, col_partials, l, plan, (blockIdx.x - row_blocks) * int64_t(32), beta,
                  col_sums);
}

__global__ void ema_cols_of_sums(float* col_stat, float* col_factor, const double* col_sums, int64_t cols,
                                 int64_t rows, double beta) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c < cols) ema_col(col_stat, col_factor, c, col_sums[c], rows, beta);
}

namespace {

// The sum of group g's row statistics over this tensor's rows, valid in thread 0.
__device__ double row_group_sum(const float* row, const FactoredLayout& l, int64_t g, double* shared) {
  const int64_t QS = l.Q * l.S, p = g / QS, qs = g % QS;
  double acc = 0;
  for (int64_t i = threadIdx.x; i < l.n; i += kRowFactorThreads) acc += double(row[(p * l.n + i) * QS + qs]);
  return block_sum_to_first<kRowFactorThreads>(acc, shared);
}

}  // namespace

__global__ void __launch_bounds__(kRowFactorThreads)
    row_group_sums(const float* row, FactoredLayout l, double* group_sums) {
  __shared__ double shared[kRowFactorThreads / 32];
  const double total = row_group_sum(row, l, blockIdx.x, shared);
  if (threadIdx.x == 0) group_sums[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kRowFactorThreads)
    row_factors(const float* row, float* row_factor, FactoredLayout l, const double* group_sums, int64_t rows) {
  __shared__ double shared[kRowFactorThreads / 32];
  __shared__ float mean;
  const int64_t QS = l.Q * l.S, g = blockIdx.x, p = g / QS, qs = g % QS;
  const double total = group_sums ? group_sums[g] : row_group_sum(row, l, g, shared);
  if (threadIdx.x == 0) mean = float(total / double(rows));
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

// divisor from this tensor's sum (total null), or only that sum into *total (ZeRO 1: completed over the ranks
// before divisor_of_total).
__global__ void clip_divisor(const double* block_sums, int blocks, int64_t numel, double threshold, float* divisor,
                             double* stats, double* total) {
  __shared__ double shared[kWarps];
  const double sum = sum_slot(block_sums, blocks, 0, shared);
  if (threadIdx.x != 0) return;
  if (total) *total = sum;
  else *divisor = clip_divisor_of(sum, numel, float(threshold));
  if (stats) stats[kStatUpdateSq] += sum;
}

// One warp; its first thread writes the divisor.
__global__ void divisor_of_total(const double* total, int64_t numel, double threshold, float* divisor) {
  if (threadIdx.x == 0) *divisor = clip_divisor_of(*total, numel, float(threshold));
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
                         double* stats, const Sharding& sh, double* total, const char* what) {
  clip_divisor<<<1, kThreads, 0, stream()>>>(block_sums, blocks, numel, threshold, divisor, stats,
                                             sh.sum ? total : nullptr);
  TALLY_CUDA_LAUNCH_CHECK(what);
  if (!sh.sum) return;
  (*sh.sum)(total, 1);
  divisor_of_total<<<1, 32, 0, stream()>>>(total, sh.numel, threshold, divisor);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

void sums_without_elements(double* sums, int64_t count, const Sharding& sh) {
  TALLY_CUDA_CHECK("cudaMemsetAsync", cudaMemsetAsync(sums, 0, size_t(count) * sizeof(double), stream()));
  (*sh.sum)(sums, count);
}

void columns_over_ranks(const FactoredLayout& l, const Workspace& w, float* col_stat, double beta,
                        const Sharding& sh) {
  (*sh.sum)(w.cross, l.cols() + l.groups());
  ema_cols_of_sums<<<unsigned((l.cols() + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(
      col_stat, w.col_factor, w.cross, l.cols(), sh.rows, beta);
  TALLY_CUDA_LAUNCH_CHECK("ema_cols_of_sums");
}

void columns_without_rows(const FactoredLayout& l, const Workspace& w, float* col_stat, double beta,
                          const Sharding& sh) {
  // Nothing of its own to add: zeros into the round, then the column EMAs as every rank makes them.
  TALLY_CUDA_CHECK("cudaMemsetAsync",
                   cudaMemsetAsync(w.cross, 0, size_t(l.cols() + l.groups()) * sizeof(double), stream()));
  columns_over_ranks(l, w, col_stat, beta, sh);
}

void launch_add_block_sums(const double* block_sums, int blocks, double* stats, int slot0, int slot1, int slot2,
                           int count, const char* what) {
  add_block_sums<<<1, kThreads, 0, stream()>>>(block_sums, blocks, stats, slot0, slot1, slot2, count);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

}  // namespace tally::optim::kernels::cuda::detail
