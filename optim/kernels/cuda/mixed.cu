// CUDA kernels of mixed precision (bf16 parameters over f32 master weights): stochastic rounding of the master
// into the bf16 parameter (one Philox block per 8 elements, 16-byte loads and stores when aligned), and the sum of
// squares (global-norm clipping) and in-place scale of bf16 gradients. Same bits as optim/kernels/cpu/mixed.cpp.
#include "core/kernels/cuda/convert.cuh"
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

namespace {

// param[e] = master[e] rounded stochastically, a thread per 8-element Philox block (16-byte stores when vec);
// master, param: (n).
__global__ void round_to_bf16_kernel(const float* master, bf16* param, int64_t n, uint64_t seed, uint64_t offset,
                                     bool vec) {
  const int64_t blocks = int64_t(round_to_bf16_blocks(n));
  for (int64_t b = blockIdx.x * int64_t(kThreads) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * kThreads) {
    const rng::Philox4 r = rng::philox4x32_10(seed, offset + uint64_t(b));
    const int64_t e0 = 8 * b;
    if (vec && e0 + 8 <= n) {
      const float4 lo = reinterpret_cast<const float4*>(master + e0)[0];
      const float4 hi = reinterpret_cast<const float4*>(master + e0)[1];
      const float x[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      store_rounded_bf16x8(param + e0, x, r);
    } else {
      for (int64_t e = e0; e < imin(n, e0 + 8); ++e) param[e].bits = rounded_bf16(master[e], r, int(e - e0));
    }
  }
}

// Block sums of float(x[e])^2 (slot 0); x: (n); block_sums: (gridDim.x, kSums).
__global__ void sum_squares_bf16_kernel(int64_t n, const bf16* x, double* block_sums) {
  double acc = 0;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const double v = double(tally::kernels::cuda::bf16_to_float_dev(x[e]));
    acc += v * v;
  }
  write_block_sum(acc, block_sums);
}

// x[e] = bf16(float(x[e]) * s), rounded to nearest even; x: (n).
__global__ void scale_bf16_kernel(int64_t n, bf16* x, float s) {
  using tally::kernels::cuda::bf16_to_float_dev;
  using tally::kernels::cuda::float_to_bf16_dev;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads)
    x[e] = float_to_bf16_dev(bf16_to_float_dev(x[e]) * s);
}

}  // namespace

// param (n) = master (n) rounded stochastically to bf16, element e with bits of Philox4x32-10(seed, offset + e / 8).
void round_to_bf16(const float* master, bf16* param, int64_t n, uint64_t seed, uint64_t offset) {
  if (n == 0) return;
  const bool vec = aligned16({master, param});
  round_to_bf16_kernel<<<rounded_blocks_grid(n), kThreads, 0, stream()>>>(master, param, n, seed, offset, vec);
  TALLY_CUDA_LAUNCH_CHECK("round_to_bf16");
}

// out[0] += the sum of float(x)^2; x: (n); workspace: dense_workspace_bytes(n) bytes.
void sum_squares_bf16(const bf16* x, int64_t n, double* out, void* workspace) {
  if (n == 0) return;
  const DenseWorkspace w = carve_dense(workspace);
  const int blocks = reduce_blocks(n);
  sum_squares_bf16_kernel<<<blocks, kThreads, 0, stream()>>>(n, x, w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("sum_squares_bf16");
  launch_add_block_sums(w.block_sums, blocks, out, 0, 0, 0, 1, "sum_squares_bf16 total");
}

// x[e] = bf16(float(x[e]) * s); x: (n).
void scale_bf16(bf16* x, int64_t n, double s) {
  if (n == 0) return;
  const unsigned blocks = unsigned(imin((n + kThreads - 1) / kThreads, 65535));
  scale_bf16_kernel<<<blocks, kThreads, 0, stream()>>>(n, x, float(s));
  TALLY_CUDA_LAUNCH_CHECK("scale_bf16");
}

}  // namespace tally::optim::kernels::cuda
