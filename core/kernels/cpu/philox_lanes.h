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

// rng::normal_from_bits(a[j], b[j]) for j in [0, kLanes). Every choice is made between doubles on a condition
// computed in doubles: a 32-bit condition selecting 64-bit values (or the reverse) is a mask of another width,
// which GCC's vectoriser for AVX2 gives up on (AVX-512's mask registers hide it), leaving the loop scalar.
inline void normal_from_bits(const uint32_t* __restrict a, const uint32_t* __restrict b, float* __restrict out) {
  for (int j = 0; j < kLanes; ++j) {
    // log_fraction32(a + 1): n = a + 1 in [1, 2^32] is exact in double (a through 2^52's bits: an unsigned
    // conversion has no AVX2 instruction); its exponent field is floor(log2 n) and the mantissa with a zero
    // exponent is n / 2^e (what ldexp(n, -e) gives, exactly).
    const double n = (std::bit_cast<double>(0x4330000000000000ull | a[j]) - 0x1p52) + 1.0;
    const uint64_t bits = std::bit_cast<uint64_t>(n);
    // k = e - 32, through 2^52's bits too (a 64-bit integer conversion needs AVX-512): exact, the field is 1023-1055.
    const double k = std::bit_cast<double>((bits >> 52) | 0x4330000000000000ull) - (0x1p52 + 1055.0);
    const double m = std::bit_cast<double>((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
    const double r = std::sqrt(-2.0 * rng::log_fraction32_split(m, k));
    // cos_turns(b) without the switch; the quadrant and the fraction as doubles (exact: below 2^30).
    const double quadrant = double(int32_t(b[j] >> 30)), f = double(int32_t(b[j] & 0x3FFFFFFFu));
    const bool low = f <= 0x1p29;
    const double h = low ? f : 0x1p30 - f;                    // exact
    const double phi = 0x1.921fb54442d18p+2 * (h * 0x1p-32);  // ldexp(h, -32): exact either way
    const double cs = rng::cos_small(phi), sn = rng::sin_small(phi);
    const double c = low ? cs : sn, s = low ? sn : cs;
    const bool odd = quadrant == 1.0 || quadrant == 3.0;
    const double v = odd ? s : c;  // quadrants 0, 2: +-c; 1, 3: -+s
    const double signed_v = (quadrant == 1.0 || quadrant == 2.0) ? -v : v;
    out[j] = float(r * signed_v);
  }
}

}  // namespace tally::kernels::cpu::lanes
