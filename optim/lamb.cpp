// LAMB: configuration checks (the reference's), state layout, step size, kernel dispatch and internals. The
// arithmetic (two passes with the trust ratio between them) is in optim/kernels/ (lamb.cpp, lamb.cu).
#include "optim/lamb.h"

#include <cmath>

#include "optim/validate.h"

namespace tally::optim {

void validate(const LambConfig& c, int group) {
  const char* op = "[lamb]";
  check_lr(op, group, c.lr);
  check_betas(op, group, c.betas, kUnitOpen);
  check_eps(op, group, "eps", c.eps);
  check_weight_decay(op, group, c.weight_decay);
  check_positive(op, group, "clamp (the largest weight norm of the trust ratio)", c.clamp);
}

std::vector<StateSpec> Lamb::state_specs(const Shape& shape, const LambConfig&) {
  return {{.name = "exp_avg", .shape = shape}, {.name = "exp_avg_sq", .shape = shape}};
}

double Lamb::step_size(const LambConfig& c, int64_t t) {
  if (c.bias_correction == LambBiasCorrection::none) return c.lr;
  return c.lr / (1.0 - std::pow(c.betas[0], double(t)));  // the reference's lr / debias(beta1, t)
}

void Lamb::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const LambConfig& c = config_of(s);
  const KernelGradient g = kernel_gradient(s, grad);
  kernels::LambArgs a{
      .n = s.param.numel(),
      .param = param_f32(s),
      .grad = g.f32,
      .exp_avg = s.f32("exp_avg"),
      .exp_avg_sq = s.f32("exp_avg_sq"),
      .lr = c.lr,
      .beta1 = c.betas[0],
      .beta2 = c.betas[1],
      .eps = c.eps,
      .weight_decay = c.weight_decay,
      .decay = c.decay,
      .clamp = c.clamp,
      .step_size = step_size(c, s.step),
      .grad_scale = o.grad_scale,
      .workspace = workspace,
      .stats = stats,
      .shard = sharding(s),
      .bf16_param = g.bf16,
  };
  TALLY_KERNEL(s.param.device(), lamb_step, a);
}

void Lamb::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);  // update_rms: of u, before the trust ratio
  const double n = double(s.whole.numel());
  // After the trust ratio: the applied change over the step size (the RMS of trust * u).
  const double step = step_size(config_of(s), s.step);
  s.internals.clipped_update_rms = step > 0 ? s.internals.applied_rms / step : s.internals.update_rms;
  s.internals.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / n);
}

}  // namespace tally::optim
