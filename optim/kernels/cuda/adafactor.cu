// CUDA kernels of Adafactor (transformers, scale_parameter=False, relative_step=False); the arithmetic of
// optim/kernels/cpu/adafactor.cpp in three passes: r, c and factors; u^2 sums -> clip divisor on the device (one
// more read of g than the CPU's two passes); one elementwise pass for the (optional) first moment and the
// parameter. Six launches per factored tensor, or six for a batch of them (adafactor_factored_steps); small dense
// tensors are stepped together, one block each (adafactor_dense_steps). ZeRO 1: sums over the ranks completed in device
// memory, as came.cu does.
#include <type_traits>

#include "optim/kernels/cuda/batches.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

namespace {

// The scalars of the update pass (the step's doubles as the CPU kernels convert them).
struct UpdateScalars {
  float gs, lr, b1, one_b1, decay;
  bool wd;
};

// One element of the update pass, u = factor * g: u' = u / divisor * lr; with a first moment m = b1 m + (1-b1) u' and
// the step is m; p = p + (-lr*wd) p - step. Returns the step. Every update kernel (fused bf16 or not) runs this.
__device__ inline float update_element(float factor, float g, float* m, float* p, float d, const UpdateScalars& s) {
  float step = ((factor * (g * s.gs)) / d) * s.lr;
  if (m) {
    step = fmaf(step, s.one_b1, *m * s.b1);
    *m = step;
  }
  float x = *p;
  if (s.wd) x = fmaf(x, s.decay, x);
  *p = x - step;
  return step;
}

// The factor of element e: 1 / sqrt(v) of a factored tensor's row and column statistics, or of its own v (dense).
struct FactoredFactor {
  FactoredLayout l;
  int64_t K;
  const float* rf;
  const float* cf;
  __device__ float operator()(int64_t e) const {
    const int64_t k = e % K, pi = e / K, p = pi / l.n, i = pi % l.n;
    return row_factor_of(l, rf, p, i, k) * cf[p * K + k];
  }
};
struct DenseFactor {
  const float* v;
  __device__ float operator()(int64_t e) const { return 1.0f / sqrtf(v[e]); }
};

// The factored update pass: (row, chunk of kThreads columns) tasks over a grid. Inspecting (kStats), the update
// passes write block sums of m^2 (slot 0, with a first moment) and of the applied step^2 (slot 1).
template <bool kStats>
__device__ inline void factored_update_of(const FactoredLayout& l, int64_t K, const float* g, float* m, float* param,
                                          const float* rf, const float* cf, const float* divisor,
                                          const UpdateScalars& s, double* block_sums, GridPos at) {
  double msq = 0, app = 0;
  const float d = *divisor;
  const int64_t rows = l.P * l.n, chunks = (K + kThreads - 1) / kThreads;
  for (int64_t t = at.block; t < rows * chunks; t += at.blocks) {
    const int64_t pi = t / chunks, k = (t % chunks) * kThreads + threadIdx.x;
    if (k >= K) continue;
    const int64_t p = pi / l.n, i = pi % l.n, e = pi * K + k;
    const float step = update_element(row_factor_of(l, rf, p, i, k) * cf[p * K + k], g[e], m ? m + e : nullptr,
                                      param + e, d, s);
    if (kStats) {
      if (m) msq += double(step) * step;
      app += double(step) * step;
    }
  }
  if constexpr (kStats) {
    const double sums[2] = {msq, app};
    write_block_sums(sums, block_sums, at.block);
  }
}
// g, m (null without beta1), param: (P * n, K); rf: (rows); cf: (cols); divisor: one value; block_sums:
// (gridDim.x, kSums) with kStats.
template <bool kStats>
__global__ void factored_update(FactoredLayout l, int64_t K, const float* g, float* m, float* param, const float* rf,
                                const float* cf, const float* divisor, UpdateScalars s, double* block_sums) {
  factored_update_of<kStats>(l, K, g, m, param, rf, cf, divisor, s, block_sums, own_grid());
}
// The update pass's grid without statistics: the tensor's (row, chunk) tasks, one block each.
inline int64_t factored_update_tasks(const FactoredLayout& l, int64_t K) {
  return l.P * l.n * ((K + kThreads - 1) / kThreads);
}

// The dense update pass: update_element with the factor 1 / sqrt(v). g, v, m (null without beta1), param: (n);
// with kStats, block sums of m^2 (slot 0, with a first moment) and of the applied step^2 (slot 1).
template <bool kStats>
__global__ void dense_update(int64_t n, const float* g, const float* v, float* m, float* param, const float* divisor,
                             UpdateScalars s, double* block_sums) {
  double msq = 0, app = 0;
  const float d = *divisor;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float step = update_element(DenseFactor{v}(e), g[e], m ? m + e : nullptr, param + e, d, s);
    if (kStats) {
      if (m) msq += double(step) * step;
      app += double(step) * step;
    }
  }
  if constexpr (kStats) {
    const double sums[2] = {msq, app};
    write_block_sums(sums, block_sums);
  }
}

// The update pass of a bf16 parameter (FusedBf16), factored or dense: update_element on the master from the bf16
// gradient, then the bf16 parameter as round_to_bf16 writes it; each thread takes whole 8-element Philox blocks.
template <class Factor>
__device__ inline void update_rounded_of(int64_t n, const Factor& factor, float* m, float* param, const float* divisor,
                                         const UpdateScalars& s, const FusedBf16& out, GridPos at) {
  const float d = *divisor;
  update_rounded_blocks(
      n, out,
      [&](int64_t e) {
        update_element(factor(e), load(out.grad + e), m ? m + e : nullptr, param + e, d, s);
        return param[e];
      },
      at);
}
// m (null without beta1), param, out.grad, out.param: (n); factor(e): element e's factor; divisor: one value.
template <class Factor>
__global__ void update_rounded(int64_t n, Factor factor, float* m, float* param, const float* divisor,
                               UpdateScalars s, FusedBf16 out) {
  update_rounded_of(n, factor, m, param, divisor, s, out, own_grid());
}

// update_rounded over n elements, a thread per 8-element Philox block.
template <class Factor>
void launch_update_rounded(int64_t n, Factor factor, float* m, float* param, const float* divisor,
                           const UpdateScalars& s, const FusedBf16& out) {
  update_rounded<<<rounded_blocks_grid(n), kThreads, 0, stream()>>>(n, factor, m, param, divisor, s, out);
  TALLY_CUDA_LAUNCH_CHECK("adafactor update_rounded");
}

UpdateScalars update_scalars(double grad_scale, double lr, double beta1, double weight_decay) {
  return {.gs = float(grad_scale),
          .lr = float(lr),
          .b1 = float(beta1),
          .one_b1 = float(1.0 - beta1),
          .decay = float(-weight_decay * lr),
          .wd = weight_decay != 0.0};
}

// The first two passes of a factored step (GT: the gradient's type): r, c and their factors; the clip divisor.
// g: (P * n, K) (the layout's elements); the factors and divisor into w.
template <class GT>
void factored_first_passes(const AdafactorFactoredArgs& a, const GT* g, const Plan& plan, const Workspace& w) {
  const FactoredLayout& l = a.layout;
  const int64_t K = plan.K;
  const float gs = float(a.grad_scale);
  factored_stats(l, plan, w, SquareFill<GT>{g, l.n, K, gs, float(a.eps1)}, a.exp_avg_sq_row, a.exp_avg_sq_col, a.beta2t,
                 a.shard, UpdateSource<GT>{g, gs});
  factored_clip_divisor(l, plan, w, g, gs, vectorizable(l, {g}), a.clip_threshold, a.stats, a.shard,
                        "adafactor clip_divisor");
}

// ---- adafactor_factored_steps: whole factored tensors of plain layout (Q*S == 1), without statistics, stepped
// together (batches.cuh): each of the six launches of a factored step runs once for a batch of tensors.
using AdafactorBatch = FactoredBatch<1, kAdafactorFactoredBatchTasks>;
static_assert(sizeof(AdafactorBatch) <= 4000,
              "adafactor_factored_steps: the launch's parameters must stay under 4 KiB");

__device__ inline UpdateScalars update_scalars_of(const FactoredTask<1>& t) {
  return {.gs = t.gs, .lr = t.lr, .b1 = t.b1, .one_b1 = t.one_b1, .decay = t.decay, .wd = t.wd};
}

// The update pass of each tensor, as factored_update<false> or (fused bf16) update_rounded.
// Grid b.blocks[kParam]; each tensor's g, m, param: (P * n, K), its factors and divisor from t.w.
__global__ void batch_update(const AdafactorBatch b) {
  GridPos at;
  const auto& t = task_of(b, kParam, at);
  float* m = static_cast<float*>(t.m);
  if (t.out.grad) {
    update_rounded_of(t.l.numel(), FactoredFactor{t.l, t.plan.K, t.w.row_factor, t.w.col_factor}, m, t.param,
                      t.w.divisor, update_scalars_of(t), t.out, at);
  } else {
    factored_update_of<false>(t.l, t.plan.K, static_cast<const float*>(t.g), m, t.param, t.w.row_factor,
                              t.w.col_factor, t.w.divisor, update_scalars_of(t), nullptr, at);
  }
}

// The passes of adafactor_factored_step, each launched once for the batch.
template <class GT>
void launch_factored_batch(AdafactorBatch& b) {
  set_grids(
      b,
      [](const FactoredTask<1>& t) {
        return t.out.grad ? int64_t(rounded_blocks_grid(t.l.numel()))
                          : imin(factored_update_tasks(t.l, t.plan.K), int64_t(1) << 30);
      },
      "adafactor_factored_steps");
  launch_second_moment_and_clip<AdafactorBatch, GT>(b, "adafactor batch");
  batch_update<<<b.blocks[kParam], kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK("adafactor batch update");
}

// The batches of steps whose gradient is GT (f32, or bf16: fused).
template <class GT>
void batch_steps_of_kind(const AdafactorFactoredArgs* steps, int64_t count, char* workspace, int64_t workspace_bytes) {
  batch_steps<AdafactorBatch>(
      steps, count, workspace, workspace_bytes,
      [](const AdafactorFactoredArgs& a) { return (a.bf16_param.grad != nullptr) == std::is_same_v<GT, bf16>; },
      [](FactoredTask<1>& t, const AdafactorFactoredArgs& a) {
        const void* g = a.bf16_param.grad ? static_cast<const void*>(a.bf16_param.grad) : a.grad;
        fill_common(t, a, g);
        t.row_stat[0] = a.exp_avg_sq_row;
        t.col_stat[0] = a.exp_avg_sq_col;
        t.beta[0] = a.beta2t;
        t.eps2 = 0.0f;  // CAME's only
        t.vec = vectorizable(a.layout, {g});
      },
      [](AdafactorBatch& b) { launch_factored_batch<GT>(b); });
}

// ---- adafactor_dense_steps: one block per small tensor runs the whole of adafactor_dense_step (batches.cuh).
using AdafactorDenseBatch = DenseBatch<kAdafactorDenseBatchTasks>;
static_assert(sizeof(AdafactorDenseBatch) <= 4000,
              "adafactor_dense_batch: the launch's parameters must stay under 4 KiB");

// One block per task: the whole of adafactor_dense_step on task blockIdx.x; param, grad, exp_avg (null without
// beta1), v: (t.n).
__global__ void adafactor_dense_batch(const AdafactorDenseBatch b) {
  const DenseTask& t = b.task[blockIdx.x];
  float* m = static_cast<float*>(t.exp_avg);
  const UpdateScalars s{
      .gs = t.gs, .lr = t.lr, .b1 = t.b1, .one_b1 = t.one_b1, .decay = t.decay, .wd = t.decay != 0.0f};
  dense_task_step(t, [&](int64_t e, float d) {  // as dense_update
    update_element(DenseFactor{t.v}(e), grad_of(t, e), m ? m + e : nullptr, t.param + e, d, s);
  });
}

// adafactor_dense_batch, one block per task of b.
void launch_dense_batch(const AdafactorDenseBatch& b) {
  adafactor_dense_batch<<<unsigned(b.count), kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK("adafactor dense_batch");
}

}  // namespace

// One factored tensor's step: r, c and factors, the clip divisor, then the update pass; param, grad, exp_avg:
// (layout); exp_avg_sq_row: (rows); exp_avg_sq_col: (cols).
void adafactor_factored_step(const AdafactorFactoredArgs& a) {
  const FactoredLayout& l = a.layout;
  const int64_t N = l.numel();
  if (N == 0) {  // a rank with no rows of a sharded tensor: its share of the rounds, then nothing
    if (!a.shard.sum) return;
    const Workspace w = carve(a.workspace, l, make_plan(l));
    // Rows cut: one round, which completes the clip's sum too.
    if (a.shard.rows_cut)
      columns_without_rows(l, w, a.exp_avg_sq_col, a.beta2t, a.shard, RoundCarries::column_and_update_sums);
    else
      sums_without_elements(w.total, 1, a.shard);
    return;
  }
  check_fused(a.bf16_param, a.grad, a.stats, a.exact_exp_avg_sq, "adafactor_factored_step");
  const Plan plan = make_plan(l);
  const Workspace w = carve(a.workspace, l, plan);
  const int64_t K = plan.K;
  const UpdateScalars s = update_scalars(a.grad_scale, a.lr, a.beta1, a.weight_decay);
  if (a.bf16_param.grad) {
    factored_first_passes(a, a.bf16_param.grad, plan, w);
    launch_update_rounded(N, FactoredFactor{l, K, w.row_factor, w.col_factor}, a.exp_avg, a.param, w.divisor, s,
                          a.bf16_param);
    return;
  }
  factored_first_passes(a, a.grad, plan, w);
  if (a.stats && a.exact_exp_avg_sq) {
    const int b = reduce_blocks(N);
    ExactFill f{l, K, a.grad, a.exact_exp_avg_sq, w.row_factor, w.col_factor, s.gs, float(a.eps1), float(a.beta2t),
                float(1.0 - a.beta2t)};
    grid_sums<<<b, kThreads, 0, stream()>>>(N, f, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor exact ema");
    launch_add_block_sums(w.block_sums, b, a.stats, kStatFactorErrSq, kStatExactSq, 0, 2, "adafactor add_block_sums");
  }
  if (a.stats) {
    const int ub = reduce_blocks(N);
    factored_update<true><<<ub, kThreads, 0, stream()>>>(l, K, a.grad, a.exp_avg, a.param, w.row_factor, w.col_factor,
                                                         w.divisor, s, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor factored_update");
    launch_add_block_sums(w.block_sums, ub, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2, "adafactor add_block_sums");
  } else {
    // Without statistics the grid covers the tensor (no striding needed for bandwidth).
    const unsigned grid = unsigned(imin(factored_update_tasks(l, K), int64_t(1) << 30));
    factored_update<false><<<grid, kThreads, 0, stream()>>>(l, K, a.grad, a.exp_avg, a.param, w.row_factor,
                                                            w.col_factor, w.divisor, s, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor factored_update");
  }
}

// One dense tensor's step: v and the sum of u^2, the clip divisor, then the update pass; param, grad, exp_avg,
// exp_avg_sq: (n).
void adafactor_dense_step(const AdafactorDenseArgs& a) {
  if (a.n == 0) {
    if (a.shard.sum) sums_without_elements(carve_dense(a.workspace).total, 1, a.shard);
    return;
  }
  check_fused(a.bf16_param, a.grad, a.stats, nullptr, "adafactor_dense_step");
  const DenseWorkspace w = carve_dense(a.workspace);
  const UpdateScalars s = update_scalars(a.grad_scale, a.lr, a.beta1, a.weight_decay);
  const int blocks = reduce_blocks(a.n);
  const float eps1 = float(a.eps1), b2 = float(a.beta2t), one_b2 = float(1.0 - a.beta2t);
  if (a.bf16_param.grad) {
    dense_second_moment<bf16><<<blocks, kThreads, 0, stream()>>>(a.n, a.bf16_param.grad, a.exp_avg_sq, s.gs, eps1, b2,
                                                                 one_b2, w.block_sums);
  } else {
    dense_second_moment<float><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, s.gs, eps1, b2, one_b2,
                                                                  w.block_sums);
  }
  TALLY_CUDA_LAUNCH_CHECK("adafactor dense_second_moment");
  launch_clip_divisor(w.block_sums, blocks, a.n, a.clip_threshold, w.divisor, a.stats, a.shard, w.total,
                      "adafactor clip_divisor");
  if (a.bf16_param.grad) {
    launch_update_rounded(a.n, DenseFactor{a.exp_avg_sq}, a.exp_avg, a.param, w.divisor, s, a.bf16_param);
  } else if (a.stats) {
    dense_update<true><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, a.exp_avg, a.param, w.divisor, s,
                                                          w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor dense_update");
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatExpAvgSq, kStatAppliedSq, 0, 2,
                          "adafactor add_block_sums");
  } else {
    dense_update<false><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.exp_avg_sq, a.exp_avg, a.param, w.divisor, s,
                                                           w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adafactor dense_update");
  }
}

// steps: (count); the unbatchable ones one by one, the others in batches (f32 gradients, then bf16) sharing
// workspace (workspace_bytes).
void adafactor_factored_steps(const AdafactorFactoredArgs* steps, int64_t count, void* workspace,
                              int64_t workspace_bytes) {
  check_and_step_unbatchable(
      steps, count, workspace, workspace_bytes, "adafactor_factored_steps",
      [](const AdafactorFactoredArgs& a) {
        check_fused(a.bf16_param, a.grad, a.stats, a.exact_exp_avg_sq, "adafactor_factored_steps");
      },
      [](const AdafactorFactoredArgs& a) { adafactor_factored_step(a); });
  char* base = static_cast<char*>(workspace);
  batch_steps_of_kind<float>(steps, count, base, workspace_bytes);
  batch_steps_of_kind<bf16>(steps, count, base, workspace_bytes);
}

// steps: (count); up to kAdafactorDenseBatchTasks tensors of at most kDenseBatchMax elements per launch, the others
// one by one.
void adafactor_dense_steps(const AdafactorDenseArgs* steps, int64_t count) {
  AdafactorDenseBatch b{};
  for (int64_t i = 0; i < count; ++i) {
    const AdafactorDenseArgs& a = steps[i];
    const DenseRoute route = dense_route(a, "adafactor_dense_steps");
    if (route == DenseRoute::skip) continue;
    if (route == DenseRoute::alone) {
      adafactor_dense_step(a);
      continue;
    }
    b.task[b.count++] = dense_task(a, a.beta2t);
    if (b.count == AdafactorDenseBatch::kCapacity) {
      launch_dense_batch(b);
      b.count = 0;
    }
  }
  if (b.count > 0) launch_dense_batch(b);
}

}  // namespace tally::optim::kernels::cuda
