// The backward engine: grad mode, recording ops into the graph, sum_to, and the iterative topological
// traversal that runs each node's closure once all gradients flowing into it have been summed.
#include <unordered_map>

#include "core/autograd/node.h"
#include "core/ops.h"

namespace tally {

namespace {
thread_local bool g_grad_enabled = true;

std::shared_ptr<Node> accumulator_of(const Tensor& leaf) {
  TensorImpl* impl = leaf.impl();
  if (!impl->grad_accumulator) {
    auto node = std::make_shared<Node>();
    node->op = "accumulate_grad";
    node->accumulator = true;
    node->leaf = leaf.impl_ptr();
    node->out_shape = leaf.shape();
    impl->grad_accumulator = node;
  }
  return impl->grad_accumulator;
}

std::shared_ptr<Node> edge_of(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  if (t.grad_fn()) return t.grad_fn();
  return accumulator_of(t);
}


// True when `t` is the only handle on its storage (no view, saved tensor or caller shares it), so adding into it in
// place cannot be observed anywhere else.
bool exclusively_owned(const Tensor& t) {
  return t.impl_ptr().use_count() == 1 && t.impl()->storage.use_count() == 1 && t.is_contiguous();
}

// True when g is exclusively owned and its storage holds exactly its elements, so it can become a .grad as is.
bool sole_owner_of_dense_storage(const Tensor& g) {
  return exclusively_owned(g) && g.offset() == 0 && g.impl()->storage->block.requested == g.nbytes();
}

// existing += g, in place (outside autograd).
void accumulate_into(Tensor& existing, const Tensor& g) { add_(existing, g); }
}  // namespace

Node::~Node() {
  std::vector<std::shared_ptr<Node>> stack = std::move(next);
  while (!stack.empty()) {
    std::shared_ptr<Node> n = std::move(stack.back());
    stack.pop_back();
    if (n && n.use_count() == 1) {  // we hold the last reference: adopt its edges before it dies
      for (auto& child : n->next) stack.push_back(std::move(child));
      n->next.clear();
    }
  }
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool any_requires_grad(const std::vector<const Tensor*>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

Tensor& record(const char* op, Tensor& out, std::initializer_list<const Tensor*> inputs, BackwardFn backward) {
  return record(op, out, std::vector<const Tensor*>(inputs), std::move(backward));
}

Tensor& record(const char* op, Tensor& out, const std::vector<const Tensor*>& inputs, BackwardFn backward) {
  if (!any_requires_grad(inputs)) return out;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->out_shape = out.shape();
  node->backward = std::move(backward);
  node->next.reserve(inputs.size());
  for (const Tensor* t : inputs) node->next.push_back(edge_of(*t));
  out.impl()->grad_fn = std::move(node);
  out.impl()->requires_grad = true;
  return out;
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  TALLY_CHECK(grad.dim() >= int(shape.size()), "[sum_to] cannot reduce ", shape_str(grad.shape()), " to ", shape_str(shape));
  std::vector<int64_t> dims;
  size_t lead = grad.dim() - shape.size();
  for (int i = 0; i < grad.dim(); ++i) {
    if (size_t(i) < lead) {
      dims.push_back(i);
    } else if (shape[i - lead] == 1 && grad.shape()[i] != 1) {
      dims.push_back(i);
    } else {
      TALLY_CHECK(shape[i - lead] == grad.shape()[i], "[sum_to] cannot reduce ", shape_str(grad.shape()), " to ",
                  shape_str(shape));
    }
  }
  Tensor s = dims.empty() ? grad : sum(grad, dims, KeepDim::yes);
  return s.reshape(shape);
}

void run_backward(const Tensor& root, const Tensor& grad_in, BackwardOptions opt) {
  TALLY_CHECK(root.defined(), "[backward] undefined tensor");
  TALLY_CHECK(root.requires_grad(), "[backward] the tensor does not require grad (no parameter took part, or it was "
                                    "computed under NoGradGuard)");
  Tensor grad = grad_in;
  if (!grad.defined()) {
    TALLY_CHECK(root.numel() == 1, "[backward] a gradient must be given for a non-scalar tensor of shape ",
                shape_str(root.shape()));
    grad = ones(root.shape(), root.options());
  }
  TALLY_CHECK(grad.shape() == root.shape(), "[backward] gradient ", shape_str(grad.shape()), " does not match tensor ",
              shape_str(root.shape()));

  NoGradGuard no_grad;
  std::shared_ptr<Node> root_node = edge_of(root);

  // Count, for every node reachable from the root, how many edges point at it (iterative DFS).
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack{root_node.get()};
  dependencies[root_node.get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const auto& child : n->next) {
      if (!child) continue;
      auto [it, inserted] = dependencies.emplace(child.get(), 0);
      it->second += 1;
      if (inserted) stack.push_back(child.get());
    }
  }

  // Process nodes whose incoming gradients are complete; sum gradients arriving at the same node. The graph
  // stays alive through root_node; each closure is dropped right after it runs, freeing its saved tensors.
  std::unordered_map<Node*, Tensor> pending;
  pending[root_node.get()] = grad;
  std::vector<Node*> ready{root_node.get()};
  auto release_child = [&](Node* child) {
    if (--dependencies[child] == 0) ready.push_back(child);
  };
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    auto it = pending.find(n);
    if (it == pending.end()) {  // no gradient reached this node: nothing flows on, but its inputs are done with it
      for (const auto& child : n->next)
        if (child) release_child(child.get());
      continue;
    }
    Tensor g = std::move(it->second);
    pending.erase(it);

    if (n->accumulator) {
      auto leaf_impl = n->leaf.lock();
      if (!leaf_impl) continue;
      Tensor leaf(leaf_impl);
      TALLY_CHECK(g.shape() == leaf.shape(), "[backward] gradient ", shape_str(g.shape()), " for leaf '", leaf.name(),
                  "' of shape ", shape_str(leaf.shape()));
      const std::string owner = (leaf.name().empty() ? std::string("unnamed") : leaf.name()) + ":grad";
      Tensor existing = leaf.grad();
      if (existing.defined()) {
        accumulate_into(existing, g);
      } else if (sole_owner_of_dense_storage(g)) {  // adopt the computed gradient: no copy
        g.impl()->storage->retag(Category::gradient, owner);
        leaf.set_grad(g.detach());
      } else {
        MemoryScope scope(Category::gradient, owner);
        Tensor fresh = empty(leaf.shape(), leaf.options());
        fresh.copy_(g);
        leaf.set_grad(fresh);
      }
      continue;
    }

    TALLY_CHECK(n->backward, "[backward] the graph through '", n->op,
                "' was already freed by an earlier backward (use retain_graph to run twice)");
    std::vector<Tensor> grads;
    {
      MemoryScope scope(Category::workspace, "backward");
      grads = n->backward(g);
    }
    g = Tensor();
    if (!opt.retain_graph) n->backward = nullptr;  // frees the saved tensors
    TALLY_CHECK(grads.size() == n->next.size(), "[backward] '", n->op, "' returned ", grads.size(), " gradients for ",
                n->next.size(), " inputs");
    for (size_t i = 0; i < grads.size(); ++i) {
      Node* child = n->next[i].get();
      if (!child) continue;
      if (grads[i].defined()) {
        TALLY_CHECK(grads[i].shape() == child->out_shape, "[backward] '", n->op, "' produced a gradient of shape ",
                    shape_str(grads[i].shape()), " for input ", i, " of shape ", shape_str(child->out_shape));
        auto [slot, inserted] = pending.try_emplace(child, std::move(grads[i]));
        if (!inserted) {
          MemoryScope scope(Category::workspace, "backward");
          // A sum of gradients for one node (e.g. a tied weight used twice) is formed in place when the first one is
          // exclusively ours: one buffer of the node's size fewer at the peak.
          if (exclusively_owned(slot->second))
            accumulate_into(slot->second, grads[i]);
          else
            slot->second = add(slot->second, grads[i]);
        }
      }
      release_child(child);
    }
  }
}

}  // namespace tally
