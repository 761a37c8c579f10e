// Reductions over dims (sum, mean, max) with keepdim: forward and backward side by side.
#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "core/ops/common.h"

namespace tally {

using detail::check_floating;

namespace {

// Sums the adjacent dims [d0, d1] of a contiguous tensor in one pass, viewed as (outer, n, inner); they stay as 1s.
Tensor sum_dims_run(const Tensor& a, int d0, int d1) {
  Shape out_shape = a.shape();
  int64_t outer = 1, inner = 1, n = 1;
  for (int i = 0; i < d0; ++i) outer *= a.shape()[i];
  for (int i = d0; i <= d1; ++i) {
    n *= a.shape()[i];
    out_shape[i] = 1;
  }
  for (int i = d1 + 1; i < a.dim(); ++i) inner *= a.shape()[i];
  Tensor out = empty(out_shape, a.options());
  Tensor ws = detail::kernel_workspace(a, detail::cuda_only(a, kernels::cuda_sum_dim_workspace_bytes(outer, n, inner)),
                                      "sum");
  dispatch_float(a, "sum", [&]<class T>() {
    TALLY_KERNEL(out.device(), sum_dim<T>, a.data<T>(), out.data<T>(), detail::data_or_null(ws), outer, n, inner);
  });
  return out;
}

std::vector<int> normalise_dims(const std::vector<int64_t>& dims, int ndim, const char* op) {
  std::vector<int> out;
  for (int64_t d : dims) {
    int w = wrap_dim(d, ndim, op);
    TALLY_CHECK(std::find(out.begin(), out.end(), w) == out.end(), "[", op, "] dim ", d, " repeated");
    out.push_back(w);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Shape drop_dims(const Shape& keep_shape, const std::vector<int>& dims) {
  Shape s;
  for (int i = 0; i < int(keep_shape.size()); ++i)
    if (std::find(dims.begin(), dims.end(), i) == dims.end()) s.push_back(keep_shape[i]);
  return s;
}

}  // namespace

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims_in, KeepDim keep) {
  check_floating("sum", a);
  std::vector<int> dims = normalise_dims(dims_in, a.dim(), "sum");
  Tensor x = a.contiguous().detach();
  {
    NoGradGuard no_grad;
    // Runs of adjacent dims are reduced one pass each, from the innermost run, each pass shrinking the tensor. With
    // more than one run, bf16 sums in f32 until the end, so that the result is rounded to bf16 once (partial sums
    // rounded in between lose the result to cancellation).
    std::vector<std::pair<int, int>> runs;
    for (int d : dims) {
      if (!runs.empty() && runs.back().second == d - 1) runs.back().second = d;
      else runs.push_back({d, d});
    }
    const DType dtype = x.dtype();
    if (runs.size() > 1 && dtype == DType::bf16) x = x.to(DType::f32);
    for (auto it = runs.rbegin(); it != runs.rend(); ++it) x = sum_dims_run(x, it->first, it->second);
    if (x.dtype() != dtype) x = x.to(dtype);
  }
  Shape keep_shape = x.shape();
  Tensor out = keep == KeepDim::yes ? x : x.view(drop_dims(keep_shape, dims));
  return record("sum", out, {&a}, [keep_shape, in_shape = a.shape()](const Tensor& g) -> std::vector<Tensor> {
    return {g.reshape(keep_shape).expand(in_shape)};
  });
}

Tensor sum(const Tensor& a) {
  std::vector<int64_t> all(a.dim());
  for (int i = 0; i < a.dim(); ++i) all[i] = i;
  return sum(a, all, KeepDim::no);
}

Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, KeepDim keep) {
  check_floating("mean", a);
  int64_t count = 1;
  for (int d : normalise_dims(dims, a.dim(), "mean")) count *= a.shape()[d];
  TALLY_CHECK(count > 0, "[mean] mean over zero elements of ", shape_str(a.shape()));
  return sum(a, dims, keep) * (1.0 / double(count));
}

Tensor mean(const Tensor& a) {
  TALLY_CHECK(a.numel() > 0, "[mean] mean of an empty tensor ", shape_str(a.shape()));
  return sum(a) * (1.0 / double(a.numel()));
}

Tensor max(const Tensor& a_in, int64_t dim, KeepDim keep) {
  check_floating("max", a_in);
  int d = wrap_dim(dim, a_in.dim(), "max");
  TALLY_CHECK(a_in.shape()[d] > 0, "[max] dim ", d, " of ", shape_str(a_in.shape()), " is empty");
  // The backward keeps each maximum's index as i32.
  TALLY_CHECK(a_in.shape()[d] <= std::numeric_limits<int32_t>::max(), "[max] dim ", d, " of ", shape_str(a_in.shape()),
              " has more than 2^31 - 1 elements (indices are kept as i32)");
  Tensor a = a_in.contiguous();
  int64_t outer = 1, inner = 1, n = a.shape()[d];
  for (int i = 0; i < d; ++i) outer *= a.shape()[i];
  for (int i = d + 1; i < a.dim(); ++i) inner *= a.shape()[i];
  Shape keep_shape = a.shape();
  keep_shape[d] = 1;
  Tensor out = empty(keep_shape, a.options());
  Tensor argmax = empty(keep_shape, {DType::i32, a.device()});
  dispatch_float(a, "max", [&]<class T>() {
    TALLY_KERNEL(out.device(), max_dim<T>, a.data<T>(), out.data<T>(), argmax.data<int32_t>(), outer, n, inner);
  });
  if (keep == KeepDim::no) out = out.view(drop_dims(keep_shape, {d}));
  return record("max", out, {&a}, [argmax, keep_shape, in_shape = a.shape(), outer, n, inner](const Tensor& g_in) -> std::vector<Tensor> {
    Tensor g = g_in.reshape(keep_shape).contiguous();
    Tensor dx = empty(in_shape, g.options());
    dispatch_float(g, "max_backward", [&]<class T>() {
      TALLY_KERNEL(dx.device(), max_dim_backward<T>, g.data<T>(), argmax.data<int32_t>(), dx.data<T>(), outer, n, inner);
    });
    return {dx};
  });
}

}  // namespace tally
