// Reader and writer for the safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes
// of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data.
// The reader memory-maps the file (or borrows a buffer) and validates everything the reference implementation
// does, so a bad file throws tally::Error naming the file, the tensor and the problem instead of crashing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/io/file.h"

namespace tally::io {

// The element types of safetensors, in the reference implementation's enum order (the writer's default order
// depends on it). Sub-byte types (F4, F6_*) are not supported: a file using them is rejected as unknown dtype.
enum class SafeDType : uint8_t {
  boolean, u8, i8, f8_e5m2, f8_e4m3, f8_e8m0, i16, u16, f16, bf16, i32, u32, f32, c64, f64, i64, u64
};
size_t safe_dtype_size(SafeDType t);
const char* safe_dtype_name(SafeDType t);                           // the format's spelling: "F32", "BF16", ...
std::optional<SafeDType> safe_dtype_from_name(std::string_view name);  // nullopt when unknown
SafeDType to_safe_dtype(DType t);                                   // every tally dtype has one
std::optional<DType> to_tally_dtype(SafeDType t);                   // nullopt where tally has no such type

// Largest header the reader accepts (the reference implementation's limit).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// One tensor of a file being read. `bytes` points into the reader's mapping: valid while the reader lives
// (moving the reader keeps it valid). The bytes are little-endian and may be unaligned: copy, don't cast.
struct SafetensorsEntry {
  std::string name = {};
  SafeDType dtype = SafeDType::f32;
  std::vector<int64_t> shape;      // [] for a 0-d tensor (one element)
  uint64_t begin = 0, end = 0;     // data_offsets, relative to the start of the data section
  std::span<const uint8_t> bytes;  // the tensor's end - begin bytes
  int64_t numel() const;
};

class SafetensorsReader {
 public:
  // Maps and validates the file.
  explicit SafetensorsReader(const std::filesystem::path& path);
  // Validates a buffer already in memory, which must outlive the reader. source_name appears in errors.
  static SafetensorsReader from_memory(std::span<const uint8_t> bytes, std::string source_name);

  const std::string& source() const { return source_; }
  uint64_t header_size() const { return header_size_; }  // N, the JSON header's length including padding
  // All tensors ordered by their position in the data section.
  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }
  const std::map<std::string, std::string, std::less<>>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(std::string_view name) const;  // nullptr when absent
  const SafetensorsEntry& at(std::string_view name) const;    // throws naming the file and the tensor

  // The tensor's values converted to float / double. Sources: F32, F64, BF16, F16 (others throw).
  std::vector<float> read_floats(std::string_view name) const;
  std::vector<double> read_doubles(std::string_view name) const;
  // The values of an integer or BOOL tensor as int64 (a U64 value above INT64_MAX throws).
  std::vector<int64_t> read_int64s(std::string_view name) const;
  // The raw elements, when the tensor's dtype is exactly T's (float, double, bf16, int32_t, int64_t, ...).
  template <class T>
  std::vector<T> read_typed(std::string_view name) const {
    const SafetensorsEntry& e = at(name);
    if (e.dtype != to_safe_dtype(dtype_v<T>)) wrong_dtype(e, safe_dtype_name(to_safe_dtype(dtype_v<T>)));
    std::vector<T> out(size_t(e.numel()));
    if (!out.empty()) std::memcpy(out.data(), e.bytes.data(), e.bytes.size());
    return out;
  }

 private:
  SafetensorsReader() = default;
  void parse(std::span<const uint8_t> file);
  [[noreturn]] void wrong_dtype(const SafetensorsEntry& e, const char* wanted) const;

  std::string source_;
  MappedFile map_;  // empty for from_memory
  uint64_t header_size_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t, std::less<>> by_name_;  // name -> index into entries_
  std::map<std::string, std::string, std::less<>> metadata_;
};

// Only the header of a file: its 8-byte length and JSON are read (a multi-gigabyte checkpoint costs a few
// kilobytes), and validated as the reader does, against the file's size: names, dtypes, shapes and offsets. The
// entries' `bytes` are empty.
struct SafetensorsHeader {
  std::string source = {};
  uint64_t header_size = 0;                  // N, the JSON header's length including padding
  uint64_t data_size = 0;                    // the bytes after the header
  std::vector<SafetensorsEntry> tensors;     // ordered by their position in the data section
  std::map<std::string, std::string, std::less<>> metadata = {};
};
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path);

// ---- writing ----

// A tensor to write. The writer reads numel * element-size bytes from `data` (may be null when numel is 0) and
// does not keep the pointer.
struct SafetensorsTensor {
  std::string name = {};
  SafeDType dtype = SafeDType::f32;
  std::vector<int64_t> shape = {};
  const void* data = nullptr;
};

enum class SafetensorsOrder {
  // As Python's safetensors does: by dtype (its enum order, larger types first), then by name. Every tensor
  // then starts at a multiple of its element size, and files match Python's byte for byte.
  reference,
  as_given,  // the caller's order
};

struct SafetensorsWriteOptions {
  std::map<std::string, std::string> metadata = {};  // written as "__metadata__" (sorted by key) when non-empty
  SafetensorsOrder order = SafetensorsOrder::reference;
};

// Writes a safetensors file atomically (AtomicFileWriter). The JSON header is compact, lists "__metadata__"
// first and the tensors in data order, and is padded with spaces to a multiple of 8 bytes, as the reference
// implementation does. Throws on duplicate or empty names, the name "__metadata__", negative dimensions.
void write_safetensors(const std::filesystem::path& path, std::span<const SafetensorsTensor> tensors,
                       const SafetensorsWriteOptions& options = {});
// The same file as bytes in memory (tests, fuzz seeds, small exports).
std::vector<uint8_t> serialize_safetensors(std::span<const SafetensorsTensor> tensors,
                                           const SafetensorsWriteOptions& options = {});

// IEEE half precision to float (subnormals, infinities and NaN included).
float f16_to_float(uint16_t bits);

}  // namespace tally::io
