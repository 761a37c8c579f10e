// Philox4x32-10 and the random tensor creators (see random.h for the stream's definition).
#include "core/random.h"

#include <cmath>

#include "core/ops/dispatch.h"

namespace tally {

std::array<uint32_t, 4> philox(uint64_t seed, uint64_t counter) {
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
  return {c0, c1, c2, c3};
}

float normal_from_bits(uint32_t a, uint32_t b) {
  double u1 = (double(a) + 1.0) * (1.0 / 4294967296.0);  // (0, 1]
  double u2 = double(b) * (1.0 / 4294967296.0);          // [0, 1)
  return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

namespace {
template <class Fill>
void fill_random(Tensor& t, Generator& gen, const char* op, Fill&& fill) {
  TALLY_CHECK(t.is_contiguous(), "[", op, "] needs a contiguous tensor, got ", t.str());
  uint64_t offset = gen.advance(uint64_t(t.numel()));
  if (t.device().is_meta()) return;
  fill(offset);
}
}  // namespace

void normal_(Tensor& t, Generator& gen, double mean, double std) {
  fill_random(t, gen, "normal_", [&](uint64_t offset) {
    dispatch_float(t.dtype(), "normal_", [&]<class T>() {
      TALLY_KERNEL(t.device(), random_normal<T>, t.data<T>(), t.numel(), gen.seed(), offset, mean, std);
    });
  });
}

void uniform_(Tensor& t, Generator& gen, double lo, double hi) {
  fill_random(t, gen, "uniform_", [&](uint64_t offset) {
    dispatch_float(t.dtype(), "uniform_", [&]<class T>() {
      TALLY_KERNEL(t.device(), random_uniform<T>, t.data<T>(), t.numel(), gen.seed(), offset, lo, hi);
    });
  });
}

Tensor randn(const Shape& shape, Generator& gen, TensorOptions opt) {
  Tensor t = empty(shape, opt);
  normal_(t, gen, 0.0, 1.0);
  return t;
}

Tensor rand(const Shape& shape, Generator& gen, TensorOptions opt) {
  Tensor t = empty(shape, opt);
  uniform_(t, gen, 0.0, 1.0);
  return t;
}

}  // namespace tally
