// Autograd graph nodes. A Node is created by an op when any input requires grad: it holds the op's name,
// one edge per input (the input's producer node, its leaf accumulator, or null when that input needs no
// gradient), the output's shape, and the backward closure written beside the op's forward.
// Closures keep only what the gradient needs; the engine releases them after use, freeing saved tensors.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tally {

// grad_output -> one gradient per input (an undefined Tensor where none flows).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

struct Node {
  const char* op = "";
  std::vector<std::shared_ptr<Node>> next;  // per input
  Shape out_shape;
  BackwardFn backward;
  bool accumulator = false;        // a leaf's gradient sink
  std::weak_ptr<TensorImpl> leaf;  // accumulator nodes only

  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  // Releases the chain of predecessors iteratively: a graph 100,000 ops deep must not overflow the stack.
  ~Node();
};

// True while gradients are being recorded on this thread.
bool grad_enabled();

// Disables recording while it lives (e.g. for evaluation, generation, optimizer steps).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when any of the tensors requires grad and recording is on.
bool any_requires_grad(const std::vector<const Tensor*>& inputs);

// Links `out` to `inputs` through a new node running `backward` (when grad mode is on and any input
// requires grad). Returns `out` for chaining.
Tensor& record(const char* op, Tensor& out, std::initializer_list<const Tensor*> inputs, BackwardFn backward);
Tensor& record(const char* op, Tensor& out, const std::vector<const Tensor*>& inputs, BackwardFn backward);

// Sums `grad` over broadcast dimensions so that it has `shape` (the reverse of broadcasting).
Tensor sum_to(const Tensor& grad, const Shape& shape);

struct BackwardOptions {
  bool retain_graph = false;
};
// Runs reverse-mode differentiation from `root` (iteratively, in topological order).
void run_backward(const Tensor& root, const Tensor& grad, BackwardOptions opt = {});

}  // namespace tally
