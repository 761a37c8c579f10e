// libFuzzer target for a tally checkpoint's manifest.json (train::parse_manifest): any text must give the three
// files' sizes and checksums, or throw tally::Error naming the file; never crash or let a JSON-library exception
// escape. Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with
// tests/fuzz/corpus/fuzz_checkpoint_manifest.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "train/checkpoint.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const train::Manifest m = train::parse_manifest({reinterpret_cast<const char*>(data), size}, "manifest.json");
    if (m.files.size() != 3 || m.step < 0) std::abort();
  } catch (const Error& e) {
    if (std::string(e.what()).find("manifest.json") == std::string::npos) std::abort();
  }
  return 0;
}
