// SGD: configuration checks (torch's), state layout, kernel dispatch (one pass) and internals.
#include "optim/sgd.h"

#include <cmath>

namespace tally::optim {

namespace {

void validate(const SgdConfig& c, int group) {
  const char* op = "[sgd]";
  TALLY_CHECK(std::isfinite(c.lr) && c.lr > 0.0, op, " group ", group, ": lr is required and must be > 0, got ", c.lr);
  TALLY_CHECK(c.momentum >= 0.0, op, " group ", group, ": momentum must be >= 0, got ", c.momentum);
  TALLY_CHECK(c.weight_decay >= 0.0, op, " group ", group, ": weight_decay must be >= 0, got ", c.weight_decay);
  TALLY_CHECK(c.nesterov == Nesterov::no || (c.momentum > 0.0 && c.dampening == 0.0), op, " group ", group,
              ": Nesterov momentum requires momentum > 0 and zero dampening (got momentum ", c.momentum,
              ", dampening ", c.dampening, ")");
}

}  // namespace

Sgd::Sgd(const std::vector<Tensor>& params, const SgdConfig& config)
    : Sgd(std::vector<ParamGroup<SgdConfig>>{{params, config}}) {}

Sgd::Sgd(const std::vector<ParamGroup<SgdConfig>>& groups) : Optimizer("sgd") {
  for (size_t g = 0; g < groups.size(); ++g) {
    validate(groups[g].config, int(g));
    configs_.push_back(groups[g].config);
    add_group(groups[g].params, groups[g].config.lr);
  }
}

const SgdConfig& Sgd::config(int group) const {
  TALLY_CHECK(group >= 0 && group < num_groups(), "[sgd] no group ", group);
  return configs_[size_t(group)];
}
SgdConfig& Sgd::config(int group) {
  TALLY_CHECK(group >= 0 && group < num_groups(), "[sgd] no group ", group);
  return configs_[size_t(group)];
}

std::vector<StateSpec> Sgd::state_specs(const Shape& shape, const SgdConfig& c) {
  if (c.momentum == 0.0) return {};
  return {{.name = "momentum_buffer", .shape = shape}};
}

std::vector<TensorState> Sgd::predict_state_bytes(const std::vector<NamedShape>& params, const SgdConfig& config) {
  std::vector<TensorState> out;
  for (const NamedShape& p : params)
    out.push_back({.param = p.name, .param_shape = p.shape,
                   .states = with_master(state_specs(p.shape, config), p.shape, p.dtype)});
  return out;
}

std::vector<StateSpec> Sgd::specs_for(const Slot& slot, bool* factored, kernels::FactoredLayout*) const {
  *factored = false;
  return state_specs(slot.param.shape(), configs_[size_t(slot.group)]);
}

void Sgd::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const SgdConfig& c = configs_[size_t(s.group)];
  kernels::SgdArgs a{
      .n = s.param.numel(),
      .param = param_f32(s),
      .grad = grad.data<float>(),
      .momentum_buffer = own_states(s) == 0 ? nullptr : f32(s, 0),
      .lr = c.lr,
      .momentum = c.momentum,
      .dampening = c.dampening,
      .weight_decay = c.weight_decay,
      .nesterov = c.nesterov,
      .first_step = s.step == 1,
      .grad_scale = o.grad_scale,
      .workspace = workspace,
      .stats = stats,
  };
  TALLY_OPTIM_KERNEL(s.param.device(), sgd_step, a);
}

void Sgd::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);
  s.internals.clipped_update_rms = s.internals.update_rms;
  if (own_states(s) > 0) s.internals.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / double(s.param.numel()));
}

}  // namespace tally::optim
