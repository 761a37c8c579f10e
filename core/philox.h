// The arithmetic of tally's random stream, shared bit for bit by the CPU (core/random.cpp) and CUDA
// (core/kernels/cuda/random.cu) backends: Philox4x32-10, and Box-Muller with its log and cos built from
// IEEE-exact operations only (+ - * / sqrt, fma, exact scalings) so that both backends draw identical values;
// libm's and CUDA's log/cos differ in the last bits. Where a product feeds an addition without an explicit
// fma, the product is exact, so the result does not depend on whether a compiler contracts it.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TALLY_HD __host__ __device__ __forceinline__
#else
#define TALLY_HD inline
#endif

namespace tally::rng {

struct Philox4 {
  uint32_t w[4];
};

// Philox4x32-10 block for a 64-bit key and a 128-bit counter (hi words zero here).
TALLY_HD Philox4 philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// [0, 1) from the top 24 bits (exact in float).
TALLY_HD float uniform_from_bits(uint32_t bits) { return float(bits >> 8) * (1.0f / 16777216.0f); }

TALLY_HD int floor_log2(uint64_t n) {  // n > 0
#if defined(__CUDA_ARCH__)
  return 63 - __clzll((long long)n);
#else
  return 63 - __builtin_clzll(n);
#endif
}

// ln(m 2^k) for m in [1, 2) and an integer k (as a double): the body of log_fraction32 once n = m 2^(k+32) is split
// (the CPU's vectorised path, core/kernels/cpu/philox_lanes.h, splits n with bit operations and calls this too). m
// is first brought into [sqrt(1/2), sqrt(2)) (halved, k + 1: both exact) without a branch, which the vectorised
// path needs; then ln m = 2 atanh((m-1)/(m+1)), the power of two folded in exactly.
TALLY_HD double log_fraction32_split(double m, double k) {
  const bool halve = m > 0x1.6a09e667f3bcdp+0;
  m = halve ? m * 0.5 : m;
  k = halve ? k + 1.0 : k;
  double s = (m - 1.0) / (m + 1.0);  // m - 1 and m + 1 are exact (m has at most 33 significant bits)
  double z = s * s;
  double p = 0x1.8618618618618p-5;  // 1/21, then down to 1/3 (|s| <= 0.1716: the z^10 term is below 2^-55)
  p = std::fma(p, z, 0x1.af286bca1af28p-5);
  p = std::fma(p, z, 0x1.e1e1e1e1e1e1ep-5);
  p = std::fma(p, z, 0x1.1111111111111p-4);
  p = std::fma(p, z, 0x1.3b13b13b13b14p-4);
  p = std::fma(p, z, 0x1.745d1745d1746p-4);
  p = std::fma(p, z, 0x1.c71c71c71c71cp-4);
  p = std::fma(p, z, 0x1.2492492492492p-3);
  p = std::fma(p, z, 0x1.999999999999ap-3);
  p = std::fma(p, z, 0x1.5555555555555p-2);
  double atanh_s = std::fma(s * z, p, s);
  double low = std::fma(k, 0x1.a39ef35793c76p-33, 2.0 * atanh_s);  // ln 2 split: k * hi is exact
  return k * 0x1.62e42fee00000p-1 + low;
}

// ln(n / 2^32) for an integer 1 <= n <= 2^32: n = m 2^e with m in [sqrt(1/2), sqrt(2)),
// ln m = 2 atanh((m-1)/(m+1)), and the power of two folded in exactly (full relative accuracy near n = 2^32).
TALLY_HD double log_fraction32(uint64_t n) {
  const int e = floor_log2(n);
  return log_fraction32_split(std::ldexp(double(n), -e), double(e - 32));  // ldexp: exact
}

// cos(phi) and sin(phi) for 0 <= phi <= pi/4 (Taylor to the phi^19 term, error below 2^-53).
TALLY_HD double cos_small(double phi) {
  double w = phi * phi;
  double c = -0x1.6827863b97d97p-53;
  c = std::fma(c, w, 0x1.ae7f3e733b81fp-45);
  c = std::fma(c, w, -0x1.93974a8c07c9dp-37);
  c = std::fma(c, w, 0x1.1eed8eff8d898p-29);
  c = std::fma(c, w, -0x1.27e4fb7789f5cp-22);
  c = std::fma(c, w, 0x1.a01a01a01a01ap-16);
  c = std::fma(c, w, -0x1.6c16c16c16c17p-10);
  c = std::fma(c, w, 0x1.5555555555555p-5);
  c = std::fma(c, w, -0.5);
  return std::fma(c, w, 1.0);
}
TALLY_HD double sin_small(double phi) {
  double w = phi * phi;
  double c = -0x1.2f49b46814157p-57;
  c = std::fma(c, w, 0x1.952c77030ad4ap-49);
  c = std::fma(c, w, -0x1.ae7f3e733b81fp-41);
  c = std::fma(c, w, 0x1.6124613a86d09p-33);
  c = std::fma(c, w, -0x1.ae64567f544e4p-26);
  c = std::fma(c, w, 0x1.71de3a556c734p-19);
  c = std::fma(c, w, -0x1.a01a01a01a01ap-13);
  c = std::fma(c, w, 0x1.1111111111111p-7);
  c = std::fma(c, w, -0x1.5555555555555p-3);
  return std::fma(phi * w, c, phi);
}

// cos(2 pi b / 2^32), reduced exactly with integer arithmetic to an angle in [0, pi/4].
TALLY_HD double cos_turns(uint32_t b) {
  const uint32_t quadrant = b >> 30, f = b & 0x3FFFFFFFu;  // angle = 2 pi (quadrant/4 + f/2^32)
  const bool low = f <= (1u << 29);                        // f/2^32 <= 1/8
  const uint32_t h = low ? f : (1u << 30) - f;             // reflect about pi/4: cos <-> sin
  const double phi = 0x1.921fb54442d18p+2 * std::ldexp(double(h), -32);
  const double c = low ? cos_small(phi) : sin_small(phi);  // cos(2 pi f/2^32)
  const double s = low ? sin_small(phi) : cos_small(phi);  // sin(2 pi f/2^32)
  switch (quadrant) {
    case 0: return c;
    case 1: return -s;
    case 2: return -c;
    default: return s;
  }
}

// Standard normal from two words: sqrt(-2 ln u1) cos(2 pi u2), u1 = (a+1)/2^32 in (0, 1], u2 = b/2^32.
TALLY_HD float normal_from_bits(uint32_t a, uint32_t b) {
  const double ln_u1 = log_fraction32(uint64_t(a) + 1);
  const double r = std::sqrt(-2.0 * ln_u1);
  return float(r * cos_turns(b));
}

}  // namespace tally::rng
