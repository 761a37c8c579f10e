// NumPy .npy files: a writer (for `tally inspect --dump` and debugging) and a reader (for tests' round trips).
// Written files use format version 1.0 (2.0 only if the header would exceed 64 KiB), C order, little-endian.
// dtypes: f32 '<f4', f64 '<f8', i32 '<i4', i64 '<i8', u16 '<u2', u8 '|u1'. NumPy has no bfloat16, so bf16 data
// is written as '<f4' after exact conversion to float (reading such a file back gives f32).
#pragma once
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace tally::io {

struct NpyArray {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;  // [] for a 0-d array (one element)
  std::vector<uint8_t> data;   // numel * dtype_size(dtype) bytes, C order, little-endian
  int64_t numel() const;
  // The elements as T; T must be dtype's C++ type (float for f32, ...).
  template <class T>
  std::vector<T> as() const {
    check_dtype(dtype_v<T>);
    std::vector<T> out(data.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), data.data(), data.size());
    return out;
  }
  void check_dtype(DType wanted) const;  // throws naming both dtypes when they differ
};

// Writes numel(shape) elements of `dtype` from `data` (may be null when numel is 0) atomically.
void write_npy(const std::filesystem::path& path, DType dtype, std::span<const int64_t> shape, const void* data);
// The same file as bytes in memory.
std::vector<uint8_t> serialize_npy(DType dtype, std::span<const int64_t> shape, const void* data);

// Reads a .npy written by tally or NumPy (versions 1.0, 2.0, 3.0; the dtypes above; C order only).
// Errors name the file and the problem (bad magic, unsupported dtype, Fortran order, size mismatch, ...).
NpyArray read_npy(const std::filesystem::path& path);
NpyArray parse_npy(std::span<const uint8_t> bytes, std::string_view source_name);

}  // namespace tally::io
