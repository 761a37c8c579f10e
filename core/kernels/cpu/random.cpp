// CPU kernels: the Philox stream (core/random.h) as normal and uniform fills, and dropout.
// The affine maps use an explicit fma so that no compiler contraction choice can make CPU and CUDA differ.
#include <cmath>

#include "core/random.h"

#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

template <class T>
void random_normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std) {
#pragma omp parallel for if (n > (1 << 14))
  for (int64_t i = 0; i < n; ++i) {
    auto r = philox(seed, offset + uint64_t(i));
    out[i] = T(std::fma(std, double(normal_from_bits(r[0], r[1])), mean));  // fma: as on CUDA
  }
}

template <class T>
void random_uniform(T* out, int64_t n, uint64_t seed, uint64_t offset, double lo, double hi) {
#pragma omp parallel for if (n > (1 << 14))
  for (int64_t i = 0; i < n; ++i) {
    auto r = philox(seed, offset + uint64_t(i));
    out[i] = T(std::fma(hi - lo, double(uniform_from_bits(r[0])), lo));
  }
}

template <class T>
void dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset) {
  const T scale = T(1.0 / (1.0 - p));
  const float threshold = float(p);
#pragma omp parallel for if (n > (1 << 14))
  for (int64_t i = 0; i < n; ++i) {
    auto r = philox(seed, offset + uint64_t(i));
    y[i] = uniform_from_bits(r[0]) >= threshold ? x[i] * scale : T(0);
  }
}

#define TALLY_INSTANTIATE(T)                                                             \
  template void random_normal<T>(T*, int64_t, uint64_t, uint64_t, double, double);       \
  template void random_uniform<T>(T*, int64_t, uint64_t, uint64_t, double, double);      \
  template void dropout<T>(const T*, T*, int64_t, double, uint64_t, uint64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
