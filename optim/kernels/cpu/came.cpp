// CPU kernels of CAME (came-pytorch 0.1.3), factored and dense. Float arithmetic follows the package's op
// order (its rounding points) so results agree to float rounding; sums are in double and deterministic.
//
// Factored step of an n x m tensor (batched), four passes over memory (f32 bytes; b = 4):
//   1. read g             row/col sums of g^2+eps1                    -> r, c, factors       4nm
//   2. read g             sum of u^2, u = g * rf_i * cf_j (for the RMS clip)                 4nm
//   3. read g, m; write m u' = u / max(1, RMS/d); m = b1 m + (1-b1) u'; row/col sums of
//                         (u'-m)^2+eps2                                -> R, C, factors      12nm
//   4. read m, p; write p p -= lr*wd*p; p -= lr * m * Rf_i * Cf_j                            12nm
// 32nm bytes in all, against the 20nm any CAME step must move (read g, read+write m and p): passes 1-2 can't
// merge (u needs the final c, which needs every row) and 3-4 can't (the update needs the final R, C).
#include <cmath>

#include "optim/kernels/cpu/traverse.h"

namespace tally::optim::kernels::cpu {

using namespace detail;

namespace {

template <class MT, bool kStats>
void came_factored(const CameFactoredArgs& a) {
  const FactoredLayout& l = a.layout;
  const Plan pl = make_plan(l);
  const FactoredWorkspace w = carve(a.workspace, l, pl);
  const int64_t K = pl.K, n = l.n;
  const float gs = float(a.grad_scale), eps1 = float(a.eps1), eps2 = float(a.eps2);
  const float b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1);
  const float lr = float(a.lr), decay = float(-a.weight_decay * a.lr);
  MT* exp_avg = static_cast<MT*>(a.exp_avg);
  auto offset = [&](int64_t p, int64_t i) { return (p * n + i) * K; };

  // Pass 1: row and column means of g^2 + eps1 -> r, c.
  reduce_rows_cols(l, pl, w, nullptr, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, float* x, double*) {
    const float* g = a.grad + offset(p, i);
#pragma omp simd
    for (int64_t k = k0; k < k1; ++k) {
      const float gv = g[k] * gs;
      x[k - k0] = gv * gv + eps1;
    }
  });
  ema_from_sums(a.exp_avg_sq_row, w.row_sum, l.rows(), l.m, a.beta2);
  ema_from_sums(a.exp_avg_sq_col, w.col_sum, l.cols(), l.n, a.beta2);
  factors(l, a.exp_avg_sq_row, a.exp_avg_sq_col, w.row_factor, w.col_factor);

  // Pass 2: sum of u^2 for the RMS clip (and, inspecting, the exact EMA of g^2+eps1 against its factored
  // estimate 1 / (rf cf)^2).
  double ex2[kExtras] = {};
  const float b2 = float(a.beta2), one_b2 = float(1.0 - a.beta2);
  for_each_row(l, pl, w, ex2, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
    const float* g = a.grad + offset(p, i);
    const float* cf = w.col_factor + p * K;
    alignas(64) float rf[kChunk];
    row_factor_chunk(l, w.row_factor, p, i, k0, k1, rf);
    ex[0] += lane_sum(k0, k1, [&](int64_t k) {
      const float u = (rf[k - k0] * cf[k]) * (g[k] * gs);
      return double(u) * double(u);
    });
    if (kStats && a.exact_exp_avg_sq) {
      float* v = a.exact_exp_avg_sq + offset(p, i);
      double err = 0, ref = 0;
      for (int64_t k = k0; k < k1; ++k) {
        const float gv = g[k] * gs;
        v[k] = std::fma(gv * gv + eps1, one_b2, v[k] * b2);
        const double f = double(rf[k - k0]) * double(cf[k]);
        const double est = 1.0 / (f * f);
        err += (est - v[k]) * (est - v[k]);
        ref += double(v[k]) * double(v[k]);
      }
      ex[1] += err;
      ex[2] += ref;
    }
  });
  const float d = clip_divisor(ex2[0], l.numel(), a.clip_threshold);

  // Pass 3: clipped update, first moment, instability row/column means -> R, C.
  double ex3[kExtras] = {};
  reduce_rows_cols(l, pl, w, ex3, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, float* x, double* ex) {
    const float* g = a.grad + offset(p, i);
    MT* m = exp_avg + offset(p, i);
    const float* cf = w.col_factor + p * K;
    alignas(64) float rf[kChunk];
    row_factor_chunk(l, w.row_factor, p, i, k0, k1, rf);
    double msq = 0;
#pragma omp simd reduction(+ : msq)
    for (int64_t k = k0; k < k1; ++k) {
      const float u = ((rf[k - k0] * cf[k]) * (g[k] * gs)) / d;
      const float mn = store(m + k, std::fma(u, one_b1, load(m + k) * b1));
      const float r = u - mn;
      x[k - k0] = r * r + eps2;
      if constexpr (kStats) msq += double(mn) * double(mn);
    }
    if constexpr (kStats) ex[0] += msq;
  });
  ema_from_sums(a.exp_avg_res_row, w.row_sum, l.rows(), l.m, a.beta3);
  ema_from_sums(a.exp_avg_res_col, w.col_sum, l.cols(), l.n, a.beta3);
  factors(l, a.exp_avg_res_row, a.exp_avg_res_col, w.row_factor, w.col_factor);

  // Pass 4: decoupled weight decay, then the confidence-scaled first moment.
  double ex4[kExtras] = {};
  for_each_row(l, pl, w, ex4, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
    float* pp = a.param + offset(p, i);
    const MT* m = exp_avg + offset(p, i);
    const float* cf = w.col_factor + p * K;
    alignas(64) float rf[kChunk];
    row_factor_chunk(l, w.row_factor, p, i, k0, k1, rf);
    double app = 0;
#pragma omp simd reduction(+ : app)
    for (int64_t k = k0; k < k1; ++k) {
      const float step = ((rf[k - k0] * cf[k]) * load(m + k)) * lr;
      float pv = pp[k];
      pv = std::fma(pv, decay, pv);  // decay = 0 without weight decay: exact no-op
      pp[k] = pv - step;
      if constexpr (kStats) app += double(step) * double(step);
    }
    if constexpr (kStats) ex[0] += app;
  });

  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += ex2[0];
    a.stats[kStatFactorErrSq] += ex2[1];
    a.stats[kStatExactSq] += ex2[2];
    a.stats[kStatExpAvgSq] += ex3[0];
    a.stats[kStatAppliedSq] += ex4[0];
  }
}

// Dense (not factored): two passes. 1: read g, v; write v; sum u^2 (12n). 2: read g, v, m, p; write m, p (24n).
template <class MT, bool kStats>
void came_dense(const CameDenseArgs& a) {
  const float gs = float(a.grad_scale), eps1 = float(a.eps1);
  const float b1 = float(a.beta1), one_b1 = float(1.0 - a.beta1);
  const float b2 = float(a.beta2), one_b2 = float(1.0 - a.beta2);
  const float lr = float(a.lr), decay = float(-a.weight_decay * a.lr);
  MT* exp_avg = static_cast<MT*>(a.exp_avg);

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
      const float u = ((1.0f / std::sqrt(a.exp_avg_sq[i])) * g) / d;
      const float mn = store(exp_avg + i, std::fma(u, one_b1, load(exp_avg + i) * b1));
      const float step = mn * lr;
      float pv = a.param[i];
      pv = std::fma(pv, decay, pv);  // decay = 0 without weight decay: exact no-op
      a.param[i] = pv - step;
      if constexpr (kStats) {
        msq += double(mn) * double(mn);
        app += double(step) * double(step);
      }
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

void came_factored_step(const CameFactoredArgs& a) {
  if (a.layout.numel() == 0) return;
  const bool bf = a.exp_avg_dtype == DType::bf16;
  if (a.stats) {
    bf ? came_factored<bf16, true>(a) : came_factored<float, true>(a);
  } else {
    bf ? came_factored<bf16, false>(a) : came_factored<float, false>(a);
  }
}

void came_dense_step(const CameDenseArgs& a) {
  if (a.n == 0) return;
  const bool bf = a.exp_avg_dtype == DType::bf16;
  if (a.stats) {
    bf ? came_dense<bf16, true>(a) : came_dense<float, true>(a);
  } else {
    bf ? came_dense<bf16, false>(a) : came_dense<float, false>(a);
  }
}

}  // namespace tally::optim::kernels::cpu
