// CPU kernels: fused LayerNorm over the last dim (saving mean and rstd), alone or after a residual add, and its
// backward.
// Backward runs two passes: dx row by row, then dweight/dbias column block by column block, so that no
// thread-private partial sums (and no atomics) are needed.
#include <algorithm>
#include <cmath>

#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

template <class T>
void layernorm_forward(const T* x, const T* weight, const T* bias, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t N,
                       int64_t C, double eps) {
#pragma omp parallel for if (N * C > (1 << 14))
  for (int64_t r = 0; r < N; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) s += xr[c];
    T m = T(s / double(C));
    double v = 0;
#pragma omp simd reduction(+ : v)
    for (int64_t c = 0; c < C; ++c) {
      double d = double(xr[c] - m);
      v += d * d;
    }
    T rs = T(1.0 / std::sqrt(v / double(C) + eps));
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) * rs * weight[c] + bias[c];
    mean[r] = m;
    rstd[r] = rs;
  }
}

// The whole sum, then layernorm_forward of it. On the CPU the norm's row sums (in double, one after the other) bound
// the LayerNorm, not memory: the pass this saves on a GPU is hidden here, and making each row's sum just before its
// norm measured no faster (bench/NOTES.md section 20). The CUDA kernel joins the two.
template <class T>
void add_layernorm_forward(const T* x, const T* residual, T* sum, const T* weight, const T* bias, T* y, acc_t<T>* mean,
                           acc_t<T>* rstd, int64_t N, int64_t C, double eps) {
#pragma omp parallel for if (N * C > (1 << 14))
  for (int64_t r = 0; r < N; ++r) {
    const T *xr = x + r * C, *rr = residual + r * C;
    T* sr = sum + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) sr[c] = xr[c] + rr[c];  // as binary(add) computes it
  }
  layernorm_forward(sum, weight, bias, y, mean, rstd, N, C, eps);
}

template <class T>
void layernorm_backward(const T* dy, const T* x, const T* weight, const acc_t<T>* mean, const acc_t<T>* rstd, T* dx,
                        T* dweight, T* dbias, void* /*workspace: none needed*/, int64_t N, int64_t C) {
  if (dx) {
#pragma omp parallel for if (N * C > (1 << 14))
    for (int64_t r = 0; r < N; ++r) {
      const T* dyr = dy + r * C;
      const T* xr = x + r * C;
      T* dxr = dx + r * C;
      T m = mean[r], rs = rstd[r];
      double sum_g = 0, sum_gn = 0;  // sums of dnorm and dnorm * norm, dnorm = dy * weight
#pragma omp simd reduction(+ : sum_g, sum_gn)
      for (int64_t c = 0; c < C; ++c) {
        T g = dyr[c] * weight[c];
        sum_g += g;
        sum_gn += double(g) * double((xr[c] - m) * rs);
      }
      T mg = T(sum_g / double(C)), mgn = T(sum_gn / double(C));
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        T norm = (xr[c] - m) * rs;
        dxr[c] = rs * (dyr[c] * weight[c] - mg - norm * mgn);
      }
    }
  }
  if (!dweight && !dbias) return;
  constexpr int64_t kBlock = 128;
  int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for if (N * C > (1 << 14))
  for (int64_t bl = 0; bl < blocks; ++bl) {
    int64_t c0 = bl * kBlock, c1 = std::min(C, c0 + kBlock);
    double dw[kBlock] = {}, db[kBlock] = {};
    for (int64_t r = 0; r < N; ++r) {
      const T* dyr = dy + r * C;
      const T* xr = x + r * C;
      T m = mean[r], rs = rstd[r];
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        dw[c - c0] += double(dyr[c]) * double((xr[c] - m) * rs);
        db[c - c0] += double(dyr[c]);
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      if (dweight) dweight[c] = T(dw[c - c0]);
      if (dbias) dbias[c] = T(db[c - c0]);
    }
  }
}

#define TALLY_INSTANTIATE(T)                                                                                     \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, double);        \
  template void add_layernorm_forward<T>(const T*, const T*, T*, const T*, const T*, T*, T*, T*, int64_t, int64_t,   \
                                         double);                                                                \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, void*, int64_t,    \
                                      int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
