// CPU kernels: softmax and log-softmax over the last dim, forward and backward.
#include <algorithm>
#include <cmath>

#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

template <class T>
void softmax_forward(SoftmaxKind kind, const T* x, T* y, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > (1 << 15))
  for (int64_t r = 0; r < N; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    T mx = -INFINITY;
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, xr[c]);
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(double(xr[c] - mx));
    if (kind == SoftmaxKind::softmax) {
      T inv = T(1.0 / sum);
      for (int64_t c = 0; c < C; ++c) yr[c] = std::exp(xr[c] - mx) * inv;
    } else {
      T lse = mx + T(std::log(sum));
      for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] - lse;
    }
  }
}

template <class T>
void softmax_backward(SoftmaxKind kind, const T* y, const T* dy, T* dx, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > (1 << 15))
  for (int64_t r = 0; r < N; ++r) {
    const T* yr = y + r * C;
    const T* dyr = dy + r * C;
    T* dxr = dx + r * C;
    double dot = 0;
    if (kind == SoftmaxKind::softmax) {
      for (int64_t c = 0; c < C; ++c) dot += double(dyr[c]) * double(yr[c]);
      for (int64_t c = 0; c < C; ++c) dxr[c] = yr[c] * (dyr[c] - T(dot));
    } else {
      for (int64_t c = 0; c < C; ++c) dot += double(dyr[c]);
      for (int64_t c = 0; c < C; ++c) dxr[c] = dyr[c] - std::exp(yr[c]) * T(dot);
    }
  }
}

#define TALLY_INSTANTIATE(T)                                                              \
  template void softmax_forward<T>(SoftmaxKind, const T*, T*, int64_t, int64_t);          \
  template void softmax_backward<T>(SoftmaxKind, const T*, const T*, T*, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
