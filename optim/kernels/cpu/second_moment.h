// The second moment of the factored methods, shared by CAME's and Adafactor's CPU kernels (internal to
// optim/kernels/cpu): the statistics pass over g (row EMA, column sums, and the sums that give the update's RMS
// without another pass), the factors, the row EMA from sums of another pass (CAME's instability), the dense
// second-moment pass of unfactored tensors, and the inspection pass comparing the factored estimate with the
// exact EMA.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "core/error.h"

#include "optim/kernels/cpu/float_vectors.h"
#include "optim/kernels/cpu/traversals.h"
#include "optim/kernels/cpu/update_math.h"

namespace tally::optim::kernels::cpu::detail {

// The statistics pass over R consecutive rows g[0..R) of length K (fast layouts): row EMA of mean(x^2 + eps1)
// into stat[0..R), column sums of x^2 + eps1 into cp, and (re-reading the rows from cache) S_j += x^2 / r_i into
// sp. One sweep, no staging buffer; the sums are grouped exactly as chunk_sums groups them (16 float lanes per
// row per chunk of kChunk, chunks added in double; R rows' column sum in float, then added in double). Each
// column partial is read and written once per R rows.
template <int R>
inline void stats_rows(const float* g, int64_t K, int64_t m, float gs, float eps1, float b, float one_b, float* stat,
                       double* __restrict cp, double* __restrict sp) {
  static_assert(kLanes == 16);
  double rs[R] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = std::min(K, k0 + kChunk);
    floatx16 lanes[R] = {};
    int64_t k = k0;
    for (; k + kLanes <= k1; k += kLanes) {
      floatx16 col = {};
      for (int r = 0; r < R; ++r) {
        const floatx16 x = square_plus_eps(load_x16(g + r * K + k) * gs, eps1);
        lanes[r] += x;
        col += x;
      }
      add_to_doubles(cp + k, col);
    }
    for (; k < k1; ++k) {
      float col = 0;
      for (int r = 0; r < R; ++r) {
        const float x = square_plus_eps(g[r * K + k] * gs, eps1);
        rs[r] += double(x);
        col += x;
      }
      cp[k] += double(col);
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kLanes; ++j) rs[r] += double(lanes[r][j]);
  }
  float inv_r[R];
  for (int r = 0; r < R; ++r) {
    stat[r] = ema_of_mean(stat[r], rs[r], m, b, one_b);
    inv_r[r] = float(1.0 / double(stat[r]));
  }
  // The same rows again (from cache): S_j += x^2 / r_i (only the clip's RMS depends on S: float terms), summed
  // pairwise over the rows: ((t0 + t1) + (t2 + t3)) + ...
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    floatx16 t[R];
    for (int r = 0; r < R; ++r) {
      const floatx16 a = load_x16(g + r * K + k) * gs;
      t[r] = a * a * inv_r[r];
    }
    for (int h = R / 2; h >= 1; h /= 2)
      for (int r = 0; r < h; ++r) t[r] = t[2 * r] + t[2 * r + 1];
    add_to_doubles(sp + k, t[0]);
  }
  for (; k < K; ++k) {
    float t[R];
    for (int r = 0; r < R; ++r) {
      const float a = g[r * K + k] * gs;
      t[r] = a * a * inv_r[r];
    }
    for (int h = R / 2; h >= 1; h /= 2)
      for (int r = 0; r < h; ++r) t[r] = t[2 * r] + t[2 * r + 1];
    sp[k] += double(t[0]);
  }
}

// ---- the second-moment pass of the factored methods (CAME, Adafactor) ----
//
// One read of g (x = g * grad_scale): the row statistic's EMA of mean(x^2 + eps1) is updated in place as soon as
// its row is done; column sums of x^2 + eps1 go to col_sum; and, re-reading the rows just done from cache,
// S_j = sum_i x_ij^2 / r_i (with the new r) goes to s_sum. Since u_ij^2 = x_ij^2 * (mean_r / r_i) / c_j, the sum
// of u^2 that the RMS clip needs is sum_j mean_r * S_j / c_j: no second pass over g.
inline void second_moment_pass(const FactoredLayout& l, const BlockPlan& pl, const FactoredWorkspace& w,
                               const float* grad, float gs, float eps1, float* row_stat, double beta) {
  const int64_t K = pl.K, QS = l.Q * l.S;
  const float b = float(beta), one_b = float(1.0 - beta);
#pragma omp parallel for schedule(static) if (l.numel() > kParallelMin && pl.tasks > 1)
  for (int64_t t = 0; t < pl.tasks; ++t) {
    const int64_t p = t / pl.blocks, blk = t % pl.blocks;
    const int64_t i0 = blk * pl.rows_per_block, i1 = std::min(l.n, i0 + pl.rows_per_block);
    double* cp = w.col_partials + t * K;
    double* sp = w.s_partials + t * K;
    std::memset(cp, 0, size_t(K) * 8);
    std::memset(sp, 0, size_t(K) * 8);
    if (pl.fast) {
      int64_t i = i0;
      for (; i + kRowsTogether <= i1; i += kRowsTogether)
        stats_rows<kRowsTogether>(grad + (p * l.n + i) * K, K, l.m, gs, eps1, b, one_b, row_stat + p * l.n + i, cp, sp);
      for (; i + 4 <= i1; i += 4)
        stats_rows<4>(grad + (p * l.n + i) * K, K, l.m, gs, eps1, b, one_b, row_stat + p * l.n + i, cp, sp);
      for (; i < i1; ++i) {
        const float* g0 = grad + (p * l.n + i) * K;
        const double s = lane_sum(0, K, [&](int64_t kk) {
          const double v = square_plus_eps(g0[kk] * gs, eps1);
          cp[kk] += v;
          return v;
        });
        float& stat = row_stat[p * l.n + i];
        stat = ema_of_mean(stat, s, l.m, b, one_b);
        const double inv_r = 1.0 / double(stat);
#pragma omp simd
        for (int64_t kk = 0; kk < K; ++kk) {
          const float x = g0[kk] * gs;
          sp[kk] += double(x * x) * inv_r;
        }
      }
    } else {
      // General (P, n, Q, m, S) layouts: one row (p, i) at a time; its row statistics (p, i, q, s) are final at
      // the end of the row.
      for (int64_t i = i0; i < i1; ++i) {
        const float* g0 = grad + (p * l.n + i) * K;
        double* rs = w.row_sum + (p * l.n + i) * QS;
        for (int64_t q = 0; q < QS; ++q) rs[q] = 0;
        for (int64_t kk = 0; kk < K; ++kk) {
          const double v = square_plus_eps(g0[kk] * gs, eps1);
          rs[(kk / (l.m * l.S)) * l.S + kk % l.S] += v;
          cp[kk] += v;
        }
        for (int64_t q = 0; q < QS; ++q) {
          float& stat = row_stat[(p * l.n + i) * QS + q];
          stat = ema_of_mean(stat, rs[q], l.m, b, one_b);
        }
        for (int64_t kk = 0; kk < K; ++kk) {
          const float x = g0[kk] * gs;
          sp[kk] += double(x * x) / double(row_stat[row_index(l, p, i, kk)]);
        }
      }
    }
  }
  combine_columns(l, pl, w.col_partials, w.col_sum);
  combine_columns(l, pl, w.s_partials, w.s_sum);
}

// The sum of u^2 over a factored tensor (u = x / sqrt(v), the update before the RMS clip), as finish_factors makes
// it: this part's (what the inspection statistics add over the ranks) and, when the round of a tensor whose rows are
// cut carried the column sums S_j of every rank, the whole tensor's (the clip then needs no round of its own).
struct UpdateSquares {
  double part = 0;
  std::optional<double> whole;
};

// After a statistics pass: the column EMA from col_sum, the factors rsqrt(row / mean_i(row)) and rsqrt(col) (the
// package's _approx_sq_grad), and the group means. When s_sum is given, returns sum_j mean_r * S_j / c_j (this
// part's). When the rows are cut over ranks (sh.rows_cut), the column sums, the row sums per group and S (when
// given) are added over the ranks first, in one round; the means are then over every rank's rows and the returned
// sum is also the whole tensor's.
inline UpdateSquares finish_factors(const FactoredLayout& l, const FactoredWorkspace& w, const float* row_stat,
                                    float* col_stat, double beta, const double* s_sum, const Sharding& sh = {}) {
  const float b = float(beta), one_b = float(1.0 - beta);
  const int64_t QS = l.Q * l.S, cols = l.cols(), groups = l.groups();
  std::vector<double> group_sum(static_cast<size_t>(groups));
#pragma omp parallel for if (l.rows() > kParallelMin)
  for (int64_t g = 0; g < groups; ++g) {  // g = p*QS + qs
    const int64_t p = g / QS, qs = g % QS;
    double acc = 0;
    for (int64_t i = 0; i < l.n; ++i) acc += double(row_stat[(p * l.n + i) * QS + qs]);
    group_sum[size_t(g)] = acc;
  }
  const bool across = sh.sum && sh.rows_cut;
  std::vector<double> s_whole;
  if (across) {  // col_sum | group_sum | S
    std::vector<double> round(w.col_sum, w.col_sum + cols);
    round.insert(round.end(), group_sum.begin(), group_sum.end());
    if (s_sum) round.insert(round.end(), s_sum, s_sum + cols);
    (*sh.sum)(round.data(), int64_t(round.size()));
    std::copy(round.begin(), round.begin() + cols, w.col_sum);
    std::copy(round.begin() + cols, round.begin() + cols + groups, group_sum.begin());
    if (s_sum) s_whole.assign(round.begin() + cols + groups, round.end());
  }
  const int64_t n = across ? sh.rows : l.n;
#pragma omp parallel for simd if (cols > kParallelMin)
  for (int64_t x = 0; x < cols; ++x) {
    const float c = ema_of_mean(col_stat[x], w.col_sum[x], n, b, one_b);
    col_stat[x] = c;
    w.col_factor[x] = 1.0f / std::sqrt(c);
  }
#pragma omp parallel for if (l.rows() > kParallelMin)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t p = g / QS, qs = g % QS;
    const float mean = float(group_sum[size_t(g)] / double(n));
    w.group_mean[g] = mean;
    for (int64_t i = 0; i < l.n; ++i) {
      const int64_t x = (p * l.n + i) * QS + qs;
      w.row_factor[x] = 1.0f / std::sqrt(row_stat[x] / mean);
    }
  }
  if (!s_sum) return UpdateSquares{};
  const int64_t K = l.Q * l.m * l.S;
  auto update_squares = [&](const double* s) {
    double total = 0;
    for (int64_t x = 0; x < cols; ++x) {
      const int64_t p = x / K, k = x % K;
      const int64_t g = p * QS + (k / (l.m * l.S)) * l.S + k % l.S;
      total += double(w.group_mean[g]) * s[x] / double(col_stat[x]);
    }
    return total;
  };
  UpdateSquares u;
  u.part = update_squares(s_sum);
  if (across) u.whole = update_squares(s_whole.data());
  return u;
}

// The sum of the squared update over the whole tensor: this part's, added over the ranks when it is one part of
// several (the RMS clip reads it).
inline double whole_sum(double part, const Sharding& sh) {
  if (sh.sum) (*sh.sum)(&part, 1);
  return part;
}
// The whole tensor's sum of u^2: finish_factors' when its round completed it, else the parts added over the ranks.
inline double whole_sum(const UpdateSquares& u, const Sharding& sh) {
  return u.whole ? *u.whole : whole_sum(u.part, sh);
}
// The element count the RMS is taken over.
inline int64_t whole_numel(int64_t part, const Sharding& sh) { return sh.sum ? sh.numel : part; }

// A rank that holds no row of a tensor whose rows are cut still takes part in the round of finish_factors (adding
// zeros: nothing of its own) and keeps its copy of the column statistic in step with every other rank's.
inline void columns_without_rows(const FactoredLayout& l, float* col_stat, double beta, const Sharding& sh,
                                 RoundCarries carries) {
  const float b = float(beta), one_b = float(1.0 - beta);
  std::vector<double> round(size_t(round_doubles(l, carries)), 0.0);
  (*sh.sum)(round.data(), int64_t(round.size()));
  for (int64_t x = 0; x < l.cols(); ++x) col_stat[x] = ema_of_mean(col_stat[x], round[size_t(x)], sh.rows, b, one_b);
}

// The row EMA from row_sum (after reduce_rows_cols or reduce_row_groups).
inline void rows_from_sums(const FactoredLayout& l, const FactoredWorkspace& w, float* row_stat, double beta) {
  const float b = float(beta), one_b = float(1.0 - beta);
#pragma omp parallel for simd if (l.rows() > kParallelMin)
  for (int64_t x = 0; x < l.rows(); ++x) row_stat[x] = ema_of_mean(row_stat[x], w.row_sum[x], l.m, b, one_b);
}

// Inspection only, after finish_factors: the exact EMA of g^2+eps1 (exact_v, updated in place) against its
// factored estimate 1 / (rf cf)^2. Adds sum (estimate - exact)^2 into out[0] and sum exact^2 into out[1] (out:
// kExtras doubles). An extra pass over g and exact_v.
inline void exact_second_moment(const FactoredLayout& l, const BlockPlan& pl, const FactoredWorkspace& w,
                                const float* grad, float gs, float eps1, double beta, float* exact_v, double* out) {
  const float b = float(beta), one_b = float(1.0 - beta);
  const int64_t K = pl.K;
  for_each_row(l, pl, w, out, [&](int64_t p, int64_t i, int64_t k0, int64_t k1, double* ex) {
    const float* g = grad + (p * l.n + i) * K;
    float* v = exact_v + (p * l.n + i) * K;
    const float* cf = w.col_factor + p * K;
    for (int64_t k = k0; k < k1; ++k) {
      v[k] = ema(v[k], square_plus_eps(g[k] * gs, eps1), b, one_b);
      const double f = double(w.row_factor[row_index(l, p, i, k)]) * double(cf[k]);
      const double est = 1.0 / (f * f);
      ex[0] += (est - v[k]) * (est - v[k]);
      ex[1] += double(v[k]) * double(v[k]);
    }
  });
}

// The second moment of a dense (unfactored) tensor, the first pass of its step: v = EMA of (g*gs)^2 + eps1 in
// place; returns the sum of u^2 with u = (g*gs) / sqrt(v) (the update before the RMS clip).
inline double dense_second_moment_pass(int64_t n, const float* grad, float gs, float eps1, double beta, float* v) {
  const float b = float(beta), one_b = float(1.0 - beta);
  double sum[kExtras] = {};
  for_each_range(n, sum, [&](int64_t i0, int64_t i1, double* ex) {
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = i0; i < i1; ++i) {
      const float g = grad[i] * gs;
      const float vi = ema(v[i], square_plus_eps(g, eps1), b, one_b);
      v[i] = vi;
      acc += squared(dense_normalised(g, vi));
    }
    ex[0] += acc;
  });
  return sum[0];
}

// The CPU's *_factored_steps calls (CAME, Adafactor): the steps one by one through step(args), each given the shared
// workspace, which must hold the largest step's factored_workspace_bytes (op names the call in the error).
template <class Args, class Step>
void factored_steps_in_turn(const Args* steps, int64_t count, void* workspace, int64_t workspace_bytes, Step step,
                            const char* op) {
  for (int64_t i = 0; i < count; ++i) {
    Args one = steps[i];
    const int64_t need = factored_workspace_bytes(one.layout);
    TALLY_CHECK(need <= workspace_bytes, "[", op, "] step ", i, " needs ", need,
                " bytes of workspace, the shared workspace has ", workspace_bytes);
    one.workspace = workspace;
    step(one);
  }
}

}  // namespace tally::optim::kernels::cpu::detail
