// CUDA kernels of SM3 (pytorch_optimizer 4.1.0's SM3); the arithmetic of optim/kernels/cpu/sm3.cpp. A vector or a
// scalar: one elementwise launch. Rank >= 2, seen as (R rows of the last dim, K columns): a tile kernel (kTileRows
// rows x kTileCols columns per tile, a fixed grid striding over the tiles) updates every element from the old
// accumulators and writes each tile's column maxima and each row's maxima per column tile into the workspace; then
// one launch takes the maxima of every index of the dims before the last (a thread per index, over its rows) and one
// the maxima of every column (over the row tiles), and writes the accumulators. Maxima are exact in any order and there
// are no atomics: the result is the CPU's, element for element (the statistics sum in another order). A bf16 parameter
// (FusedBf16) is stepped from its bf16 gradient and written from its master in the same pass, each element drawing
// its own Philox block's numbers (a tile's consecutive elements belong to different threads).
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

namespace {

struct Sm3Scalars {
  float gs, beta, one_minus_beta, eps, w, keep, neg_lr;
  bool low_weight;
};

Sm3Scalars scalars_of(const Sm3Args& a) {
  Sm3Scalars s;  // (no designated initializers: .cu files must also build as C++17)
  s.gs = float(a.grad_scale);
  s.beta = float(a.beta);
  s.one_minus_beta = float(1.0 - a.beta);
  s.eps = float(a.eps);
  s.w = float(1.0 - a.momentum);
  s.keep = float(1.0 - a.lr * a.weight_decay);
  s.neg_lr = float(-a.lr);
  s.low_weight = s.w < 0.5f;
  return s;
}

// One element: v from the smallest accumulator, then p (and m) updated; returns v. acc[0..2] += the statistics.
template <bool kStats, bool kMomentum, bool kBeta>
__device__ inline float sm3_element(float g, float smallest, float* p, float* m, const Sm3Scalars& s, double* acc) {
  g = g * s.gs;
  const float v = fmaf(s.one_minus_beta * g, g, kBeta ? smallest * s.beta : smallest);
  const float u = (1.0f / sqrtf(v + s.eps)) * g;
  float d = u;
  if (kMomentum) {
    const float m0 = *m;
    d = s.low_weight ? fmaf(s.w, u - m0, m0) : fmaf(-(u - m0), 1.0f - s.w, u);
    *m = d;
  }
  const float kept = *p * s.keep;
  *p = fmaf(d, s.neg_lr, kept);
  if (kStats) {
    acc[0] += double(d) * d;
    if (kMomentum) acc[1] += double(d) * d;
    const float step = s.neg_lr * d;
    acc[2] += double(step) * step;
  }
  return v;
}

// Rank 0 or 1: one accumulator value per element (a vector keeps max(acc, v) with beta > 0, a scalar v). GT: the
// gradient's type (f32, or bf16 with the parameter's rounding fused: `out`).
// g, p, m (null without momentum), acc: (n); out.param: (n) when fused (out.grad set); block_sums: (gridDim.x, kSums)
// with kStats.
template <bool kStats, bool kMomentum, bool kBeta, class GT>
__global__ void sm3_dense(int64_t n, const GT* g, float* p, float* m, float* acc, Sm3Scalars s, bool keep_max,
                          FusedBf16 out, double* block_sums) {
  double sums[3] = {0, 0, 0};
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float old = acc[e];
    const float v = sm3_element<kStats, kMomentum, kBeta>(load(g + e), old, p + e, kMomentum ? m + e : nullptr, s, sums);
    acc[e] = keep_max ? fmaxf(old, v) : v;
    if (out.grad) store_rounded_element(out, e, p[e]);
  }
  if constexpr (kStats) write_block_sums(sums, block_sums);
}

// The walk of a tensor of rank >= 2.
struct Sm3Walk {
  int rank;
  int64_t dims[kSm3MaxDims];
  float* acc[kSm3MaxDims];
  int64_t R, K;             // rows (the product of every dim but the last), columns (the last dim)
  int64_t tiles_i, tiles_k;  // row tiles of kTileRows, column tiles of kTileCols
};

Sm3Walk walk_of(const Sm3Shape& shape, float* const* accumulators) {
  Sm3Walk w;
  w.rank = shape.rank;
  w.R = 1;
  for (int k = 0; k < kSm3MaxDims; ++k) {
    w.dims[k] = k < shape.rank ? shape.dims[k] : 1;
    w.acc[k] = accumulators ? accumulators[k] : nullptr;
    if (k + 1 < shape.rank) w.R *= shape.dims[k];
  }
  w.K = shape.dims[shape.rank - 1];
  w.tiles_i = (w.R + kTileRows - 1) / kTileRows;
  w.tiles_k = (w.K + kTileCols - 1) / kTileCols;
  return w;
}

// The smallest accumulator of row i over the dims before the last.
__device__ inline float leading_min(const Sm3Walk& w, int64_t i) {
  float lead = INFINITY;
  for (int k = w.rank - 2; k >= 0; --k) {
    lead = fminf(lead, w.acc[k][i % w.dims[k]]);
    i /= w.dims[k];
  }
  return lead;
}

// A rank >= 2 tensor as (R, K), tiles of kTileRows x kTileCols over a grid-stride loop: each element stepped from
// the old accumulators (sm3_element). g, p, m (null without momentum): (R, K); col_max: (tiles_i, K), each row
// tile's column maxima of v; row_max: (R, tiles_k), each row's maxima per column tile; block_sums: (gridDim.x, kSums).
template <bool kStats, bool kMomentum, bool kBeta, class GT>
__global__ void sm3_tiles(Sm3Walk w, Sm3Scalars s, const GT* g, float* p, float* m, FusedBf16 out, float* col_max,
                          float* row_max, double* block_sums) {
  __shared__ float rows[kTileRows][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double sums[3] = {0, 0, 0};
  for (int64_t t = blockIdx.x; t < w.tiles_i * w.tiles_k; t += gridDim.x) {
    const int64_t ti = t / w.tiles_k, tk = t % w.tiles_k;
    const int64_t i0 = ti * kTileRows, i1 = imin(w.R, i0 + kTileRows);
    const int64_t j = tk * kTileCols + threadIdx.x;
    const bool valid = j < w.K;
    const float last = valid ? w.acc[w.rank - 1][j] : 0.0f;
    float col = 0;  // v >= 0: 0 is the identity of the maxima
    for (int64_t i = i0; i < i1; ++i) {
      float v = 0;
      if (valid) {
        const int64_t e = i * w.K + j;
        v = sm3_element<kStats, kMomentum, kBeta>(load(g + e), fminf(leading_min(w, i), last), p + e,
                                                  kMomentum ? m + e : nullptr, s, sums);
        if (out.grad) store_rounded_element(out, e, p[e]);
        col = fmaxf(col, v);
      }
      const float r = ::tally::cuda::warp_max(v);
      if (lane == 0) rows[i - i0][warp] = r;
    }
    if (valid) col_max[ti * w.K + j] = col;
    __syncthreads();
    if (threadIdx.x < i1 - i0) {
      float r = 0;
      for (int x = 0; x < kWarps; ++x) r = fmaxf(r, rows[threadIdx.x][x]);
      row_max[(i0 + threadIdx.x) * w.tiles_k + tk] = r;
    }
    __syncthreads();  // `rows` is reused by the block's next tile
  }
  if constexpr (kStats) write_block_sums(sums, block_sums);
}

// Accumulators of the dims before the last: one thread per index i of dim k (indices in the order of the dims), the
// maximum over the rows of that index and their column tiles (dim 0 of a matrix: its row's tiles_k partials).
// row_max: (R, tiles_k); a thread per index of every dim before the last (`indices` in all); w.acc[k]: (dims[k]).
__global__ void sm3_leading(Sm3Walk w, int64_t indices, const float* row_max, bool keep_max) {
  int64_t b = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (b >= indices) return;
  int k = 0;
  while (b >= w.dims[k]) b -= w.dims[k++];
  const int64_t i = b;
  int64_t outer = 1, inner = 1;  // rows = (outer index, i, inner index) over dims [0, k), k, (k, rank-1)
  for (int x = 0; x < k; ++x) outer *= w.dims[x];
  for (int x = k + 1; x + 1 < w.rank; ++x) inner *= w.dims[x];
  float mx = 0;
  for (int64_t r = 0; r < outer * inner; ++r) {
    const int64_t row = ((r / inner) * w.dims[k] + i) * inner + r % inner;
    for (int64_t tk = 0; tk < w.tiles_k; ++tk) mx = fmaxf(mx, row_max[row * w.tiles_k + tk]);
  }
  w.acc[k][i] = keep_max ? fmaxf(w.acc[k][i], mx) : mx;
}

// The last dim's accumulator: 32 columns per block, lane l of kColLanes taking row tiles l, l + kColLanes, ...
// col_max: (tiles_i, K); w.acc[rank - 1]: (K).
__global__ void __launch_bounds__(kEmaThreads) sm3_columns(Sm3Walk w, const float* col_max, bool keep_max) {
  __shared__ float lanes[kColLanes][32];
  const int l = threadIdx.x / 32, x = threadIdx.x % 32;
  const int64_t j = blockIdx.x * int64_t(32) + x;
  const bool valid = j < w.K;
  float mx = 0;
  if (valid)
    for (int64_t t = l; t < w.tiles_i; t += kColLanes) mx = fmaxf(mx, col_max[t * w.K + j]);
  lanes[l][x] = mx;
  __syncthreads();
  if (l != 0 || !valid) return;
  for (int y = 1; y < kColLanes; ++y) mx = fmaxf(mx, lanes[y][x]);
  float* acc = w.acc[w.rank - 1];
  acc[j] = keep_max ? fmaxf(acc[j], mx) : mx;
}

// One step of a tensor with the flags as template arguments; GT: the gradient's type (bf16: fused, no statistics).
// g: (n), the tensor's elements.
template <bool kStats, bool kMomentum, bool kBeta, class GT>
void sm3_launch(const Sm3Args& a, const GT* g, int64_t n) {
  const Sm3Scalars s = scalars_of(a);
  if (a.shape.rank < 2) {
    const DenseWorkspace w = carve_dense(a.workspace);
    const int blocks = kStats ? reduce_blocks(n) : int(imin((n + kThreads - 1) / kThreads, int64_t(1) << 30));
    sm3_dense<kStats, kMomentum, kBeta, GT><<<unsigned(blocks), kThreads, 0, stream()>>>(
        n, g, a.param, a.momentum_buffer, a.accumulators[0], s, kBeta && a.shape.rank == 1, a.bf16_param,
        w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("sm3 dense");
    if (kStats)
      launch_add_block_sums(w.block_sums, blocks, a.stats, kStatUpdateSq, kStatExpAvgSq, kStatAppliedSq, 3,
                            "sm3 add_block_sums");
    return;
  }
  const Sm3Walk walk = walk_of(a.shape, a.accumulators);
  const Sm3Workspace w = carve_sm3(a.workspace, walk.R, walk.K);
  const int blocks = int(imin(walk.tiles_i * walk.tiles_k, kMaxBlocks));
  sm3_tiles<kStats, kMomentum, kBeta, GT><<<unsigned(blocks), kThreads, 0, stream()>>>(
      walk, s, g, a.param, a.momentum_buffer, a.bf16_param, w.col_max, w.row_max, w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("sm3 tiles");
  int64_t leading = 0;
  for (int k = 0; k + 1 < a.shape.rank; ++k) leading += a.shape.dims[k];
  sm3_leading<<<unsigned((leading + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(walk, leading, w.row_max, kBeta);
  TALLY_CUDA_LAUNCH_CHECK("sm3 leading");
  sm3_columns<<<unsigned((walk.K + 31) / 32), kEmaThreads, 0, stream()>>>(walk, w.col_max, kBeta);
  TALLY_CUDA_LAUNCH_CHECK("sm3 columns");
  if (kStats)
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatUpdateSq, kStatExpAvgSq, kStatAppliedSq, 3,
                          "sm3 add_block_sums");
}

// sm3_launch with the gradient the step reads: a.grad, or a fused step's bf16 gradient.
template <bool kStats, bool kMomentum, bool kBeta>
void sm3_launch_of(const Sm3Args& a, int64_t n) {
  if constexpr (kStats) {
    sm3_launch<true, kMomentum, kBeta>(a, a.grad, n);  // statistics: never fused (sm3_step checks)
  } else {
    if (a.bf16_param.grad) sm3_launch<false, kMomentum, kBeta>(a, a.bf16_param.grad, n);
    else sm3_launch<false, kMomentum, kBeta>(a, a.grad, n);
  }
}

}  // namespace

int64_t sm3_workspace_bytes(const Sm3Shape& shape) { return cuda_sm3_workspace_bytes(shape); }

// One SM3 step: sm3_dense for rank < 2, else sm3_tiles, sm3_leading and sm3_columns; param, grad (or
// bf16_param.grad), momentum_buffer: (shape); accumulators[k]: (dims[k]) for rank >= 2, else one, (shape).
void sm3_step(const Sm3Args& a) {
  check_fused(a.bf16_param, a.grad, a.stats, nullptr, "sm3_step");
  int64_t n = 1;
  for (int k = 0; k < a.shape.rank; ++k) n *= a.shape.dims[k];
  if (n == 0) return;
  using Launch = void (*)(const Sm3Args&, int64_t);
  // [stats][momentum][beta > 0]
  static const Launch launch[2][2][2] = {
      {{sm3_launch_of<false, false, false>, sm3_launch_of<false, false, true>},
       {sm3_launch_of<false, true, false>, sm3_launch_of<false, true, true>}},
      {{sm3_launch_of<true, false, false>, sm3_launch_of<true, false, true>},
       {sm3_launch_of<true, true, false>, sm3_launch_of<true, true, true>}}};
  launch[a.stats != nullptr][a.momentum_buffer != nullptr][a.beta > 0.0](a, n);
}

}  // namespace tally::optim::kernels::cuda
