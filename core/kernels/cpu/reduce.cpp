// CPU kernels: sums and maxima over one dim of an (outer, n, inner) contiguous view; bias add and its backward.
#include <algorithm>
#include <vector>

#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;
// Accumulator type: double for float sums (sums of many float terms lose digits otherwise).
template <class T> using Acc = double;
}  // namespace

template <class T>
void sum_dim(const T* in, T* out, void* /*workspace: none needed*/, int64_t outer, int64_t n, int64_t inner) {
  if (inner == 1 && outer == 1) {  // one long row: split it across threads
    Acc<T> acc = 0;
#pragma omp parallel for simd reduction(+ : acc) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) acc += in[i];
    out[0] = T(acc);
    return;
  }
  if (inner == 1) {
#pragma omp parallel for if (outer * n > kParallelMin)
    for (int64_t o = 0; o < outer; ++o) {
      const T* p = in + o * n;
      Acc<T> acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; ++i) acc += p[i];
      out[o] = T(acc);
    }
    return;
  }
  // Each (o, column block) sums its columns over n rows: contiguous row segments, no write sharing.
  constexpr int64_t kBlock = 256;
  int64_t blocks = (inner + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) if (outer * n * inner > kParallelMin)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t bl = 0; bl < blocks; ++bl) {
      int64_t c0 = bl * kBlock, c1 = std::min(inner, c0 + kBlock);
      Acc<T> acc[kBlock] = {};
      for (int64_t i = 0; i < n; ++i) {
        const T* row = in + (o * n + i) * inner;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += row[c];
      }
      for (int64_t c = c0; c < c1; ++c) out[o * inner + c] = T(acc[c - c0]);
    }
  }
}

template <class T>
void max_dim(const T* in, T* out, int32_t* argmax, int64_t outer, int64_t n, int64_t inner) {
#pragma omp parallel for collapse(2) if (outer * n * inner > kParallelMin)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < inner; ++c) {
      const T* p = in + o * n * inner + c;
      T best = p[0];
      int32_t arg = 0;
      for (int64_t i = 1; i < n; ++i) {
        T v = p[i * inner];
        if (v > best || (v != v && best == best)) {  // NaN wins, as in torch
          best = v;
          arg = int32_t(i);
        }
      }
      out[o * inner + c] = best;
      argmax[o * inner + c] = arg;
    }
  }
}

template <class T>
void max_dim_backward(const T* dy, const int32_t* argmax, T* dx, int64_t outer, int64_t n, int64_t inner) {
  std::fill(dx, dx + outer * n * inner, T(0));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < inner; ++c) dx[(o * n + argmax[o * inner + c]) * inner + c] = dy[o * inner + c];
}

template <class T>
void add_bias(T* y, const T* bias, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t r = 0; r < N; ++r) {
    T* row = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] += bias[c];
  }
}

template <class T>
void bias_backward(const T* dy, T* dbias, void* /*workspace: none needed*/, int64_t N, int64_t C) {
  sum_dim(dy, dbias, nullptr, 1, N, C);
}

#define TALLY_INSTANTIATE(T)                                                                   \
  template void sum_dim<T>(const T*, T*, void*, int64_t, int64_t, int64_t);                           \
  template void max_dim<T>(const T*, T*, int32_t*, int64_t, int64_t, int64_t);                 \
  template void max_dim_backward<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t);  \
  template void add_bias<T>(T*, const T*, int64_t, int64_t);                                   \
  template void bias_backward<T>(const T*, T*, void*, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
