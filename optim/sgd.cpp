// SGD: configuration checks (torch's), state layout, kernel dispatch (one pass) and internals.
#include "optim/sgd.h"

#include <cmath>

#include "optim/validate.h"

namespace tally::optim {

void validate(const SgdConfig& c, int group) {
  const char* op = "[sgd]";
  check_required_lr(op, group, c.lr);
  check_finite_nonnegative(op, group, "momentum", c.momentum);
  check_weight_decay(op, group, c.weight_decay);
  TALLY_CHECK(c.nesterov == Nesterov::no || (c.momentum > 0.0 && c.dampening == 0.0), op, " group ", group,
              ": Nesterov momentum requires momentum > 0 and zero dampening (got momentum ", c.momentum,
              ", dampening ", c.dampening, ")");
}

std::vector<StateSpec> Sgd::state_specs(const Shape& shape, const SgdConfig& c) {
  if (c.momentum == 0.0) return {};
  return {{.name = "momentum_buffer", .shape = shape}};
}

void Sgd::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const SgdConfig& c = config_of(s);
  const KernelGradient g = kernel_gradient(s, grad);
  kernels::SgdArgs a{
      .n = s.param.numel(),
      .param = param_f32(s),
      .grad = g.f32,
      .momentum_buffer = s.has("momentum_buffer") ? s.f32("momentum_buffer") : nullptr,
      .lr = c.lr,
      .momentum = c.momentum,
      .dampening = c.dampening,
      .weight_decay = c.weight_decay,
      .nesterov = c.nesterov,
      .first_step = s.step == 1,
      .grad_scale = o.grad_scale,
      .workspace = workspace,
      .stats = stats,
      .bf16_param = g.bf16,
  };
  TALLY_KERNEL(s.param.device(), sgd_step, a);
}

void Sgd::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);
  s.internals.clipped_update_rms = s.internals.update_rms;
  if (s.has("momentum_buffer")) s.internals.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / double(s.whole.numel()));
}

}  // namespace tally::optim
