// CUDA kernels of CAME (came-pytorch 0.1.3), factored and dense; the arithmetic of the CPU kernels
// (optim/kernels/cpu/came.cpp) in four passes (the CPU folds the u^2 sum into its first pass; here the row statistics
// are only final after the tile kernel, so u^2 takes one more read of g: 32 bytes/param). Factored step:
// tile_stats(g^2+eps1) -> r, c, factors; grid sums of u^2 -> clip divisor (on the device: no host round trip; ZeRO 1
// with rows cut: from the column sums of u^2 the first round carries, the u^2 pass then only for the statistics);
// tile_stats that updates m and sums the instability -> R, C, factors; elementwise parameter update (float4 loads when
// rows allow). Nine launches per factored tensor (the package issues ~22 kernels), or nine for a batch of them
// (came_factored_steps); small dense tensors are stepped together, one block each (came_dense_steps); bf16 ones have
// their widening and rounding fused. ZeRO 1: a part of a
// tensor completes its sums over the ranks in device memory (Sharding: NCCL on tally's stream, no host wait), as the
// CPU kernels do.
#include <type_traits>

#include "optim/kernels/cuda/batches.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

namespace {

// The scalars of the first moment's and the parameter's updates, as float (as the CPU kernels convert them): built
// once per step (came_scalars) or per batched tensor (came_scalars_of), passed by value.
struct CameScalars {
  float gs;          // the gradient's scale
  float b1, one_b1;  // beta1, 1 - beta1
  float lr;
  float decay;  // -weight_decay * lr
  bool wd;      // weight decay applies: p = p + decay p before the step
};

CameScalars came_scalars(double grad_scale, double beta1, double lr, double weight_decay) {
  return {.gs = float(grad_scale),
          .b1 = float(beta1),
          .one_b1 = float(1.0 - beta1),
          .lr = float(lr),
          .decay = float(-weight_decay * lr),
          .wd = weight_decay != 0.0};
}

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
  CameScalars s;
  float eps2;
  __device__ float operator()(int64_t p, int64_t i, int64_t k) const {
    const int64_t e = (p * l.n + i) * K + k;
    const float u = ((row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * (load(g + e) * s.gs)) / *divisor;
    float mn;
    if constexpr (kUpdate) {
      mn = store(m + e, fmaf(u, s.one_b1, load(m + e) * s.b1));
    } else {
      mn = load(m + e);  // already updated (general layouts: the fill must be pure, it runs twice)
    }
    const float r = u - mn;
    return r * r + eps2;
  }
};

// Pass 3 of a general layout (Q*S > 1), before its statistics: m = b1 m + (1-b1) u, u = factor * g / divisor, once
// per element. g, m: (P * n, K); rf: (rows); cf: (cols). Grid (P * n, K / kThreads rounded up).
template <class MT, class GT>
__global__ void moment_update(FactoredLayout l, int64_t K, const GT* g, MT* m, const float* rf, const float* cf,
                              const float* divisor, CameScalars s) {
  const int64_t pi = blockIdx.x, k = blockIdx.y * int64_t(kThreads) + threadIdx.x;
  if (k >= K) return;
  const int64_t p = pi / l.n, i = pi % l.n, e = pi * K + k;
  const float u = ((row_factor_of(l, rf, p, i, k) * cf[p * K + k]) * (load(g + e) * s.gs)) / *divisor;
  store(m + e, fmaf(u, s.one_b1, load(m + e) * s.b1));
}

// Pass 4 on one element: p = p + (-lr*wd)*p (fused, as torch's add_(p, alpha)), then p -= (factor * m) * lr. Every
// kernel that writes the parameter (factored, dense, fused bf16 or not) steps it through here, so that they round
// alike. The dense step has no factor (1: the product is then m itself, exactly).
__device__ inline float param_step(float x, float factor, float m, const CameScalars& s) {
  if (s.wd) x = fmaf(x, s.decay, x);
  return x - (factor * m) * s.lr;
}

// Pass 4 of a factored tensor: row pi (p * n + i), its chunk kc of 4 * kThreads columns.
template <class MT>
__device__ inline void param_update_of(const FactoredLayout& l, int64_t K, float* param, const MT* m, const float* rf,
                                       const float* cf, const CameScalars& s, bool vec, int64_t pi, int64_t kc) {
  const int64_t k0 = (kc * kThreads + threadIdx.x) * 4;
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
      for (int t = 0; t < 4; ++t) *pp[t] = param_step(*pp[t], r * c[t], ms[t], s);
      *reinterpret_cast<float4*>(pr + k0) = pv;
      return;
    }
  }
  for (int64_t k = k0; k < imin(K, k0 + 4); ++k)
    pr[k] = param_step(pr[k], row_factor_of(l, rf, p, i, k) * cf[p * K + k], load(mr + k), s);
}
__host__ __device__ inline int64_t param_update_chunks(int64_t K) {
  return (K + 4 * kThreads - 1) / (4 * kThreads);
}
// param, m: (P * n, K); rf: (rows); cf: (cols). Grid (P * n, param_update_chunks(K)).
template <class MT>
__global__ void param_update(FactoredLayout l, int64_t K, float* param, const MT* m, const float* rf, const float* cf,
                             CameScalars s, bool vec) {
  param_update_of(l, K, param, m, rf, cf, s, vec, blockIdx.x, blockIdx.y);
}

// Pass 4 of a bf16 parameter (FusedBf16): param_update's arithmetic on the master, then the bf16 parameter as
// round_to_bf16 writes it: each thread takes whole 8-element Philox blocks of the flat tensor (a block may span rows).
template <class MT>
__device__ inline void param_update_rounded_of(const FactoredLayout& l, int64_t K, float* param, const MT* m,
                                               const float* rf, const float* cf, const CameScalars& s,
                                               const FusedBf16& out, GridPos at) {
  update_rounded_blocks(
      l.numel(), out,
      [&](int64_t e) {
        const int64_t k = e % K, pi = e / K, p = pi / l.n, i = pi % l.n;
        const float x = param_step(param[e], row_factor_of(l, rf, p, i, k) * cf[p * K + k], load(m + e), s);
        param[e] = x;
        return x;
      },
      at);
}
// param, m, out.grad, out.param: (P * n, K); rf: (rows); cf: (cols).
template <class MT>
__global__ void param_update_rounded(FactoredLayout l, int64_t K, float* param, const MT* m, const float* rf,
                                     const float* cf, CameScalars s, FusedBf16 out) {
  param_update_rounded_of(l, K, param, m, rf, cf, s, out, own_grid());
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
// One factored tensor's four passes; g, param, exp_avg: (layout); the row statistics (rows), the column ones (cols).
template <class MT, class GT>
void came_factored(const CameFactoredArgs& a, const GT* g) {
  const FactoredLayout& l = a.layout;
  const Plan plan = make_plan(l);
  const Workspace w = carve(a.workspace, l, plan);
  const int64_t K = plan.K, N = l.numel();
  const CameScalars s = came_scalars(a.grad_scale, a.beta1, a.lr, a.weight_decay);
  MT* m = static_cast<MT*>(a.exp_avg);

  // Pass 1: r, c and their factors.
  factored_stats(l, plan, w, SquareFill<GT>{g, l.n, K, s.gs, float(a.eps1)}, a.exp_avg_sq_row, a.exp_avg_sq_col,
                 a.beta2, a.shard, UpdateSource<GT>{g, s.gs});
  // Pass 2: RMS of u -> clip divisor (device scalar).
  const bool vec = vectorizable(l, {g, a.param, a.exp_avg});
  factored_clip_divisor(l, plan, w, g, s.gs, vec, a.clip_threshold, a.stats, a.shard, "came clip_divisor");
  if (a.stats && a.exact_exp_avg_sq) {
    const int b = reduce_blocks(N);
    const float b2 = float(a.beta2), one_b2 = float(1.0 - a.beta2);
    ExactFill f{l, K, a.grad, a.exact_exp_avg_sq, w.row_factor, w.col_factor, s.gs, float(a.eps1), b2, one_b2};
    grid_sums<<<b, kThreads, 0, stream()>>>(N, f, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came exact ema");
    launch_add_block_sums(w.block_sums, b, a.stats, kStatFactorErrSq, kStatExactSq, 0, 2, "came add_block_sums");
  }
  // Pass 3: m, instability -> R, C and their factors (the row/col factor buffers are reused).
  const float eps2 = float(a.eps2);
  if (plan.fused_rows) {
    MomentFill<MT, true, GT> f{l, K, g, m, w.row_factor, w.col_factor, w.divisor, s, eps2};
    // The fill reads the second-moment factors while the stats overwrite them only in the finishing kernels,
    // which run after the tile kernel completes (same stream).
    factored_stats(l, plan, w, f, a.exp_avg_res_row, a.exp_avg_res_col, a.beta3, a.shard);
  } else {
    const dim3 rows_grid(unsigned(l.P * l.n), unsigned((K + kThreads - 1) / kThreads));
    moment_update<MT, GT><<<rows_grid, kThreads, 0, stream()>>>(l, K, g, m, w.row_factor, w.col_factor, w.divisor, s);
    TALLY_CUDA_LAUNCH_CHECK("came moment_update");
    MomentFill<MT, false, GT> f{l, K, g, m, w.row_factor, w.col_factor, w.divisor, s, eps2};
    factored_stats(l, plan, w, f, a.exp_avg_res_row, a.exp_avg_res_col, a.beta3, a.shard);
  }
  // Pass 4: the parameter (and, fused, the bf16 parameter from it).
  if (a.bf16_param.grad) {
    param_update_rounded<MT><<<rounded_blocks_grid(N), kThreads, 0, stream()>>>(l, K, a.param, m, w.row_factor,
                                                                                w.col_factor, s, a.bf16_param);
    TALLY_CUDA_LAUNCH_CHECK("came param_update_rounded");
  } else {
    const dim3 grid(unsigned(l.P * l.n), unsigned(param_update_chunks(K)));
    param_update<MT><<<grid, kThreads, 0, stream()>>>(l, K, a.param, m, w.row_factor, w.col_factor, s, vec);
    TALLY_CUDA_LAUNCH_CHECK("came param_update");
  }
  if (a.stats) {
    const int b = reduce_blocks(N);
    grid_sums<<<b, kThreads, 0, stream()>>>(N, MomentStats<MT>{l, K, m, w.row_factor, w.col_factor, s.lr},
                                            w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came moment stats");
    launch_add_block_sums(w.block_sums, b, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2, "came add_block_sums");
  }
}

// Dense pass 2 on one element: u = g / sqrt(v) / divisor, m = b1 m + (1-b1) u, p = p + decay p - lr m. Returns m
// as stored.
template <class MT>
__device__ inline float dense_moment_param(float g, float v, MT* m, float* p, float d, const CameScalars& s) {
  const float u = ((1.0f / sqrtf(v)) * (g * s.gs)) / d;
  const float mn = store(m, fmaf(u, s.one_b1, load(m) * s.b1));
  *p = param_step(*p, 1.0f, mn, s);
  return mn;
}

// Dense pass 2: m and p (and, inspecting, block sums of m^2 and (lr m)^2).
// g, v, m, param: (n); divisor: one value; block_sums: (gridDim.x, kSums) with kStats.
template <class MT, bool kStats>
__global__ void dense_update(int64_t n, const float* g, const float* v, MT* m, float* param, const float* divisor,
                             CameScalars s, double* block_sums) {
  double msq = 0, app = 0;
  const float d = *divisor;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float mn = dense_moment_param(g[e], v[e], m + e, param + e, d, s);
    if (kStats) {
      const float step = mn * s.lr;
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
// v, m, param, out.grad, out.param: (n); divisor: one value.
template <class MT>
__global__ void dense_update_rounded(int64_t n, const float* v, MT* m, float* param, const float* divisor,
                                     CameScalars s, FusedBf16 out) {
  const float d = *divisor;
  update_rounded_blocks(n, out, [&](int64_t e) {
    dense_moment_param(load(out.grad + e), v[e], m + e, param + e, d, s);
    return param[e];
  });
}

// g: a.grad, or the bf16 gradient of a FusedBf16 step.
// One dense tensor's step: v and the sum of u^2, the clip divisor, then m and p; g, param, exp_avg, exp_avg_sq: (n).
template <class MT, class GT>
void came_dense(const CameDenseArgs& a, const GT* g) {
  const DenseWorkspace w = carve_dense(a.workspace);
  const CameScalars s = came_scalars(a.grad_scale, a.beta1, a.lr, a.weight_decay);
  const int blocks = reduce_blocks(a.n);
  dense_second_moment<GT><<<blocks, kThreads, 0, stream()>>>(a.n, g, a.exp_avg_sq, s.gs, float(a.eps1), float(a.beta2),
                                                             float(1.0 - a.beta2), w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("came dense_second_moment");
  launch_clip_divisor(w.block_sums, blocks, a.n, a.clip_threshold, w.divisor, a.stats, a.shard, w.total,
                      "came clip_divisor");
  MT* m = static_cast<MT*>(a.exp_avg);
  if (a.bf16_param.grad) {
    dense_update_rounded<MT><<<rounded_blocks_grid(a.n), kThreads, 0, stream()>>>(a.n, a.exp_avg_sq, m, a.param,
                                                                                  w.divisor, s, a.bf16_param);
    TALLY_CUDA_LAUNCH_CHECK("came dense_update_rounded");
  } else if (a.stats) {
    dense_update<MT, true>
        <<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, m, a.param, w.divisor, s, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came dense_update");
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2, "came add_block_sums");
  } else {
    dense_update<MT, false>
        <<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, m, a.param, w.divisor, s, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("came dense_update");
  }
}

// came_dense_steps: one block per small tensor runs both passes of came_dense (batches.cuh).
using CameDenseBatch = DenseBatch<kCameDenseBatchTasks>;
static_assert(sizeof(CameDenseBatch) <= 4000, "came_dense_batch: the launch's parameters must stay under 4 KiB");

// A batched tensor's scalars, as came_scalars gives them (dense_task leaves decay 0 without weight decay).
__device__ inline CameScalars came_scalars_of(const DenseTask& t) {
  return {.gs = t.gs, .b1 = t.b1, .one_b1 = t.one_b1, .lr = t.lr, .decay = t.decay, .wd = t.decay != 0.0f};
}
__device__ inline CameScalars came_scalars_of(const FactoredTask<2>& t) {
  return {.gs = t.gs, .b1 = t.b1, .one_b1 = t.one_b1, .lr = t.lr, .decay = t.decay, .wd = t.wd};
}

// One block per task: both passes of came_dense on task blockIdx.x; param, grad, exp_avg, v: (t.n).
template <class MT>
__global__ void came_dense_batch(const CameDenseBatch b) {
  const DenseTask& t = b.task[blockIdx.x];
  MT* m = static_cast<MT*>(t.exp_avg);
  const CameScalars s = came_scalars_of(t);
  dense_task_step(t, [&](int64_t e, float d) {  // as dense_update
    dense_moment_param(grad_of(t, e), t.v[e], m + e, t.param + e, d, s);
  });
}

// came_dense_batch, one block per task of b.
template <class MT>
void launch_dense_batch(const CameDenseBatch& b) {
  came_dense_batch<MT><<<unsigned(b.count), kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK("came dense_batch");
}

// ---- came_factored_steps: whole factored tensors of plain layout (Q*S == 1), without statistics, stepped together
// (batches.cuh): each of came_factored's nine launches runs once for a batch of tensors.
using CameBatch = FactoredBatch<2, kCameFactoredBatchTasks>;
static_assert(sizeof(CameBatch) <= 4000, "came_factored_steps: the launch's parameters must stay under 4 KiB");

// Pass 3 of each tensor's tiles: m and the instability (MomentFill).
// Grid b.blocks[kTiles]; each tensor's g, m: (P * n, K), its partials into t.w as batch_square_tiles writes them.
template <class MT, class GT>
__global__ void batch_moment_tiles(const CameBatch b) {
  GridPos at;
  const auto& t = task_of(b, kTiles, at);
  const int64_t pt = at.block / t.plan.tiles_k, tk = at.block % t.plan.tiles_k;
  const GT* g = static_cast<const GT*>(t.g);
  MT* m = static_cast<MT*>(t.m);
  const CameScalars s = came_scalars_of(t);
  const MomentFill<MT, true, GT> f{t.l, t.plan.K, g, m, t.w.row_factor, t.w.col_factor, t.w.divisor, s, t.eps2};
  tile_stats_of(t.l, t.plan, f, t.w.row_partials, t.w.col_partials, pt, tk);
}

// Pass 4 of each tensor, as param_update or (fused bf16) param_update_rounded; param, m: (P * n, K). Grid
// b.blocks[kParam].
template <class MT>
__global__ void batch_param(const CameBatch b) {
  GridPos at;
  const auto& t = task_of(b, kParam, at);
  const MT* m = static_cast<const MT*>(t.m);
  if (t.out.grad) {
    param_update_rounded_of(t.l, t.plan.K, t.param, m, t.w.row_factor, t.w.col_factor, came_scalars_of(t), t.out, at);
  } else {
    const int64_t chunks = param_update_chunks(t.plan.K);
    param_update_of(t.l, t.plan.K, t.param, m, t.w.row_factor, t.w.col_factor, came_scalars_of(t), t.vec,
                    at.block / chunks, at.block % chunks);
  }
}

// came_factored's passes, each launched once for the batch.
template <class MT, class GT>
void launch_factored_batch(CameBatch& b) {
  set_grids(
      b,
      [](const FactoredTask<2>& t) {
        const int64_t N = t.l.numel();
        return t.out.grad ? int64_t(rounded_blocks_grid(N)) : t.l.P * t.l.n * param_update_chunks(t.plan.K);
      },
      "came_factored_steps");
  launch_second_moment_and_clip<CameBatch, GT>(b, "came batch");
  batch_moment_tiles<MT, GT><<<b.blocks[kTiles], kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK("came batch moment tiles");
  launch_batch_ema_factors<CameBatch, 1>(b, "came batch");
  batch_param<MT><<<b.blocks[kParam], kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK("came batch param");
}

// The batches of steps of one kind (first moment bf16 or not, gradient bf16 or not).
template <class MT, class GT>
void batch_steps_of_kind(const CameFactoredArgs* steps, int64_t count, char* workspace, int64_t workspace_bytes) {
  batch_steps<CameBatch>(
      steps, count, workspace, workspace_bytes,
      [](const CameFactoredArgs& a) {
        const bool bf16_m = a.exp_avg_dtype == DType::bf16, bf16_g = a.bf16_param.grad != nullptr;
        return bf16_m == std::is_same_v<MT, __nv_bfloat16> && bf16_g == std::is_same_v<GT, bf16>;
      },
      [](FactoredTask<2>& t, const CameFactoredArgs& a) {
        const void* g = a.bf16_param.grad ? static_cast<const void*>(a.bf16_param.grad) : a.grad;
        fill_common(t, a, g);
        t.row_stat[0] = a.exp_avg_sq_row;
        t.row_stat[1] = a.exp_avg_res_row;
        t.col_stat[0] = a.exp_avg_sq_col;
        t.col_stat[1] = a.exp_avg_res_col;
        t.beta[0] = a.beta2;
        t.beta[1] = a.beta3;
        t.eps2 = float(a.eps2);
        t.vec = vectorizable(a.layout, {g, a.param, a.exp_avg});
      },
      [](CameBatch& b) { launch_factored_batch<MT, GT>(b); });
}

}  // namespace

// steps: (count); the unbatchable ones one by one, the others in batches of one kind (first moment and gradient
// dtypes) sharing workspace (workspace_bytes).
void came_factored_steps(const CameFactoredArgs* steps, int64_t count, void* workspace, int64_t workspace_bytes) {
  check_and_step_unbatchable(
      steps, count, workspace, workspace_bytes, "came_factored_steps",
      [](const CameFactoredArgs& a) {
        check_fused(a.bf16_param, a.grad, a.stats, a.exact_exp_avg_sq, "came_factored_steps");
      },
      [](const CameFactoredArgs& a) { came_factored_step(a); });
  char* base = static_cast<char*>(workspace);
  batch_steps_of_kind<float, float>(steps, count, base, workspace_bytes);
  batch_steps_of_kind<float, bf16>(steps, count, base, workspace_bytes);
  batch_steps_of_kind<__nv_bfloat16, float>(steps, count, base, workspace_bytes);
  batch_steps_of_kind<__nv_bfloat16, bf16>(steps, count, base, workspace_bytes);
}

// steps: (count); up to kCameDenseBatchTasks tensors of at most kDenseBatchMax elements per launch (f32 and bf16
// first moments apart), the others one by one.
void came_dense_steps(const CameDenseArgs* steps, int64_t count) {
  CameDenseBatch f32{}, bf{};
  for (int64_t i = 0; i < count; ++i) {
    const CameDenseArgs& a = steps[i];
    const DenseRoute route = dense_route(a, "came_dense_steps");
    if (route == DenseRoute::skip) continue;
    if (route == DenseRoute::alone) {
      came_dense_step(a);
      continue;
    }
    const bool is_bf16 = a.exp_avg_dtype == DType::bf16;
    CameDenseBatch& b = is_bf16 ? bf : f32;
    b.task[b.count++] = dense_task(a, a.beta2);
    if (b.count == CameDenseBatch::kCapacity) {
      is_bf16 ? launch_dense_batch<__nv_bfloat16>(b) : launch_dense_batch<float>(b);
      b.count = 0;
    }
  }
  if (f32.count > 0) launch_dense_batch<float>(f32);
  if (bf.count > 0) launch_dense_batch<__nv_bfloat16>(bf);
}

// One factored tensor's step (came_factored by first moment and gradient dtype); param, grad, exp_avg: (layout);
// exp_avg_sq_row, exp_avg_res_row: (rows); exp_avg_sq_col, exp_avg_res_col: (cols).
void came_factored_step(const CameFactoredArgs& a) {
  if (a.layout.numel() == 0) {  // a rank with no rows of a sharded tensor: its share of the rounds
    if (!a.shard.sum) return;
    const Workspace w = carve(a.workspace, a.layout, make_plan(a.layout));
    if (a.shard.rows_cut) {  // two: the second moment's (which completes the clip's sum too) and the instability's
      columns_without_rows(a.layout, w, a.exp_avg_sq_col, a.beta2, a.shard, RoundCarries::column_and_update_sums);
      columns_without_rows(a.layout, w, a.exp_avg_res_col, a.beta3, a.shard, RoundCarries::column_sums);
    } else {
      sums_without_elements(w.total, 1, a.shard);
    }
    return;
  }
  const bool bf16_moment = a.exp_avg_dtype == DType::bf16;
  check_fused(a.bf16_param, a.grad, a.stats, a.exact_exp_avg_sq, "came_factored_step");
  if (a.bf16_param.grad) {
    bf16_moment ? came_factored<__nv_bfloat16>(a, a.bf16_param.grad) : came_factored<float>(a, a.bf16_param.grad);
  } else {
    bf16_moment ? came_factored<__nv_bfloat16>(a, a.grad) : came_factored<float>(a, a.grad);
  }
}

// One dense tensor's step (came_dense by first moment and gradient dtype); param, grad, exp_avg, exp_avg_sq: (n).
void came_dense_step(const CameDenseArgs& a) {
  if (a.n == 0) {
    if (a.shard.sum) sums_without_elements(carve_dense(a.workspace).total, 1, a.shard);
    return;
  }
  const bool bf16_moment = a.exp_avg_dtype == DType::bf16;
  check_fused(a.bf16_param, a.grad, a.stats, nullptr, "came_dense_step");
  if (a.bf16_param.grad) {
    bf16_moment ? came_dense<__nv_bfloat16>(a, a.bf16_param.grad) : came_dense<float>(a, a.bf16_param.grad);
  } else {
    bf16_moment ? came_dense<__nv_bfloat16>(a, a.grad) : came_dense<float>(a, a.grad);
  }
}

}  // namespace tally::optim::kernels::cuda
