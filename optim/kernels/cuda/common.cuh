// CUDA helpers of the optimizer kernels (internal to optim/kernels/cuda); the error checks, the stream, launch
// sizing and the warp/block sums are core/cuda/common.cuh's, shared with the ops; the tiling of a factored tensor
// and the workspace layouts are optim/kernels/cuda_workspace.h's (plain C++, for plans). Here: element loads/stores of f32 and bf16 moments, and the small finishing kernels
// (EMA of row/column means, factors, clip divisor). Every reduction has a fixed shape (grid sizes depend on the
// tensor's shape only), sums in double and no float atomics. Every launch runs on tally::cuda::stream().
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "core/cuda/common.cuh"
#include "core/error.h"
#include "core/philox.h"
#include "optim/kernels/cuda_workspace.h"
#include "optim/kernels/optim_kernels.h"

namespace tally::optim::kernels::cuda::detail {

using ::tally::cuda::aligned16;
using ::tally::cuda::block_sum_to_first;
using ::tally::cuda::imin;
using ::tally::cuda::stream;
using ::tally::cuda::warp_sum;

constexpr int kThreads = kCudaThreads;  // threads per block everywhere
constexpr int kWarps = kThreads / 32;

inline int reduce_blocks(int64_t n) {
  return int(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

// Where a block works: its index among its grid's blocks. A kernel launched for one tensor is at (blockIdx.x,
// gridDim.x); a batched launch (came_factored_steps) gives each tensor's blocks their places in that tensor's own grid,
// so that every tensor is stepped exactly as its own launch would step it.
struct GridPos {
  int64_t block, blocks;
};
__device__ inline GridPos own_grid() { return {int64_t(blockIdx.x), int64_t(gridDim.x)}; }

__device__ inline float load(const float* p) { return *p; }
__device__ inline float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline float store(float* p, float v) {
  *p = v;
  return v;
}
// Rounded to nearest even; returns the value as stored (what the next step reads).
__device__ inline float store(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
  return __bfloat162float(*p);
}
// Gradients are f32, or tally's bf16 (FusedBf16: read in place of a widened copy; widening is exact).
__device__ inline float load(const bf16* p) { return __uint_as_float(uint32_t(p->bits) << 16); }
// Four consecutive gradient elements (a 16-byte aligned f32 or 8-byte aligned bf16 run).
__device__ inline float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ inline float4 load4(const bf16* p) {
  const uint2 b = *reinterpret_cast<const uint2*>(p);
  return make_float4(__uint_as_float(b.x << 16), __uint_as_float(b.x & 0xffff0000u), __uint_as_float(b.y << 16),
                     __uint_as_float(b.y & 0xffff0000u));
}

// round_to_bf16's bits of element j (0..7) of its 8-element Philox block r: x rounded stochastically with the 16
// random bits the CPU's round_to_bf16 gives that element (every fused bf16 step writes its parameter through this).
__device__ inline uint16_t rounded_bf16(float x, const rng::Philox4& r, int j) {
  return stochastic_bf16_bits(__float_as_uint(x), r.w[j / 2] >> (16 * (j % 2)));
}
// Elements j and j + 1 (j even) of a block, packed as two bf16 in one word (the low half is element j).
__device__ inline uint32_t rounded_bf16_pair(float x0, float x1, const rng::Philox4& r, int j) {
  return uint32_t(rounded_bf16(x0, r, j)) | (uint32_t(rounded_bf16(x1, r, j + 1)) << 16);
}
// A whole block of 8, one 16-byte store (dst 16-byte aligned).
__device__ inline void store_rounded_bf16x8(bf16* dst, const float* x, const rng::Philox4& r) {
  uint4 out;
  out.x = rounded_bf16_pair(x[0], x[1], r, 0);
  out.y = rounded_bf16_pair(x[2], x[3], r, 2);
  out.z = rounded_bf16_pair(x[4], x[5], r, 4);
  out.w = rounded_bf16_pair(x[6], x[7], r, 6);
  *reinterpret_cast<uint4*>(dst) = out;
}

// The bf16 parameter of element e from its new master value x, as round_to_bf16 writes it, for kernels whose threads
// do not take whole 8-element blocks (SM3's tiles give a row's consecutive elements to different threads): the
// element draws its block's Philox numbers itself.
__device__ inline void store_rounded_element(const FusedBf16& out, int64_t e, float x) {
  const rng::Philox4 r = rng::philox4x32_10(out.seed, out.offset + uint64_t(e / 8));
  out.param[e].bits = rounded_bf16(x, r, int(e % 8));
}

// A fused bf16 step (f.grad set) takes the bf16 gradient and parameter, no f32 gradient and no statistics (they are
// read right after the step), nor `exact` (a factored step's exact second moment, for inspection; null where the
// step has none); a step that is not fused has neither bf16 pointer (the kernels test f.grad alone). op: the caller,
// for the error.
inline void check_fused(const FusedBf16& f, const float* grad, const double* stats, const float* exact,
                        const char* op) {
  TALLY_CHECK(!f.grad || (!grad && f.param && !stats && !exact), "[", op, "] a fused bf16 step takes the bf16 ",
              "gradient and parameter (no f32 gradient) and no statistics");
  TALLY_CHECK(f.grad || !f.param, "[", op, "] a bf16 parameter to write without its bf16 gradient: a fused bf16 step ",
              "takes both");
}

// The last pass of a fused bf16 step (FusedBf16): each thread takes whole 8-element Philox blocks of the n elements
// (grid-stride); update(e) steps element e on the master and returns its new value, which the bf16 parameter gets
// rounded as round_to_bf16 rounds it.
template <class Update>
__device__ inline void update_rounded_blocks(int64_t n, const FusedBf16& out, Update update, GridPos at = own_grid()) {
  const int64_t blocks = int64_t(round_to_bf16_blocks(n));
  for (int64_t b = at.block * kThreads + threadIdx.x; b < blocks; b += at.blocks * kThreads) {
    const rng::Philox4 r = rng::philox4x32_10(out.seed, out.offset + uint64_t(b));
    for (int j = 0; j < 8 && 8 * b + j < n; ++j) out.param[8 * b + j].bits = rounded_bf16(update(8 * b + j), r, j);
  }
}
// The grid of a pass over round_to_bf16's blocks of n elements: a thread per block, at most 2^20 blocks of threads.
inline unsigned rounded_blocks_grid(int64_t n) {
  return unsigned(imin((int64_t(round_to_bf16_blocks(n)) + kThreads - 1) / kThreads, int64_t(1) << 20));
}

// Index helpers of the (P, n, Q, m, S) layout.
__device__ inline int64_t row_index(const FactoredLayout& l, int64_t p, int64_t i, int64_t k) {
  const int64_t s = k % l.S, q = k / (l.m * l.S);
  return ((p * l.n + i) * l.Q + q) * l.S + s;
}

// Column partials for tile (p, row tile) x (column tile), and (fused) the tile's row sums. fill(p, i, k) gives
// the element's quantity (and may update state: it runs exactly once per element).
// pt: p * tiles_i + row tile; tk: the column tile.
template <class Fill>
__device__ inline void tile_stats_of(const FactoredLayout& l, const Plan& plan, const Fill& fill, double* row_partials,
                                     double* col_partials, int64_t pt, int64_t tk) {
  __shared__ double rows[kTileRows][kWarps];
  const int64_t p = pt / plan.tiles_i, it = pt % plan.tiles_i;
  const int64_t i0 = it * plan.tile_rows, i1 = imin(l.n, i0 + plan.tile_rows);
  const int64_t k = tk * kTileCols + threadIdx.x;
  const bool valid = k < plan.K;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double col = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const double x = valid ? double(fill(p, i, k)) : 0.0;
    col += x;
    if (plan.fused_rows) {
      const double w = warp_sum(x);
      if (lane == 0) rows[i - i0][warp] = w;
    }
  }
  if (valid) col_partials[pt * plan.K + k] = col;
  if (plan.fused_rows) {
    __syncthreads();
    if (threadIdx.x < i1 - i0) {
      double acc = 0;
      for (int w = 0; w < kWarps; ++w) acc += rows[threadIdx.x][w];
      row_partials[(p * l.n + i0 + threadIdx.x) * plan.tiles_k + tk] = acc;
    }
  }
}
// Grid (P * tiles_i, tiles_k): block (pt, tk) runs tile_stats_of. row_partials: (P * n, tiles_k), written when
// plan.fused_rows; col_partials: (P, tiles_i, K).
template <class Fill>
__global__ void tile_stats(FactoredLayout l, Plan plan, Fill fill, double* row_partials, double* col_partials) {
  tile_stats_of(l, plan, fill, row_partials, col_partials, blockIdx.x, blockIdx.y);
}

// Row statistics of a layout with Q*S > 1: one block per row statistic (p, i, q, s), summing over j.
// row_partials: (rows) (row_terms = 1); fill(p, i, k) over k = (q * m + j) * S + s.
template <class Fill>
__global__ void row_sums_general(FactoredLayout l, Fill fill, double* row_partials) {
  __shared__ double shared[kWarps];
  const int64_t r = blockIdx.x;  // ((p*n + i)*Q + q)*S + s
  const int64_t s = r % l.S, q = (r / l.S) % l.Q, pi = r / (l.S * l.Q);
  const int64_t p = pi / l.n, i = pi % l.n;
  double acc = 0;
  for (int64_t j = threadIdx.x; j < l.m; j += kThreads) acc += double(fill(p, i, (q * l.m + j) * l.S + s));
  const double total = block_sum_to_first<kThreads>(acc, shared);
  if (threadIdx.x == 0) row_partials[r] = total;
}

// stat = beta*stat + (1-beta)*mean for the rows and the columns, in one launch of kEmaThreads-thread blocks: the
// first row_blocks blocks take kEmaThreads rows each (a row's sum from its row_terms partials, in order); each
// block after them takes 32 columns, whose partials (P, tiles_i, K) are summed over tiles_i by kColLanes lanes per
// column (lane j adds row tiles j, j + kColLanes, ...; a tall matrix has thousands: wte's 50304 rows make 1572
// tiles), then lane 0 adds the lanes in order and writes the column factor rsqrt(col) too.
// With col_sums (ZeRO 1, rows cut) the columns stop at their sums over this rank's rows, written to col_sums.
constexpr int kColLanes = 16;
constexpr int kEmaThreads = 32 * kColLanes;
// Its blocks for the rows, and in all.
__host__ __device__ inline unsigned ema_row_blocks(const FactoredLayout& l) {
  return unsigned((l.rows() + kEmaThreads - 1) / kEmaThreads);
}
inline unsigned ema_blocks(const FactoredLayout& l) { return ema_row_blocks(l) + unsigned((l.cols() + 31) / 32); }

// stat[r] = beta*stat[r] + (1-beta)*mean of row r, its sum from `terms` partials (in order).
__device__ inline void ema_row(float* stat, const double* partials, int64_t r, int64_t rows, int64_t terms,
                               int64_t count, double beta) {
  if (r >= rows) return;
  double sum = 0;
  for (int64_t t = 0; t < terms; ++t) sum += partials[r * terms + t];
  const float mean = float(sum / double(count));
  stat[r] = fmaf(mean, float(1.0 - beta), stat[r] * float(beta));
}

// stat[c] = beta*stat[c] + (1-beta)*mean of column c over `rows` rows, its sum given; col_factor[c] = rsqrt(stat[c]).
__device__ inline void ema_col(float* stat, float* col_factor, int64_t c, double sum, int64_t rows, double beta) {
  const float mean = float(sum / double(rows));
  const float v = fmaf(mean, float(1.0 - beta), stat[c] * float(beta));
  stat[c] = v;
  col_factor[c] = 1.0f / sqrtf(v);
}

// The 32 columns from c0: lane j adds row tiles j, j + kColLanes, ...; lane 0 adds the lanes in order, then
// finishes the column, or (col_sums) writes its sum there.
__device__ inline void ema_col_group(float* stat, float* col_factor, const double* partials, const FactoredLayout& l,
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

// Block `block` of ema_rows_cols (ema_blocks(l) in all).
__device__ inline void ema_rows_cols_of(float* row_stat, const double* row_partials, float* col_stat,
                                        float* col_factor, const double* col_partials, const FactoredLayout& l,
                                        const Plan& plan, double beta, double* col_sums, int64_t block) {
  const int64_t row_blocks = ema_row_blocks(l);
  if (block < row_blocks)
    ema_row(row_stat, row_partials, block * kEmaThreads + threadIdx.x, l.rows(), plan.row_terms, l.m, beta);
  else
    ema_col_group(col_stat, col_factor, col_partials, l, plan, (block - row_blocks) * 32, beta, col_sums);
}
// stat = beta*stat + (1-beta)*mean for the rows and the columns (as described above kColLanes), block by block.
// row_stat: (rows); row_partials: (rows, row_terms); col_stat, col_factor, col_sums (null: not rows cut): (cols);
// col_partials: (P, tiles_i, K). Grid: ema_blocks(l) blocks of kEmaThreads.
__global__ void __launch_bounds__(kEmaThreads)
    ema_rows_cols(float* row_stat, const double* row_partials, float* col_stat, float* col_factor,
                  const double* col_partials, FactoredLayout l, Plan plan, double beta, double* col_sums);

// The sum of group g's row statistics over this tensor's rows, valid in thread 0 of a kRowFactorThreads block.
constexpr int kRowFactorThreads = 1024;
__device__ inline double row_group_sum(const float* row, const FactoredLayout& l, int64_t g, double* shared) {
  const int64_t QS = l.Q * l.S, p = g / QS, qs = g % QS;
  double acc = 0;
  for (int64_t i = threadIdx.x; i < l.n; i += kRowFactorThreads) acc += double(row[(p * l.n + i) * QS + qs]);
  return block_sum_to_first<kRowFactorThreads>(acc, shared);
}

// row_factor = rsqrt(row / mean_i(row)) for (p, q, s) group g, by a block of kRowFactorThreads. The mean is over this
// tensor's rows, or, given group_sums (ZeRO 1, rows cut), group_sums[g] / rows (the sum over every rank's rows).
__device__ inline void row_factors_of(const float* row, float* row_factor, const FactoredLayout& l,
                                      const double* group_sums, int64_t rows, int64_t g) {
  __shared__ double shared[kRowFactorThreads / 32];
  __shared__ float mean;
  const int64_t QS = l.Q * l.S, p = g / QS, qs = g % QS;
  const double total = group_sums ? group_sums[g] : row_group_sum(row, l, g, shared);
  if (threadIdx.x == 0) mean = float(total / double(rows));
  __syncthreads();
  for (int64_t i = threadIdx.x; i < l.n; i += kRowFactorThreads) {
    const int64_t x = (p * l.n + i) * QS + qs;
    row_factor[x] = 1.0f / sqrtf(row[x] / mean);
  }
}
// One block per (p, q, s) group.
// row, row_factor: (rows); group_sums: (groups), or null.
__global__ void __launch_bounds__(kRowFactorThreads)
    row_factors(const float* row, float* row_factor, FactoredLayout l, const double* group_sums, int64_t rows);
// ZeRO 1, rows cut: the sum of each (p, q, s) group's row statistics over this rank's rows into group_sums[g].
// row: (rows); group_sums: (groups).
__global__ void __launch_bounds__(kRowFactorThreads)
    row_group_sums(const float* row, FactoredLayout l, double* group_sums);
// ZeRO 1, rows cut: the column EMAs and factors from col_sums, the sums over every rank's `rows` rows.
// col_stat, col_factor, col_sums: (cols).
__global__ void ema_cols_of_sums(float* col_stat, float* col_factor, const double* col_sums, int64_t cols,
                                 int64_t rows, double beta);

// A block of kThreads threads writes its sums of acc[0..kCount) to slots 0..kCount-1 of its row of block_sums
// (slot s at block_sums[blockIdx.x * kSums + s]), for launch_add_block_sums and the clip's finishing kernels to add
// up. Every thread of the block calls it with its own partial sums.
template <int kCount>
__device__ inline void write_block_sums(const double (&acc)[kCount], double* block_sums, int64_t block = blockIdx.x) {
  static_assert(kCount >= 1 && kCount <= kSums);
  __shared__ double shared[kWarps];
  for (int s = 0; s < kCount; ++s) {
    const double total = block_sum_to_first<kThreads>(acc[s], shared);
    if (threadIdx.x == 0) block_sums[block * kSums + s] = total;
  }
}
__device__ inline void write_block_sum(double acc, double* block_sums, int64_t block = blockIdx.x) {
  const double one[1] = {acc};
  write_block_sums(one, block_sums, block);
}

// The sum of slot `slot` over `blocks` block sums, valid in thread 0 of a kThreads block: thread t adds blocks t,
// t + kThreads, ... in order, then the block's fixed tree.
__device__ inline double sum_slot(const double* block_sums, int64_t blocks, int slot, double* shared) {
  double acc = 0;
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) acc += block_sums[b * kSums + slot];
  return block_sum_to_first<kThreads>(acc, shared);
}

// The finishing sums over a grid's block sums (slot e of block b at block_sums[b * kSums + e]), each in one block
// of kThreads: thread t adds blocks t, t + kThreads, ... in order, then the block's fixed tree (deterministic; a
// single thread walking up to kMaxBlocks sums serially took tens of microseconds per tensor). `what` names the op
// in a launch error.
// divisor = max(1, RMS / threshold) from slot 0; adds that sum to stats[kStatUpdateSq] (if stats). ZeRO 1 (sh.sum):
// the RMS is over the whole tensor, sh.numel elements, its sum completed over the ranks in *total (device memory);
// the statistic keeps this part's sum (the optimizer adds the parts over the ranks).
// block_sums: (blocks, kSums); divisor, total: one value each; stats: kStatCount doubles, or null.
void launch_clip_divisor(const double* block_sums, int blocks, int64_t numel, double threshold, float* divisor,
                         double* stats, const Sharding& sh, double* total, const char* what);
// ZeRO 1, a rank that holds no element of a tensor: its share of the rounds of a step, nothing of its own to add.
// A round of `count` sums (the clip's u^2, LAMB's two norms; device doubles of the workspace) made of zeros.
void sums_without_elements(double* sums, int64_t count, const Sharding& sh);
// ZeRO 1, rows cut: w.cross (this rank's column sums, its row-group sums and, as `carries` says, its column sums of
// u^2) summed over the ranks, then the column EMAs and factors from the sums over every rank's rows.
// col_stat: (cols); w.cross: round_doubles(l, carries) doubles.
void columns_over_ranks(const FactoredLayout& l, const Workspace& w, float* col_stat, double beta, const Sharding& sh,
                        RoundCarries carries);
// The round of factored_stats when rows are cut (through w.cross), keeping this rank's copy of the column statistic
// in step with every other rank's.
// col_stat: (cols); w.cross: round_doubles(l, carries) doubles.
void columns_without_rows(const FactoredLayout& l, const Workspace& w, float* col_stat, double beta, const Sharding& sh,
                          RoundCarries carries);
// After columns_over_ranks carried the column sums of u^2 (S, at w.cross + cols + groups): the whole tensor's sum of
// u^2, sum_j mean_r * S_j / c_j, into *w.total (one block; every rank makes the same sum in the same order).
// col_stat: (cols); w.cross: column sums (cols), group sums (groups), S (cols).
void launch_whole_update_squares(const FactoredLayout& l, const Workspace& w, const float* col_stat, int64_t rows);
// The clip divisor from *w.total (the whole sum of u^2, over sh.numel elements) and, when asked, this part's sum of
// u^2 (slot 0 of `blocks` block sums) into stats[kStatUpdateSq].
// block_sums: (blocks, kSums); stats: kStatCount doubles, or null.
void launch_clip_divisor_of_whole(const Workspace& w, const double* block_sums, int blocks, double threshold,
                                  double* stats, const Sharding& sh, const char* what);
// stats[slot_e] += the sum of slot e, for e < count (at most 3).
// block_sums: (blocks, kSums); stats: the doubles the slots index.
void launch_add_block_sums(const double* block_sums, int blocks, double* stats, int slot0, int slot1, int slot2,
                           int count, const char* what);

// The gradient of a second-moment pass (x = g * gs), whose round (rows cut) carries the column sums of u^2.
template <class GT>
struct UpdateSource {
  const GT* g = nullptr;
  float gs = 1;
};

// ZeRO 1, rows cut: S_j = sum_i x_ij^2 / r_i over this rank's rows (r: the new row statistic) into the round's third
// part, w.cross + cols + groups. A thread per column of a row tile into col_partials (P, tiles_i, K), then the tiles
// added in order: the sums the CPU's second-moment pass makes, here in double and in a fixed order.
// g: (P, n, K); row_stat: (rows). Grid (P * tiles_i, tiles_k), as tile_stats'.
template <class GT>
__global__ void update_column_partials(FactoredLayout l, Plan plan, const GT* g, float gs, const float* row_stat,
                                       double* col_partials) {
  const int64_t p = blockIdx.x / plan.tiles_i, tile = blockIdx.x % plan.tiles_i;
  const int64_t k = int64_t(blockIdx.y) * kThreads + threadIdx.x;
  if (k >= plan.K) return;
  const int64_t i0 = tile * plan.tile_rows, i1 = imin(l.n, i0 + plan.tile_rows);
  double acc = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const float x = load(g + (p * l.n + i) * plan.K + k) * gs;
    acc += double(x * x) / double(row_stat[row_index(l, p, i, k)]);
  }
  col_partials[(p * plan.tiles_i + tile) * plan.K + k] = acc;
}
// S (cols, at w.cross + cols + groups) = w.col_partials (P, tiles_i, K) summed over the row tiles, in order.
void launch_update_column_sums(const FactoredLayout& l, const Plan& plan, const Workspace& w);  // partials -> S

// Runs the two statistics passes (tile kernel, rows when not fused) of one fill and finishes the EMAs and factors.
// ZeRO 1 with rows cut (sh.rows_cut): the column sums and the row-group sums are completed over the ranks in one
// round (w.cross) before the column EMAs and the row factors; given the gradient (`update`, the second-moment pass),
// the round also carries the column sums of u^2, and the whole tensor's sum of u^2 is left in *w.total.
// row_stat: (rows); col_stat: (cols); partials, factors (w.row_factor (rows), w.col_factor (cols)) in w.
template <class Fill, class GT = float>
void factored_stats(const FactoredLayout& l, const Plan& plan, const Workspace& w, Fill fill, float* row_stat,
                    float* col_stat, double beta, const Sharding& sh, UpdateSource<GT> update = {}) {
  const dim3 grid(unsigned(l.P * plan.tiles_i), unsigned(plan.tiles_k));
  tile_stats<<<grid, kThreads, 0, stream()>>>(l, plan, fill, w.row_partials, w.col_partials);
  TALLY_CUDA_LAUNCH_CHECK("tile_stats");
  if (!plan.fused_rows) {
    row_sums_general<<<unsigned(l.rows()), kThreads, 0, stream()>>>(l, fill, w.row_partials);
    TALLY_CUDA_LAUNCH_CHECK("row_sums_general");
  }
  const bool across = sh.sum && sh.rows_cut;
  ema_rows_cols<<<ema_blocks(l), kEmaThreads, 0, stream()>>>(row_stat, w.row_partials, col_stat, w.col_factor,
                                                             w.col_partials, l, plan, beta, across ? w.cross : nullptr);
  TALLY_CUDA_LAUNCH_CHECK("ema_rows_cols");
  if (across) {
    double* group_sums = w.cross + l.cols();
    row_group_sums<<<unsigned(l.groups()), kRowFactorThreads, 0, stream()>>>(row_stat, l, group_sums);
    TALLY_CUDA_LAUNCH_CHECK("row_group_sums");
    if (update.g) {  // the tile kernel's grid: a thread per column of each row tile
      update_column_partials<GT>
          <<<grid, kThreads, 0, stream()>>>(l, plan, update.g, update.gs, row_stat, w.col_partials);
      TALLY_CUDA_LAUNCH_CHECK("update_column_partials");
      launch_update_column_sums(l, plan, w);
    }
    columns_over_ranks(l, w, col_stat, beta, sh,
                       update.g ? RoundCarries::column_and_update_sums : RoundCarries::column_sums);
    if (update.g) launch_whole_update_squares(l, w, col_stat, sh.rows);
    row_factors<<<unsigned(l.groups()), kRowFactorThreads, 0, stream()>>>(row_stat, w.row_factor, l, group_sums, sh.rows);
  } else {
    row_factors<<<unsigned(l.groups()), kRowFactorThreads, 0, stream()>>>(row_stat, w.row_factor, l, nullptr, l.n);
  }
  TALLY_CUDA_LAUNCH_CHECK("row_factors");
}

// Sum over the tensor of fn(e) into block sums (slot 0..kSums-1 as fn fills them), grid-stride, fixed grid.
// block_sums: (gridDim.x, kSums); fn(e, acc) for e in [0, n).
template <class Fn>
__global__ void grid_sums(int64_t n, Fn fn, double* block_sums) {
  double acc[kSums] = {0, 0, 0, 0};
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) fn(e, acc);
  write_block_sums(acc, block_sums);
}

__device__ inline float row_factor_of(const FactoredLayout& l, const float* rf, int64_t p, int64_t i, int64_t k) {
  return (l.Q * l.S == 1) ? rf[p * l.n + i] : rf[row_index(l, p, i, k)];
}

// Rows can be read 4 floats at a time: plain (P, n, m) layout, m % 4 == 0 and 16-byte aligned pointers.
inline bool vectorizable(const FactoredLayout& l, std::initializer_list<const void*> ptrs) {
  return l.Q * l.S == 1 && l.m % 4 == 0 && aligned16(ptrs);
}

// Pass 1 of the factored methods: g^2 + eps1 (GT: the gradient's type, float or bf16).
template <class GT>
struct SquareFill {
  const GT* g;
  int64_t n, K;
  float gs, eps1;
  __device__ float operator()(int64_t p, int64_t i, int64_t k) const {
    const float x = load(g + (p * n + i) * K + k) * gs;
    return x * x + eps1;
  }
};

// Pass 2 of the factored methods: block sums of u^2, u = g * row factor * column factor. Rows of K elements,
// 4 per thread (one vector load when `vec`), a fixed grid striding over (row, chunk) tasks.
template <class GT>
__device__ inline void update_sq_of(const FactoredLayout& l, int64_t K, const GT* g, const float* rf, const float* cf,
                                    float gs, bool vec, double* block_sums, GridPos at) {
  double acc = 0;
  const int64_t rows = l.P * l.n, chunks = (K + 4 * kThreads - 1) / (4 * kThreads);
  for (int64_t t = at.block; t < rows * chunks; t += at.blocks) {
    const int64_t pi = t / chunks, k0 = (t % chunks) * 4 * kThreads + 4 * threadIdx.x;
    const int64_t p = pi / l.n, i = pi % l.n;
    const GT* gr = g + pi * K;
    if (vec && k0 < K) {
      const float4 gv = load4(gr + k0);
      const float r = rf[pi];
      const float* c = cf + p * K + k0;
      const float u0 = (r * c[0]) * (gv.x * gs), u1 = (r * c[1]) * (gv.y * gs);
      const float u2 = (r * c[2]) * (gv.z * gs), u3 = (r * c[3]) * (gv.w * gs);
      acc += double(u0) * u0 + double(u1) * u1 + double(u2) * u2 + double(u3) * u3;
    } else {
      for (int64_t k = k0; k < imin(K, k0 + 4); ++k) {
        const float u = (row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * (load(gr + k) * gs);
        acc += double(u) * u;
      }
    }
  }
  write_block_sum(acc, block_sums, at.block);
}
// g: (P * n, K); rf: (rows); cf: (cols) = (P, K); block_sums: (gridDim.x, kSums), slot 0.
template <class GT>
__global__ void update_sq(FactoredLayout l, int64_t K, const GT* g, const float* rf, const float* cf, float gs,
                          bool vec, double* block_sums) {
  update_sq_of(l, K, g, rf, cf, gs, vec, block_sums, own_grid());
}

// The clip divisor of a factored step, after its second-moment factored_stats: from this tensor's sum of u^2 (an
// update_sq pass), or, ZeRO 1 with rows cut, from the whole sum that factored_stats' round completed (the pass then
// runs only for the statistics, which keep this part's sum).
// g: (P * n, K); the divisor into *w.divisor; stats: kStatCount doubles, or null.
template <class GT>
void factored_clip_divisor(const FactoredLayout& l, const Plan& plan, const Workspace& w, const GT* g, float gs,
                           bool vec, double threshold, double* stats, const Sharding& sh, const char* what) {
  const bool whole = sh.sum && sh.rows_cut;
  const int blocks = reduce_blocks(l.numel() / 4 + 1);
  if (!whole || stats) {
    update_sq<GT><<<blocks, kThreads, 0, stream()>>>(l, plan.K, g, w.row_factor, w.col_factor, gs, vec, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK(what);
  }
  if (whole)
    launch_clip_divisor_of_whole(w, w.block_sums, blocks, threshold, stats, sh, what);
  else
    launch_clip_divisor(w.block_sums, blocks, l.numel(), threshold, w.divisor, stats, sh, w.total, what);
}

// Inspection: exact EMA of g^2+eps1 and its distance to the factored estimate 1/(rf cf)^2.
struct ExactFill {
  FactoredLayout l;
  int64_t K;
  const float* g;
  float* v;
  const float* rf;
  const float* cf;
  float gs, eps1, b2, one_b2;
  __device__ void operator()(int64_t e, double* acc) const {
    const int64_t k = e % K, pi = e / K, p = pi / l.n, i = pi % l.n;
    const float x = g[e] * gs;
    const float ve = fmaf(x * x + eps1, one_b2, v[e] * b2);
    v[e] = ve;
    const double f = double(row_factor_of(l, rf, p, i, k)) * cf[p * K + k];
    const double est = 1.0 / (f * f);
    acc[0] += (est - ve) * (est - ve);
    acc[1] += double(ve) * ve;
  }
};

// Dense pass 1 on one element (x = g * grad_scale): v = b2 v + (1-b2)(x^2+eps1); returns u = x / sqrt(v).
__device__ inline float dense_v_update(float x, float* v, float eps1, float b2, float one_b2) {
  const float ve = fmaf(x * x + eps1, one_b2, *v * b2);
  *v = ve;
  return (1.0f / sqrtf(ve)) * x;
}

// The clip divisor from the sum of u^2 over numel elements: max(1, RMS(u) / threshold).
__device__ inline float clip_divisor_of(double sum, int64_t numel, float threshold) {
  const float rms = float(sqrt(sum)) / float(sqrt(double(numel)));
  return fmaxf(1.0f, rms / threshold);
}

// Dense pass 1 (CAME and Adafactor): v = b2 v + (1-b2)(g^2+eps1), block sums of u^2 = (g / sqrt(v))^2. GT: the
// gradient's type (f32, or bf16 read in place: FusedBf16).
// g, v: (n); block_sums: (gridDim.x, kSums), slot 0.
template <class GT>
__global__ void dense_second_moment(int64_t n, const GT* g, float* v, float gs, float eps1, float b2, float one_b2,
                                    double* block_sums) {
  double acc = 0;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float u = dense_v_update(load(g + e) * gs, v + e, eps1, b2, one_b2);
    acc += double(u) * u;
  }
  write_block_sum(acc, block_sums);
}

}  // namespace tally::optim::kernels::cuda::detail
