// The memory ledger: every byte tally holds is recorded here, by category and by owner name.
// Allocators call on_alloc/on_free; a MemoryScope (thread-local stack) says which category and owner the
// allocations made inside it belong to. Each device has its own ledger (cpu, cuda:N, meta).
// Bytes are kept twice: `requested` (what the tensor needs) and `held` (what the allocator actually set aside
// for it: alignment, block rounding). A caching allocator's pool beyond live blocks is reported by the
// allocator itself (Allocator::reserved_bytes), not here.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/device.h"

namespace tally {

enum class Category : uint8_t { parameter, gradient, optimizer_state, activation, workspace, other };
inline constexpr int kNumCategories = 6;
const char* category_name(Category c);

struct Usage {
  int64_t live_requested = 0;
  int64_t live_held = 0;
  int64_t peak_requested = 0;
  int64_t peak_held = 0;
  int64_t allocations = 0;  // live allocation count
};

class Ledger {
 public:
  // Interns an owner name; the id is what storages keep.
  uint32_t owner_id(const std::string& name);
  const std::string& owner_name(uint32_t id) const;

  void on_alloc(Category c, uint32_t owner, int64_t requested, int64_t held);
  void on_free(Category c, uint32_t owner, int64_t requested, int64_t held);

  Usage total() const;
  Usage category(Category c) const;
  Usage owner(const std::string& name) const;  // zero usage for an unknown name
  // Owners with any live or peak bytes, sorted by name.
  std::vector<std::pair<std::string, Usage>> owners() const;
  // The same per (owner, category): an owner's bytes in each category it allocated in (a gradient adopted from
  // an activation's storage moves between the two), sorted by category, then name.
  struct OwnerInCategory {
    std::string owner;
    Category category;
    Usage usage;
  };
  std::vector<OwnerInCategory> owners_by_category() const;
  // Live bytes of owners whose name starts with `prefix` (requested bytes).
  int64_t live_requested_with_prefix(const std::string& prefix) const;

  // Restarts peak tracking from the current live figures (per category, owner and total).
  void reset_peaks();
  // A table of categories: live and peak, requested and held.
  std::string table() const;

 private:
  mutable std::mutex mu_;
  std::array<Usage, kNumCategories> categories_{};
  Usage total_{};
  std::vector<std::string> owner_names_;
  std::map<std::string, uint32_t> owner_ids_;
  std::vector<Usage> owners_;
  std::vector<std::array<Usage, kNumCategories>> owner_categories_;  // by owner id
};

Ledger& ledger(Device d = Device::cpu());

// Sets the category and owner of allocations made on this thread while it lives. Nested scopes stack.
class MemoryScope {
 public:
  MemoryScope(Category c, std::string owner);
  ~MemoryScope();
  MemoryScope(const MemoryScope&) = delete;
  MemoryScope& operator=(const MemoryScope&) = delete;
};
Category current_category();
const std::string& current_owner();

// Formats a count with thousands separators: "1,234,567"; a byte count: "1,234,567 B" or human "1.18 MiB".
std::string format_count(int64_t n);
std::string format_bytes_exact(int64_t bytes);
std::string format_bytes_human(int64_t bytes);

}  // namespace tally
