// 16 floats and 8 doubles as one value (floatx16, doublex8), and the few operations the optimizer kernels use on
// them. Internal to optim/kernels/cpu. Element-wise IEEE arithmetic, exactly the scalar code's rounding, so every
// machine computes the same bits. With AVX-512: GNU vector extensions of 64 bytes, one register each. Elsewhere: a
// pair of 32-byte vectors (one AVX register each), with the same operators: GCC keeps a 64-byte vector that no
// register holds in memory and splits every operation through it, which made CAME's CPU step about 3x slower on an
// AVX2 machine than this pair. The operations are also defined for a plain float, so that per-element arithmetic
// is written once, as a template, for one element or 16 side by side.
#pragma once
#include <cmath>
#include <cstring>
#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace tally::optim::kernels::cpu::detail {

#if defined(__AVX512F__)
using floatx16 = float __attribute__((vector_size(64)));
using doublex8 = double __attribute__((vector_size(64)));
#else
using floatx8 = float __attribute__((vector_size(32)));
using doublex4 = double __attribute__((vector_size(32)));

// Lanes 0-7 in lo, 8-15 in hi (V: floatx8 or doublex4; S its element).
template <class V, class S>
struct VectorPair {
  V lo, hi;
  S operator[](int j) const { return j < int(sizeof(V) / sizeof(S)) ? lo[j] : hi[j - int(sizeof(V) / sizeof(S))]; }
  VectorPair& operator+=(VectorPair b) {
    lo += b.lo;
    hi += b.hi;
    return *this;
  }
  friend VectorPair operator+(VectorPair a, VectorPair b) { return {a.lo + b.lo, a.hi + b.hi}; }
  friend VectorPair operator-(VectorPair a, VectorPair b) { return {a.lo - b.lo, a.hi - b.hi}; }
  friend VectorPair operator*(VectorPair a, VectorPair b) { return {a.lo * b.lo, a.hi * b.hi}; }
  friend VectorPair operator/(VectorPair a, VectorPair b) { return {a.lo / b.lo, a.hi / b.hi}; }
  friend VectorPair operator-(VectorPair a) { return {-a.lo, -a.hi}; }
  // With a scalar: every lane (as the vector extensions broadcast it).
  friend VectorPair operator+(VectorPair a, S b) { return {a.lo + b, a.hi + b}; }
  friend VectorPair operator-(VectorPair a, S b) { return {a.lo - b, a.hi - b}; }
  friend VectorPair operator*(VectorPair a, S b) { return {a.lo * b, a.hi * b}; }
  friend VectorPair operator*(S a, VectorPair b) { return {a * b.lo, a * b.hi}; }
  friend VectorPair operator/(VectorPair a, S b) { return {a.lo / b, a.hi / b}; }
};
using floatx16 = VectorPair<floatx8, float>;
using doublex8 = VectorPair<doublex4, double>;
#endif
static_assert(sizeof(floatx16) == 64 && sizeof(doublex8) == 64);

#if defined(__AVX512F__)
inline floatx16 load_x16(const float* p) {
  floatx16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_x16(float* p, floatx16 v) { std::memcpy(p, &v, sizeof v); }
#else
// Half by half: copied whole, the pair would be a block of memory to GCC, and so would every value made from it.
inline floatx16 load_x16(const float* p) {
  floatx8 lo, hi;
  std::memcpy(&lo, p, sizeof lo);
  std::memcpy(&hi, p + 8, sizeof hi);
  return {lo, hi};
}
inline void store_x16(float* p, floatx16 v) {
  std::memcpy(p, &v.lo, sizeof v.lo);
  std::memcpy(p + 8, &v.hi, sizeof v.hi);
}
#endif

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
#if defined(__AVX512F__)
  return floatx16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#else
  const floatx8 h = {x, x, x, x, x, x, x, x};
  return {h, h};
#endif
}

// a*b + c rounded once per lane, as std::fma (the vector operators never fuse: the kernels build with
// -ffp-contract=off).
inline float fused_mul_add(float a, float b, float c) { return std::fma(a, b, c); }
inline floatx16 fused_mul_add(floatx16 a, floatx16 b, floatx16 c) {
#if defined(__AVX512F__)
  return floatx16(_mm512_fmadd_ps(__m512(a), __m512(b), __m512(c)));
#elif defined(__FMA__)
  return {floatx8(_mm256_fmadd_ps(__m256(a.lo), __m256(b.lo), __m256(c.lo))),
          floatx8(_mm256_fmadd_ps(__m256(a.hi), __m256(b.hi), __m256(c.hi)))};
#else
  floatx16 r;
  for (int j = 0; j < 8; ++j) {
    r.lo[j] = std::fma(a.lo[j], b.lo[j], c.lo[j]);
    r.hi[j] = std::fma(a.hi[j], b.hi[j], c.hi[j]);
  }
  return r;
#endif
}

// Lanes 0-7 and 8-15 widened to double.
#if defined(__AVX512F__)
inline doublex8 low_half_to_double(floatx16 v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), doublex8);
}
inline doublex8 high_half_to_double(floatx16 v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), doublex8);
}
#else
inline doublex8 eight_to_double(floatx8 v) {
  return {doublex4{double(v[0]), double(v[1]), double(v[2]), double(v[3])},
          doublex4{double(v[4]), double(v[5]), double(v[6]), double(v[7])}};
}
inline doublex8 low_half_to_double(floatx16 v) { return eight_to_double(v.lo); }
inline doublex8 high_half_to_double(floatx16 v) { return eight_to_double(v.hi); }
#endif

// c[0..16) += double(v[0..16)).
inline void add_to_doubles(double* c, floatx16 v) {
#if defined(__AVX512F__)
  doublex8 c0, c1;
  std::memcpy(&c0, c, sizeof c0);
  std::memcpy(&c1, c + 8, sizeof c1);
  c0 += low_half_to_double(v);
  c1 += high_half_to_double(v);
  std::memcpy(c, &c0, sizeof c0);
  std::memcpy(c + 8, &c1, sizeof c1);
#else
  const doublex8 d[2] = {low_half_to_double(v), high_half_to_double(v)};
  for (int h = 0; h < 2; ++h) {
    doublex4 c0, c1;  // half by half, as load_x16
    std::memcpy(&c0, c + 8 * h, sizeof c0);
    std::memcpy(&c1, c + 8 * h + 4, sizeof c1);
    c0 += d[h].lo;
    c1 += d[h].hi;
    std::memcpy(c + 8 * h, &c0, sizeof c0);
    std::memcpy(c + 8 * h + 4, &c1, sizeof c1);
  }
#endif
}

// v squared in double, to add to a running sum of squares: for 16 lanes, folded into 8 (low^2 + high^2) to add to
// a doublex8 accumulator.
inline double squared(float v) { return double(v) * double(v); }
inline doublex8 squared(floatx16 v) {
  const doublex8 lo = low_half_to_double(v), hi = high_half_to_double(v);
  return lo * lo + hi * hi;
}

}  // namespace tally::optim::kernels::cpu::detail
