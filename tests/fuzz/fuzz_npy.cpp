// libFuzzer target for the .npy reader: any byte string must parse or throw tally::Error, never crash.
// Built only with -DTALLY_FUZZ=ON under clang (see CMakeLists.txt); not part of tally_tests.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto a = tally::io::parse_npy(std::span<const uint8_t>(data, size), "fuzz");
    if (a.data.size() != size_t(a.numel()) * tally::dtype_size(a.dtype)) std::abort();
    auto again = tally::io::serialize_npy(a.dtype, a.shape, a.data.data());
    auto b = tally::io::parse_npy(again, "fuzz-rewritten");
    if (b.shape != a.shape || b.data != a.data) std::abort();
  } catch (const tally::Error&) {
  }
  return 0;
}
