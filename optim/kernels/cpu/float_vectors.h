// 16 floats and 8 doubles as one value (floatx16, doublex8), and the few operations the optimizer kernels use on
// them. Internal to optim/kernels/cpu. GNU vector extensions: element-wise IEEE arithmetic, exactly the scalar
// code's rounding, one AVX-512 register each (two AVX2 registers elsewhere). The operations are also defined for a
// plain float, so that per-element arithmetic is written once, as a template, for one element or 16 side by side.
#pragma once
#include <cmath>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace tally::optim::kernels::cpu::detail {

using floatx16 = float __attribute__((vector_size(64)));
using doublex8 = double __attribute__((vector_size(64)));

inline floatx16 load_x16(const float* p) {
  floatx16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_x16(float* p, floatx16 v) { std::memcpy(p, &v, sizeof v); }

// x in every lane of V (V = float: x itself).
template <class V>
inline V splat(float x);
template <>
inline float splat<float>(float x) {
  return x;
}
template <>
inline floatx16 splat<floatx16>(float x) {
  // Written out (not a loop): GCC then sees one broadcast, which it hoists out of the loops that call this.
  return floatx16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}

// a*b + c rounded once per lane, as std::fma (the vector operators never fuse: the kernels build with
// -ffp-contract=off).
inline float fused_mul_add(float a, float b, float c) { return std::fma(a, b, c); }
inline floatx16 fused_mul_add(floatx16 a, floatx16 b, floatx16 c) {
#if defined(__AVX512F__)
  return floatx16(_mm512_fmadd_ps(__m512(a), __m512(b), __m512(c)));
#else
  floatx16 r;
  for (int j = 0; j < 16; ++j) r[j] = std::fma(a[j], b[j], c[j]);
  return r;
#endif
}

// Lanes 0-7 and 8-15 widened to double.
inline doublex8 low_half_to_double(floatx16 v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), doublex8);
}
inline doublex8 high_half_to_double(floatx16 v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), doublex8);
}

// c[0..16) += double(v[0..16)).
inline void add_to_doubles(double* c, floatx16 v) {
  doublex8 c0, c1;
  std::memcpy(&c0, c, sizeof c0);
  std::memcpy(&c1, c + 8, sizeof c1);
  c0 += low_half_to_double(v);
  c1 += high_half_to_double(v);
  std::memcpy(c, &c0, sizeof c0);
  std::memcpy(c + 8, &c1, sizeof c1);
}

// v squared in double, to add to a running sum of squares: for 16 lanes, folded into 8 (low^2 + high^2) to add to
// a doublex8 accumulator.
inline double squared(float v) { return double(v) * double(v); }
inline doublex8 squared(floatx16 v) {
  const doublex8 lo = low_half_to_double(v), hi = high_half_to_double(v);
  return lo * lo + hi * hi;
}

}  // namespace tally::optim::kernels::cpu::detail
