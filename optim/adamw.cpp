// AdamW: configuration checks, state layout, kernel dispatch and internals. The arithmetic (one pass: read g,
// p, m, v; write p, m, v) is in optim/kernels/.
#include "optim/adamw.h"

#include <cmath>

#include "optim/validate.h"

namespace tally::optim {

void validate(const AdamWConfig& c, int group) {
  const char* op = "[adamw]";
  check_lr(op, group, c.lr);
  check_betas(op, group, c.betas, kUnitOpen);
  check_eps(op, group, "eps", c.eps);
  check_weight_decay(op, group, c.weight_decay);
}

std::vector<StateSpec> AdamW::state_specs(const Shape& shape, const AdamWConfig&) {
  return {{.name = "exp_avg", .shape = shape}, {.name = "exp_avg_sq", .shape = shape}};
}

void AdamW::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const AdamWConfig& c = config_of(s);
  const KernelGradient g = kernel_gradient(s, grad);
  kernels::AdamWArgs a{
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
      .step = s.step,
      .grad_scale = o.grad_scale,
      .workspace = workspace,
      .stats = stats,
      .bf16_param = g.bf16,
  };
  TALLY_KERNEL(s.param.device(), adamw_step, a);
}

void AdamW::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);
  s.internals.clipped_update_rms = s.internals.update_rms;  // no clipping in AdamW
  s.internals.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / double(s.whole.numel()));
}

}  // namespace tally::optim
