// The CUDA caching allocator (core/cuda/cuda_allocator.cu): blocks are rounded up and cached for reuse, so
// the training loop makes no cudaMalloc calls; every block is reported to the device's ledger.
#pragma once
#include "core/allocator.h"

namespace tally::cuda {

// Rounding applied to every CUDA block (also used by predictions).
inline constexpr int64_t kCudaBlockRounding = 512;
inline int64_t cuda_held_bytes(int64_t requested) {
  return (requested + kCudaBlockRounding - 1) / kCudaBlockRounding * kCudaBlockRounding;
}

Allocator& caching_allocator(int device_index);

}  // namespace tally::cuda
