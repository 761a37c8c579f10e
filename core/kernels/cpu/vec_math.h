// Vectorisable math for the CPU kernels. std::exp / std::tanh are scalar libm calls that GCC does not vectorise
// without -ffast-math, which made GELU and cross-entropy the largest non-GEMM costs of a GPT-2 step.
// exp_fast<float> is a Cephes-style exp (round-to-nearest range reduction by ln 2, degree-6 polynomial): within
// 1.01 ulp of the exact value for x in [-87, 88], clamped outside (so exp(-inf) gives ~1e-38, not 0). Doubles keep
// std::exp (float64 runs are for gradient checks, where accuracy matters more than speed).
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace tally::kernels::cpu {

template <class T>
inline T exp_fast(T x) {
  return std::exp(x);
}

template <>
inline float exp_fast<float>(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits
  const float shifted = x * 1.44269504088896341f + magic;
  const float n = shifted - magic;                         // round(x / ln 2)
  float r = x - n * 0.693359375f;                          // ln 2 split in two for an exact reduction
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  const float y = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                    1.6666665459e-1f) * r + 5.0000001201e-1f) * z + r + 1.0f;
  const int32_t e = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(magic);
  return y * std::bit_cast<float>(uint32_t(e + 127) << 23);  // * 2^n
}

// 1 / (1 + exp(-x))
template <class T>
inline T sigmoid_fast(T x) {
  return T(1) / (T(1) + exp_fast<T>(-x));
}

}  // namespace tally::kernels::cpu
