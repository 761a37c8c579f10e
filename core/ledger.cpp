// The memory ledger (see ledger.h): per-category, per-owner and total byte accounting, plus MemoryScope.
#include "core/ledger.h"

#include <algorithm>
#include <cstdio>
#include <memory>

#include "core/error.h"

namespace tally {

const char* category_name(Category c) {
  switch (c) {
    case Category::parameter: return "parameter";
    case Category::gradient: return "gradient";
    case Category::optimizer_state: return "optimizer_state";
    case Category::activation: return "activation";
    case Category::workspace: return "workspace";
    case Category::other: return "other";
  }
  return "?";
}

namespace {

void add(Usage& u, int64_t requested, int64_t held) {
  u.live_requested += requested;
  u.live_held += held;
  u.allocations += 1;
  u.peak_requested = std::max(u.peak_requested, u.live_requested);
  u.peak_held = std::max(u.peak_held, u.live_held);
}

void remove(Usage& u, int64_t requested, int64_t held) {
  u.live_requested -= requested;
  u.live_held -= held;
  u.allocations -= 1;
}

void restart_peak(Usage& u) {
  u.peak_requested = u.live_requested;
  u.peak_held = u.live_held;
}

}  // namespace

uint32_t Ledger::owner_id(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = owner_ids_.find(name);
  if (it != owner_ids_.end()) return it->second;
  uint32_t id = uint32_t(owner_names_.size());
  owner_names_.push_back(name);
  owners_.push_back(Usage{});
  owner_categories_.push_back({});
  owner_ids_.emplace(name, id);
  return id;
}

const std::string& Ledger::owner_name(uint32_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  TALLY_ASSERT(id < owner_names_.size());
  return owner_names_[id];
}

void Ledger::on_alloc(Category c, uint32_t owner, int64_t requested, int64_t held) {
  std::lock_guard<std::mutex> lock(mu_);
  add(categories_[int(c)], requested, held);
  add(total_, requested, held);
  add(owners_.at(owner), requested, held);
  add(owner_categories_[owner][int(c)], requested, held);
}

void Ledger::on_free(Category c, uint32_t owner, int64_t requested, int64_t held) {
  std::lock_guard<std::mutex> lock(mu_);
  remove(categories_[int(c)], requested, held);
  remove(total_, requested, held);
  remove(owners_.at(owner), requested, held);
  remove(owner_categories_[owner][int(c)], requested, held);
}

Usage Ledger::total() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_;
}

Usage Ledger::category(Category c) const {
  std::lock_guard<std::mutex> lock(mu_);
  return categories_[int(c)];
}

Usage Ledger::owner(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = owner_ids_.find(name);
  return it == owner_ids_.end() ? Usage{} : owners_[it->second];
}

std::vector<std::pair<std::string, Usage>> Ledger::owners() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, Usage>> out;
  for (const auto& [name, id] : owner_ids_)  // std::map: sorted by name
    if (owners_[id].peak_held > 0 || owners_[id].live_held > 0) out.emplace_back(name, owners_[id]);
  return out;
}

std::vector<Ledger::OwnerInCategory> Ledger::owners_by_category() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<OwnerInCategory> out;
  for (int c = 0; c < kNumCategories; ++c)
    for (const auto& [name, id] : owner_ids_)  // std::map: sorted by name
      if (const Usage& u = owner_categories_[id][size_t(c)]; u.peak_held > 0 || u.live_held > 0)
        out.push_back({name, Category(c), u});
  return out;
}

int64_t Ledger::live_requested_with_prefix(const std::string& prefix) const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t sum = 0;
  for (auto it = owner_ids_.lower_bound(prefix); it != owner_ids_.end() && it->first.rfind(prefix, 0) == 0; ++it)
    sum += owners_[it->second].live_requested;
  return sum;
}

void Ledger::reset_peaks() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& u : categories_) restart_peak(u);
  for (auto& u : owners_) restart_peak(u);
  for (auto& per_category : owner_categories_)
    for (auto& u : per_category) restart_peak(u);
  restart_peak(total_);
}

std::string format_count(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

std::string format_bytes_exact(int64_t bytes) { return format_count(bytes) + " B"; }

std::string format_bytes_human(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes < 0 ? -bytes : bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%s%.0f %s" : "%s%.2f %s", bytes < 0 ? "-" : "", v, units[u]);
  return buf;
}

std::string Ledger::table() const {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-16s %18s %18s %18s %18s\n", "category", "live requested", "live held",
                "peak requested", "peak held");
  out += line;
  auto row = [&](const char* name, const Usage& u) {
    std::snprintf(line, sizeof line, "%-16s %18s %18s %18s %18s\n", name, format_bytes_exact(u.live_requested).c_str(),
                  format_bytes_exact(u.live_held).c_str(), format_bytes_exact(u.peak_requested).c_str(),
                  format_bytes_exact(u.peak_held).c_str());
    out += line;
  };
  for (int c = 0; c < kNumCategories; ++c) row(category_name(Category(c)), category(Category(c)));
  row("total", total());
  return out;
}

Ledger& ledger(Device d) {
  static Ledger cpu_ledger, meta_ledger;
  static std::mutex mu;
  static std::vector<std::unique_ptr<Ledger>> cuda_ledgers;
  switch (d.kind) {
    case DeviceKind::cpu: return cpu_ledger;
    case DeviceKind::meta: return meta_ledger;
    case DeviceKind::cuda: {
      std::lock_guard<std::mutex> lock(mu);
      while (int(cuda_ledgers.size()) <= d.index) cuda_ledgers.push_back(std::make_unique<Ledger>());
      return *cuda_ledgers[d.index];
    }
  }
  fail("no ledger for device ", d.str());
}

// ---- MemoryScope ----
namespace {
struct ScopeEntry {
  Category category;
  std::string owner;
};
thread_local std::vector<ScopeEntry> scope_stack;
const std::string kDefaultOwner = "unnamed";
}  // namespace

MemoryScope::MemoryScope(Category c, std::string owner) { scope_stack.push_back({c, std::move(owner)}); }
MemoryScope::~MemoryScope() { scope_stack.pop_back(); }
Category current_category() { return scope_stack.empty() ? Category::other : scope_stack.back().category; }
const std::string& current_owner() { return scope_stack.empty() ? kDefaultOwner : scope_stack.back().owner; }

}  // namespace tally
