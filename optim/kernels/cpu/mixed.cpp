// CPU kernels of mixed precision (bf16 parameters over f32 master weights): stochastic rounding of the master into
// the bf16 parameter, and the sum of squares and in-place scale of bf16 gradients. bf16 training computes on CUDA
// only; these exist so the kernel contract holds on both backends and give the CUDA kernels a CPU reference (the
// same Philox bits, the same rounding, the same summation order).
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/philox.h"
#include "optim/kernels/optim_kernels.h"

namespace tally::optim::kernels::cpu {

void round_to_bf16(const float* master, bf16* param, int64_t n, uint64_t seed, uint64_t offset) {
  const int64_t blocks = int64_t(round_to_bf16_blocks(n));
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const rng::Philox4 r = rng::philox4x32_10(seed, offset + uint64_t(b));
    for (int64_t e = 8 * b; e < std::min(n, 8 * b + 8); ++e) {
      const int64_t k = e - 8 * b;
      uint32_t u;
      std::memcpy(&u, master + e, 4);
      param[e].bits = stochastic_bf16_bits(u, r.w[k / 2] >> (16 * (k % 2)));
    }
  }
}

void sum_squares_bf16(const bf16* x, int64_t n, double* out, void*) {
  double acc = 0;  // one sequential sum: the order is fixed (CPU bf16 gradients only appear in tests)
  for (int64_t i = 0; i < n; ++i) {
    const double v = double(bf16_to_float(x[i]));
    acc += v * v;
  }
  out[0] += acc;
}

void scale_bf16(bf16* x, int64_t n, double scale) {
  const float s = float(scale);
  for (int64_t i = 0; i < n; ++i) x[i] = float_to_bf16(bf16_to_float(x[i]) * s);
}

void refuse_fused_bf16(const FusedBf16& fused, const char* op) {
  TALLY_CHECK(!fused.grad, "[", op, "] a fused bf16 step (FusedBf16) is CUDA's only: on the CPU the gradient is ",
              "widened and the parameter rounded around the step");
}

}  // namespace tally::optim::kernels::cpu
