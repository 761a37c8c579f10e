// CPU traversal helpers shared by the optimizer kernels (internal to optim/kernels/cpu): a fixed partition of a
// factored tensor into row blocks, deterministic row/column sums in double, deterministic totals, and the
// workspace layout. "Deterministic" means independent of the thread count: tasks are fixed by the shape alone
// and their partial sums are combined in task order.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "optim/kernels/optim_kernels.h"

namespace tally::optim::kernels::cpu::detail {

inline constexpr int64_t kChunk = 256;             // elements processed per stack buffer (L1-resident)
inline constexpr int64_t kParallelMin = 1 << 14;   // below this many elements a step runs on one thread
inline constexpr int kMaxDenseTasks = 64;
inline constexpr int kExtras = 4;                  // per-task scalar sums a pass may accumulate

// Sums in double over kLanes independent accumulators: the compiler keeps them in vector registers (a plain
// `acc +=` loop would need reassociation to vectorize), and the order is fixed, so results are deterministic.
inline constexpr int kLanes = 16;

// sum of f(k) over [k0, k1).
template <class F>
inline double lane_sum(int64_t k0, int64_t k1, F&& f) {
  double lanes[kLanes] = {};
  int64_t k = k0;
  for (; k + kLanes <= k1; k += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += f(k + j);
  for (; k < k1; ++k) lanes[0] += f(k);
  double s = 0;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  return s;
}

// c[k] += x[k] (in double) for k in [0, len); returns the sum of x.
inline double accumulate_row(const float* x, double* c, int64_t len) {
  double lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const double v = x[k + j];
      lanes[j] += v;
      c[k + j] += v;
    }
  for (; k < len; ++k) {
    lanes[0] += x[k];
    c[k] += x[k];
  }
  double s = 0;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  return s;
}

// The fixed partition of a factored tensor: each task owns a block of rows of one matrix p.
struct Plan {
  int64_t K = 0;                 // Q*m*S: contiguous elements per (p, i)
  int64_t blocks = 1;            // row blocks per matrix
  int64_t rows_per_block = 1;
  int64_t tasks = 1;             // P * blocks
};

inline Plan make_plan(const FactoredLayout& l) {
  Plan pl;
  pl.K = l.Q * l.m * l.S;
  // About 64 rows per block, at most 64 blocks: column partials then cost numel/8 bytes (1/32 of the tensor).
  int64_t nb = std::clamp<int64_t>(l.n / 64, 1, 64);
  pl.rows_per_block = (l.n + nb - 1) / nb;
  pl.blocks = (l.n + pl.rows_per_block - 1) / pl.rows_per_block;
  pl.tasks = l.P * pl.blocks;
  return pl;
}

// Workspace of a factored step, carved from one buffer (all offsets 64-byte aligned).
struct FactoredWorkspace {
  double* col_partials = nullptr;  // (tasks, K)
  double* row_sum = nullptr;       // (rows)
  double* col_sum = nullptr;       // (cols)
  float* row_factor = nullptr;     // (rows)
  float* col_factor = nullptr;     // (cols)
  double* task_extras = nullptr;   // (tasks, kExtras)
  int64_t bytes = 0;
};

inline int64_t align64(int64_t b) { return (b + 63) / 64 * 64; }

inline FactoredWorkspace carve(void* base, const FactoredLayout& l, const Plan& pl) {
  FactoredWorkspace w;
  char* p = static_cast<char*>(base);
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    char* at = p ? p + off : nullptr;
    off += align64(bytes);
    return at;
  };
  w.col_partials = reinterpret_cast<double*>(take(pl.tasks * pl.K * 8));
  w.row_sum = reinterpret_cast<double*>(take(l.rows() * 8));
  w.col_sum = reinterpret_cast<double*>(take(l.cols() * 8));
  w.row_factor = reinterpret_cast<float*>(take(l.rows() * 4));
  w.col_factor = reinterpret_cast<float*>(take(l.cols() * 4));
  w.task_extras = reinterpret_cast<double*>(take(pl.tasks * kExtras * 8));
  w.bytes = off;
  return w;
}

// Row-statistic index of element (p, i, k) with k = (q*m + j)*S + s.
inline int64_t row_index(const FactoredLayout& l, int64_t p, int64_t i, int64_t k) {
  int64_t s = k % l.S, q = k / (l.m * l.S);
  return ((p * l.n + i) * l.Q + q) * l.S + s;
}

// Fills rf[0, k1-k0) with the row factor of elements [k0, k1) of row (p, i).
inline void row_factor_chunk(const FactoredLayout& l, const float* row_factor, int64_t p, int64_t i, int64_t k0,
                             int64_t k1, float* rf) {
  if (l.Q * l.S == 1) {
    float v = row_factor[p * l.n + i];
    for (int64_t k = k0; k < k1; ++k) rf[k - k0] = v;
  } else {
    for (int64_t k = k0; k < k1; ++k) rf[k - k0] = row_factor[row_index(l, p, i, k)];
  }
}

inline void sum_task_extras(const FactoredWorkspace& w, int64_t tasks, double* extras_out) {
  if (!extras_out) return;
  for (int64_t t = 0; t < tasks; ++t)
    for (int e = 0; e < kExtras; ++e) extras_out[e] += w.task_extras[t * kExtras + e];
}

// For every row (p, i), fill(p, i, k0, k1, x, extra) writes the pass's per-element quantity for elements
// [k0, k1) into x (and may add into extra[kExtras]); the quantities are summed over j into row_sum and over i
// into col_sum (double). Extras are summed in task order into extras_out (may be null).
template <class Fill>
void reduce_rows_cols(const FactoredLayout& l, const Plan& pl, const FactoredWorkspace& w, double* extras_out,
                      Fill&& fill) {
  const int64_t K = pl.K, QS = l.Q * l.S;
  const int64_t tasks = pl.tasks;
#pragma omp parallel for schedule(static) if (l.numel() > kParallelMin && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t p = t / pl.blocks, b = t % pl.blocks;
    const int64_t i0 = b * pl.rows_per_block, i1 = std::min(l.n, i0 + pl.rows_per_block);
    double* cp = w.col_partials + t * K;
    std::memset(cp, 0, size_t(K) * 8);
    double ex[kExtras] = {};
    alignas(64) float x[kChunk];
    for (int64_t i = i0; i < i1; ++i) {
      double* rs = w.row_sum + (p * l.n + i) * QS;
      for (int64_t q = 0; q < QS; ++q) rs[q] = 0;
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t k1 = std::min(K, k0 + kChunk), len = k1 - k0;
        fill(p, i, k0, k1, x, ex);
        double* c = cp + k0;
        if (QS == 1) {
          rs[0] += accumulate_row(x, c, len);
        } else {
          for (int64_t k = 0; k < len; ++k) {
            const int64_t kk = k0 + k;
            rs[(kk / (l.m * l.S)) * l.S + kk % l.S] += double(x[k]);
            c[k] += double(x[k]);
          }
        }
      }
    }
    for (int e = 0; e < kExtras; ++e) w.task_extras[t * kExtras + e] = ex[e];
  }
  // Column sums: partials added in task (row block) order.
  const int64_t cols = l.P * K;
#pragma omp parallel for schedule(static) if (cols * pl.blocks > kParallelMin)
  for (int64_t pc = 0; pc < cols; ++pc) {
    const int64_t p = pc / K, k = pc % K;
    const double* src = w.col_partials + (p * pl.blocks) * K + k;
    double acc = 0;
    for (int64_t b = 0; b < pl.blocks; ++b) acc += src[b * K];
    w.col_sum[pc] = acc;
  }
  sum_task_extras(w, tasks, extras_out);
}

// For every row (p, i): fn(p, i, k0, k1, extra) over chunks; no row/column sums. Extras summed in task order.
template <class Fn>
void for_each_row(const FactoredLayout& l, const Plan& pl, const FactoredWorkspace& w, double* extras_out, Fn&& fn) {
  const int64_t K = pl.K, tasks = pl.tasks;
#pragma omp parallel for schedule(static) if (l.numel() > kParallelMin && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t p = t / pl.blocks, b = t % pl.blocks;
    const int64_t i0 = b * pl.rows_per_block, i1 = std::min(l.n, i0 + pl.rows_per_block);
    double ex[kExtras] = {};
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) fn(p, i, k0, std::min(K, k0 + kChunk), ex);
    for (int e = 0; e < kExtras; ++e) w.task_extras[t * kExtras + e] = ex[e];
  }
  sum_task_extras(w, tasks, extras_out);
}

// A flat range [0, n) in a fixed number of tasks: fn(i0, i1, extra). Extras summed in task order.
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

// exp_avg_*[x] = beta * stat + (1 - beta) * (sum[x] / count), rounded as torch's mul_(beta).add_(mean, alpha).
inline void ema_from_sums(float* stat, const double* sums, int64_t size, int64_t count, double beta) {
  const float b = float(beta), a = float(1.0 - beta);
#pragma omp parallel for simd if (size > kParallelMin)
  for (int64_t x = 0; x < size; ++x) {
    const float mean = float(sums[x] / double(count));
    stat[x] = std::fma(mean, a, stat[x] * b);
  }
}

// row_factor = rsqrt(row / mean_i(row)), col_factor = rsqrt(col): the package's _approx_sq_grad factors.
inline void factors(const FactoredLayout& l, const float* row, const float* col, float* row_factor,
                    float* col_factor) {
  const int64_t QS = l.Q * l.S;
#pragma omp parallel for if (l.rows() > kParallelMin)
  for (int64_t g = 0; g < l.groups(); ++g) {  // g = p*QS + qs
    const int64_t p = g / QS, qs = g % QS;
    double acc = 0;
    for (int64_t i = 0; i < l.n; ++i) acc += double(row[(p * l.n + i) * QS + qs]);
    const float mean = float(acc / double(l.n));
    for (int64_t i = 0; i < l.n; ++i) {
      const int64_t x = (p * l.n + i) * QS + qs;
      row_factor[x] = 1.0f / std::sqrt(row[x] / mean);
    }
  }
#pragma omp parallel for simd if (l.cols() > kParallelMin)
  for (int64_t x = 0; x < l.cols(); ++x) col_factor[x] = 1.0f / std::sqrt(col[x]);
}

// The clipping divisor max(1, RMS / threshold), in float as the package computes it.
inline float clip_divisor(double sum_sq, int64_t numel, double threshold) {
  const float rms = float(std::sqrt(sum_sq)) / float(std::sqrt(double(numel)));
  return std::max(1.0f, rms / float(threshold));
}

inline float load(const float* p) { return *p; }
inline float load(const bf16* p) { return bf16_to_float(*p); }
inline float store(float* p, float v) {
  *p = v;
  return v;
}
// Stores rounded to nearest even and returns the value as stored, so the rest of the step sees what the next
// step will read.
inline float store(bf16* p, float v) {
  *p = float_to_bf16(v);
  return bf16_to_float(*p);
}

}  // namespace tally::optim::kernels::cpu::detail
