// CPU kernels: the Philox stream (core/random.h) as normal and uniform fills, and dropout.
// The affine maps use an explicit fma so that no compiler contraction choice can make CPU and CUDA differ.
// Elements are drawn kLanes at a time through the vectorised forms of philox_lanes.h (same bits as the scalar
// definitions in core/philox.h).
#include <algorithm>
#include <cmath>

#include "core/kernels/cpu/philox_lanes.h"
#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

namespace {

using lanes::kLanes;

// fn(i0, len, w0, w1) for every block [i0, i0 + len) of at most kLanes elements, w0/w1 the stream's words of
// counters offset + i0 + j.
template <class Fn>
void for_each_block(int64_t n, uint64_t seed, uint64_t offset, Fn&& fn) {
  const int64_t blocks = (n + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static) if (n > (1 << 14))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    alignas(64) uint32_t w0[kLanes], w1[kLanes];
    const int64_t i0 = blk * kLanes;
    lanes::philox_words01(seed, offset + uint64_t(i0), w0, w1);
    fn(i0, std::min<int64_t>(kLanes, n - i0), w0, w1);
  }
}

}  // namespace

template <class T>
void random_normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std) {
  for_each_block(n, seed, offset, [&](int64_t i0, int64_t len, const uint32_t* w0, const uint32_t* w1) {
    alignas(64) float z[kLanes];
    lanes::normal_from_bits(w0, w1, z);
    for (int64_t j = 0; j < len; ++j) out[i0 + j] = T(std::fma(std, double(z[j]), mean));  // fma: as on CUDA
  });
}

template <class T>
void random_uniform(T* out, int64_t n, uint64_t seed, uint64_t offset, double lo, double hi) {
  for_each_block(n, seed, offset, [&](int64_t i0, int64_t len, const uint32_t* w0, const uint32_t*) {
    for (int64_t j = 0; j < len; ++j) out[i0 + j] = T(std::fma(hi - lo, double(rng::uniform_from_bits(w0[j])), lo));
  });
}

template <class T>
void dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset) {
  const T scale = T(1.0 / (1.0 - p));
  const float threshold = float(p);
  for_each_block(n, seed, offset, [&](int64_t i0, int64_t len, const uint32_t* w0, const uint32_t*) {
    for (int64_t j = 0; j < len; ++j)
      y[i0 + j] = rng::uniform_from_bits(w0[j]) >= threshold ? x[i0 + j] * scale : T(0);
  });
}

#define TALLY_INSTANTIATE(T)                                                             \
  template void random_normal<T>(T*, int64_t, uint64_t, uint64_t, double, double);       \
  template void random_uniform<T>(T*, int64_t, uint64_t, uint64_t, double, double);      \
  template void dropout<T>(const T*, T*, int64_t, double, uint64_t, uint64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
