// CPU kernels of Adafactor as Hugging Face transformers implements it with scale_parameter=False,
// relative_step=False, warmup_init=False: beta2_t = 1 - t^decay_rate (passed in), RMS clipping of the
// normalised update, the update scaled by lr *before* the optional first moment (so exp_avg holds lr-scaled
// updates), decoupled weight decay p -= wd*lr*p.
//
// Factored step, two passes: 1. read g -> r, c, factors and the sum of u^2 (as CAME's pass 1, 4nm bytes);
// 2. read g, p (and m); write p (and m) (12nm, or 20nm with beta1). Total 16nm (24nm with beta1) against a
// minimum of 12nm (20nm). Dense: 1. read g, v; write v; sum u^2; 2. read g, v, p (m); write p (m).
#include <cmath>

#include "optim/kernels/cpu/traverse.h"

namespace tally::optim::kernels::cpu {

using namespace detail;

namespace {

template <bool kStats>
void adafactor_factored(const AdafactorFactoredArgs& a) {
  const FactoredLayout& l = a.layout;
  const Plan pl = make_plan(l);
  const FactoredWorkspace w = carve(a.workspace, l, pl);
  const int64_t K = pl.K, n = l.n;
  const float gs = float(a.grad_scale), eps1 = float(a.eps1);
  const float lr = float(a.lr), decay = float(-a.weight_decay * a.lr);
  const float b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1);
  auto offset = [&](int64_t p, int64_t i) { return (p * n + i) * K; };

  second_moment_pass(l, pl, w, a.grad, gs, eps1, a.exp_avg_sq_row, a.beta2t);
  const double update_sq = finish_factors(l, w, a.exp_avg_sq_row, a.exp_avg_sq_col, a.beta2t, w.s_sum);
  const float d = clip_divisor(update_sq, l.numel(), a.clip_threshold);

  double exact[kExtras] = {};
  if (kStats && a.exact_exp_avg_sq) {
    const float b2 = float(a.beta2t), one_b2 = float(1.0 - a.beta2t);
    for_each_row(l, pl, w, exact, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
      const float* g = a.grad + offset(p, i);
      float* v = a.exact_exp_avg_sq + offset(p, i);
      const float* cf = w.col_factor + p * K;
      for (int64_t k = k0; k < k1; ++k) {
        const float gv = g[k] * gs;
        v[k] = std::fma(gv * gv + eps1, one_b2, v[k] * b2);
        const double f = double(w.row_factor[row_index(l, p, i, k)]) * double(cf[k]);
        const double est = 1.0 / (f * f);
        ex[0] += (est - v[k]) * (est - v[k]);
        ex[1] += double(v[k]) * double(v[k]);
      }
    });
  }

  double ex2[kExtras] = {};
  for_each_row(l, pl, w, ex2, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
    const float* g = a.grad + offset(p, i);
    float* pp = a.param + offset(p, i);
    float* m = a.exp_avg ? a.exp_avg + offset(p, i) : nullptr;
    const float* cf = w.col_factor + p * K;
    // Locals, not captures: the stores through pp and m could otherwise alias them and force reloads.
    const float gs_ = gs, d_ = d, inv_d = 1.0f / d, lr_ = lr, b1_ = b1, one_b1_ = one_b1, decay_ = decay;
    alignas(64) float rfb[kChunk];
    const float rf0 = pl.fast ? w.row_factor[p * n + i] : 0.0f;
    if (!pl.fast) row_factor_chunk(l, w.row_factor, p, i, k0, k1, rfb);
    double msq = 0, app = 0;
    if (m) {
#pragma omp simd reduction(+ : msq, app)
      for (int64_t k = k0; k < k1; ++k) {
        const float rf = pl.fast ? rf0 : rfb[k - k0];
        const float u = divide((rf * cf[k]) * (g[k] * gs_), d_, inv_d) * lr_;
        const float mn = std::fma(u, one_b1_, m[k] * b1_);
        m[k] = mn;
        pp[k] = std::fma(pp[k], decay_, pp[k]) - mn;
        if constexpr (kStats) {
          msq += double(mn) * double(mn);
          app += double(mn) * double(mn);
        }
      }
    } else {
#pragma omp simd reduction(+ : app)
      for (int64_t k = k0; k < k1; ++k) {
        const float rf = pl.fast ? rf0 : rfb[k - k0];
        const float u = divide((rf * cf[k]) * (g[k] * gs_), d_, inv_d) * lr_;
        pp[k] = std::fma(pp[k], decay_, pp[k]) - u;
        if constexpr (kStats) app += double(u) * double(u);
      }
    }
    ex[0] += msq;
    ex[1] += app;
  });
  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += update_sq;
    a.stats[kStatFactorErrSq] += exact[0];
    a.stats[kStatExactSq] += exact[1];
    a.stats[kStatExpAvgSq] += ex2[0];
    a.stats[kStatAppliedSq] += ex2[1];
  }
}

template <bool kStats>
void adafactor_dense(const AdafactorDenseArgs& a) {
  const float gs = float(a.grad_scale), eps1 = float(a.eps1);
  const float b2 = float(a.beta2t), one_b2 = float(1.0 - a.beta2t);
  const float lr = float(a.lr), decay = float(-a.weight_decay * a.lr);
  const float b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1);

  double ex1[kExtras] = {};
  for_each_range(a.n, ex1, [&](int64_t i0, int64_t i1, double* ex) {
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = i0; i < i1; ++i) {
      const float g = a.grad[i] * gs;
      const float v = std::fma(g * g + eps1, one_b2, a.exp_avg_sq[i] * b2);
      a.exp_avg_sq[i] = v;
      const float u = (1.0f / std::sqrt(v)) * g;
      acc += double(u) * double(u);
    }
    ex[0] += acc;
  });
  const float d = clip_divisor(ex1[0], a.n, a.clip_threshold);

  double ex2[kExtras] = {};
  for_each_range(a.n, ex2, [&](int64_t i0, int64_t i1, double* ex) {
    double msq = 0, app = 0;
#pragma omp simd reduction(+ : msq, app)
    for (int64_t i = i0; i < i1; ++i) {
      const float g = a.grad[i] * gs;
      float step = (((1.0f / std::sqrt(a.exp_avg_sq[i])) * g) / d) * lr;
      if (a.exp_avg) {
        step = std::fma(step, one_b1, a.exp_avg[i] * b1);
        a.exp_avg[i] = step;
        if constexpr (kStats) msq += double(step) * double(step);
      }
      float pv = a.param[i];
      pv = std::fma(pv, decay, pv);  // decay = 0 without weight decay: exact no-op
      a.param[i] = pv - step;
      if constexpr (kStats) app += double(step) * double(step);
    }
    ex[0] += msq;
    ex[1] += app;
  });
  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += ex1[0];
    a.stats[kStatExpAvgSq] += ex2[0];
    a.stats[kStatAppliedSq] += ex2[1];
  }
}

}  // namespace

void adafactor_factored_step(const AdafactorFactoredArgs& a) {
  if (a.layout.numel() == 0) return;
  a.stats ? adafactor_factored<true>(a) : adafactor_factored<false>(a);
}

void adafactor_dense_step(const AdafactorDenseArgs& a) {
  if (a.n == 0) return;
  a.stats ? adafactor_dense<true>(a) : adafactor_dense<false>(a);
}

}  // namespace tally::optim::kernels::cpu
