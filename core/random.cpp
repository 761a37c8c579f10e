// Philox4x32-10 and the random tensor creators (see random.h for the stream's definition).
#include "core/random.h"

#include "core/ops/dispatch.h"
#include "core/philox.h"

namespace tally {

// Both delegate to core/philox.h, the arithmetic the CUDA backend shares bit for bit.
std::array<uint32_t, 4> philox(uint64_t seed, uint64_t counter) {
  rng::Philox4 r = rng::philox4x32_10(seed, counter);
  return {r.w[0], r.w[1], r.w[2], r.w[3]};
}

float normal_from_bits(uint32_t a, uint32_t b) { return rng::normal_from_bits(a, b); }

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
    dispatch_float(t, "normal_", [&]<class T>() {
      TALLY_KERNEL(t.device(), random_normal<T>, t.data<T>(), t.numel(), gen.seed(), offset, mean, std);
    });
  });
}

void uniform_(Tensor& t, Generator& gen, double lo, double hi) {
  fill_random(t, gen, "uniform_", [&](uint64_t offset) {
    dispatch_float(t, "uniform_", [&]<class T>() {
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
