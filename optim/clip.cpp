// Global-norm gradient clipping (see clip.h).
#include "optim/clip.h"

#include <cmath>
#include <map>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "optim/optimizer.h"

namespace tally::optim {

namespace {

void check_grad(const Tensor& p, const Tensor& g, const char* op) {
  TALLY_CHECK((g.dtype() == DType::f32 || g.dtype() == DType::bf16) && g.is_contiguous(), "[", op, "] gradient of '",
              p.name(), "' is ", g.str(), ": expected contiguous f32 or bf16");
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params) {
  // One f64 accumulator per device (device memory on CUDA), added to in parameter order: deterministic.
  std::map<std::string, Tensor> acc, scratch;
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (!g.defined() || g.device().is_meta()) continue;
    check_grad(p, g, "grad_norm");
    const std::string dev = g.device().str();
    Tensor& a = acc[dev];
    MemoryScope scope(Category::workspace, "grad_norm");
    if (!a.defined()) a = zeros({1}, {.dtype = DType::f64, .device = g.device()});
    int64_t ws = kernels::cpu::dense_workspace_bytes(g.numel());
#ifdef TALLY_HAS_CUDA
    if (g.device().is_cuda()) ws = kernels::cuda::dense_workspace_bytes(g.numel());
#endif
    Tensor& w = scratch[dev];
    if (ws > 0 && (!w.defined() || w.nbytes() < ws)) w = empty({ws}, {.dtype = DType::u8, .device = g.device()});
    if (g.dtype() == DType::bf16)  // mixed precision: read as bf16, summed in double like f32
      TALLY_OPTIM_KERNEL(g.device(), sum_squares_bf16, g.data<bf16>(), g.numel(), a.data<double>(),
                         w.defined() ? w.data_ptr() : nullptr);
    else
      TALLY_OPTIM_KERNEL(g.device(), sum_squares, g.data<float>(), g.numel(), a.data<double>(),
                         w.defined() ? w.data_ptr() : nullptr);
  }
  double total = 0;
  for (auto& [dev, a] : acc) total += a.item();
  return std::sqrt(total);
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
      if (g.dtype() == DType::bf16) TALLY_OPTIM_KERNEL(g.device(), scale_bf16, g.data<bf16>(), g.numel(), coef);
      else TALLY_OPTIM_KERNEL(g.device(), scale, g.data<float>(), g.numel(), coef);
    }
  }
  return norm;
}

}  // namespace tally::optim
