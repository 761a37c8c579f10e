// nn::Module: a tree of named parameters with Hugging Face style dotted names ("transformer.h.3.mlp.c_fc.weight").
// A module is built with its full name; parameters are created at construction under the ledger scope
// (Category::parameter, full name), named and marked requires_grad. named_parameters() walks the tree in
// registration order, which is the stable order that checkpoints, optimizers and the ledger rely on.
// The layers themselves live in nn/layers.h and nn/transformer.h.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/ledger.h"
#include "core/tensor.h"

namespace tally::nn {

// Training mode turns dropout on; evaluation mode turns it off. Nothing else depends on it.
enum class Mode : uint8_t { train, eval };

using NamedTensor = std::pair<std::string, Tensor>;

class Module {
 public:
  // `name` is the full dotted name ("" for a root). Modules own their parameters and are not copyable or
  // movable: a parent keeps pointers to its children.
  explicit Module(std::string name);
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  Module(Module&&) = delete;
  Module& operator=(Module&&) = delete;

  const std::string& name() const { return name_; }

  // Every parameter of this module and its descendants with its full name, in registration order.
  std::vector<NamedTensor> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;  // elements, each parameter counted once
  // The parameter with this full name; throws tally::Error listing a few known names when absent.
  Tensor parameter(std::string_view full_name) const;

  void set_mode(Mode mode);  // recursive
  void train() { set_mode(Mode::train); }
  void eval() { set_mode(Mode::eval); }
  Mode mode() const { return mode_; }
  bool training() const { return mode_ == Mode::train; }

  // Drops every parameter's gradient buffer (the next backward allocates it again).
  void clear_grads();
  // Sets every existing gradient buffer to zero in place (keeps the memory).
  void zero_grads();

 protected:
  // The full name of a child or parameter called `local` ("c_fc" -> "transformer.h.0.mlp.c_fc").
  std::string child_name(std::string_view local) const;
  // Creates a parameter of `shape` under MemoryScope(parameter, full name), uninitialised; requires grad.
  Tensor add_parameter(std::string_view local, const Shape& shape, TensorOptions options);
  // Registers a child (a member of the derived class) whose name must extend this module's name.
  void add_child(Module& child);

 private:
  void collect(std::vector<NamedTensor>& out) const;

  struct Entry {
    std::string param_name;  // full name when this entry is a parameter
    Tensor param;
    Module* child = nullptr;
  };
  std::string name_;
  Mode mode_ = Mode::train;
  std::vector<Entry> entries_;  // parameters and children interleaved, in registration order
};

}  // namespace tally::nn
