// Allocators: the only places memory is obtained. Each reports every block to its device's ledger.
// CPU: 64-byte aligned blocks (held = requested rounded up to 64); blocks of 64 KiB+ are cached for reuse. Meta: no memory at all, same accounting
// as the CPU (so a dry run predicts CPU bytes exactly). CUDA: a caching allocator (core/cuda_allocator.cu).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>

#include "core/device.h"
#include "core/ledger.h"

namespace tally {

struct Block {
  void* ptr = nullptr;
  int64_t requested = 0;
  int64_t held = 0;
  Category category = Category::other;
  uint32_t owner = 0;
  Device device;
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Allocates `bytes` under the current MemoryScope; throws tally::Error on failure (out of memory), with the
  // ledger's table in the message.
  virtual Block allocate(int64_t bytes) = 0;
  virtual void deallocate(const Block& b) = 0;
  // Bytes obtained from the system and not returned (live + cached). Equals live held bytes without caching.
  virtual int64_t reserved_bytes() const = 0;
  // Returns cached, unused memory to the system (no-op without caching).
  virtual void release_cached() {}
};

Allocator& allocator(Device d);

// A ceiling on the CPU's live held bytes (0, the default: none). An allocation that would go above it fails
// exactly as one the system refuses (tally::OutOfMemory "out of memory on the CPU ..." with the ledger's table), so
// a memory budget can be enforced, and out-of-memory handling tested, without exhausting the machine.
void set_cpu_memory_limit(int64_t bytes);
int64_t cpu_memory_limit();
// The ceiling set for the lifetime of the object, the previous one restored afterwards; nullopt: left as it is.
class CpuMemoryLimitScope {
 public:
  explicit CpuMemoryLimitScope(std::optional<int64_t> bytes);
  ~CpuMemoryLimitScope();
  CpuMemoryLimitScope(const CpuMemoryLimitScope&) = delete;
  CpuMemoryLimitScope& operator=(const CpuMemoryLimitScope&) = delete;

 private:
  std::optional<int64_t> previous_;
};

// Rounding the CPU allocator applies (also used by predictions).
inline constexpr int64_t kCpuAlignment = 64;
inline int64_t cpu_held_bytes(int64_t requested) {
  return (requested + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
}

}  // namespace tally
