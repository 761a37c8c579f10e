// The CUDA caching allocator. Sizes are rounded to kCudaBlockRounding; freed blocks go to per-size free lists
// and are handed out again: exact size first, else the smallest cached block at most 1/8 larger (its real
// size is what the ledger records as held). Blocks are never split, so a steady training loop, which asks
// for the same sizes every step, stops calling cudaMalloc after its first steps. All work runs on one stream,
// so a block freed on the host may be reused at once: its next user is ordered after its last.
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda/common.cuh"
#include "core/cuda/cuda_allocator.h"
#include "core/device.h"
#include "core/ledger.h"

namespace tally::cuda {

namespace {

// Makes `device` current for the scope, restoring the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    TALLY_CUDA_CHECK("allocate", cudaGetDevice(&previous_));
    if (previous_ != device) TALLY_CUDA_CHECK("allocate", cudaSetDevice(device));
    switched_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// TALLY_CUDA_ALLOCATOR: unset, empty or "cached" (the default), or "direct"; a typo is refused, not taken for the
// default.
CudaAllocatorMode mode_from_environment() {
  const char* e = std::getenv("TALLY_CUDA_ALLOCATOR");
  if (!e || e[0] == '\0' || std::strcmp(e, "cached") == 0) return CudaAllocatorMode::cached;
  if (std::strcmp(e, "direct") == 0) return CudaAllocatorMode::direct;
  fail("environment variable TALLY_CUDA_ALLOCATOR='", e, "': set it to cached (the default) or direct");
}

class CachingAllocator final : public Allocator {
 public:
  explicit CachingAllocator(int device) : device_(device), direct_(cuda_allocator_mode() == CudaAllocatorMode::direct) {}

  Block allocate(int64_t bytes) override {
    TALLY_CHECK(bytes >= 0, "[allocate] negative size ", bytes, " on cuda:", device_);
    const int64_t rounded = cuda_held_bytes(bytes);
    void* ptr = nullptr;
    int64_t held = 0;
    if (rounded > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      if (direct_) {
        ptr = device_malloc(bytes, bytes);
        held = rounded;
        live_.emplace(ptr, bytes);
      } else {
        if (!take_cached(rounded, &ptr, &held)) {
          ptr = device_malloc(bytes, rounded);
          held = rounded;
        }
        live_.emplace(ptr, held);
      }
    }
    Ledger& l = ledger(Device::cuda(device_));
    Block b;
    b.ptr = ptr;
    b.requested = bytes;
    b.held = held;
    b.category = current_category();
    b.owner = l.owner_id(current_owner());
    b.device = Device::cuda(device_);
    l.on_alloc(b.category, b.owner, b.requested, b.held);
    return b;
  }

  // Never throws (called from Storage destructors): the block goes back to its free list.
  void deallocate(const Block& b) override {
    if (b.ptr) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(b.ptr);
      if (it != live_.end() && direct_) {
        (void)cudaFree(b.ptr);  // synchronises with the device first
        (void)cudaGetLastError();
        reserved_ -= it->second;
        frees_ += 1;
        live_.erase(it);
      } else if (it != live_.end()) {
        free_[it->second].push_back(b.ptr);
        cached_ += it->second;
        live_.erase(it);
      }
    }
    ledger(Device::cuda(device_)).on_free(b.category, b.owner, b.requested, b.held);
  }

  int64_t reserved_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return reserved_;
  }

  void release_cached() override {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

  CachingAllocatorStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    CachingAllocatorStats s;
    s.reserved_bytes = reserved_;
    s.cached_bytes = cached_;
    s.device_mallocs = mallocs_;
    s.device_frees = frees_;
    s.cache_hits = hits_;
    s.best_fit_hits = best_fit_hits_;
    return s;
  }

 private:
  // Exact size first, then the smallest cached block of at most rounded + rounded/8 bytes.
  bool take_cached(int64_t rounded, void** ptr, int64_t* held) {
    auto it = free_.lower_bound(rounded);
    while (it != free_.end() && it->second.empty()) ++it;
    if (it == free_.end() || it->first > rounded + rounded / 8) return false;
    *ptr = it->second.back();
    it->second.pop_back();
    *held = it->first;
    cached_ -= it->first;
    hits_ += 1;
    if (it->first != rounded) best_fit_hits_ += 1;
    return true;
  }

  void* device_malloc(int64_t requested, int64_t rounded) {
    DeviceGuard guard(device_);
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size_t(rounded));
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // an allocation failure is not sticky: clear it and retry with the cache emptied
      release_cached_locked();
      err = cudaMalloc(&p, size_t(rounded));
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      const std::string what =
          cat("out of memory on cuda:", device_, ": could not allocate ", format_bytes_exact(requested), " (",
              format_bytes_human(requested), ") for '", current_owner(), "' (", category_name(current_category()),
              "): ", cudaGetErrorName(err), "\n", ledger(Device::cuda(device_)).table(), "reserved by tally: ",
              format_bytes_exact(reserved_), " (", format_bytes_human(reserved_), "); device free: ",
              format_bytes_human(int64_t(free_b)), " of ", format_bytes_human(int64_t(total_b)));
      if (err == cudaErrorMemoryAllocation) throw OutOfMemory(what);
      fail(what);  // another failure of cudaMalloc is not the caller's to recover from
    }
    reserved_ += rounded;
    mallocs_ += 1;
    return p;
  }

  void release_cached_locked() {
    if (cached_ == 0) return;
    DeviceGuard guard(device_);
    // Work still queued may use a block freed on the host a moment ago: let it finish first (a watched wait, so an
    // out-of-memory retry cannot hang behind a stalled collective; an earlier kernel's error is raised here).
    synchronize_device("cuda_allocator");
    for (auto& [size, ptrs] : free_) {
      for (void* p : ptrs) {
        (void)cudaFree(p);
        reserved_ -= size;
        frees_ += 1;
      }
      ptrs.clear();
    }
    free_.clear();
    cached_ = 0;
    (void)cudaGetLastError();
  }

  const int device_;
  const bool direct_;
  mutable std::mutex mu_;
  std::map<int64_t, std::vector<void*>> free_;  // rounded size -> cached blocks
  std::unordered_map<void*, int64_t> live_;     // live block -> its real size
  int64_t reserved_ = 0, cached_ = 0;
  int64_t mallocs_ = 0, frees_ = 0, hits_ = 0, best_fit_hits_ = 0;
};

constexpr int kMaxDevices = 64;

CachingAllocator& instance(int device_index) {
  TALLY_CHECK(device_index >= 0 && device_index < cuda_device_count(), "[allocate] cuda:", device_index,
              " does not exist (", cuda_device_count(), " CUDA devices", cuda_device_count() == 0 ? ": no driver or GPU" : "",
              ")");
  // Allocators live for the whole process (never destroyed: tensors may be freed during static teardown).
  static CachingAllocator** table = [] {
    auto** t = new CachingAllocator*[kMaxDevices];
    for (int i = 0; i < kMaxDevices; ++i) t[i] = nullptr;
    return t;
  }();
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  TALLY_CHECK(device_index < kMaxDevices, "[allocate] cuda:", device_index, " beyond the ", kMaxDevices, " supported");
  if (!table[device_index]) table[device_index] = new CachingAllocator(device_index);
  return *table[device_index];
}

}  // namespace

CudaAllocatorMode cuda_allocator_mode() {
  static const CudaAllocatorMode mode = mode_from_environment();
  return mode;
}

Allocator& caching_allocator(int device_index) { return instance(device_index); }

CachingAllocatorStats caching_allocator_stats(int device_index) { return instance(device_index).stats(); }

}  // namespace tally::cuda
