// The loops the optimizer kernels are written in (internal to optim/kernels/cpu): over the tasks of a block plan
// with row and column sums (reduce_tasks, reduce_rows_cols, reduce_row_groups), over every row (for_each_row),
// and over a flat range (for_each_range). Each gives the kernel's per-element code its elements and sums what it
// returns in task order, so results do not depend on the thread count. The arithmetic is the callers'. Also
// with_flag, the kernels' dispatch from a runtime flag to a template argument.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "optim/kernels/cpu/block_plan.h"
#include "optim/kernels/cpu/lane_sums.h"

namespace tally::optim::kernels::cpu::detail {

inline constexpr int kMaxDenseTasks = 64;
// Rows the instability pass streams at once (measured: 4 > 1 > 2; in the fused 16-float sweep: 4 > 8).
inline constexpr int kRowsTogetherRMW = 4;

// The task loop both row-and-column reductions share: each task (p, block of rows [i0, i1)) gets its own zeroed
// column partial cp (K doubles) and extras ex; body(p, i0, i1, cp, ex) fills them and the row sums. Afterwards the
// partials are combined into col_sum and the extras summed, both in task order (deterministic).
template <class Body>
void reduce_tasks(const FactoredLayout& l, const BlockPlan& pl, const FactoredWorkspace& w, double* extras_out,
                  Body&& body) {
  const int64_t K = pl.K;
#pragma omp parallel for schedule(static) if (l.numel() > kParallelMin && pl.tasks > 1)
  for (int64_t t = 0; t < pl.tasks; ++t) {
    const int64_t p = t / pl.blocks, blk = t % pl.blocks;
    const int64_t i0 = blk * pl.rows_per_block, i1 = std::min(l.n, i0 + pl.rows_per_block);
    double* cp = w.col_partials + t * K;
    std::memset(cp, 0, size_t(K) * 8);
    double ex[kExtras] = {};
    body(p, i0, i1, cp, ex);
    for (int e = 0; e < kExtras; ++e) w.task_extras[t * kExtras + e] = ex[e];
  }
  combine_columns(l, pl, w.col_partials, w.col_sum);
  sum_task_extras(w, pl.tasks, extras_out);
}

// fill.template operator()<R>(p, i, k0, k1, x, extra) writes the pass's per-element quantity for elements
// [k0, k1) of rows i..i+R-1 (R = kRowsTogetherRMW side by side, or 1) into x[r] (and may add into extra[kExtras]);
// the quantities are summed over j into the row statistic's sum (row_sum) and over i into col_sum (double),
// deterministically: each column partial is read and written once per R rows. Extras are summed in task order.
template <class Fill>
void reduce_rows_cols(const FactoredLayout& l, const BlockPlan& pl, const FactoredWorkspace& w, double* extras_out,
                      Fill&& fill) {
  const int64_t K = pl.K, QS = l.Q * l.S;
  reduce_tasks(l, pl, w, extras_out, [&](int64_t p, int64_t i0, int64_t i1, double* cp, double* ex) {
    alignas(64) float x[kRowsTogetherRMW][kChunk];
    int64_t i = i0;
    if (pl.fast) {
      constexpr int R = kRowsTogetherRMW;
      for (; i + R <= i1; i += R) {
        double rs[R] = {};
        for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
          const int64_t k1 = std::min(K, k0 + kChunk), len = k1 - k0;
          fill.template operator()<R>(p, i, k0, k1, x, ex);
          chunk_sums<R>(x, len, cp + k0, rs);
        }
        for (int r = 0; r < R; ++r) w.row_sum[p * l.n + i + r] = rs[r];
      }
    }
    for (; i < i1; ++i) {
      double* rs = w.row_sum + (p * l.n + i) * QS;
      for (int64_t q = 0; q < QS; ++q) rs[q] = 0;
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t k1 = std::min(K, k0 + kChunk), len = k1 - k0;
        fill.template operator()<1>(p, i, k0, k1, x, ex);
        double* c = cp + k0;
        for (int64_t k = 0; k < len; ++k) {
          const int64_t kk = k0 + k;
          rs[QS == 1 ? 0 : (kk / (l.m * l.S)) * l.S + kk % l.S] += double(x[0][k]);
          c[k] += double(x[0][k]);
        }
      }
    }
  });
}

// As reduce_rows_cols for fast layouts, with the rows in groups: group.template operator()<R>(p, i, cp, rs, extra)
// handles whole rows i..i+R-1 (R = kRowsTogetherRMW, then 4, then 1 for what is left of a block), adds their column
// sums into the task's column partial cp and writes their row sums to rs[0..R).
template <class Group>
void reduce_row_groups(const FactoredLayout& l, const BlockPlan& pl, const FactoredWorkspace& w, double* extras_out,
                       Group&& group) {
  reduce_tasks(l, pl, w, extras_out, [&](int64_t p, int64_t i0, int64_t i1, double* cp, double* ex) {
    int64_t i = i0;
    for (; i + kRowsTogetherRMW <= i1; i += kRowsTogetherRMW)
      group.template operator()<kRowsTogetherRMW>(p, i, cp, w.row_sum + p * l.n + i, ex);
    for (; i + 4 <= i1; i += 4) group.template operator()<4>(p, i, cp, w.row_sum + p * l.n + i, ex);
    for (; i < i1; ++i) group.template operator()<1>(p, i, cp, w.row_sum + p * l.n + i, ex);
  });
}

// For every row (p, i): fn(p, i, k0, k1, extra) over the row (fast layouts: the whole row at once; general: in
// chunks of kChunk). Extras summed in task order.
template <class Fn>
void for_each_row(const FactoredLayout& l, const BlockPlan& pl, const FactoredWorkspace& w, double* extras_out,
                  Fn&& fn) {
  const int64_t K = pl.K, step = pl.fast ? K : kChunk;
#pragma omp parallel for schedule(static) if (l.numel() > kParallelMin && pl.tasks > 1)
  for (int64_t t = 0; t < pl.tasks; ++t) {
    const int64_t p = t / pl.blocks, blk = t % pl.blocks;
    const int64_t i0 = blk * pl.rows_per_block, i1 = std::min(l.n, i0 + pl.rows_per_block);
    double ex[kExtras] = {};
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t k0 = 0; k0 < K; k0 += step) fn(p, i, k0, std::min(K, k0 + step), ex);
    for (int e = 0; e < kExtras; ++e) w.task_extras[t * kExtras + e] = ex[e];
  }
  sum_task_extras(w, pl.tasks, extras_out);
}

// A flat range [0, n) in a fixed number of tasks (a function of n alone): fn(i0, i1, extra). Extras summed in
// task order.
template <class Fn>
void for_each_range(int64_t n, double* extras_out, Fn&& fn) {
  const int64_t tasks = std::clamp<int64_t>(n / 4096, 1, kMaxDenseTasks);
  const int64_t per = (n + tasks - 1) / tasks;
  double extras[kMaxDenseTasks][kExtras] = {};
#pragma omp parallel for schedule(static) if (n > kParallelMin && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t i0 = std::min(n, t * per), i1 = std::min(n, i0 + per);
    fn(i0, i1, extras[t]);
  }
  if (extras_out)
    for (int64_t t = 0; t < tasks; ++t)
      for (int e = 0; e < kExtras; ++e) extras_out[e] += extras[t][e];
}

// The kernels' dispatch from a runtime flag to a template argument: calls f.template operator()<B>() with B = flag
// as a compile-time constant (with_flag(a.stats != nullptr, [&]<bool S>() { step<S>(a); })).
template <class F>
void with_flag(bool flag, F&& f) {
  if (flag)
    f.template operator()<true>();
  else
    f.template operator()<false>();
}

}  // namespace tally::optim::kernels::cpu::detail
