// CPU kernels of CAME (came-pytorch 0.1.3), factored and dense. Float arithmetic follows the package's op
// order (its rounding points) so results agree to float rounding; sums are in double and deterministic. The
// per-element arithmetic is written once (CameElement) and called by every path.
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

#include "core/error.h"
#include "optim/kernels/cpu/second_moment.h"

namespace tally::optim::kernels::cpu {

using namespace detail;

namespace {

// The first moment as stored: f32, or bf16 rounded to nearest even. store returns the value as stored, so the
// rest of the step sees what the next step will read.
inline float load(const float* p) { return *p; }
inline float load(const bf16* p) { return bf16_to_float(*p); }
inline float store(float* p, float v) {
  *p = v;
  return v;
}
inline floatx16 store(float* p, floatx16 v) {
  store_x16(p, v);
  return v;
}
inline float store(bf16* p, float v) {
  *p = float_to_bf16(v);
  return bf16_to_float(*p);
}

template <class V>
struct Moment {
  V m;            // the new first moment, as stored
  V instability;  // (u - m)^2 + eps2
};

// CAME's arithmetic per element, each formula once for every path: factored (buffered, 16-float sweeps and their
// tails, general layouts) and dense, with and without statistics, f32 and bf16 first moment; for one element
// (V = float) or 16 side by side (V = floatx16). The rounding points are the package's ops. The loops take a
// local copy: stores through float pointers could otherwise alias the constants and force reloads.
struct CameElement {
  float gs = 1;              // gradient scale (fused clipping)
  float b1 = 0, one_b1 = 1;  // beta1, 1 - beta1
  float eps2 = 0;
  ClipDivisor clip;  // the RMS clip's divisor
  float lr = 0;
  float decay = 0;           // -weight_decay * lr

  // Pass 2 of a factored step: u = (g*gs) * rf * cf, divided by d when kClip (d == 1: skipped, the same result);
  // m = b1*m + (1-b1)*u, stored through m_out.
  template <bool kClip, class R, class V, class MT>
  Moment<V> factored_moment(R rf, V cf, V g, V m, MT* m_out) const {
    V u = factored_normalised(rf, cf, g, gs);
    if constexpr (kClip) u = divide(u, clip);
    const V mn = store(m_out, ema(m, u, b1, one_b1));
    const V e = u - mn;
    return {mn, e * e + eps2};
  }

  // Pass 2 of a dense step: u = (g*gs) / sqrt(v) / d (an exact division: dense tensors are small);
  // m = b1*m + (1-b1)*u, stored through m. Returns m as stored.
  template <class MT>
  float dense_moment(float g, float v, MT* m) const {
    const float u = dense_normalised(g * gs, v) / clip.d;
    return store(m, ema(load(m), u, b1, one_b1));
  }

  // The last step of both: p -= lr*wd*p, then p -= lr*update (update = m, times rf*cf when factored). Returns
  // the applied step lr*update.
  float apply(float update, float* p) const {
    const float step = update * lr;
    *p = decay_and_step(*p, decay, step);
    return step;
  }
};

template <class MT, bool kStats>
void came_factored(const CameFactoredArgs& a) {
  const FactoredLayout& l = a.layout;
  const BlockPlan pl = make_block_plan(l);
  const FactoredWorkspace w = carve(a.workspace, l, pl);
  const int64_t K = pl.K, n = l.n;
  const float gs = float(a.grad_scale), eps1 = float(a.eps1);
  MT* exp_avg = static_cast<MT*>(a.exp_avg);
  auto offset = [&](int64_t p, int64_t i) { return (p * n + i) * K; };

  // Pass 1: r, c (and their factors) and the sum of u^2 for the RMS clip, from one read of g.
  second_moment_pass(l, pl, w, a.grad, gs, eps1, a.exp_avg_sq_row, a.beta2);
  const UpdateSquares update_sq = finish_factors(l, w, a.exp_avg_sq_row, a.exp_avg_sq_col, a.beta2, w.s_sum, a.shard);
  const ClipDivisor clip =
      clip_divisor(whole_sum(update_sq, a.shard), whole_numel(l.numel(), a.shard), a.clip_threshold);
  const CameElement came{.gs = gs,
                         .b1 = float(a.beta1),
                         .one_b1 = float(1.0 - a.beta1),
                         .eps2 = float(a.eps2),
                         .clip = clip,
                         .lr = float(a.lr),
                         .decay = float(-a.weight_decay * a.lr)};

  // Inspection only: the exact EMA of g^2+eps1 against its factored estimate (an extra pass).
  double exact[kExtras] = {};
  if (kStats && a.exact_exp_avg_sq)
    exact_second_moment(l, pl, w, a.grad, gs, eps1, a.beta2, a.exact_exp_avg_sq, exact);

  // Pass 2: clipped update, first moment, instability row/column means -> R, C and their factors.
  double ex2[kExtras] = {};
  // Buffered: R rows side by side (fast layouts) or one row (general layouts, and the rows left over), a chunk
  // at a time, the instability terms written to x for reduce_rows_cols to sum.
  auto moment = [&]<int R, bool kClip>(int64_t p, int64_t i, int64_t k0, int64_t k1, float (*x)[kChunk], double* ex) {
    const float* g = a.grad + offset(p, i);
    MT* m = exp_avg + offset(p, i);
    const float* cf = w.col_factor + p * K;
    const CameElement e = came;
    const int64_t K_ = K;
    double msq = 0;
    if (pl.fast) {
      float rf[R];
      for (int r = 0; r < R; ++r) rf[r] = w.row_factor[p * n + i + r];
      // All R rows' loads before any store: rows K apart (16 KB for K = 4096) share their low 12 address bits,
      // and a load of m[r+1] issued after the store to m[r] waits for it (4K aliasing). Same arithmetic.
#pragma omp simd reduction(+ : msq)
      for (int64_t k = k0; k < k1; ++k) {
        float gv[R], mv[R];
        for (int r = 0; r < R; ++r) {
          gv[r] = g[r * K_ + k];
          mv[r] = load(m + r * K_ + k);
        }
        const float c = cf[k];
        for (int r = 0; r < R; ++r) {
          const Moment<float> mo = e.factored_moment<kClip>(rf[r], c, gv[r], mv[r], m + r * K_ + k);
          x[r][k - k0] = mo.instability;
          if constexpr (kStats) msq += squared(mo.m);
        }
      }
    } else {
      alignas(64) float rfb[kChunk];
      row_factor_chunk(l, w.row_factor, p, i, k0, k1, rfb);
      for (int64_t k = k0; k < k1; ++k) {
        const Moment<float> mo = e.factored_moment<kClip>(rfb[k - k0], cf[k], g[k], load(m + k), m + k);
        x[0][k - k0] = mo.instability;
        if constexpr (kStats) msq += squared(mo.m);
      }
    }
    if constexpr (kStats) ex[0] += msq;
  };
  // f32 moments in fast layouts: R whole rows per call in one sweep of floatx16, the sums grouped exactly as
  // chunk_sums groups them (so the same results as the buffered path with the same R).
  // The fast layouts hold f32 moments only (pass2 calls moment_rows for MT = float); this pointer keeps the lambda's
  // body well-formed for bf16 too, which clang checks when came_factored<bf16> is instantiated.
  float* const exp_avg_f32 = [&]() -> float* {
    if constexpr (std::is_same_v<MT, float>) return exp_avg;
    else return nullptr;
  }();
  auto moment_rows = [&]<int R, bool kClip>(int64_t p, int64_t i, double* cp, double* rsum, double* ex) {
    const float* g = a.grad + offset(p, i);
    float* m = exp_avg_f32 + offset(p, i);
    const float* cf = w.col_factor + p * K;
    const CameElement e = came;
    const int64_t K_ = K;
    float rf[R];
    for (int r = 0; r < R; ++r) rf[r] = w.row_factor[p * n + i + r];
    double rs[R] = {};
    doublex8 msq = {};
    double msq_tail = 0;
    for (int64_t k0 = 0; k0 < K_; k0 += kChunk) {
      const int64_t k1 = std::min(K_, k0 + kChunk);
      floatx16 lanes[R] = {};
      int64_t k = k0;
      for (; k + kLanes <= k1; k += kLanes) {
        // All R rows' loads before any store (4K aliasing, see the buffered path).
        floatx16 gv[R], mv[R];
        for (int r = 0; r < R; ++r) {
          gv[r] = load_x16(g + r * K_ + k);
          mv[r] = load_x16(m + r * K_ + k);
        }
        const floatx16 c = load_x16(cf + k);
        floatx16 col = {};
        for (int r = 0; r < R; ++r) {
          const Moment<floatx16> mo = e.factored_moment<kClip>(rf[r], c, gv[r], mv[r], m + r * K_ + k);
          lanes[r] += mo.instability;
          col += mo.instability;
          if constexpr (kStats) msq += squared(mo.m);
        }
        add_to_doubles(cp + k, col);
      }
      for (; k < k1; ++k) {
        float col = 0;
        for (int r = 0; r < R; ++r) {
          const Moment<float> mo = e.factored_moment<kClip>(rf[r], cf[k], g[r * K_ + k], m[r * K_ + k], m + r * K_ + k);
          rs[r] += double(mo.instability);
          col += mo.instability;
          if constexpr (kStats) msq_tail += squared(mo.m);
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
  auto pass2 = [&]<bool kClip>() {
    if constexpr (std::is_same_v<MT, float>) {
      if (pl.fast) {
        reduce_row_groups(l, pl, w, ex2, [&]<int R>(int64_t p, int64_t i, double* cp, double* rsum, double* ex) {
          moment_rows.template operator()<R, kClip>(p, i, cp, rsum, ex);
        });
        return;
      }
    }
    reduce_rows_cols(l, pl, w, ex2,
                     [&]<int R>(int64_t p, int64_t i, int64_t k0, int64_t k1, float (*x)[kChunk], double* ex) {
                       moment.template operator()<R, kClip>(p, i, k0, k1, x, ex);
                     });
  };
  // d == 1: no division (dividing by 1 is exact; the division is the pass's costliest arithmetic).
  if (clip.d > 1.0f)
    pass2.template operator()<true>();
  else pass2.template operator()<false>();
  rows_from_sums(l, w, a.exp_avg_res_row, a.beta3);
  finish_factors(l, w, a.exp_avg_res_row, a.exp_avg_res_col, a.beta3, nullptr, a.shard);

  // Pass 3: decoupled weight decay (decay = 0 without it: an exact no-op), then the confidence-scaled moment.
  double ex3[kExtras] = {};
  for_each_row(l, pl, w, ex3, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
    float* pp = a.param + offset(p, i);
    const MT* m = exp_avg + offset(p, i);
    const float* cf = w.col_factor + p * K;
    const CameElement e = came;
    alignas(64) float rfb[kChunk];
    const float rf0 = pl.fast ? w.row_factor[p * n + i] : 0.0f;
    if (!pl.fast) row_factor_chunk(l, w.row_factor, p, i, k0, k1, rfb);
    auto element = [&](int64_t k) {
      const float rf = pl.fast ? rf0 : rfb[k - k0];
      return e.apply((rf * cf[k]) * load(m + k), pp + k);
    };
    if constexpr (kStats) {
      ex[0] += lane_sum(k0, k1, [&](int64_t k) { return squared(element(k)); });
    } else {
#pragma omp simd
      for (int64_t k = k0; k < k1; ++k) element(k);
    }
  });

  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += update_sq.part;
    a.stats[kStatFactorErrSq] += exact[0];
    a.stats[kStatExactSq] += exact[1];
    a.stats[kStatExpAvgSq] += ex2[0];
    a.stats[kStatAppliedSq] += ex3[0];
  }
}

// Dense (not factored): two passes. 1: read g, v; write v; sum u^2 (12n). 2: read g, v, m, p; write m, p (24n).
template <class MT, bool kStats>
void came_dense(const CameDenseArgs& a) {
  const float gs = float(a.grad_scale);
  const double update_sq = dense_second_moment_pass(a.n, a.grad, gs, float(a.eps1), a.beta2, a.exp_avg_sq);
  const ClipDivisor clip = clip_divisor(whole_sum(update_sq, a.shard), whole_numel(a.n, a.shard), a.clip_threshold);
  const CameElement came{.gs = gs,
                         .b1 = float(a.beta1),
                         .one_b1 = float(1.0 - a.beta1),
                         .clip = clip,
                         .lr = float(a.lr),
                         .decay = float(-a.weight_decay * a.lr)};

  double ex2[kExtras] = {};
  MT* exp_avg = static_cast<MT*>(a.exp_avg);
  for_each_range(a.n, ex2, [&](int64_t i0, int64_t i1, double* ex) {
    const CameElement e = came;
    // Reads through `a`, not through hoisted pointers: the order of the simd reductions below (the inspection
    // sums) is the vectorizer's and depends on the loop's shape; this shape keeps them bit for bit as they were.
    double msq = 0, app = 0;
#pragma omp simd reduction(+ : msq, app)
    for (int64_t i = i0; i < i1; ++i) {
      const float mn = e.dense_moment(a.grad[i], a.exp_avg_sq[i], exp_avg + i);
      const float step = e.apply(mn, a.param + i);
      if constexpr (kStats) {
        msq += squared(mn);
        app += squared(step);
      }
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

void came_factored_step(const CameFactoredArgs& a) {
  refuse_fused_bf16(a.bf16_param, "came_factored_step");
  if (a.layout.numel() == 0) {  // a rank with no rows of a sharded tensor: its share of the rounds
    if (!a.shard.sum) return;
    if (a.shard.rows_cut) {  // two: the second moment's (which completes the clip's sum too) and the instability's
      columns_without_rows(a.layout, a.exp_avg_sq_col, a.beta2, a.shard, RoundCarries::column_and_update_sums);
      columns_without_rows(a.layout, a.exp_avg_res_col, a.beta3, a.shard, RoundCarries::column_sums);
    } else {
      whole_sum(0.0, a.shard);
    }
    return;
  }
  const bool bf = a.exp_avg_dtype == DType::bf16;
  with_flag(a.stats != nullptr, [&]<bool S>() { bf ? came_factored<bf16, S>(a) : came_factored<float, S>(a); });
}

void came_dense_step(const CameDenseArgs& a) {
  refuse_fused_bf16(a.bf16_param, "came_dense_step");
  if (a.n == 0) {
    whole_sum(0.0, a.shard);
    return;
  }
  const bool bf = a.exp_avg_dtype == DType::bf16;
  with_flag(a.stats != nullptr, [&]<bool S>() { bf ? came_dense<bf16, S>(a) : came_dense<float, S>(a); });
}

void came_factored_steps(const CameFactoredArgs* steps, int64_t count, void* workspace, int64_t workspace_bytes) {
  factored_steps_in_turn(steps, count, workspace, workspace_bytes, came_factored_step, "came_factored_steps");
}

void came_dense_steps(const CameDenseArgs* steps, int64_t count) {
  for (int64_t i = 0; i < count; ++i) came_dense_step(steps[i]);
}

}  // namespace tally::optim::kernels::cpu
