// Internal helpers shared by the checkpoint readers and writers (llm.c format, safetensors): moving host values
// into a parameter (any device, dtype conversion on the way) and parameter values out to the host.
// Staging buffers are ledgered as Category::other under "checkpoint.staging". Not a public API.
#pragma once
#include <cstring>
#include <vector>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/tensor.h"

namespace tally::models::detail {

// dst (any device, contiguous) = numel(dst) host values of src_dtype at src. Nothing happens on meta.
inline void assign_from_host(const Tensor& dst_in, const void* src, DType src_dtype) {
  Tensor dst = dst_in;
  if (dst.device().is_meta() || dst.numel() == 0) return;
  TALLY_ASSERT(dst.is_contiguous());
  if (dst.device().is_cpu() && dst.dtype() == src_dtype) {
    std::memcpy(dst.data_ptr(), src, size_t(dst.nbytes()));
    return;
  }
  MemoryScope scope(Category::other, "checkpoint.staging");
  NoGradGuard no_grad;
  Tensor staged = empty(dst.shape(), {src_dtype, Device::cpu()});
  std::memcpy(staged.data_ptr(), src, size_t(staged.nbytes()));
  dst.copy_(staged);  // converts dtype and crosses devices
}

// The values of t (any device) as host T, row-major.
template <class T>
std::vector<T> values_of(const Tensor& t) {
  MemoryScope scope(Category::other, "checkpoint.staging");
  NoGradGuard no_grad;
  return t.to_vector<T>();
}

// (rows, cols) row-major -> (cols, rows) row-major.
template <class T>
std::vector<T> transposed(const std::vector<T>& v, int64_t rows, int64_t cols) {
  std::vector<T> out(v.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(c * rows + r)] = v[size_t(r * cols + c)];
  return out;
}

}  // namespace tally::models::detail
