// The CPU's vectorised random stream (core/kernels/cpu/philox_lanes.h) against the scalar definitions of
// core/philox.h, bit for bit: Philox words over counters that cross a 2^32 boundary, Box-Muller on the edge words
// (a = 0 and 2^32-1, quadrant and octant boundaries of b) and on many stream words, and the fills built on them.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "core/kernels/cpu/philox_lanes.h"
#include "core/ops.h"
#include "core/random.h"

using namespace tally;
using kernels::cpu::lanes::kLanes;

namespace {
uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
}  // namespace

TEST_SUITE("core") {

TEST_CASE("random lanes: Philox words equal the scalar block, across a 2^32 counter boundary") {
  for (uint64_t seed : {uint64_t(0), uint64_t(1234), uint64_t(0xDEADBEEFCAFEF00Dull)})
    for (uint64_t first : {uint64_t(0), uint64_t(17), (uint64_t(1) << 32) - 5, uint64_t(0xFFFFFFFFFFFFFFF0ull)}) {
      uint32_t w0[kLanes], w1[kLanes];
      kernels::cpu::lanes::philox_words01(seed, first, w0, w1);
      for (int j = 0; j < kLanes; ++j) {
        const rng::Philox4 r = rng::philox4x32_10(seed, first + uint64_t(j));
        CHECK(w0[j] == r.w[0]);
        CHECK(w1[j] == r.w[1]);
      }
    }
}

TEST_CASE("random lanes: Box-Muller equals the scalar definition bit for bit") {
  std::vector<uint32_t> as = {0u, 1u, 2u, 3u, 0x7FFFFFFFu, 0x80000000u, 0xB504F333u, 0xB504F334u, 0xFFFFFFFEu, 0xFFFFFFFFu};
  std::vector<uint32_t> bs;
  for (uint32_t q = 0; q < 4; ++q)  // each quadrant's start, its pi/8 reflection point and the words beside them
    for (uint32_t f : {0u, 1u, (1u << 29) - 1, 1u << 29, (1u << 29) + 1, (1u << 30) - 1}) bs.push_back((q << 30) | f);
  std::vector<uint32_t> a_all, b_all;
  for (uint32_t a : as)
    for (uint32_t b : bs) {
      a_all.push_back(a);
      b_all.push_back(b);
    }
  // And many words from the stream itself.
  for (uint64_t i = 0; i < 20000; ++i) {
    const rng::Philox4 r = rng::philox4x32_10(99, i);
    a_all.push_back(r.w[0]);
    b_all.push_back(r.w[1]);
  }
  while (a_all.size() % kLanes) {
    a_all.push_back(5);
    b_all.push_back(7);
  }
  int mismatches = 0;
  for (size_t i0 = 0; i0 < a_all.size(); i0 += kLanes) {
    float out[kLanes];
    kernels::cpu::lanes::normal_from_bits(&a_all[i0], &b_all[i0], out);
    for (int j = 0; j < kLanes; ++j)
      if (float_bits(out[j]) != float_bits(rng::normal_from_bits(a_all[i0 + j], b_all[i0 + j]))) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("random lanes: normal_, uniform_ and dropout fills equal the scalar stream at any offset and length") {
  for (int64_t n : {1, 15, 16, 17, 1000, 40000}) {  // 40000 > 2^14: the threaded path
    Generator gen(7);
    gen.advance(3);  // fills that start mid-block
    Tensor t = empty({n});
    normal_(t, gen, 0.5, 0.02);
    std::vector<float> got = t.to_vector<float>();
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const auto r = philox(7, uint64_t(3 + i));
      if (float_bits(got[size_t(i)]) != float_bits(float(std::fma(0.02, double(normal_from_bits(r[0], r[1])), 0.5)))) ++bad;
    }
    CHECK_MESSAGE(bad == 0, "normal_ n=", n);
    Tensor u = empty({n});
    uniform_(u, gen, -1.0, 3.0);  // counters [3 + n, 3 + 2n)
    std::vector<float> ug = u.to_vector<float>();
    bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const auto r = philox(7, uint64_t(3 + n + i));
      if (float_bits(ug[size_t(i)]) != float_bits(float(std::fma(4.0, double(uniform_from_bits(r[0])), -1.0)))) ++bad;
    }
    CHECK_MESSAGE(bad == 0, "uniform_ n=", n);
  }
  Generator gd(11);
  Tensor x = ones({5000});
  Tensor y = dropout(x, 0.25, gd);
  std::vector<float> yv = y.to_vector<float>();
  int bad = 0;
  for (int64_t i = 0; i < 5000; ++i) {
    const auto r = philox(11, uint64_t(i));
    const float want = uniform_from_bits(r[0]) >= 0.25f ? float(1.0 / 0.75) : 0.0f;
    if (yv[size_t(i)] != want) ++bad;
  }
  CHECK(bad == 0);
}

}  // TEST_SUITE
