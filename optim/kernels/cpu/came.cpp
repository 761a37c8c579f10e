// CPU kernels of CAME (came-pytorch 0.1.3), factored and dense. Float arithmetic follows the package's op
// order (its rounding points) so results agree to float rounding; sums are in double and deterministic.
//
// Factored step of an n x m tensor (batched), three passes over memory (f32 bytes):
//   1. read g             row/col sums of g^2+eps1 -> r, c, factors; and sum_i g^2/r_i per column (the rows
//                         re-read from cache), which gives sum(u^2) = sum_j mean(r) S_j / c_j: the RMS clip
//                         needs no pass of its own                                          4nm
//   2. read g, m; write m u' = u / max(1, RMS/threshold); m = b1 m + (1-b1) u'; row/col sums of
//                         (u'-m)^2+eps2 -> R, C, factors                                   12nm
//   3. read m, p; write p p -= lr*wd*p; p -= lr * m * Rf_i * Cf_j                           12nm
// 28nm bytes in all (AdamW's one pass moves 28nm too), against the 20nm any CAME step must move (read g,
// read+write m and p): 1-2 can't merge (u needs the final c, which needs every row) nor 2-3 (the update needs
// the final R, C). The RMS computed from the factors differs from the package's sum of rounded u^2 by float
// rounding only (~1e-7 relative).
#include <cmath>
#include <type_traits>

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

  // Pass 1: r, c (and their factors) and the sum of u^2 for the RMS clip, from one read of g.
  second_moment_pass(l, pl, w, a.grad, gs, eps1, a.exp_avg_sq_row, a.beta2);
  const double update_sq = finish_factors(l, w, a.exp_avg_sq_row, a.exp_avg_sq_col, a.beta2, w.s_sum);
  const float d = clip_divisor(update_sq, l.numel(), a.clip_threshold);
  const float inv_d_ = 1.0f / d;

  // Inspection only: the exact EMA of g^2+eps1 against its factored estimate 1 / (rf cf)^2 (an extra pass).
  double exact[kExtras] = {};
  if (kStats && a.exact_exp_avg_sq) {
    const float b2 = float(a.beta2), one_b2 = float(1.0 - a.beta2);
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

  // Pass 2: clipped update u' = u / d (d == 1: no division, exactly the same), first moment, instability
  // row/column means -> R, C and their factors.
  double ex2[kExtras] = {};
  // R rows side by side (fast layouts) or one row (general layouts, and the rows left over).
  auto moment = [&]<int R, bool kClip>(int64_t p, int64_t i, int64_t k0, int64_t k1, float (*x)[kChunk], double* ex) {
    const float* g = a.grad + offset(p, i);
    MT* m = exp_avg + offset(p, i);
    const float* cf = w.col_factor + p * K;
    // Locals, not captures: the stores through m and x could otherwise alias them and force reloads.
    const float gs_ = gs, d_ = d, inv_d = inv_d_, b1_ = b1, one_b1_ = one_b1, eps2_ = eps2;
    const int64_t K_ = K;
    double msq = 0;
    auto element = [&](float rf, int r, int64_t k) {
      float u = (rf * cf[k]) * (g[r * K_ + k] * gs_);
      if constexpr (kClip) u = divide(u, d_, inv_d);
      const float mn = store(m + r * K_ + k, std::fma(u, one_b1_, load(m + r * K_ + k) * b1_));
      const float e = u - mn;
      x[r][k - k0] = e * e + eps2_;
      return mn;
    };
    if (pl.fast) {
      float rf[R];
      for (int r = 0; r < R; ++r) rf[r] = w.row_factor[p * n + i + r];
      // All R rows' loads before any store: rows K apart (16 KB for K = 4096) share their low 12 address bits,
      // and a load of m[r+1] issued after the store to m[r] waits for it (4K aliasing). Same arithmetic.
#pragma omp simd reduction(+ : msq)
      for (int64_t k = k0; k < k1; ++k) {
        float gv[R], mv[R];
        for (int r = 0; r < R; ++r) {
          gv[r] = g[r * K_ + k] * gs_;
          mv[r] = load(m + r * K_ + k);
        }
        const float c = cf[k];
        for (int r = 0; r < R; ++r) {
          float u = (rf[r] * c) * gv[r];
          if constexpr (kClip) u = divide(u, d_, inv_d);
          const float mn = store(m + r * K_ + k, std::fma(u, one_b1_, mv[r] * b1_));
          const float e = u - mn;
          x[r][k - k0] = e * e + eps2_;
          if constexpr (kStats) msq += double(mn) * double(mn);
        }
      }
    } else {
      alignas(64) float rfb[kChunk];
      row_factor_chunk(l, w.row_factor, p, i, k0, k1, rfb);
      for (int64_t k = k0; k < k1; ++k) {
        const float mn = element(rfb[k - k0], 0, k);
        if constexpr (kStats) msq += double(mn) * double(mn);
      }
    }
    if constexpr (kStats) ex[0] += msq;
  };
  // f32 moments in fast layouts: R whole rows per call in one sweep of 16-float vectors, the sums grouped exactly
  // as chunk_sums groups them (so the same results as the buffered path below with the same R).
  auto moment_rows = [&]<int R, bool kClip>(int64_t p, int64_t i, double* cp, double* rsum, double* ex) {
    const float* g = a.grad + offset(p, i);
    float* m = reinterpret_cast<float*>(exp_avg) + offset(p, i);
    const float* cf = w.col_factor + p * K;
    const float gs_ = gs, d_ = d, inv_d = inv_d_, b1_ = b1, one_b1_ = one_b1, eps2_ = eps2;
    const int64_t K_ = K;
    float rf[R];
    for (int r = 0; r < R; ++r) rf[r] = w.row_factor[p * n + i + r];
    const f16v dv = splat16(d_), inv_dv = splat16(inv_d), one_b1v = splat16(one_b1_);
    double rs[R] = {};
    d8v msq = {};
    double msq_tail = 0;
    for (int64_t k0 = 0; k0 < K_; k0 += kChunk) {
      const int64_t k1 = std::min(K_, k0 + kChunk);
      f16v lanes[R] = {};
      int64_t k = k0;
      for (; k + kLanes <= k1; k += kLanes) {
        // All R rows' loads before any store (4K aliasing, see the buffered path).
        f16v gv[R], mv[R];
        for (int r = 0; r < R; ++r) {
          gv[r] = load16(g + r * K_ + k) * gs_;
          mv[r] = load16(m + r * K_ + k);
        }
        const f16v c = load16(cf + k);
        f16v col = {};
        for (int r = 0; r < R; ++r) {
          f16v u = (rf[r] * c) * gv[r];
          if constexpr (kClip) {
            const f16v q = u * inv_dv;
            u = fma16(fma16(-q, dv, u), inv_dv, q);
          }
          const f16v mn = fma16(u, one_b1v, mv[r] * b1_);
          store16(m + r * K_ + k, mn);
          const f16v e = u - mn;
          const f16v x = e * e + eps2_;
          lanes[r] += x;
          col += x;
          if constexpr (kStats) {
            const d8v lo = __builtin_convertvector(__builtin_shufflevector(mn, mn, 0, 1, 2, 3, 4, 5, 6, 7), d8v);
            const d8v hi = __builtin_convertvector(__builtin_shufflevector(mn, mn, 8, 9, 10, 11, 12, 13, 14, 15), d8v);
            msq += lo * lo + hi * hi;
          }
        }
        add16(cp + k, col);
      }
      for (; k < k1; ++k) {
        float col = 0;
        for (int r = 0; r < R; ++r) {
          float u = (rf[r] * cf[k]) * (g[r * K_ + k] * gs_);
          if constexpr (kClip) u = divide(u, d_, inv_d);
          const float mn = std::fma(u, one_b1_, m[r * K_ + k] * b1_);
          m[r * K_ + k] = mn;
          const float e = u - mn;
          const float x = e * e + eps2_;
          rs[r] += double(x);
          col += x;
          if constexpr (kStats) msq_tail += double(mn) * double(mn);
        }
        cp[k] += double(col);
      }
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < kLanes; ++j) rs[r] += double(lanes[r][j]);
    }
    for (int r = 0; r < R; ++r) rsum[r] = rs[r];
    if constexpr (kStats) {
      for (int j = 0; j < 8; ++j) msq_tail += msq[j];
      ex[0] += msq_tail;
    }
  };
  if (std::is_same_v<MT, float> && pl.fast) {
    if (d > 1.0f) {
      reduce_row_groups(l, pl, w, ex2, [&]<int R>(int64_t p, int64_t i, double* cp, double* rsum, double* ex) {
        moment_rows.template operator()<R, true>(p, i, cp, rsum, ex);
      });
    } else {
      reduce_row_groups(l, pl, w, ex2, [&]<int R>(int64_t p, int64_t i, double* cp, double* rsum, double* ex) {
        moment_rows.template operator()<R, false>(p, i, cp, rsum, ex);
      });
    }
  } else if (d > 1.0f) {
    reduce_rows_cols(l, pl, w, ex2, [&]<int R>(int64_t p, int64_t i, int64_t k0, int64_t k1, float (*x)[kChunk], double* ex) {
      moment.template operator()<R, true>(p, i, k0, k1, x, ex);
    });
  } else {
    reduce_rows_cols(l, pl, w, ex2, [&]<int R>(int64_t p, int64_t i, int64_t k0, int64_t k1, float (*x)[kChunk], double* ex) {
      moment.template operator()<R, false>(p, i, k0, k1, x, ex);
    });
  }
  rows_from_sums(l, w, a.exp_avg_res_row, a.beta3);
  finish_factors(l, w, a.exp_avg_res_row, a.exp_avg_res_col, a.beta3, nullptr);

  // Pass 3: decoupled weight decay (decay = 0 without it: an exact no-op), then the confidence-scaled moment.
  double ex3[kExtras] = {};
  for_each_row(l, pl, w, ex3, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
    float* pp = a.param + offset(p, i);
    const MT* m = exp_avg + offset(p, i);
    const float* cf = w.col_factor + p * K;
    const float lr_ = lr, decay_ = decay;  // locals: the stores through pp could alias captures
    alignas(64) float rfb[kChunk];
    const float rf0 = pl.fast ? w.row_factor[p * n + i] : 0.0f;
    if (!pl.fast) row_factor_chunk(l, w.row_factor, p, i, k0, k1, rfb);
    if constexpr (kStats) {
      ex[0] += lane_sum(k0, k1, [&](int64_t k) {
        const float rf = pl.fast ? rf0 : rfb[k - k0];
        const float step = ((rf * cf[k]) * load(m + k)) * lr_;
        pp[k] = std::fma(pp[k], decay_, pp[k]) - step;
        return double(step) * double(step);
      });
    } else {
#pragma omp simd
      for (int64_t k = k0; k < k1; ++k) {
        const float rf = pl.fast ? rf0 : rfb[k - k0];
        const float step = ((rf * cf[k]) * load(m + k)) * lr_;
        pp[k] = std::fma(pp[k], decay_, pp[k]) - step;
      }
    }
  });

  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += update_sq;
    a.stats[kStatFactorErrSq] += exact[0];
    a.stats[kStatExactSq] += exact[1];
    a.stats[kStatExpAvgSq] += ex2[0];
    a.stats[kStatAppliedSq] += ex3[0];
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

void came_dense_steps(const CameDenseArgs* steps, int64_t count) {
  for (int64_t i = 0; i < count; ++i) came_dense_step(steps[i]);
}

}  // namespace tally::optim::kernels::cpu
