// The block plan of a factored tensor (internal to optim/kernels/cpu): its rows cut into a fixed number of blocks,
// one task each, that depends on the shape alone; and the step's workspace, carved to match. This is what makes
// the reductions deterministic: each task sums its block's columns into partials of its own, and the partials are
// combined in task order, so results do not depend on the thread count. Also: the index of a row statistic in
// general (P, n, Q, m, S) layouts.
#pragma once
#include <algorithm>
#include <cstdint>

#include "optim/kernels/optim_kernels.h"

namespace tally::optim::kernels::cpu::detail {

inline constexpr int64_t kParallelMin = 1 << 14;  // below this many elements a step runs on one thread
inline constexpr int kRowsTogether = 8;           // rows the statistics pass streams at once (g only: 8 streams)
inline constexpr int kExtras = 4;                 // per-task scalar sums a pass may accumulate

// Each task owns a block of rows of one matrix p: task t is block t % blocks of matrix t / blocks.
struct BlockPlan {
  int64_t K = 0;               // Q*m*S: contiguous elements per (p, i)
  int64_t blocks = 1;          // row blocks per matrix
  int64_t rows_per_block = 1;  // a multiple of kRowsTogether (except a last, shorter block)
  int64_t tasks = 1;           // P * blocks
  bool fast = true;            // Q*S == 1: rows are the row statistic's unit
};

inline BlockPlan make_block_plan(const FactoredLayout& l) {
  BlockPlan pl;
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

// With base == nullptr only the size is computed (factored_workspace_bytes).
inline FactoredWorkspace carve(void* base, const FactoredLayout& l, const BlockPlan& pl) {
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

// Column sums from the task partials, in task order (all matrices p): block 0, then each further block added in
// order, streaming through the partials (a column's sum is the same as adding its terms one by one).
inline void combine_columns(const FactoredLayout& l, const BlockPlan& pl, const double* partials, double* out) {
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

// The per-task extras (kExtras each) added into extras_out (if given), in task order.
inline void sum_task_extras(const FactoredWorkspace& w, int64_t tasks, double* extras_out) {
  if (!extras_out) return;
  for (int64_t t = 0; t < tasks; ++t)
    for (int e = 0; e < kExtras; ++e) extras_out[e] += w.task_extras[t * kExtras + e];
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

}  // namespace tally::optim::kernels::cpu::detail
