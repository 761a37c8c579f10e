// The Philox stream of core/philox.h in blocks of kLanes consecutive counters, written so that GCC vectorises
// it (no libm calls, no branches: the exponent split by bit operations instead of clz/ldexp, both quadrant
// polynomials computed and selected). Every value is bit-identical to the scalar definitions in core/philox.h
// (the same IEEE operations in the same order; tests/core/test_random_lanes.cpp compares them); only the
// speed differs (GPT-2 124M's initialisation drew ~124M normals at ~60 ns each through the scalar path).
#pragma once
#include <bit>
#include <cstdint>

#include "core/philox.h"

namespace tally::kernels::cpu::lanes {

inline constexpr int kLanes = 16;

// Words 0 and 1 of Philox4x32-10(seed, first + j) for j in [0, kLanes) (the only ones normals, uniforms and
// dropout read).
inline void philox_words01(uint64_t seed, uint64_t first, uint32_t* __restrict w0, uint32_t* __restrict w1) {
  uint64_t key0[10], key1[10];  // the round keys
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    key0[round] = k0;
    key1[round] = k1;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // Each lane's ten rounds; the lanes vectorise. 32-bit words are held in 64-bit lanes so that the 32x32->64
  // products are plain 64-bit multiplies.
  for (int j = 0; j < kLanes; ++j) {
    const uint64_t c = first + uint64_t(j);
    uint64_t c0 = c & 0xFFFFFFFFu, c1 = c >> 32, c2 = 0, c3 = 0;
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = 0xD2511F53u * c0;
      const uint64_t p1 = 0xCD9E8D57u * c2;
      const uint64_t n0 = (p1 >> 32) ^ c1 ^ key0[round];
      const uint64_t n2 = (p0 >> 32) ^ c3 ^ key1[round];
      c1 = p1 & 0xFFFFFFFFu;
      c3 = p0 & 0xFFFFFFFFu;
      c0 = n0;
      c2 = n2;
    }
    w0[j] = uint32_t(c0);
    w1[j] = uint32_t(c1);
  }
}

// rng::normal_from_bits(a[j], b[j]) for j in [0, kLanes).
inline void normal_from_bits(const uint32_t* __restrict a, const uint32_t* __restrict b, float* __restrict out) {
  for (int j = 0; j < kLanes; ++j) {
    // log_fraction32(a + 1): n = a + 1 in [1, 2^32] is exact in double; its exponent field is floor(log2 n) and
    // the mantissa with a zero exponent is n / 2^e (what ldexp(n, -e) gives, exactly).
    const uint64_t bits = std::bit_cast<uint64_t>(double(uint64_t(a[j]) + 1));
    const int e = int(bits >> 52) - 1023;
    const double m = std::bit_cast<double>((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
    const double r = std::sqrt(-2.0 * rng::log_fraction32_split(m, e));
    // cos_turns(b) without the switch.
    const uint32_t quadrant = b[j] >> 30, f = b[j] & 0x3FFFFFFFu;
    const bool low = f <= (1u << 29);
    const uint32_t h = low ? f : (1u << 30) - f;
    const double phi = 0x1.921fb54442d18p+2 * (double(h) * 0x1p-32);  // ldexp(h, -32): exact either way
    const double cs = rng::cos_small(phi), sn = rng::sin_small(phi);
    const double c = low ? cs : sn, s = low ? sn : cs;
    const double v = (quadrant & 1u) ? s : c;              // quadrants 0, 2: +-c; 1, 3: -+s
    const double signed_v = (quadrant == 1u || quadrant == 2u) ? -v : v;
    out[j] = float(r * signed_v);
  }
}

}  // namespace tally::kernels::cpu::lanes
