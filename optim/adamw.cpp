// AdamW: configuration checks, state layout, kernel dispatch and internals. The arithmetic (one pass: read g,
// p, m, v; write p, m, v) is in optim/kernels/.
#include "optim/adamw.h"

#include <cmath>

namespace tally::optim {

namespace {

void validate(const AdamWConfig& c, int group) {
  const char* op = "[adamw]";
  TALLY_CHECK(std::isfinite(c.lr) && c.lr >= 0.0, op, " group ", group, ": lr must be >= 0, got ", c.lr);
  TALLY_CHECK(c.betas[0] >= 0.0 && c.betas[0] < 1.0 && c.betas[1] >= 0.0 && c.betas[1] < 1.0, op, " group ", group,
              ": betas must be in [0, 1), got (", c.betas[0], ", ", c.betas[1], ")");
  TALLY_CHECK(c.eps >= 0.0, op, " group ", group, ": eps must be >= 0, got ", c.eps);
  TALLY_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0.0, op, " group ", group,
              ": weight_decay must be >= 0, got ", c.weight_decay);
}

}  // namespace

AdamW::AdamW(const std::vector<Tensor>& params, const AdamWConfig& config)
    : AdamW(std::vector<ParamGroup<AdamWConfig>>{{params, config}}) {}

AdamW::AdamW(const std::vector<ParamGroup<AdamWConfig>>& groups) : Optimizer("adamw") {
  for (size_t g = 0; g < groups.size(); ++g) {
    validate(groups[g].config, int(g));
    configs_.push_back(groups[g].config);
    add_group(groups[g].params, groups[g].config.lr);
  }
}

const AdamWConfig& AdamW::config(int group) const {
  TALLY_CHECK(group >= 0 && group < num_groups(), "[adamw] no group ", group);
  return configs_[size_t(group)];
}
AdamWConfig& AdamW::config(int group) {
  TALLY_CHECK(group >= 0 && group < num_groups(), "[adamw] no group ", group);
  return configs_[size_t(group)];
}

std::vector<StateSpec> AdamW::state_specs(const Shape& shape, const AdamWConfig&) {
  return {{.name = "exp_avg", .shape = shape}, {.name = "exp_avg_sq", .shape = shape}};
}

std::vector<TensorState> AdamW::predict_state_bytes(const std::vector<NamedShape>& params, const AdamWConfig& config) {
  std::vector<TensorState> out;
  for (const NamedShape& p : params)
    out.push_back({.param = p.name, .param_shape = p.shape,
                   .states = with_master(state_specs(p.shape, config), p.shape, p.dtype)});
  return out;
}

std::vector<StateSpec> AdamW::specs_for(const Slot& slot, bool* factored, kernels::FactoredLayout*) const {
  *factored = false;
  return state_specs(slot.param.shape(), configs_[size_t(slot.group)]);
}

void AdamW::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const AdamWConfig& c = configs_[size_t(s.group)];
  kernels::AdamWArgs a{
      .n = s.param.numel(),
      .param = param_f32(s),
      .grad = grad.data<float>(),
      .exp_avg = f32(s, 0),
      .exp_avg_sq = f32(s, 1),
      .lr = c.lr,
      .beta1 = c.betas[0],
      .beta2 = c.betas[1],
      .eps = c.eps,
      .weight_decay = c.weight_decay,
      .step = s.step,
      .grad_scale = o.grad_scale,
      .workspace = workspace,
      .stats = stats,
  };
  TALLY_OPTIM_KERNEL(s.param.device(), adamw_step, a);
}

void AdamW::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);
  s.internals.clipped_update_rms = s.internals.update_rms;  // no clipping in AdamW
  s.internals.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / double(s.param.numel()));
}

}  // namespace tally::optim
