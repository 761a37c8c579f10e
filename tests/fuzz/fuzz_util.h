// Helpers shared by the libFuzzer targets in this folder: splitting one input into parts, and reading small
// integers from its front. The targets let only tally::Error (and the flag errors) through; any other exception
// escapes LLVMFuzzerTestOneInput and libFuzzer reports it as a crash, as it does a sanitizer finding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace tally::fuzz {

// Consumes bytes from the front of the input.
struct Cursor {
  std::span<const uint8_t> rest;
  uint8_t byte() {
    if (rest.empty()) return 0;
    uint8_t b = rest[0];
    rest = rest.subspan(1);
    return b;
  }
};

// The input cut at every NUL byte (a NUL never occurs in the text formats, so the parts are what mutations keep).
inline std::vector<std::string_view> split_nul(std::span<const uint8_t> data) {
  std::vector<std::string_view> parts;
  std::string_view s(reinterpret_cast<const char*>(data.data()), data.size());
  size_t start = 0;
  for (;;) {
    size_t nul = s.find('\0', start);
    parts.push_back(s.substr(start, nul == std::string_view::npos ? std::string_view::npos : nul - start));
    if (nul == std::string_view::npos) break;
    start = nul + 1;
  }
  return parts;
}

}  // namespace tally::fuzz
