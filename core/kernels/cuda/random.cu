// CUDA kernels: the Philox stream of core/random.h as normal and uniform fills, and dropout. The per-element
// arithmetic is core/philox.h, shared with the CPU backend, so both draw bit-identical values (element i uses
// counter offset + i). The affine maps use an explicit fma, exactly as the CPU kernels do. bf16 draws are the f32
// draws rounded to nearest even (so a bf16 model starts from the f32 model's weights, rounded).
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/kernels.h"
#include "core/philox.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::grid_for;
using tally::cuda::stream;

// out[i] = mean + std * normal(Philox(seed, offset + i)); out: (n).
template <class T>
__global__ void random_normal_kernel(T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset, double mean,
                                     double std) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const rng::Philox4 r = rng::philox4x32_10(seed, offset + uint64_t(i));
    out[i] = from_double_dev<T>(fma(std, double(rng::normal_from_bits(r.w[0], r.w[1])), mean));
  }
}

// out[i] = lo + (hi - lo) * u, u uniform in [0, 1) from Philox(seed, offset + i); out: (n).
template <class T>
__global__ void random_uniform_kernel(T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset, double lo,
                                      double hi) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const rng::Philox4 r = rng::philox4x32_10(seed, offset + uint64_t(i));
    out[i] = from_double_dev<T>(fma(hi - lo, double(rng::uniform_from_bits(r.w[0])), lo));
  }
}

// y[i] = x[i] * scale where uniform(Philox(seed, offset + i)) >= threshold, else 0; x, y: (n).
template <class T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, float threshold, acc_t<T> scale,
                               uint64_t seed, uint64_t offset) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const rng::Philox4 r = rng::philox4x32_10(seed, offset + uint64_t(i));
    y[i] = from_acc<T>(rng::uniform_from_bits(r.w[0]) >= threshold ? to_acc(x[i]) * scale : acc_t<T>(0));
  }
}

}  // namespace

// out (n) from N(mean, std^2), element i drawn with counter offset + i.
template <class T>
void random_normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std) {
  if (n <= 0) return;
  random_normal_kernel<T><<<grid_for(n, 256), 256, 0, stream()>>>(out, n, seed, offset, mean, std);
  TALLY_CUDA_LAUNCH_CHECK("random_normal_kernel");
}

// out (n) uniform over [lo, hi), element i drawn with counter offset + i.
template <class T>
void random_uniform(T* out, int64_t n, uint64_t seed, uint64_t offset, double lo, double hi) {
  if (n <= 0) return;
  random_uniform_kernel<T><<<grid_for(n, 256), 256, 0, stream()>>>(out, n, seed, offset, lo, hi);
  TALLY_CUDA_LAUNCH_CHECK("random_uniform_kernel");
}

// y = x * keep / (1 - p), keep = uniform(counter offset + i) >= p; x, y: (n).
template <class T>
void dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset) {
  if (n <= 0) return;
  const acc_t<T> scale = acc_t<T>(1.0 / (1.0 - p));  // as the CPU computes it
  dropout_kernel<T><<<grid_for(n, 256), 256, 0, stream()>>>(x, y, n, float(p), scale, seed, offset);
  TALLY_CUDA_LAUNCH_CHECK("dropout_kernel");
}

#define TALLY_INSTANTIATE(T)                                                             \
  template void random_normal<T>(T*, int64_t, uint64_t, uint64_t, double, double);       \
  template void random_uniform<T>(T*, int64_t, uint64_t, uint64_t, double, double);      \
  template void dropout<T>(const T*, T*, int64_t, double, uint64_t, uint64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
