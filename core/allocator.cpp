// The CPU and meta allocators, and the device -> allocator lookup (CUDA's lives in core/cuda/).
#include "core/allocator.h"

#include <cstdlib>

#include "core/error.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/cuda_allocator.h"
#endif

namespace tally {

namespace {

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

class CpuAllocator final : public Allocator {
 public:
  Block allocate(int64_t bytes) override {
    TALLY_CHECK(bytes >= 0, "[allocate] negative size ", bytes);
    int64_t held = cpu_held_bytes(bytes);
    void* p = nullptr;
    if (held > 0) {
      p = std::aligned_alloc(kCpuAlignment, size_t(held));
      if (!p)
        fail("out of memory on the CPU: could not allocate ", format_bytes_exact(bytes), " for '", current_owner(),
             "' (", category_name(current_category()), ")\n", ledger(Device::cpu()).table());
    }
    Block b = account(Device::cpu(), bytes, held);
    b.ptr = p;
    return b;
  }
  void deallocate(const Block& b) override {
    std::free(b.ptr);
    ledger(Device::cpu()).on_free(b.category, b.owner, b.requested, b.held);
  }
  int64_t reserved_bytes() const override { return ledger(Device::cpu()).total().live_held; }
};

// Accounts exactly as the CPU allocator does, but holds no memory.
class MetaAllocator final : public Allocator {
 public:
  Block allocate(int64_t bytes) override {
    TALLY_CHECK(bytes >= 0, "[allocate] negative size ", bytes);
    return account(Device::meta(), bytes, cpu_held_bytes(bytes));
  }
  void deallocate(const Block& b) override { ledger(Device::meta()).on_free(b.category, b.owner, b.requested, b.held); }
  int64_t reserved_bytes() const override { return ledger(Device::meta()).total().live_held; }
};

}  // namespace

Allocator& allocator(Device d) {
  static CpuAllocator cpu;
  static MetaAllocator meta;
  switch (d.kind) {
    case DeviceKind::cpu: return cpu;
    case DeviceKind::meta: return meta;
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
