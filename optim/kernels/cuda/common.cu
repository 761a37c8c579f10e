// CUDA finishing kernels shared by the optimizer steps (see common.cuh): EMAs of row/column means, row factors,
// the clip divisor, and adding block sums into the inspection statistics or a norm's accumulator. All single-pass
// over small vectors, deterministic (fixed summation order).
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda::detail {

// The row and column EMAs (and column factors) of one statistic, block by block; shapes in common.cuh.
__global__ void __launch_bounds__(kEmaThreads)
    ema_rows_cols(float* row_stat, const double* row_partials, float* col_stat, float* col_factor,
                  const double* col_partials, FactoredLayout l, Plan plan, double beta, double* col_sums) {
  ema_rows_cols_of(row_stat, row_partials, col_stat, col_factor, col_partials, l, plan, beta, col_sums, blockIdx.x);
}

// ZeRO 1, rows cut: the column EMAs and factors from col_sums, a thread per column; all three: (cols).
__global__ void ema_cols_of_sums(float* col_stat, float* col_factor, const double* col_sums, int64_t cols,
                                 int64_t rows, double beta) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c < cols) ema_col(col_stat, col_factor, c, col_sums[c], rows, beta);
}

// group_sums[g] (groups) = the sum of group g's row statistics (rows) over this rank's rows, a block per group.
__global__ void __launch_bounds__(kRowFactorThreads)
    row_group_sums(const float* row, FactoredLayout l, double* group_sums) {
  __shared__ double shared[kRowFactorThreads / 32];
  const double total = row_group_sum(row, l, blockIdx.x, shared);
  if (threadIdx.x == 0) group_sums[blockIdx.x] = total;
}

// row_factor = rsqrt(row / the mean of its (p, q, s) group), a block per group; row, row_factor: (rows); group_sums:
// (groups), or null.
__global__ void __launch_bounds__(kRowFactorThreads)
    row_factors(const float* row, float* row_factor, FactoredLayout l, const double* group_sums, int64_t rows) {
  row_factors_of(row, row_factor, l, group_sums, rows, blockIdx.x);
}

namespace {

// divisor from this tensor's sum (total null), or only that sum into *total (ZeRO 1: completed over the ranks
// before divisor_of_total).
// block_sums: (blocks, kSums), slot 0; divisor, total: one value each; stats: kStatCount doubles, or null. One block.
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
// total, divisor: one value each.
__global__ void divisor_of_total(const double* total, int64_t numel, double threshold, float* divisor) {
  if (threadIdx.x == 0) *divisor = clip_divisor_of(*total, numel, float(threshold));
}

// S_j: column x's tile partials (P, tiles_i, K) added in tile order.
// col_partials: (P, tiles_i, K); s: (cols), cols = P * K. A thread per column.
__global__ void update_column_sums(const double* col_partials, int64_t tiles_i, int64_t K, int64_t cols, double* s) {
  const int64_t x = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (x >= cols) return;
  const int64_t p = x / K, k = x % K;
  double acc = 0;
  for (int64_t t = 0; t < tiles_i; ++t) acc += col_partials[(p * tiles_i + t) * K + k];
  s[x] = acc;
}

// sum_j mean_r * S_j / c_j over every column (round = w.cross after the round: column sums | group sums | S).
// col_stat: (cols); total: one value. One block.
__global__ void whole_update_squares(FactoredLayout l, const double* round, const float* col_stat, int64_t rows,
                                     double* total) {
  __shared__ double shared[kWarps];
  const int64_t cols = l.cols(), K = l.Q * l.m * l.S, QS = l.Q * l.S;
  const double* group_sums = round + cols;
  const double* s = round + cols + l.groups();
  double acc = 0;
  for (int64_t x = threadIdx.x; x < cols; x += kThreads) {
    const int64_t p = x / K, k = x % K;
    const int64_t g = p * QS + (k / (l.m * l.S)) * l.S + k % l.S;
    const float mean = float(group_sums[g] / double(rows));
    acc += double(mean) * s[x] / double(col_stat[x]);
  }
  const double sum = block_sum_to_first<kThreads>(acc, shared);
  if (threadIdx.x == 0) *total = sum;
}

// stats[slot_e] += the sum of slot e of block_sums (blocks, kSums), for e < count (at most 3). One block.
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

// clip_divisor, then (ZeRO 1) the sum over the ranks and divisor_of_total; shapes in common.cuh.
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

// sums (count) zeroed, then summed over the ranks.
void sums_without_elements(double* sums, int64_t count, const Sharding& sh) {
  TALLY_CUDA_CHECK("cudaMemsetAsync", cudaMemsetAsync(sums, 0, size_t(count) * sizeof(double), stream()));
  (*sh.sum)(sums, count);
}

// The round over w.cross, then ema_cols_of_sums; col_stat: (cols).
void columns_over_ranks(const FactoredLayout& l, const Workspace& w, float* col_stat, double beta, const Sharding& sh,
                        RoundCarries carries) {
  (*sh.sum)(w.cross, round_doubles(l, carries));
  ema_cols_of_sums<<<unsigned((l.cols() + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(
      col_stat, w.col_factor, w.cross, l.cols(), sh.rows, beta);
  TALLY_CUDA_LAUNCH_CHECK("ema_cols_of_sums");
}

// Zeros into w.cross, then columns_over_ranks; col_stat: (cols).
void columns_without_rows(const FactoredLayout& l, const Workspace& w, float* col_stat, double beta, const Sharding& sh,
                          RoundCarries carries) {
  // Nothing of its own to add: zeros into the round, then the column EMAs as every rank makes them.
  TALLY_CUDA_CHECK("cudaMemsetAsync",
                   cudaMemsetAsync(w.cross, 0, size_t(round_doubles(l, carries)) * sizeof(double), stream()));
  columns_over_ranks(l, w, col_stat, beta, sh, carries);
}

// update_column_sums, a thread per column: w.col_partials (P, tiles_i, K) into S (cols).
void launch_update_column_sums(const FactoredLayout& l, const Plan& plan, const Workspace& w) {
  const int64_t cols = l.cols();
  update_column_sums<<<unsigned((cols + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(
      w.col_partials, plan.tiles_i, plan.K, cols, w.cross + cols + l.groups());
  TALLY_CUDA_LAUNCH_CHECK("update_column_sums");
}

// whole_update_squares in one block; col_stat: (cols).
void launch_whole_update_squares(const FactoredLayout& l, const Workspace& w, const float* col_stat, int64_t rows) {
  whole_update_squares<<<1, kThreads, 0, stream()>>>(l, w.cross, col_stat, rows, w.total);
  TALLY_CUDA_LAUNCH_CHECK("whole_update_squares");
}

// add_block_sums (with stats) and divisor_of_total from *w.total; block_sums: (blocks, kSums).
void launch_clip_divisor_of_whole(const Workspace& w, const double* block_sums, int blocks, double threshold,
                                  double* stats, const Sharding& sh, const char* what) {
  if (stats) launch_add_block_sums(block_sums, blocks, stats, kStatUpdateSq, 0, 0, 1, what);
  divisor_of_total<<<1, 32, 0, stream()>>>(w.total, sh.numel, threshold, w.divisor);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

// add_block_sums in one block; block_sums: (blocks, kSums).
void launch_add_block_sums(const double* block_sums, int blocks, double* stats, int slot0, int slot1, int slot2,
                           int count, const char* what) {
  add_block_sums<<<1, kThreads, 0, stream()>>>(block_sums, blocks, stats, slot0, slot1, slot2, count);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

}  // namespace tally::optim::kernels::cuda::detail
