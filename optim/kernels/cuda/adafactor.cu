// CUDA kernels of Adafactor (transformers, scale_parameter=False, relative_step=False); the arithmetic of
// optim/kernels/cpu/adafactor.cpp in three passes: r, c and factors; u^2 sums -> clip divisor on the device (one
// more read of g than the CPU's two passes); one elementwise pass for the (optional) first moment and the
// parameter. ZeRO 1: sums over the ranks completed in device memory, as came.cu does.
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

namespace {

// u' = u / divisor * lr; with a first moment m = b1 m + (1-b1) u' and the step is m; p = p + (-lr*wd) p - step.
template <bool kStats>
__global__ void factored_update(FactoredLayout l, int64_t K, const float* g, float* m, float* param, const float* rf,
                                const float* cf, const float* divisor, float gs, float lr, float b1, float one_b1,
                                float decay, bool wd, double* block_sums) {
  __shared__ double shared[kWarps];
  double msq = 0, app = 0;
  const float d = *divisor;
  const int64_t rows = l.P * l.n, chunks = (K + kThreads - 1) / kThreads;
  for (int64_t t = blockIdx.x; t < rows * chunks; t += gridDim.x) {
    const int64_t pi = t / chunks, k = (t % chunks) * kThreads + threadIdx.x;
    if (k >= K) continue;
    const int64_t p = pi / l.n, i = pi % l.n, e = pi * K + k;
    float step = (((row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * (g[e] * gs)) / d) * lr;
    if (m) {
      step = fmaf(step, one_b1, m[e] * b1);
      m[e] = step;
      if (kStats) msq += double(step) * step;
    }
    float x = param[e];
    if (wd) x = fmaf(x, decay, x);
    param[e] = x - step;
    if (kStats) app += double(step) * step;
  }
  if (kStats) {
    const double t0 = block_sum_to_first<kThreads>(msq, shared);
    const double t1 = block_sum_to_first<kThreads>(app, shared);
    if (threadIdx.x == 0) {
      block_sums[blockIdx.x * kSums] = t0;
      block_sums[blockIdx.x * kSums + 1] = t1;
    }
  }
}

template <bool kStats>
__global__ void dense_update(int64_t n, const float* g, const float* v, float* m, float* param, const float* divisor,
                             float gs, float lr, float b1, float one_b1, float decay, bool wd, double* block_sums) {
  __shared__ double shared[kWarps];
  double msq = 0, app = 0;
  const float d = *divisor;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    float step = (((1.0f / sqrtf(v[e])) * (g[e] * gs)) / d) * lr;
    if (m) {
      step = fmaf(step, one_b1, m[e] * b1);
      m[e] = step;
      if (kStats) msq += double(step) * step;
    }
    float x = param[e];
    if (wd) x = fmaf(x, decay, x);
    param[e] = x - step;
    if (kStats) app += double(step) * step;
  }
  if (kStats) {
    const double t0 = block_sum_to_first<kThreads>(msq, shared);
    const double t1 = block_sum_to_first<kThreads>(app, shared);
    if (threadIdx.x == 0) {
      block_sums[blockIdx.x * kSums] = t0;
      block_sums[blockIdx.x * kSums + 1] = t1;
    }
  }
}

}  // namespace

void adafactor_factored_step(const AdafactorFactoredArgs& a) {
  const FactoredLayout& l = a.layout;
  const int64_t N = l.numel();
  if (N == 0) {  // a rank with no rows of a sharded tensor: its share of the rounds, then nothing
    if (!a.shard.sum) return;
    const Workspace w = carve(a.workspace, l, make_plan(l));
    if (a.shard.rows_cut) columns_without_rows(l, w, a.exp_avg_sq_col, a.beta2t, a.shard);
    sums_without_elements(w.total, 1, a.shard);
    return;
  }
  const Plan plan = make_plan(l);
  const Workspace w = carve(a.workspace, l, plan);
  const int64_t K = plan.K;
  const float gs = float(a.grad_scale);
  factored_stats(l, plan, w, SquareFill<float>{a.grad, l.n, K, gs, float(a.eps1)}, a.exp_avg_sq_row, a.exp_avg_sq_col,
                 a.beta2t, a.shard);
  const int blocks = reduce_blocks(N / 4 + 1);
  update_sq<float><<<blocks, kThreads, 0, stream()>>>(l, K, a.grad, w.row_factor, w.col_factor, gs, vectorizable(l, {a.grad}),
                                               w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("adafactor update_sq");
  launch_clip_divisor(w.block_sums, blocks, N, a.clip_threshold, w.divisor, a.stats, a.shard, w.total,
                      "adafactor clip_divisor");
  if (a.stats && a.exact_exp_avg_sq) {
    const int b = reduce_blocks(N);
    ExactFill f{l, K, a.grad, a.exact_exp_avg_sq, w.row_factor, w.col_factor, gs, float(a.eps1), float(a.beta2t),
                float(1.0 - a.beta2t)};
    grid_sums<<<b, kThreads, 0, stream()>>>(N, f, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor exact ema");
    launch_add_block_sums(w.block_sums, b, a.stats, kStatFactorErrSq, kStatExactSq, 0, 2, "adafactor add_block_sums");
  }
  const int ub = reduce_blocks(N);
  const float lr = float(a.lr), b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1);
  const float decay = float(-a.weight_decay * a.lr);
  const bool wd = a.weight_decay != 0.0;
  if (a.stats) {
    factored_update<true><<<ub, kThreads, 0, stream()>>>(l, K, a.grad, a.exp_avg, a.param, w.row_factor, w.col_factor,
                                                         w.divisor, gs, lr, b1, one_b1, decay, wd, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor factored_update");
    launch_add_block_sums(w.block_sums, ub, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2, "adafactor add_block_sums");
  } else {
    // Without statistics the grid covers the tensor (no striding needed for bandwidth).
    const int64_t tasks = l.P * l.n * ((K + kThreads - 1) / kThreads);
    const unsigned grid = unsigned(imin(tasks, int64_t(1) << 30));
    factored_update<false><<<grid, kThreads, 0, stream()>>>(l, K, a.grad, a.exp_avg, a.param, w.row_factor,
                                                            w.col_factor, w.divisor, gs, lr, b1, one_b1, decay, wd,
                                                            w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor factored_update");
  }
}

void adafactor_dense_step(const AdafactorDenseArgs& a) {
  if (a.n == 0) {
    if (a.shard.sum) sums_without_elements(carve_dense(a.workspace).total, 1, a.shard);
    return;
  }
  const DenseWorkspace w = carve_dense(a.workspace);
  const float gs = float(a.grad_scale);
  const int blocks = reduce_blocks(a.n);
  dense_second_moment<<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, gs, float(a.eps1), float(a.beta2t),
                                                         float(1.0 - a.beta2t), w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("adafactor dense_second_moment");
  launch_clip_divisor(w.block_sums, blocks, a.n, a.clip_threshold, w.divisor, a.stats, a.shard, w.total,
                      "adafactor clip_divisor");
  const float lr = float(a.lr), b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1);
  const float decay = float(-a.weight_decay * a.lr);
  const bool wd = a.weight_decay != 0.0;
  if (a.stats) {
    dense_update<true><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, a.exp_avg, a.param, w.divisor, gs,
                                                          lr, b1, one_b1, decay, wd, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor dense_update");
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2,
                          "adafactor add_block_sums");
  } else {
    dense_update<false><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, a.exp_avg, a.param, w.divisor, gs,
                                                           lr, b1, one_b1, decay, wd, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor dense_update");
  }
}

}  // namespace tally::optim::kernels::cuda
