// nn::Module: registration of parameters and children, ordered traversal, modes and gradient clearing.
#include "nn/module.h"

#include <unordered_set>

#include "core/error.h"

namespace tally::nn {

Module::Module(std::string name) : name_(std::move(name)) {}

std::string Module::child_name(std::string_view local) const {
  TALLY_CHECK(!local.empty() && local.find('.') == std::string_view::npos, "[nn] module '", name_,
              "': a local name must be non-empty and contain no '.', got '", local, "'");
  return name_.empty() ? std::string(local) : cat(name_, ".", local);
}

Tensor Module::add_parameter(std::string_view local, const Shape& shape, TensorOptions options) {
  std::string full = child_name(local);
  for (const Entry& e : entries_)
    TALLY_CHECK(e.param_name != full, "[nn] parameter '", full, "' registered twice");
  Tensor t;
  {
    MemoryScope scope(Category::parameter, full);
    t = empty(shape, options);
  }
  t.set_name(full);
  t.set_requires_grad(true);
  entries_.push_back({full, t, nullptr});
  return t;
}

void Module::add_child(Module& child) {
  const std::string& n = child.name();
  bool extends = name_.empty() ? !n.empty() : (n.size() > name_.size() + 1 && n.compare(0, name_.size(), name_) == 0 &&
                                               n[name_.size()] == '.');
  TALLY_CHECK(extends, "[nn] child '", n, "' does not extend the name of its parent '", name_, "'");
  for (const Entry& e : entries_)
    TALLY_CHECK(e.child != &child && (!e.child || e.child->name() != n), "[nn] child '", n, "' registered twice");
  entries_.push_back({std::string(), Tensor(), &child});
}

void Module::collect(std::vector<NamedTensor>& out) const {
  for (const Entry& e : entries_) {
    if (e.child)
      e.child->collect(out);
    else
      out.emplace_back(e.param_name, e.param);
  }
}

std::vector<NamedTensor> Module::named_parameters() const {
  std::vector<NamedTensor> all;
  collect(all);
  // A parameter shared by two modules (tying) is listed once, where it was first registered.
  std::unordered_set<const TensorImpl*> seen;
  std::vector<NamedTensor> out;
  out.reserve(all.size());
  for (auto& [n, t] : all)
    if (seen.insert(t.impl()).second) out.emplace_back(std::move(n), std::move(t));
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

Tensor Module::parameter(std::string_view full_name) const {
  std::vector<NamedTensor> all = named_parameters();
  for (const auto& [n, t] : all)
    if (n == full_name) return t;
  std::string known;
  for (size_t i = 0; i < all.size() && i < 4; ++i) known += cat(i ? ", " : "", all[i].first);
  fail("[nn] module '", name_, "' has no parameter '", full_name, "' (", all.size(), " parameters, e.g. ", known, ")");
}

void Module::set_mode(Mode mode) {
  mode_ = mode;
  for (Entry& e : entries_)
    if (e.child) e.child->set_mode(mode);
}

void Module::clear_grads() {
  for (auto& [n, t] : named_parameters()) t.clear_grad();
}

void Module::zero_grads() {
  for (auto& [n, t] : named_parameters())
    if (t.grad().defined()) t.grad().zero_();
}

}  // namespace tally::nn
