// A counter-based random stream (Philox4x32-10) whose numbers depend only on (seed, offset, element index),
// never on the backend or the thread count: CPU and CUDA draw identical values.
// Element i of a draw of n values uses counter (offset + i); the generator's offset then advances by n.
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace tally {

// Philox4x32-10 block for a 64-bit key and a 128-bit counter (hi word zero here).
std::array<uint32_t, 4> philox(uint64_t seed, uint64_t counter);

// Element values of the stream (shared by every backend).
inline float uniform_from_bits(uint32_t bits) { return float(bits >> 8) * (1.0f / 16777216.0f); }  // [0, 1)
float normal_from_bits(uint32_t a, uint32_t b);  // Box-Muller on two words, in double (core/philox.h)

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }
  // Reserves n counters and returns the first.
  uint64_t advance(uint64_t n) {
    uint64_t first = offset_;
    offset_ += n;
    return first;
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

Tensor randn(const Shape& shape, Generator& gen, TensorOptions opt = {});
Tensor rand(const Shape& shape, Generator& gen, TensorOptions opt = {});
// Fills in place (outside autograd): normal(mean, std) / uniform [lo, hi).
void normal_(Tensor& t, Generator& gen, double mean, double std);
void uniform_(Tensor& t, Generator& gen, double lo, double hi);

}  // namespace tally
