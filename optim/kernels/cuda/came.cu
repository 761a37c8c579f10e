// CUDA kernels of CAME (came-pytorch 0.1.3), factored and dense; the arithmetic of the CPU kernels
// (optim/kernels/cpu/came.cpp) in four passes (the CPU folds the u^2 sum into its first pass; here the row statistics
// are only final after the tile kernel, so u^2 takes one more read of g: 32 bytes/param). Factored step:
// tile_stats(g^2+eps1) -> r, c, factors; grid sums of u^2 -> clip divisor (on the device: no host round trip);
// tile_stats that updates m and sums the instability -> R, C, factors; elementwise parameter update (float4 loads when
// rows allow). Nine launches per factored tensor (the package issues ~22 kernels); small dense tensors are stepped
// together, one block each (came_dense_steps), bf16 ones with their widening and rounding fused. ZeRO 1: a part of a
// tensor completes its sums over the ranks in device memory (Sharding: NCCL on tally's stream, no host wait), as the
// CPU kernels do.
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

namespace {

// Pass 3, fused layout: updates m (exactly once per element) and returns the instability (u - m_new)^2 + eps2.
// MT: the first moment's type; GT: the gradient's (f32, or bf16 read in place: FusedBf16).
template <class MT, bool kUpdate, class GT>
struct MomentFill {
  FactoredLayout l;
  int64_t K;
  const GT* g;
  MT* m;
  const float* rf;
  const float* cf;
  const float* divisor;
  float gs, b1, one_b1, eps2;
  __device__ float operator()(int64_t p, int64_t i, int64_t k) const {
    const int64_t e = (p * l.n + i) * K + k;
    const float u = ((row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * (load(g + e) * gs)) / *divisor;
    float mn;
    if constexpr (kUpdate) mn = store(m + e, fmaf(u, one_b1, load(m + e) * b1));
    else mn = load(m + e);  // already updated (general layouts: the fill must be pure, it runs twice)
    const float r = u - mn;
    return r * r + eps2;
  }
};

template <class MT, class GT>
__global__ void moment_update(FactoredLayout l, int64_t K, const GT* g, MT* m, const float* rf, const float* cf,
                              const float* divisor, float gs, float b1, float one_b1) {
  const int64_t pi = blockIdx.x, k = blockIdx.y * int64_t(kThreads) + threadIdx.x;
  if (k >= K) return;
  const int64_t p = pi / l.n, i = pi % l.n, e = pi * K + k;
  const float u = ((row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * (load(g + e) * gs)) / *divisor;
  store(m + e, fmaf(u, one_b1, load(m + e) * b1));
}

// Pass 4 on one element: p = p + (-lr*wd)*p (fused, as torch's add_(p, alpha)), then p -= (factor * m) * lr. Every
// kernel that writes the parameter (factored, dense, fused bf16 or not) steps it through here, so that they round
// alike. The dense step has no factor (1: the product is then m itself, exactly).
__device__ inline float param_step(float x, float factor, float m, float lr, float decay, bool wd) {
  if (wd) x = fmaf(x, decay, x);
  return x - (factor * m) * lr;
}

// Pass 4 of a factored tensor.
template <class MT>
__global__ void param_update(FactoredLayout l, int64_t K, float* param, const MT* m, const float* rf, const float* cf,
                             float lr, float decay, bool wd, bool vec) {
  const int64_t pi = blockIdx.x, k0 = (blockIdx.y * int64_t(kThreads) + threadIdx.x) * 4;
  if (k0 >= K) return;
  const int64_t p = pi / l.n, i = pi % l.n;
  float* pr = param + pi * K;
  const MT* mr = m + pi * K;
  if constexpr (sizeof(MT) == 4) {
    if (vec) {
      float4 pv = *reinterpret_cast<float4*>(pr + k0);
      const float4 mv = *reinterpret_cast<const float4*>(mr + k0);
      const float r = rf[pi];
      const float* c = cf + p * K + k0;
      float* pp[4] = {&pv.x, &pv.y, &pv.z, &pv.w};
      const float ms[4] = {mv.x, mv.y, mv.z, mv.w};
#pragma unroll
      for (int t = 0; t < 4; ++t) *pp[t] = param_step(*pp[t], r * c[t], ms[t], lr, decay, wd);
      *reinterpret_cast<float4*>(pr + k0) = pv;
      return;
    }
  }
  for (int64_t k = k0; k < imin(K, k0 + 4); ++k)
    pr[k] = param_step(pr[k], row_factor_of(l, rf, p, i, k) * cf[p * K + k], load(mr + k), lr, decay, wd);
}

// Pass 4 of a bf16 parameter (FusedBf16): param_update's arithmetic on the master, then the bf16 parameter as
// round_to_bf16 writes it: each thread takes whole 8-element Philox blocks of the flat tensor (a block may span rows).
template <class MT>
__global__ void param_update_rounded(FactoredLayout l, int64_t K, float* param, const MT* m, const float* rf,
                                     const float* cf, float lr, float decay, bool wd, FusedBf16 out) {
  update_rounded_blocks(l.numel(), out, [&](int64_t e) {
    const int64_t k = e % K, pi = e / K, p = pi / l.n, i = pi % l.n;
    const float x = param_step(param[e], row_factor_of(l, rf, p, i, k) * cf[p * K + k], load(m + e), lr, decay, wd);
    param[e] = x;
    return x;
  });
}

// Inspection after the step: sum m^2 and sum (lr * factor * m)^2.
template <class MT>
struct MomentStats {
  FactoredLayout l;
  int64_t K;
  const MT* m;
  const float* rf;
  const float* cf;
  float lr;
  __device__ void operator()(int64_t e, double* acc) const {
    const int64_t k = e % K, pi = e / K, p = pi / l.n, i = pi % l.n;
    const float mv = load(m + e);
    const float step = ((row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * mv) * lr;
    acc[0] += double(mv) * mv;
    acc[1] += double(step) * step;
  }
};

// g: a.grad, or the bf16 gradient of a FusedBf16 step.
template <class MT, class GT>
void came_factored(const CameFactoredArgs& a, const GT* g) {
  const FactoredLayout& l = a.layout;
  const Plan plan = make_plan(l);
  const Workspace w = carve(a.workspace, l, plan);
  const int64_t K = plan.K, N = l.numel();
  const float gs = float(a.grad_scale);
  MT* m = static_cast<MT*>(a.exp_avg);

  // Pass 1: r, c and their factors.
  factored_stats(l, plan, w, SquareFill<GT>{g, l.n, K, gs, float(a.eps1)}, a.exp_avg_sq_row, a.exp_avg_sq_col,
                 a.beta2, a.shard);
  // Pass 2: RMS of u -> clip divisor (device scalar).
  const int blocks = reduce_blocks(N / 4 + 1);
  const bool vec = vectorizable(l, {g, a.param, a.exp_avg});
  update_sq<GT><<<blocks, kThreads, 0, stream()>>>(l, K, g, w.row_factor, w.col_factor, gs, vec, w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("came update_sq");
  launch_clip_divisor(w.block_sums, blocks, N, a.clip_threshold, w.divisor, a.stats, a.shard, w.total,
                      "came clip_divisor");
  if (a.stats && a.exact_exp_avg_sq) {
    const int b = reduce_blocks(N);
    ExactFill f{l, K, a.grad, a.exact_exp_avg_sq, w.row_factor, w.col_factor, gs, float(a.eps1), float(a.beta2),
                float(1.0 - a.beta2)};
    grid_sums<<<b, kThreads, 0, stream()>>>(N, f, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came exact ema");
    launch_add_block_sums(w.block_sums, b, a.stats, kStatFactorErrSq, kStatExactSq, 0, 2, "came add_block_sums");
  }
  // Pass 3: m, instability -> R, C and their factors (the row/col factor buffers are reused).
  const float b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1), eps2 = float(a.eps2);
  if (plan.fused_rows) {
    MomentFill<MT, true, GT> f{l, K, g, m, w.row_factor, w.col_factor, w.divisor, gs, b1, one_b1, eps2};
    // The fill reads the second-moment factors while the stats overwrite them only in the finishing kernels,
    // which run after the tile kernel completes (same stream).
    factored_stats(l, plan, w, f, a.exp_avg_res_row, a.exp_avg_res_col, a.beta3, a.shard);
  } else {
    const dim3 rows_grid(unsigned(l.P * l.n), unsigned((K + kThreads - 1) / kThreads));
    moment_update<MT, GT><<<rows_grid, kThreads, 0, stream()>>>(l, K, g, m, w.row_factor, w.col_factor, w.divisor, gs,
                                                                b1, one_b1);
    TALLY_CUDA_LAUNCH_CHECK("came moment_update");
    MomentFill<MT, false, GT> f{l, K, g, m, w.row_factor, w.col_factor, w.divisor, gs, b1, one_b1, eps2};
    factored_stats(l, plan, w, f, a.exp_avg_res_row, a.exp_avg_res_col, a.beta3, a.shard);
  }
  // Pass 4: the parameter (and, fused, the bf16 parameter from it).
  const float lr = float(a.lr), decay = float(-a.weight_decay * a.lr);
  const bool wd = a.weight_decay != 0.0;
  if (a.bf16_param.grad) {
    param_update_rounded<MT><<<rounded_blocks_grid(N), kThreads, 0, stream()>>>(l, K, a.param, m, w.row_factor,
                                                                                w.col_factor, lr, decay, wd,
                                                                                a.bf16_param);
    TALLY_CUDA_LAUNCH_CHECK("came param_update_rounded");
  } else {
    const dim3 grid(unsigned(l.P * l.n), unsigned((K + 4 * kThreads - 1) / (4 * kThreads)));
    param_update<MT><<<grid, kThreads, 0, stream()>>>(l, K, a.param, m, w.row_factor, w.col_factor, lr, decay, wd, vec);
    TALLY_CUDA_LAUNCH_CHECK("came param_update");
  }
  if (a.stats) {
    const int b = reduce_blocks(N);
    grid_sums<<<b, kThreads, 0, stream()>>>(N, MomentStats<MT>{l, K, m, w.row_factor, w.col_factor, float(a.lr)},
                                            w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came moment stats");
    launch_add_block_sums(w.block_sums, b, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2, "came add_block_sums");
  }
}

// Dense pass 2 on one element: u = g / sqrt(v) / divisor, m = b1 m + (1-b1) u, p = p + decay p - lr m. Returns m
// as stored.
template <class MT>
__device__ inline float dense_moment_param(float g, float v, MT* m, float* p, float gs, float d, float b1,
                                           float one_b1, float lr, float decay, bool wd) {
  const float u = ((1.0f / sqrtf(v)) * (g * gs)) / d;
  const float mn = store(m, fmaf(u, one_b1, load(m) * b1));
  *p = param_step(*p, 1.0f, mn, lr, decay, wd);
  return mn;
}

// Dense pass 2: m and p (and, inspecting, block sums of m^2 and (lr m)^2).
template <class MT, bool kStats>
__global__ void dense_update(int64_t n, const float* g, const float* v, MT* m, float* param, const float* divisor,
                             float gs, float b1, float one_b1, float lr, float decay, bool wd, double* block_sums) {
  double msq = 0, app = 0;
  const float d = *divisor;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float mn = dense_moment_param(g[e], v[e], m + e, param + e, gs, d, b1, one_b1, lr, decay, wd);
    if (kStats) {
      const float step = mn * lr;
      msq += double(mn) * mn;
      app += double(step) * step;
    }
  }
  if constexpr (kStats) {
    const double sums[2] = {msq, app};
    write_block_sums(sums, block_sums);
  }
}

// Dense pass 2 of a bf16 parameter (FusedBf16): dense_moment_param on the master from the bf16 gradient, then the bf16
// parameter as round_to_bf16 writes it; each thread takes whole 8-element Philox blocks.
template <class MT>
__global__ void dense_update_rounded(int64_t n, const float* v, MT* m, float* param, const float* divisor, float gs,
                                     float b1, float one_b1, float lr, float decay, bool wd, FusedBf16 out) {
  const float d = *divisor;
  update_rounded_blocks(n, out, [&](int64_t e) {
    dense_moment_param(load(out.grad + e), v[e], m + e, param + e, gs, d, b1, one_b1, lr, decay, wd);
    return param[e];
  });
}

// g: a.grad, or the bf16 gradient of a FusedBf16 step.
template <class MT, class GT>
void came_dense(const CameDenseArgs& a, const GT* g) {
  const DenseWorkspace w = carve_dense(a.workspace);
  const float gs = float(a.grad_scale);
  const int blocks = reduce_blocks(a.n);
  dense_second_moment<GT><<<blocks, kThreads, 0, stream()>>>(a.n, g, a.exp_avg_sq, gs, float(a.eps1), float(a.beta2),
                                                             float(1.0 - a.beta2), w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("came dense_second_moment");
  launch_clip_divisor(w.block_sums, blocks, a.n, a.clip_threshold, w.divisor, a.stats, a.shard, w.total,
                      "came clip_divisor");
  MT* m = static_cast<MT*>(a.exp_avg);
  const float b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1), lr = float(a.lr);
  const float decay = float(-a.weight_decay * a.lr);
  const bool wd = a.weight_decay != 0.0;
  if (a.bf16_param.grad) {
    dense_update_rounded<MT><<<rounded_blocks_grid(a.n), kThreads, 0, stream()>>>(a.n, a.exp_avg_sq, m, a.param,
                                                                                  w.divisor, gs, b1, one_b1, lr, decay,
                                                                                  wd, a.bf16_param);
    TALLY_CUDA_LAUNCH_CHECK("came dense_update_rounded");
  } else if (a.stats) {
    dense_update<MT, true><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, m, a.param, w.divisor, gs, b1,
                                                              one_b1, lr, decay, wd, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came dense_update");
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2, "came add_block_sums");
  } else {
    dense_update<MT, false><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, m, a.param, w.divisor, gs, b1,
                                                               one_b1, lr, decay, wd, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came dense_update");
  }
}

// Batched dense steps (came_dense_steps): one block per small tensor runs both passes of came_dense, the clip
// divisor between them from the block's own sum (no workspace). The scalars are converted as came_dense does.
// A task with bf16.grad (FusedBf16) reads its gradient from bf16 and writes its bf16 parameter after the master:
// thread after thread takes whole 8-element Philox blocks, as round_to_bf16 draws them.
struct DenseTask {
  float* param;       // f32 parameter or master weights
  const float* grad;  // null when fused
  void* exp_avg;
  float* v;
  FusedBf16 bf16;  // fused: bf16.grad is set
  int n;
  float gs, eps1, b2, one_b2, b1, one_b1, lr, decay, threshold;
};
struct DenseBatch {
  DenseTask task[kCameDenseBatchTasks];
  int count;
};
static_assert(sizeof(DenseBatch) <= 4000, "came_dense_batch: the launch's parameters must stay under 4 KiB");

__device__ inline float grad_of(const DenseTask& t, int e) { return t.grad ? t.grad[e] : load(t.bf16.grad + e); }

template <class MT>
__global__ void came_dense_batch(const DenseBatch b) {
  __shared__ double shared[kWarps];
  __shared__ float divisor;
  const DenseTask& t = b.task[blockIdx.x];
  MT* m = static_cast<MT*>(t.exp_avg);
  double acc = 0;
  for (int e = threadIdx.x; e < t.n; e += kThreads) {  // as dense_second_moment
    const float u = dense_v_update(grad_of(t, e) * t.gs, t.v + e, t.eps1, t.b2, t.one_b2);
    acc += double(u) * u;
  }
  const double sum = block_sum_to_first<kThreads>(acc, shared);
  if (threadIdx.x == 0) divisor = clip_divisor_of(sum, t.n, t.threshold);  // as clip_divisor
  __syncthreads();  // also makes every thread's v visible to the block
  const float d = divisor;
  const bool wd = t.decay != 0.0f;
  if (!t.bf16.grad) {
    for (int e = threadIdx.x; e < t.n; e += kThreads)  // as dense_update
      dense_moment_param(grad_of(t, e), t.v[e], m + e, t.param + e, t.gs, d, t.b1, t.one_b1, t.lr, t.decay, wd);
    return;
  }
  for (int blk = threadIdx.x; 8 * blk < t.n; blk += kThreads) {  // as dense_update, then round_to_bf16
    const rng::Philox4 r = rng::philox4x32_10(t.bf16.seed, t.bf16.offset + uint64_t(blk));
    for (int k = 0; k < 8 && 8 * blk + k < t.n; ++k) {
      const int e = 8 * blk + k;
      dense_moment_param(grad_of(t, e), t.v[e], m + e, t.param + e, t.gs, d, t.b1, t.one_b1, t.lr, t.decay, wd);
      t.bf16.param[e].bits = rounded_bf16(t.param[e], r, k);
    }
  }
}

template <class MT>
void launch_dense_batch(const DenseBatch& b) {
  came_dense_batch<MT><<<unsigned(b.count), kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK("came dense_batch");
}

}  // namespace

void came_dense_steps(const CameDenseArgs* steps, int64_t count) {
  DenseBatch f32{}, bf{};
  for (int64_t i = 0; i < count; ++i) {
    const CameDenseArgs& a = steps[i];
    TALLY_CHECK(!a.stats, "[came_dense_steps] a batched step cannot carry statistics");
    if (a.bf16_param.grad)
      TALLY_CHECK(a.bf16_param.param && !a.grad, "[came_dense_steps] a fused bf16 step takes the bf16 gradient and ",
                  "parameter (no f32 gradient)");
    if (a.n == 0 && !a.shard.sum) continue;
    if (a.n > kCameDenseBatchMax || a.shard.sum) {  // a part of a sharded tensor: its clip needs a cross-rank sum
      came_dense_step(a);
      continue;
    }
    const bool is_bf16 = a.exp_avg_dtype == DType::bf16;
    DenseBatch& b = is_bf16 ? bf : f32;
    DenseTask& t = b.task[b.count++];
    t.param = a.param;
    t.grad = a.grad;
    t.exp_avg = a.exp_avg;
    t.v = a.exp_avg_sq;
    t.bf16 = a.bf16_param;
    t.n = int(a.n);
    t.gs = float(a.grad_scale);
    t.eps1 = float(a.eps1);
    t.b2 = float(a.beta2);
    t.one_b2 = float(1.0 - a.beta2);
    t.b1 = float(a.beta1);
    t.one_b1 = float(1.0 - a.beta1);
    t.lr = float(a.lr);
    t.decay = a.weight_decay != 0.0 ? float(-a.weight_decay * a.lr) : 0.0f;
    t.threshold = float(a.clip_threshold);
    if (b.count == kCameDenseBatchTasks) {
      is_bf16 ? launch_dense_batch<__nv_bfloat16>(b) : launch_dense_batch<float>(b);
      b.count = 0;
    }
  }
  if (f32.count > 0) launch_dense_batch<float>(f32);
  if (bf.count > 0) launch_dense_batch<__nv_bfloat16>(bf);
}

void came_factored_step(const CameFactoredArgs& a) {
  if (a.layout.numel() == 0) {  // a rank with no rows of a sharded tensor: its share of the three rounds
    if (!a.shard.sum) return;
    const Workspace w = carve(a.workspace, a.layout, make_plan(a.layout));
    if (a.shard.rows_cut) columns_without_rows(a.layout, w, a.exp_avg_sq_col, a.beta2, a.shard);
    sums_without_elements(w.total, 1, a.shard);
    if (a.shard.rows_cut) columns_without_rows(a.layout, w, a.exp_avg_res_col, a.beta3, a.shard);
    return;
  }
  const bool bf16_moment = a.exp_avg_dtype == DType::bf16;
  if (a.bf16_param.grad) {
    TALLY_CHECK(!a.grad && a.bf16_param.param && !a.stats && !a.exact_exp_avg_sq, "[came_factored_step] a fused bf16 ",
                "step takes the bf16 gradient and parameter (no f32 gradient) and no statistics");
    bf16_moment ? came_factored<__nv_bfloat16>(a, a.bf16_param.grad) : came_factored<float>(a, a.bf16_param.grad);
  } else {
    bf16_moment ? came_factored<__nv_bfloat16>(a, a.grad) : came_factored<float>(a, a.grad);
  }
}

void came_dense_step(const CameDenseArgs& a) {
  if (a.n == 0) {
    if (a.shard.sum) sums_without_elements(carve_dense(a.workspace).total, 1, a.shard);
    return;
  }
  const bool bf16_moment = a.exp_avg_dtype == DType::bf16;
  if (a.bf16_param.grad) {
    TALLY_CHECK(!a.grad && a.bf16_param.param && !a.stats, "[came_dense_step] a fused bf16 step takes the bf16 ",
                "gradient and parameter (no f32 gradient) and no statistics");
    bf16_moment ? came_dense<__nv_bfloat16>(a, a.bf16_param.grad) : came_dense<float>(a, a.bf16_param.grad);
  } else {
    bf16_moment ? came_dense<__nv_bfloat16>(a, a.grad) : came_dense<float>(a, a.grad);
  }
}

}  // namespace tally::optim::kernels::cuda
