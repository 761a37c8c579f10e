// Several tensors' steps in one launch per pass, for CAME and Adafactor (internal to optim/kernels/cuda).
// Factored tensors (came_factored_steps, adafactor_factored_steps): each pass is launched once for a batch, the batch's
// grid being every tensor's own grid in turn; a block finds its tensor and its place in that tensor's grid (GridPos)
// from the tensors' first blocks, so each tensor is stepped by the very blocks, sums and orders of its own launches,
// bit for bit. Here: the task and batch records, the second moment's passes and the clip both methods share, the
// grids, and the loop that cuts a list of steps into batches.
// Small dense tensors (came_dense_steps, adafactor_dense_steps): one block per tensor runs the whole step, the clip
// divisor from the block's own sum (no workspace).
#pragma once
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda::detail {

// ---- factored tensors ----

// The launches of a factored batch in which each tensor has a grid of its own (the clip takes one block per tensor).
enum BatchLaunch : int { kTiles, kEma, kRowFactors, kUpdateSq, kParam, kBatchLaunches };

// One tensor of a batched factored step. kPasses: its statistics passes (CAME: the second moment, then the
// instability; Adafactor: the second moment).
template <int kPasses>
struct FactoredTask {
  FactoredLayout l;
  Plan plan;
  Workspace w;    // this tensor's own part of the shared workspace
  const void* g;  // GT: f32, or bf16 (fused)
  void* m;        // the first moment: CAME's MT; Adafactor's f32, null without beta1
  float* param;   // f32 parameter or master weights
  float* row_stat[kPasses];  // CAME: exp_avg_sq_row, exp_avg_res_row; Adafactor: exp_avg_sq_row
  float* col_stat[kPasses];
  double beta[kPasses];      // each pass's EMA decay (CAME: beta2, beta3; Adafactor: beta2t)
  FusedBf16 out;
  float gs, eps1, b1, one_b1, eps2, lr, decay, threshold;  // as the single-tensor steps convert them; eps2: CAME's
  bool wd, vec;
  int update_blocks;               // update_sq's grid (the clip sums its block sums)
  unsigned first[kBatchLaunches];  // the tensor's first block in each launch
};
template <int kPasses, int kTasks>
struct FactoredBatch {
  static constexpr int kCapacity = kTasks;
  FactoredTask<kPasses> task[kTasks];
  int count;
  unsigned blocks[kBatchLaunches];  // each launch's grid: the tensors' grids end to end
};

// This block's tensor in launch `launch`, and its place in that tensor's own grid.
template <class Batch>
__device__ inline const auto& task_of(const Batch& b, int launch, GridPos& at) {
  int t = 0;
  while (t + 1 < b.count && blockIdx.x >= b.task[t + 1].first[launch]) ++t;
  const unsigned first = b.task[t].first[launch];
  const unsigned end = t + 1 < b.count ? b.task[t + 1].first[launch] : b.blocks[launch];
  at = {int64_t(blockIdx.x) - first, int64_t(end) - first};
  return b.task[t];
}

// Pass 1 of every tensor's tiles: g^2 + eps1, as factored_stats runs SquareFill.
// Grid b.blocks[kTiles]; each tensor's partials into its t.w: row_partials (P * n, tiles_k), col_partials
// (P, tiles_i, K).
template <class Batch, class GT>
__global__ void batch_square_tiles(const Batch b) {
  GridPos at;
  const auto& t = task_of(b, kTiles, at);
  const int64_t pt = at.block / t.plan.tiles_k, tk = at.block % t.plan.tiles_k;
  tile_stats_of(t.l, t.plan, SquareFill<GT>{static_cast<const GT*>(t.g), t.l.n, t.plan.K, t.gs, t.eps1},
                t.w.row_partials, t.w.col_partials, pt, tk);
}

// The row and column EMAs of statistics pass kPass, as ema_rows_cols.
// Grid b.blocks[kEma]; row_stat[kPass] (rows), col_stat[kPass] and t.w.col_factor (cols).
template <class Batch, int kPass>
__global__ void __launch_bounds__(kEmaThreads) batch_ema(const Batch b) {
  GridPos at;
  const auto& t = task_of(b, kEma, at);
  ema_rows_cols_of(t.row_stat[kPass], t.w.row_partials, t.col_stat[kPass], t.w.col_factor, t.w.col_partials, t.l,
                   t.plan, t.beta[kPass], nullptr, at.block);
}

// The row factors of statistics pass kPass, as row_factors.
// Grid b.blocks[kRowFactors], a block per (p, q, s) group; t.w.row_factor: (rows).
template <class Batch, int kPass>
__global__ void __launch_bounds__(kRowFactorThreads) batch_row_factors(const Batch b) {
  GridPos at;
  const auto& t = task_of(b, kRowFactors, at);
  row_factors_of(t.row_stat[kPass], t.w.row_factor, t.l, nullptr, t.l.n, at.block);
}

// The block sums of u^2 of every tensor, as update_sq: g (P * n, K) read, t.w.block_sums (update_blocks, kSums)
// written. Grid b.blocks[kUpdateSq].
template <class Batch, class GT>
__global__ void batch_update_sq(const Batch b) {
  GridPos at;
  const auto& t = task_of(b, kUpdateSq, at);
  update_sq_of(t.l, t.plan.K, static_cast<const GT*>(t.g), t.w.row_factor, t.w.col_factor, t.gs, t.vec,
               t.w.block_sums, at);
}

// One block per tensor, as clip_divisor.
// t.w.block_sums: (update_blocks, kSums), slot 0; the divisor into *t.w.divisor.
template <class Batch>
__global__ void batch_clip(const Batch b) {
  __shared__ double shared[kWarps];
  const auto& t = b.task[blockIdx.x];
  const double sum = sum_slot(t.w.block_sums, t.update_blocks, 0, shared);
  if (threadIdx.x == 0) *t.w.divisor = clip_divisor_of(sum, t.l.numel(), t.threshold);
}

// The EMAs and factors of statistics pass kPass whose tiles have run (factored_stats after its tile kernel). `what`
// names the method's batch in a launch error.
template <class Batch, int kPass>
void launch_batch_ema_factors(const Batch& b, const char* what) {
  batch_ema<Batch, kPass><<<b.blocks[kEma], kEmaThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK(what);
  batch_row_factors<Batch, kPass><<<b.blocks[kRowFactors], kRowFactorThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

// The first passes both methods share, for every tensor of the batch: the second moment's statistics (tiles, EMAs,
// row factors: statistics pass 0), then the sum of u^2 and the clip divisor.
template <class Batch, class GT>
void launch_second_moment_and_clip(const Batch& b, const char* what) {
  batch_square_tiles<Batch, GT><<<b.blocks[kTiles], kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK(what);
  launch_batch_ema_factors<Batch, 0>(b, what);
  batch_update_sq<Batch, GT><<<b.blocks[kUpdateSq], kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK(what);
  batch_clip<Batch><<<unsigned(b.count), kThreads, 0, stream()>>>(b);
  TALLY_CUDA_LAUNCH_CHECK(what);
}

// Each tensor's grid in each launch, as its own step launches it; param_grid(task): its parameter pass's grid.
template <class Batch, class ParamGrid>
void set_grids(Batch& b, ParamGrid param_grid, const char* op) {
  for (int e = 0; e < kBatchLaunches; ++e) b.blocks[e] = 0;
  for (int i = 0; i < b.count; ++i) {
    auto& t = b.task[i];
    const int64_t grid[kBatchLaunches] = {t.l.P * t.plan.tiles_i * t.plan.tiles_k, ema_blocks(t.l), t.l.groups(),
                                          t.update_blocks, param_grid(t)};
    for (int e = 0; e < kBatchLaunches; ++e) {
      TALLY_CHECK(int64_t(b.blocks[e]) + grid[e] < (int64_t(1) << 31), "[", op, "] a batch of ", b.count,
                  " tensors needs more than 2^31 blocks in one launch");
      t.first[e] = b.blocks[e];
      b.blocks[e] += unsigned(grid[e]);
    }
  }
}

// Whole, plain (Q*S == 1), without statistics: the factored steps a batch takes (Args: CameFactoredArgs or
// AdafactorFactoredArgs).
template <class Args>
bool batchable(const Args& a) {
  return !a.stats && !a.exact_exp_avg_sq && !a.shard.sum && a.layout.numel() > 0 && a.layout.Q * a.layout.S == 1;
}

// What a batched factored call does before its batches (op: the caller, for the errors): checks that every step's
// workspace fits in the shared one and its own arguments (check(args)), and runs each step a batch cannot take alone
// (step(args), in the shared workspace from its start).
template <class Args, class Check, class Step>
void check_and_step_unbatchable(const Args* steps, int64_t count, void* workspace, int64_t workspace_bytes,
                                const char* op, Check check, Step step) {
  for (int64_t i = 0; i < count; ++i) {
    const Args& a = steps[i];
    const int64_t need = cuda_factored_workspace_bytes(a.layout);
    TALLY_CHECK(need <= workspace_bytes, "[", op, "] step ", i, " needs ", need, " bytes of workspace, the shared ",
                "workspace has ", workspace_bytes);
    check(a);
    if (batchable(a)) continue;
    Args one = a;
    one.workspace = workspace;
    step(one);
  }
}

// The fields every method's task takes from its arguments alike (g: the gradient the kernels read), with the scalars
// converted as the single-tensor steps convert them.
template <int kPasses, class Args>
void fill_common(FactoredTask<kPasses>& t, const Args& a, const void* g) {
  t.g = g;
  t.m = a.exp_avg;
  t.param = a.param;
  t.out = a.bf16_param;
  t.gs = float(a.grad_scale);
  t.eps1 = float(a.eps1);
  t.b1 = float(a.beta1);
  t.one_b1 = float(1.0 - a.beta1);
  t.lr = float(a.lr);
  t.decay = float(-a.weight_decay * a.lr);
  t.wd = a.weight_decay != 0.0;
  t.threshold = float(a.clip_threshold);
  t.update_blocks = reduce_blocks(a.layout.numel() / 4 + 1);
}

// The batchable steps that take(args) picks, filled into batches in order (fill(task, args) sets what fill_common
// leaves); a batch is launched (launch(batch)) when its tensors or their workspaces no longer fit, the workspace then
// taken again from its start.
template <class Batch, class Args, class Take, class Fill, class Launch>
void batch_steps(const Args* steps, int64_t count, char* workspace, int64_t workspace_bytes, Take take, Fill fill,
                 Launch launch) {
  Batch b{};
  int64_t used = 0;
  for (int64_t i = 0; i < count; ++i) {
    const Args& a = steps[i];
    if (!batchable(a) || !take(a)) continue;
    const Plan plan = make_plan(a.layout);
    const int64_t bytes = carve(nullptr, a.layout, plan).bytes;
    if (b.count == Batch::kCapacity || used + bytes > workspace_bytes) {
      launch(b);
      b.count = 0;
      used = 0;
    }
    auto& t = b.task[b.count++];
    t.l = a.layout;
    t.plan = plan;
    t.w = carve(workspace + used, a.layout, plan);
    used += bytes;
    fill(t, a);
  }
  if (b.count > 0) launch(b);
}

// ---- small dense tensors ----

// One small dense tensor of a batch: CAME's and Adafactor's dense steps read the same fields (the scalars converted
// as their single-tensor steps convert them). A task with bf16.grad (FusedBf16) reads its gradient from bf16 and
// writes its bf16 parameter after the master.
struct DenseTask {
  float* param;       // f32 parameter or master weights
  const float* grad;  // null when fused
  void* exp_avg;      // CAME: MT; Adafactor: f32, or null without beta1
  float* v;
  FusedBf16 bf16;  // fused: bf16.grad is set
  int n;
  float gs, eps1, b2, one_b2, b1, one_b1, lr, decay, threshold;
};
template <int kTasks>
struct DenseBatch {
  static constexpr int kCapacity = kTasks;
  DenseTask task[kTasks];
  int count;
};

// A task from a dense step's arguments (Args: CameDenseArgs or AdafactorDenseArgs); beta2: its second moment's decay.
template <class Args>
DenseTask dense_task(const Args& a, double beta2) {
  return {.param = a.param,
          .grad = a.grad,
          .exp_avg = a.exp_avg,
          .v = a.exp_avg_sq,
          .bf16 = a.bf16_param,
          .n = int(a.n),
          .gs = float(a.grad_scale),
          .eps1 = float(a.eps1),
          .b2 = float(beta2),
          .one_b2 = float(1.0 - beta2),
          .b1 = float(a.beta1),
          .one_b1 = float(1.0 - a.beta1),
          .lr = float(a.lr),
          .decay = a.weight_decay != 0.0 ? float(-a.weight_decay * a.lr) : 0.0f,
          .threshold = float(a.clip_threshold)};
}

__device__ inline float grad_of(const DenseTask& t, int64_t e) { return t.grad ? t.grad[e] : load(t.bf16.grad + e); }

// One block steps dense task t: v and the sum of u^2 (as dense_second_moment), the clip divisor from the block's sum
// (as clip_divisor), then update(e, divisor) on every element; fused, thread after thread takes whole 8-element Philox
// blocks and writes the bf16 parameter from the master, as round_to_bf16 draws them.
template <class Update>
__device__ inline void dense_task_step(const DenseTask& t, Update update) {
  __shared__ double shared[kWarps];
  __shared__ float divisor;
  double acc = 0;
  for (int e = threadIdx.x; e < t.n; e += kThreads) {
    const float u = dense_v_update(grad_of(t, e) * t.gs, t.v + e, t.eps1, t.b2, t.one_b2);
    acc += double(u) * u;
  }
  const double sum = block_sum_to_first<kThreads>(acc, shared);
  if (threadIdx.x == 0) divisor = clip_divisor_of(sum, t.n, t.threshold);
  __syncthreads();  // also makes every thread's v visible to the block
  const float d = divisor;
  if (!t.bf16.grad) {
    for (int e = threadIdx.x; e < t.n; e += kThreads) update(e, d);
    return;
  }
  update_rounded_blocks(
      t.n, t.bf16,
      [&](int64_t e) {
        update(e, d);
        return t.param[e];
      },
      GridPos{0, 1});
}

// Where a dense step of a batched call runs: nowhere (an empty tensor whole here), in a batch, or alone (too large,
// or a part of a tensor cut over ranks: its clip needs a cross-rank sum).
enum class DenseRoute { skip, batch, alone };
// Checks a batched dense step's arguments (op: the caller, for the error) and routes it.
template <class Args>
DenseRoute dense_route(const Args& a, const char* op) {
  TALLY_CHECK(!a.stats, "[", op, "] a batched step cannot carry statistics");
  check_fused(a.bf16_param, a.grad, a.stats, nullptr, op);
  if (a.n == 0 && !a.shard.sum) return DenseRoute::skip;
  return a.n > kDenseBatchMax || a.shard.sum ? DenseRoute::alone : DenseRoute::batch;
}

}  // namespace tally::optim::kernels::cuda::detail
