// SGD with momentum exactly as torch.optim.SGD: L2 weight decay added to the gradient, momentum buffer set to
// the first step's direction then decayed (with dampening), optional Nesterov. State: momentum_buffer (f32)
// when momentum != 0, nothing otherwise.
#pragma once
#include "optim/kernels/optim_kernels.h"
#include "optim/optimizer.h"

namespace tally::optim {

using kernels::Nesterov;

struct SgdConfig {
  double lr = 0.0;  // required (> 0)
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;  // L2: g += weight_decay * p (coupled, torch semantics)
  Nesterov nesterov = Nesterov::no;
};

class Sgd final : public Optimizer {
 public:
  Sgd(const std::vector<Tensor>& params, const SgdConfig& config);
  explicit Sgd(const std::vector<ParamGroup<SgdConfig>>& groups);

  const SgdConfig& config(int group = 0) const;
  SgdConfig& config(int group = 0);

  static std::vector<StateSpec> state_specs(const Shape& shape, const SgdConfig& config);
  static std::vector<TensorState> predict_state_bytes(const std::vector<NamedShape>& params, const SgdConfig& config);
  using Optimizer::predict_state_bytes;

 private:
  double group_lr(int group) const override { return configs_[size_t(group)].lr; }
  void store_group_lr(int group, double lr) override { configs_[size_t(group)].lr = lr; }
  std::vector<StateSpec> specs_for(const Slot& slot, bool* factored, kernels::FactoredLayout* layout) const override;
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;

  std::vector<SgdConfig> configs_;
};

}  // namespace tally::optim
