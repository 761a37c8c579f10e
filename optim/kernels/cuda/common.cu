// CUDA finishing kernels shared by the optimizer steps (see common.cuh): EMAs of row/column means, row factors,
// the clip divisor, and adding block sums into the inspection statistics or a norm's accumulator. All single-pass
// over small vectors, deterministic (fixed summation order).
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda::detail {

__global__ void __launch_bounds__(kEmaThreads)
    ema_rows_cols(float* row_stat, const double* row_partials, float* col_stat, float* col_factor,
                  const double* col_partials, FactoredLayout l, Plan plan, double beta, double* col_sums) {
  ema_rows_cols_of(row_stat, row_partials, col_stat, col_factor, col_partials, l, plan, beta, col_sums, blockIdx.x);
}

__global__ void ema_cols_of_sums(float* col_stat, float* col_factor, const double* col_sums, int64_t cols,
                                 int64_t rows, double beta) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c < cols) ema_col(col_stat, col_factor, c, col_sums[c], rows, beta);
}

__global__ void __launch_bounds__(kRowFactorThreads)
    row_group_sums(const float* row, FactoredLayout l, double* group_sums) {
  __shared__ double shared[kRowFactorThreads / 32];
  const double total = row_group_sum(row, l, blockIdx.x, shared);
  if (threadIdx.x == 0) group_sums[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kRowFactorThreads)
    row_factors(const float* row, float* row_factor, FactoredLayout l, const double* group_sums, int64_t rows) {
  row_factors_of(row, row_factor, l, group_sums, rows, blockIdx.x);
}

namespace {

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
