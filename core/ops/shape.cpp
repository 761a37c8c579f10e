// Shape ops that are not views: cat (copies parts into one tensor) and split (views along a dim).
#include <algorithm>

#include "core/ops/common.h"

namespace tally {

Tensor cat(const std::vector<Tensor>& parts, int64_t dim) {
  TALLY_CHECK(!parts.empty(), "[cat] no tensors given");
  const Tensor& first = parts[0];
  int d = wrap_dim(dim, first.dim(), "cat");
  Shape out_shape = first.shape();
  out_shape[d] = 0;
  for (const Tensor& p : parts) {
    detail::check_pair("cat", "the first part", first, "a part", p);
    bool ok = p.dim() == first.dim();
    for (int i = 0; ok && i < p.dim(); ++i) ok = i == d || p.shape()[i] == first.shape()[i];
    TALLY_CHECK(ok, "[cat] shapes ", shape_str(first.shape()), " and ", shape_str(p.shape()), " differ outside dim ", d);
    out_shape[d] += p.shape()[d];
  }
  Tensor out = empty(out_shape, first.options());
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& p : parts) {
    starts.push_back(at);
    NoGradGuard no_grad;
    out.slice(d, at, at + p.shape()[d]).copy_(p);
    at += p.shape()[d];
  }
  std::vector<const Tensor*> inputs;
  std::vector<int64_t> sizes;
  for (const Tensor& p : parts) {
    inputs.push_back(&p);
    sizes.push_back(p.shape()[d]);
  }
  return record("cat", out, inputs, [starts, sizes, d](const Tensor& g) -> std::vector<Tensor> {
    std::vector<Tensor> grads;
    for (size_t i = 0; i < starts.size(); ++i) grads.push_back(g.slice(d, starts[i], starts[i] + sizes[i]));
    return grads;
  });
}

std::vector<Tensor> split(const Tensor& a, int64_t size, int64_t dim) {
  int d = wrap_dim(dim, a.dim(), "split");
  TALLY_CHECK(size > 0, "[split] ", shape_str(a.shape()), " along dim ", dim, ": size must be positive, got ", size);
  std::vector<Tensor> out;
  for (int64_t at = 0; at < a.shape()[d]; at += size) out.push_back(a.slice(d, at, std::min(a.shape()[d], at + size)));
  return out;
}

}  // namespace tally
