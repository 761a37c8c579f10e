// FNV-1a, 64 bits: the small, stable hash of names (the bf16 rounding key) and of a data set's sizes and samples
// (the loader's position). Not for anything adversarial.
#pragma once
#include <cstdint>

namespace tally {

struct Fnv1a64 {
  uint64_t h = 0xCBF29CE484222325ull;
  void add_byte(uint8_t b) { h = (h ^ b) * 0x100000001B3ull; }
  // The low `bytes` bytes of x, least significant first.
  void add_le(uint64_t x, int bytes) {
    for (int i = 0; i < bytes; ++i) add_byte(uint8_t(x >> (8 * i)));
  }
};

}  // namespace tally
