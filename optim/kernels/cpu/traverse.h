// CPU traversal helpers shared by the optimizer kernels (internal to optim/kernels/cpu): a fixed partition of a
// factored tensor into row blocks, the second-moment statistics pass (row EMA, column sums and the sums that
// give the update's RMS without another pass), deterministic row/column sums in double, and the workspace.
// "Deterministic" means independent of the thread count: tasks are fixed by the shape alone and their partial
// sums are combined in task order.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/dtype.h"
#include "optim/kernels/optim_kernels.h"

namespace tally::optim::kernels::cpu::detail {

inline constexpr int64_t kChunk = 256;             // elements per stack buffer in the general-layout paths
inline constexpr int64_t kParallelMin = 1 << 14;   // below this many elements a step runs on one thread
inline constexpr int kMaxDenseTasks = 64;
inline constexpr int kExtras = 4;                  // per-task scalar sums a pass may accumulate
inline constexpr int kRowsTogether = 8;            // rows the statistics pass streams at once (g only: 8 streams)
inline constexpr int kRowsTogetherRMW = 4;         // rows the instability pass streams at once (measured: 4 > 1 > 2; fused: 4 > 8)

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

// Sum of a chunk (at most kChunk floats): 16 float lanes of at most kChunk/16 terms each, added in double. The
// per-lane float error is that of 16 additions (~1e-7 relative); chunks are then accumulated in double.
// R rows' chunk sums (as chunk_sum) added into rs[r], and c[k] += the R rows' column sum, in one sweep over the
// buffers.
template <int R>
inline void chunk_sums(const float (*__restrict x)[kChunk], int64_t len, double* __restrict c, double* rs) {
  float lanes[R][kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      float col = 0;
      for (int r = 0; r < R; ++r) {
        lanes[r][j] += x[r][k + j];
        col += x[r][k + j];
      }
      c[k + j] += double(col);
    }
  for (; k < len; ++k) {
    float col = 0;
    for (int r = 0; r < R; ++r) {
      rs[r] += double(x[r][k]);
      col += x[r][k];
    }
    c[k] += double(col);
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kLanes; ++j) rs[r] += double(lanes[r][j]);
}

inline double chunk_sum(const float* __restrict x, int64_t len) {
  float lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += x[k + j];
  double s = 0;
  for (; k < len; ++k) s += double(x[k]);
  for (int j = 0; j < kLanes; ++j) s += double(lanes[j]);
  return s;
}

// The fixed partition of a factored tensor: each task owns a block of rows of one matrix p.
struct Plan {
  int64_t K = 0;                 // Q*m*S: contiguous elements per (p, i)
  int64_t blocks = 1;            // row blocks per matrix
  int64_t rows_per_block = 1;    // a multiple of kRowsTogether (except a last, shorter block)
  int64_t tasks = 1;             // P * blocks
  bool fast = true;              // Q*S == 1: rows are the row statistic's unit
};

inline Plan make_plan(const FactoredLayout& l) {
  Plan pl;
  pl.K = l.Q * l.m * l.S;
  pl.fast = l.Q * l.S == 1;
  // About 64 rows per block, at most 64 blocks: column partials then cost numel/8 bytes (1/32 of the tensor).
  // Wide rows get fewer, taller blocks (down to 16): at most 1 MiB of partials per array (about an L2), since the
  // blocks write them and combine_columns reads them back (4096x4096: 32 blocks of 128 rows, measured 0.5-0.7 ms
  // faster per CAME step than 64 of 64).
  const int64_t nb = std::min(std::clamp<int64_t>(l.n / 64, 1, 64),
                              std::max<int64_t>(16, (int64_t(1) << 20) / (8 * std::max<int64_t>(1, l.Q * l.m * l.S))));
  pl.rows_per_block = (l.n + nb - 1) / nb;
  pl.rows_per_block = (pl.rows_per_block + kRowsTogether - 1) / kRowsTogether * kRowsTogether;
  pl.blocks = (l.n + pl.rows_per_block - 1) / pl.rows_per_block;
  pl.tasks = l.P * pl.blocks;
  return pl;
}

// Workspace of a factored step, carved from one buffer (all offsets 64-byte aligned).
struct FactoredWorkspace {
  double* col_partials = nullptr;  // (tasks, K)
  double* s_partials = nullptr;    // (tasks, K): sums of g^2 / r_i (the update's RMS)
  double* row_sum = nullptr;       // (rows)
  double* col_sum = nullptr;       // (cols)
  double* s_sum = nullptr;         // (cols)
  float* row_factor = nullptr;     // (rows)
  float* col_factor = nullptr;     // (cols)
  float* group_mean = nullptr;     // (groups): mean over i of the row statistic
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
  w.s_partials = reinterpret_cast<double*>(take(pl.tasks * pl.K * 8));
  w.row_sum = reinterpret_cast<double*>(take(l.rows() * 8));
  w.col_sum = reinterpret_cast<double*>(take(l.cols() * 8));
  w.s_sum = reinterpret_cast<double*>(take(l.cols() * 8));
  w.row_factor = reinterpret_cast<float*>(take(l.rows() * 4));
  w.col_factor = reinterpret_cast<float*>(take(l.cols() * 4));
  w.group_mean = reinterpret_cast<float*>(take(l.groups() * 4));
  w.task_extras = reinterpret_cast<double*>(take(pl.tasks * kExtras * 8));
  w.bytes = off;
  return w;
}

// Row-statistic index of element (p, i, k) with k = (q*m + j)*S + s.
inline int64_t row_index(const FactoredLayout& l, int64_t p, int64_t i, int64_t k) {
  const int64_t s = k % l.S, q = k / (l.m * l.S);
  return ((p * l.n + i) * l.Q + q) * l.S + s;
}

// Fills rf[0, k1-k0) with the row factor of elements [k0, k1) of row (p, i) (general layouts).
inline void row_factor_chunk(const FactoredLayout& l, const float* row_factor, int64_t p, int64_t i, int64_t k0,
                             int64_t k1, float* rf) {
  for (int64_t k = k0; k < k1; ++k) rf[k - k0] = row_factor[row_index(l, p, i, k)];
}

// stat = beta*stat + (1-beta)*mean, rounded as torch's mul_(beta).add_(mean, alpha=1-beta).
inline float ema(float stat, double sum, int64_t count, float b, float one_b) {
  return std::fma(float(sum / double(count)), one_b, stat * b);
}

inline void sum_task_extras(const FactoredWorkspace& w, int64_t tasks, double* extras_out) {
  if (!extras_out) return;
  for (int64_t t = 0; t < tasks; ++t)
    for (int e = 0; e < kExtras; ++e) extras_out[e] += w.task_extras[t * kExtras + e];
}

// Column sums from the task partials, in task order (all matrices p): block 0, then each further block added in
// order, streaming through the partials (a column's sum is the same as adding its 64 terms one by one).
inline void combine_columns(const FactoredLayout& l, const Plan& pl, const double* partials, double* out) {
  const int64_t K = pl.K;
  constexpr int64_t kStrip = 1024;
  const int64_t strips = (K + kStrip - 1) / kStrip;
#pragma omp parallel for collapse(2) schedule(static) if (l.P * K * pl.blocks > kParallelMin)
  for (int64_t p = 0; p < l.P; ++p)
    for (int64_t st = 0; st < strips; ++st) {
      const int64_t k0 = st * kStrip, k1 = std::min(K, k0 + kStrip);
      double* o = out + p * K;
      const double* src = partials + (p * pl.blocks) * K;
      for (int64_t k = k0; k < k1; ++k) o[k] = src[k];
      for (int64_t b = 1; b < pl.blocks; ++b) {
        const double* sb = src + b * K;
#pragma omp simd
        for (int64_t k = k0; k < k1; ++k) o[k] += sb[k];
      }
    }
}

// 16-float / 8-double vectors (GNU vector extensions: element-wise IEEE arithmetic, exactly the scalar code's
// rounding; one AVX-512 register each, two AVX2 registers elsewhere).
using f16v = float __attribute__((vector_size(64)));
using f8v = float __attribute__((vector_size(32)));
using d8v = double __attribute__((vector_size(64)));
inline f16v load16(const float* p) {
  f16v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// c[0..16) += double(v[0..16)).
inline void add16(double* c, f16v v) {
  const d8v lo = __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), d8v);
  const d8v hi = __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), d8v);
  d8v c0, c1;
  std::memcpy(&c0, c, sizeof c0);
  std::memcpy(&c1, c + 8, sizeof c1);
  c0 += lo;
  c1 += hi;
  std::memcpy(c, &c0, sizeof c0);
  std::memcpy(c + 8, &c1, sizeof c1);
}
static_assert(kLanes == 16);
inline void store16(float* p, f16v v) { std::memcpy(p, &v, sizeof v); }
inline f16v splat16(float v) {
  f16v r;
  for (int j = 0; j < 16; ++j) r[j] = v;
  return r;
}
// a*b + c rounded once, as std::fma.
inline f16v fma16(f16v a, f16v b, f16v c) {
#if defined(__AVX512F__)
  return f16v(_mm512_fmadd_ps(__m512(a), __m512(b), __m512(c)));
#else
  f16v r;
  for (int j = 0; j < 16; ++j) r[j] = std::fma(a[j], b[j], c[j]);
  return r;
#endif
}

// The statistics pass over R consecutive rows g[0..R) of length K (fast layouts): row EMA of mean(x^2 + eps1)
// into stat[0..R), column sums of x^2 + eps1 into cp, and (re-reading the rows from cache) S_j += x^2 / r_i into
// sp. One sweep, no staging buffer; the sums are grouped exactly as chunk_sums groups them (16 float lanes per
// row per chunk of kChunk, chunks added in double; R rows' column sum in float, then added in double). Each
// column partial is read and written once per R rows.
template <int R>
inline void stats_rows(const float* g, int64_t K, int64_t m, float gs, float eps1, float b, float one_b, float* stat,
                       double* __restrict cp, double* __restrict sp) {
  double rs[R] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = std::min(K, k0 + kChunk);
    f16v lanes[R] = {};
    int64_t k = k0;
    for (; k + kLanes <= k1; k += kLanes) {
      f16v col = {};
      for (int r = 0; r < R; ++r) {
        const f16v a = load16(g + r * K + k) * gs;
        const f16v x = a * a + eps1;
        lanes[r] += x;
        col += x;
      }
      add16(cp + k, col);
    }
    for (; k < k1; ++k) {
      float col = 0;
      for (int r = 0; r < R; ++r) {
        const float a = g[r * K + k] * gs;
        const float x = a * a + eps1;
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
    stat[r] = ema(stat[r], rs[r], m, b, one_b);
    inv_r[r] = float(1.0 / double(stat[r]));
  }
  // The same rows again (from cache): S_j += x^2 / r_i (only the clip's RMS depends on S: float terms), summed
  // pairwise over the rows: ((t0 + t1) + (t2 + t3)) + ...
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    f16v t[R];
    for (int r = 0; r < R; ++r) {
      const f16v a = load16(g + r * K + k) * gs;
      t[r] = a * a * inv_r[r];
    }
    for (int h = R / 2; h >= 1; h /= 2)
      for (int r = 0; r < h; ++r) t[r] = t[2 * r] + t[2 * r + 1];
    add16(sp + k, t[0]);
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
inline void second_moment_pass(const FactoredLayout& l, const Plan& pl, const FactoredWorkspace& w, const float* grad,
                               float gs, float eps1, float* row_stat, double beta) {
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
          const float x = g0[kk] * gs;
          const double v = x * x + eps1;
          cp[kk] += v;
          return v;
        });
        float& stat = row_stat[p * l.n + i];
        stat = ema(stat, s, l.m, b, one_b);
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
          const float x = g0[kk] * gs;
          const double v = x * x + eps1;
          rs[(kk / (l.m * l.S)) * l.S + kk % l.S] += v;
          cp[kk] += v;
        }
        for (int64_t q = 0; q < QS; ++q) {
          float& stat = row_stat[(p * l.n + i) * QS + q];
          stat = ema(stat, rs[q], l.m, b, one_b);
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

// After a statistics pass: the column EMA from col_sum, the factors rsqrt(row / mean_i(row)) and rsqrt(col) (the
// package's _approx_sq_grad), and the group means. Returns sum_j mean_r * S_j / c_j when s_sum is given.
inline double finish_factors(const FactoredLayout& l, const FactoredWorkspace& w, const float* row_stat,
                             float* col_stat, double beta, const double* s_sum) {
  const float b = float(beta), one_b = float(1.0 - beta);
  const int64_t QS = l.Q * l.S, cols = l.cols();
#pragma omp parallel for simd if (cols > kParallelMin)
  for (int64_t x = 0; x < cols; ++x) {
    const float c = ema(col_stat[x], w.col_sum[x], l.n, b, one_b);
    col_stat[x] = c;
    w.col_factor[x] = 1.0f / std::sqrt(c);
  }
#pragma omp parallel for if (l.rows() > kParallelMin)
  for (int64_t g = 0; g < l.groups(); ++g) {  // g = p*QS + qs
    const int64_t p = g / QS, qs = g % QS;
    double acc = 0;
    for (int64_t i = 0; i < l.n; ++i) acc += double(row_stat[(p * l.n + i) * QS + qs]);
    const float mean = float(acc / double(l.n));
    w.group_mean[g] = mean;
    for (int64_t i = 0; i < l.n; ++i) {
      const int64_t x = (p * l.n + i) * QS + qs;
      w.row_factor[x] = 1.0f / std::sqrt(row_stat[x] / mean);
    }
  }
  if (!s_sum) return 0;
  double total = 0;
  const int64_t K = l.Q * l.m * l.S;
  for (int64_t x = 0; x < cols; ++x) {
    const int64_t p = x / K, k = x % K;
    const int64_t g = p * QS + (k / (l.m * l.S)) * l.S + k % l.S;
    total += double(w.group_mean[g]) * s_sum[x] / double(col_stat[x]);
  }
  return total;
}

// The task loop both row-and-column reductions share: each task (p, block of rows [i0, i1)) gets its own zeroed
// column partial cp (K doubles) and extras ex; body(p, i0, i1, cp, ex) fills them and the row sums. Afterwards the
// partials are combined into col_sum and the extras summed, both in task order (deterministic).
template <class Body>
void reduce_tasks(const FactoredLayout& l, const Plan& pl, const FactoredWorkspace& w, double* extras_out,
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
void reduce_rows_cols(const FactoredLayout& l, const Plan& pl, const FactoredWorkspace& w, double* extras_out,
                      Fill&& fill) {
  const int64_t K = pl.K, QS = l.Q * l.S;
  reduce_tasks(l, pl, w, extras_out, [&](int64_t p, int64_t i0, int64_t i1, double* cp, double* ex) {
    alignas(64) float x[kRowsTogether][kChunk];
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
// handles whole rows i..i+R-1 (R = 8, then 4, then 1 for what is left of a block), adds their column sums into
// the task's column partial cp and writes their row sums to rs[0..R).
template <class Group>
void reduce_row_groups(const FactoredLayout& l, const Plan& pl, const FactoredWorkspace& w, double* extras_out,
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
void for_each_row(const FactoredLayout& l, const Plan& pl, const FactoredWorkspace& w, double* extras_out, Fn&& fn) {
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

// The row EMA from row_sum (after reduce_rows_cols).
inline void rows_from_sums(const FactoredLayout& l, const FactoredWorkspace& w, float* row_stat, double beta) {
  const float b = float(beta), one_b = float(1.0 - beta);
#pragma omp parallel for simd if (l.rows() > kParallelMin)
  for (int64_t x = 0; x < l.rows(); ++x) row_stat[x] = ema(row_stat[x], w.row_sum[x], l.m, b, one_b);
}

// u / d for the clip: the reciprocal product corrected by one fused residual step. Vector division costs more
// than the rest of the pass; this equals the correctly rounded quotient except in a few elements per million,
// which are one ulp off (the divisor itself already differs from the package's by float rounding).
inline float divide(float u, float d, float inv_d) {
  const float q = u * inv_d;
  return std::fma(std::fma(-q, d, u), inv_d, q);
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
