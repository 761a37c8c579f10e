// CPU kernels of Adafactor as Hugging Face transformers implements it with scale_parameter=False,
// relative_step=False, warmup_init=False: beta2_t = 1 - t^decay_rate (passed in), RMS clipping of the
// normalised update, the update scaled by lr *before* the optional first moment (so exp_avg holds lr-scaled
// updates), decoupled weight decay p -= wd*lr*p. The second moment is shared with CAME (second_moment.h); the
// per-element update is written once (AdafactorElement).
//
// Factored step, two passes: 1. read g -> r, c, factors and the sum of u^2 (as CAME's pass 1, 4nm bytes);
// 2. read g, p (and m); write p (and m) (12nm, or 20nm with beta1). Total 16nm (24nm with beta1) against a
// minimum of 12nm (20nm). Dense: 1. read g, v; write v; sum u^2; 2. read g, v, p (m); write p (m).
#include <cmath>

#include "optim/kernels/cpu/second_moment.h"

namespace tally::optim::kernels::cpu {

using namespace detail;

namespace {

// Adafactor's arithmetic per element after the second moment, each formula once for the factored and the dense
// step, with and without beta1 and statistics. The loops take a local copy: stores through float pointers could
// otherwise alias the constants and force reloads.
struct AdafactorElement {
  float gs = 1;              // gradient scale (fused clipping)
  ClipDivisor clip;          // the RMS clip's divisor
  float lr = 0;
  float b1 = 0, one_b1 = 1;  // beta1, 1 - beta1
  float decay = 0;           // -weight_decay * lr

  // lr * u / d with u = (g*gs) * rf * cf: the clip's division by the corrected reciprocal product.
  float factored_update(float rf, float cf, float g) const {
    return divide(factored_normalised(rf, cf, g, gs), clip) * lr;
  }
  // lr * u / d with u = (g*gs) / sqrt(v), an exact division (dense tensors are small).
  float dense_update(float g, float v) const { return (dense_normalised(g * gs, v) / clip.d) * lr; }
  // With beta1 the step is the first moment of the lr-scaled updates: m = b1*m + (1-b1)*update, stored.
  float first_moment(float update, float* m) const {
    const float mn = ema(*m, update, b1, one_b1);
    *m = mn;
    return mn;
  }
  // p -= lr*wd*p, then p -= step.
  void apply(float step, float* p) const { *p = decay_and_step(*p, decay, step); }
};

template <bool kStats>
void adafactor_factored(const AdafactorFactoredArgs& a) {
  const FactoredLayout& l = a.layout;
  const BlockPlan pl = make_block_plan(l);
  const FactoredWorkspace w = carve(a.workspace, l, pl);
  const int64_t K = pl.K, n = l.n;
  const float gs = float(a.grad_scale), eps1 = float(a.eps1);
  auto offset = [&](int64_t p, int64_t i) { return (p * n + i) * K; };

  second_moment_pass(l, pl, w, a.grad, gs, eps1, a.exp_avg_sq_row, a.beta2t);
  const UpdateSquares update_sq = finish_factors(l, w, a.exp_avg_sq_row, a.exp_avg_sq_col, a.beta2t, w.s_sum, a.shard);
  const ClipDivisor clip =
      clip_divisor(whole_sum(update_sq, a.shard), whole_numel(l.numel(), a.shard), a.clip_threshold);
  const AdafactorElement ada{.gs = gs,
                             .clip = clip,
                             .lr = float(a.lr),
                             .b1 = float(a.beta1),
                             .one_b1 = float(1.0 - a.beta1),
                             .decay = float(-a.weight_decay * a.lr)};

  double exact[kExtras] = {};
  if (kStats && a.exact_exp_avg_sq)
    exact_second_moment(l, pl, w, a.grad, gs, eps1, a.beta2t, a.exact_exp_avg_sq, exact);

  double ex2[kExtras] = {};
  for_each_row(l, pl, w, ex2, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
    const float* g = a.grad + offset(p, i);
    float* pp = a.param + offset(p, i);
    float* m = a.exp_avg ? a.exp_avg + offset(p, i) : nullptr;
    const float* cf = w.col_factor + p * K;
    const AdafactorElement e = ada;
    alignas(64) float rfb[kChunk];
    const float rf0 = pl.fast ? w.row_factor[p * n + i] : 0.0f;
    if (!pl.fast) row_factor_chunk(l, w.row_factor, p, i, k0, k1, rfb);
    double msq = 0, app = 0;
    // One loop per case, so that each vectorizes (no control flow inside).
    auto sweep = [&]<bool kMoment>() {
#pragma omp simd reduction(+ : msq, app)
      for (int64_t k = k0; k < k1; ++k) {
        const float rf = pl.fast ? rf0 : rfb[k - k0];
        float step = e.factored_update(rf, cf[k], g[k]);
        if constexpr (kMoment) {
          step = e.first_moment(step, m + k);
          if constexpr (kStats) msq += squared(step);
        }
        e.apply(step, pp + k);
        if constexpr (kStats) app += squared(step);
      }
    };
    if (m) sweep.template operator()<true>();
    else sweep.template operator()<false>();
    ex[0] += msq;
    ex[1] += app;
  });
  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += update_sq.part;
    a.stats[kStatFactorErrSq] += exact[0];
    a.stats[kStatExactSq] += exact[1];
    a.stats[kStatExpAvgSq] += ex2[0];
    a.stats[kStatAppliedSq] += ex2[1];
  }
}

template <bool kStats>
void adafactor_dense(const AdafactorDenseArgs& a) {
  const float gs = float(a.grad_scale);
  const double update_sq = dense_second_moment_pass(a.n, a.grad, gs, float(a.eps1), a.beta2t, a.exp_avg_sq);
  const ClipDivisor clip = clip_divisor(whole_sum(update_sq, a.shard), whole_numel(a.n, a.shard), a.clip_threshold);
  const AdafactorElement ada{.gs = gs,
                             .clip = clip,
                             .lr = float(a.lr),
                             .b1 = float(a.beta1),
                             .one_b1 = float(1.0 - a.beta1),
                             .decay = float(-a.weight_decay * a.lr)};

  double ex2[kExtras] = {};
  for_each_range(a.n, ex2, [&](int64_t i0, int64_t i1, double* ex) {
    const AdafactorElement e = ada;
    double msq = 0, app = 0;
#pragma omp simd reduction(+ : msq, app)
    for (int64_t i = i0; i < i1; ++i) {
      float step = e.dense_update(a.grad[i], a.exp_avg_sq[i]);
      if (a.exp_avg) {
        step = e.first_moment(step, a.exp_avg + i);
        if constexpr (kStats) msq += squared(step);
      }
      e.apply(step, a.param + i);
      if constexpr (kStats) app += squared(step);
    }
    ex[0] += msq;
    ex[1] += app;
  });
  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += update_sq;
    a.stats[kStatExpAvgSq] += ex2[0];
    a.stats[kStatAppliedSq] += ex2[1];
  }
}

}  // namespace

void adafactor_factored_step(const AdafactorFactoredArgs& a) {
  refuse_fused_bf16(a.bf16_param, "adafactor_factored_step");
  if (a.layout.numel() == 0) {  // a rank with no rows of a sharded tensor: its share of the sums, then nothing
    if (!a.shard.sum) return;
    // Rows cut: one round, which completes the clip's sum too.
    if (a.shard.rows_cut)
      columns_without_rows(a.layout, a.exp_avg_sq_col, a.beta2t, a.shard, RoundCarries::column_and_update_sums);
    else
      whole_sum(0.0, a.shard);
    return;
  }
  a.stats ? adafactor_factored<true>(a) : adafactor_factored<false>(a);
}

void adafactor_dense_step(const AdafactorDenseArgs& a) {
  refuse_fused_bf16(a.bf16_param, "adafactor_dense_step");
  if (a.n == 0) {
    whole_sum(0.0, a.shard);
    return;
  }
  a.stats ? adafactor_dense<true>(a) : adafactor_dense<false>(a);
}

void adafactor_factored_steps(const AdafactorFactoredArgs* steps, int64_t count, void* workspace,
                              int64_t workspace_bytes) {
  factored_steps_in_turn(steps, count, workspace, workspace_bytes, adafactor_factored_step, "adafactor_factored_steps");
}

void adafactor_dense_steps(const AdafactorDenseArgs* steps, int64_t count) {
  for (int64_t i = 0; i < count; ++i) adafactor_dense_step(steps[i]);
}

}  // namespace tally::optim::kernels::cpu
