// libFuzzer target for the safetensors reader: any byte string must either parse into tensors whose data lies
// inside the buffer, or throw tally::Error; never crash, hang, or allocate beyond a small multiple of its size.
// Built only with -DTALLY_FUZZ=ON under clang (see CMakeLists.txt); not part of tally_tests.
// Run: ./build-fuzz/fuzz_safetensors -max_total_time=60 [corpus_dir] (seed with tests/reference/*.safetensors).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  try {
    auto reader = tally::io::SafetensorsReader::from_memory(bytes, "fuzz");
    uint64_t total = 0;
    for (const auto& e : reader.tensors()) {
      // Every span must lie inside the input (ASan would also catch a read outside it below).
      if (e.bytes.size() && (e.bytes.data() < data || e.bytes.data() + e.bytes.size() > data + size)) std::abort();
      total += e.bytes.size();
      // Exercise the converters on whatever dtype the entry has; unsupported ones throw tally::Error.
      try {
        auto f = reader.read_floats(e.name);
        if (f.size() != size_t(e.numel())) std::abort();
      } catch (const tally::Error&) {
      }
      try {
        auto i = reader.read_int64s(e.name);
        if (i.size() != size_t(e.numel())) std::abort();
      } catch (const tally::Error&) {
      }
    }
    if (total > size) std::abort();  // tensors are packed inside the data section
    // What was read must write back and re-read to the same tensors.
    std::vector<tally::io::SafetensorsTensor> again;
    for (const auto& e : reader.tensors())
      again.push_back({.name = e.name, .dtype = e.dtype, .shape = e.shape, .data = e.bytes.data()});
    tally::io::SafetensorsWriteOptions opts;
    opts.metadata.insert(reader.metadata().begin(), reader.metadata().end());
    auto bytes2 = tally::io::serialize_safetensors(again, opts);
    auto reader2 = tally::io::SafetensorsReader::from_memory(bytes2, "fuzz-rewritten");
    if (reader2.tensors().size() != reader.tensors().size()) std::abort();
  } catch (const tally::Error&) {
  }
  return 0;
}
