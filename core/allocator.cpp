// The CPU and meta allocators, and the device -> allocator lookup (CUDA's lives in core/cuda/).
#include "core/allocator.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.h"

#include "core/cuda/cuda_allocator.h"  // cuda_held_bytes (plain C++; the allocator itself exists in CUDA builds only)

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace tally {

namespace {

std::atomic<int64_t> g_cpu_limit{0};

Block account(Device d, int64_t requested, int64_t held) {
  Ledger& l = ledger(d);
  Block b;
  b.requested = requested;
  b.held = held;
  b.category = current_category();
  b.owner = l.owner_id(current_owner());
  b.device = d;
  l.on_alloc(b.category, b.owner, requested, held);
  return b;
}

// Large blocks ask for transparent huge pages (Linux, where THP is in "madvise" mode): the optimizer and
// elementwise passes stream through whole parameter-sized tensors, and with 4 KiB pages the hardware prefetchers
// stop at every page (measured in bench/NOTES.md, change 2). Only the 2 MiB-aligned interior is advised; the
// ledger is unaffected (it counts requested and held bytes, not pages).
void advise_huge_pages([[maybe_unused]] void* p, [[maybe_unused]] int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!p || bytes < int64_t(2 * kHuge)) return;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);  // a hint: failure changes nothing
#endif
}

// 64-byte aligned blocks. Blocks of 64 KiB and more are cached by exact size when freed and handed out again,
// so a training loop that allocates the same shapes every step stops paying for fresh pages (page faults and
// zeroing by the kernel) after its first step. Small blocks go straight back to malloc, which caches them well.
class CpuAllocator final : public Allocator {
 public:
  // The allocator is a static: at exit the cached blocks go back to malloc (LeakSanitizer found them lost).
  ~CpuAllocator() override { release_cached(); }

  Block allocate(int64_t bytes) override {
    TALLY_CHECK(bytes >= 0, "[allocate] negative size ", bytes);
    int64_t held = cpu_held_bytes(bytes);
    if (const int64_t limit = g_cpu_limit.load(std::memory_order_relaxed); limit > 0 && held > 0) {
      const int64_t live = ledger(Device::cpu()).total().live_held;
      if (live + held > limit)
        throw OutOfMemory(cat("out of memory on the CPU: could not allocate ", format_bytes_exact(bytes), " for '",
                              current_owner(), "' (", category_name(current_category()), "): ", format_bytes_exact(live),
                              " are live and the limit is ", format_bytes_exact(limit), " (set_cpu_memory_limit)\n",
                              ledger(Device::cpu()).table()));
    }
    void* p = take_cached(held);
    if (!p && held > 0) {
      p = std::aligned_alloc(kCpuAlignment, size_t(held));
      if (!p) {
        release_cached();
        p = std::aligned_alloc(kCpuAlignment, size_t(held));
      }
      if (!p)
        throw OutOfMemory(cat("out of memory on the CPU: could not allocate ", format_bytes_exact(bytes), " for '",
                              current_owner(), "' (", category_name(current_category()), ")\n",
                              ledger(Device::cpu()).table()));
      advise_huge_pages(p, held);
      std::lock_guard<std::mutex> lock(mu_);
      obtained_ += held;
    }
    Block b = account(Device::cpu(), bytes, held);
    b.ptr = p;
    return b;
  }

  void deallocate(const Block& b) override {
    ledger(Device::cpu()).on_free(b.category, b.owner, b.requested, b.held);
    if (!b.ptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (b.held >= kCacheMin && cached_ + b.held <= kCacheMax) {
      free_[b.held].push_back(b.ptr);
      cached_ += b.held;
      return;
    }
    std::free(b.ptr);
    obtained_ -= b.held;
  }

  int64_t reserved_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return obtained_;
  }

  void release_cached() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, ptrs] : free_)
      for (void* p : ptrs) {
        std::free(p);
        obtained_ -= size;
      }
    free_.clear();
    cached_ = 0;
  }

 private:
  static constexpr int64_t kCacheMin = 64 << 10;
  static constexpr int64_t kCacheMax = int64_t(8) << 30;

  void* take_cached(int64_t held) {
    if (held < kCacheMin) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(held);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    cached_ -= held;
    return p;
  }

  mutable std::mutex mu_;
  std::unordered_map<int64_t, std::vector<void*>> free_;  // held size -> cached blocks
  int64_t cached_ = 0;    // bytes in free_
  int64_t obtained_ = 0;  // bytes obtained from malloc and not returned (live + cached)
};

// Accounts as the allocator of the backend it plans for (the CPU's 64-byte rounding, or CUDA's rounding of a fresh
// block), but holds no memory.
class MetaAllocator final : public Allocator {
 public:
  explicit MetaAllocator(DeviceKind plans) : device_(Device::meta(plans)) {}
  Block allocate(int64_t bytes) override {
    TALLY_CHECK(bytes >= 0, "[allocate] negative size ", bytes);
    const int64_t held = device_.plans == DeviceKind::cuda ? cuda::cuda_held_bytes(bytes) : cpu_held_bytes(bytes);
    return account(device_, bytes, held);
  }
  void deallocate(const Block& b) override { ledger(Device::meta()).on_free(b.category, b.owner, b.requested, b.held); }
  int64_t reserved_bytes() const override { return ledger(Device::meta()).total().live_held; }

 private:
  Device device_;
};

}  // namespace

void set_cpu_memory_limit(int64_t bytes) {
  TALLY_CHECK(bytes >= 0, "set_cpu_memory_limit: negative limit ", bytes);
  g_cpu_limit.store(bytes);
}

int64_t cpu_memory_limit() { return g_cpu_limit.load(); }

CpuMemoryLimitScope::CpuMemoryLimitScope(std::optional<int64_t> bytes) {
  if (!bytes) return;
  previous_ = cpu_memory_limit();
  set_cpu_memory_limit(*bytes);
}

CpuMemoryLimitScope::~CpuMemoryLimitScope() {
  if (previous_) set_cpu_memory_limit(*previous_);
}

Allocator& allocator(Device d) {
  static CpuAllocator cpu;
  static MetaAllocator meta_cpu(DeviceKind::cpu), meta_cuda(DeviceKind::cuda);
  switch (d.kind) {
    case DeviceKind::cpu: return cpu;
    case DeviceKind::meta: return d.plans == DeviceKind::cuda ? meta_cuda : meta_cpu;
    case DeviceKind::cuda:
#ifdef TALLY_HAS_CUDA
      return cuda::caching_allocator(d.index);
#else
      fail("device ", d.str(), " requested, but tally was built without CUDA (configure with -DTALLY_CUDA=ON)");
#endif
  }
  fail("no allocator for device ", d.str());
}

}  // namespace tally
