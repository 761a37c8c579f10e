// Sums over a row in a fixed grouping (internal to optim/kernels/cpu): kLanes independent accumulators, which the
// compiler keeps in vector registers (a plain `acc +=` loop would need reassociation to vectorize). The grouping
// depends on the length alone, so the results do not depend on the thread count or the vector width.
#pragma once
#include <cstdint>

namespace tally::optim::kernels::cpu::detail {

inline constexpr int kLanes = 16;
inline constexpr int64_t kChunk = 256;  // elements per chunk: a stack buffer in the buffered paths, a unit of the sums

// sum of f(k) over [k0, k1), in double: lane j takes k0 + j, k0 + j + 16, ... (lane 0 also the last (k1-k0) mod 16
// terms); the lanes are then added in order.
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

// One chunk of R rows, x[r][0..len) with len <= kChunk, in one sweep: each row's sum is taken in 16 float lanes
// of at most kChunk/16 terms (~1e-7 relative error), added into rs[r] in double after the last len mod 16 terms;
// the chunk's column sums over the R rows are taken in float and added into c[0..len) in double.
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

}  // namespace tally::optim::kernels::cpu::detail
