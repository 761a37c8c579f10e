// The CUDA caching allocator (core/cuda/cuda_allocator.cu): blocks are rounded up and cached for reuse, so
// the training loop makes no cudaMalloc calls; every block is reported to the device's ledger (held = the
// block's real size). Plain C++: usable from .cpp files (the functions exist only in CUDA builds).
#pragma once
#include "core/allocator.h"

namespace tally::cuda {

// Rounding applied to every CUDA block (also used by predictions).
inline constexpr int64_t kCudaBlockRounding = 512;
inline int64_t cuda_held_bytes(int64_t requested) {
  return (requested + kCudaBlockRounding - 1) / kCudaBlockRounding * kCudaBlockRounding;
}

Allocator& caching_allocator(int device_index);

// cached (the default): as above. direct (environment TALLY_CUDA_ALLOCATOR=direct, read once): every block is a
// cudaMalloc of exactly the requested bytes, freed at once, so that compute-sanitizer sees each tensor's true
// bounds; the ledger still records held = cuda_held_bytes(requested). For debugging only (slow).
enum class CudaAllocatorMode : uint8_t { cached, direct };
CudaAllocatorMode cuda_allocator_mode();

// Counters of one device's caching allocator (cumulative since start, except the byte figures).
struct CachingAllocatorStats {
  int64_t reserved_bytes = 0;  // obtained by cudaMalloc and not yet returned (live + cached)
  int64_t cached_bytes = 0;    // of which sit unused in the free lists
  int64_t device_mallocs = 0;  // successful cudaMalloc calls
  int64_t device_frees = 0;    // cudaFree calls
  int64_t cache_hits = 0;      // allocations served from the cache (exact size or best fit)
  int64_t best_fit_hits = 0;   // of which received a larger cached block (held > rounded request)
};
CachingAllocatorStats caching_allocator_stats(int device_index);

}  // namespace tally::cuda
