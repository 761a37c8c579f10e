// Global-norm gradient clipping (see clip.h).
#include "optim/clip.h"

#include <cmath>
#include <map>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "optim/kernels/cuda_workspace.h"
#include "optim/optimizer.h"

namespace tally::optim {

namespace {

void check_grad(const Tensor& p, const Tensor& g, const char* op) {
  TALLY_CHECK((g.dtype() == DType::f32 || g.dtype() == DType::bf16) && g.is_contiguous(), "[", op, "] gradient of '",
              p.name(), "' is ", g.str(), ": expected contiguous f32 or bf16");
}

}  // namespace

std::vector<Tensor> defined_grads(const std::vector<Tensor>& params) {
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    check_grad(p, g, "grad_norm");
    grads.push_back(g);
  }
  return grads;
}

double grad_norm(const std::vector<Tensor>& params) { return std::sqrt(sum_of_squares(defined_grads(params))); }

namespace {

// The non-empty tensors of `xs`, grouped by device (in order within each).
std::map<std::string, std::pair<Device, std::vector<kernels::SquaresInput>>> squares_inputs(
    const std::vector<Tensor>& xs) {
  std::map<std::string, std::pair<Device, std::vector<kernels::SquaresInput>>> inputs;
  for (const Tensor& x : xs) {
    if (x.numel() == 0) continue;
    TALLY_CHECK((x.dtype() == DType::f32 || x.dtype() == DType::bf16) && x.is_contiguous(), "[sum_of_squares] ",
                x.str(), ": expected contiguous f32 or bf16");
    auto& [dev, in] = inputs.try_emplace(x.device().str(), x.device(), std::vector<kernels::SquaresInput>{})
                          .first->second;
    in.push_back({.x = x.data_ptr(), .n = x.numel(), .dtype = x.dtype()});
  }
  return inputs;
}

// One device's tensors summed by one call (on CUDA a few launches for all of them) into its f64 accumulator:
// deterministic. A meta device holds the same workspace, sums nothing.
void add_squares(Device dev, const std::vector<kernels::SquaresInput>& in, double* acc) {
  MemoryScope scope(Category::workspace, "grad_norm");
  const int64_t ws = dev.backend() == DeviceKind::cuda
                         ? kernels::cuda_dense_workspace_bytes()
                         : TALLY_KERNEL(Device::cpu(), squares_workspace_bytes, in.data(), int64_t(in.size()));
  Tensor w = ws > 0 ? empty({ws}, {.dtype = DType::u8, .device = dev}) : Tensor();
  if (dev.is_meta()) return;
  TALLY_KERNEL(dev, sum_squares_many, in.data(), int64_t(in.size()), acc, w.defined() ? w.data_ptr() : nullptr);
}

}  // namespace

double sum_of_squares(const std::vector<Tensor>& xs) {
  double total = 0;
  for (auto& [key, entry] : squares_inputs(xs)) {
    const auto& [dev, in] = entry;
    Tensor acc;
    {
      MemoryScope scope(Category::workspace, "grad_norm");
      acc = zeros({1}, {.dtype = DType::f64, .device = dev});
    }
    add_squares(dev, in, acc.data<double>());
    if (!dev.is_meta()) total += acc.item();
  }
  return total;
}

void add_sum_of_squares(const std::vector<Tensor>& xs, Tensor& acc) {
  TALLY_CHECK(acc.defined() && acc.dtype() == DType::f64 && acc.numel() == 1 && acc.is_contiguous(),
              "[sum_of_squares] the accumulator must be one f64 element, got ", acc.defined() ? acc.str() : "none");
  for (auto& [key, entry] : squares_inputs(xs)) {
    const auto& [dev, in] = entry;
    TALLY_CHECK(dev == acc.device(), "[sum_of_squares] a tensor on ", dev.str(), ", the accumulator on ",
                acc.device().str());
    add_squares(dev, in, acc.data<double>());
  }
}

double clip_coefficient(double norm, double max_norm) {
  TALLY_CHECK(max_norm > 0.0, "[clip_grad_norm] max_norm must be > 0, got ", max_norm);
  const double c = max_norm / (norm + 1e-6);
  return c < 1.0 ? c : 1.0;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  const double norm = grad_norm(params);
  const double coef = clip_coefficient(norm, max_norm);
  if (coef < 1.0) {
    for (const Tensor& p : params) {
      const Tensor g = p.grad();
      if (!g.defined() || g.device().is_meta()) continue;
      if (g.dtype() == DType::bf16) TALLY_KERNEL(g.device(), scale_bf16, g.data<bf16>(), g.numel(), coef);
      else TALLY_KERNEL(g.device(), scale, g.data<float>(), g.numel(), coef);
    }
  }
  return norm;
}

}  // namespace tally::optim
