// AdamW exactly as torch.optim.AdamW (single-tensor path, amsgrad off): bias-corrected moments, decoupled
// weight decay p *= 1 - lr*wd before the update, eps added to sqrt(v_hat). State exp_avg, exp_avg_sq (f32).
#pragma once
#include <array>

#include "optim/optimizer.h"

namespace tally::optim {

struct AdamWConfig {
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;  // torch's default
};

class AdamW final : public Optimizer {
 public:
  AdamW(const std::vector<Tensor>& params, const AdamWConfig& config);
  explicit AdamW(const std::vector<ParamGroup<AdamWConfig>>& groups);

  const AdamWConfig& config(int group = 0) const;
  AdamWConfig& config(int group = 0);

  static std::vector<StateSpec> state_specs(const Shape& shape, const AdamWConfig& config);
  static std::vector<TensorState> predict_state_bytes(const std::vector<NamedShape>& params, const AdamWConfig& config);
  using Optimizer::predict_state_bytes;

 private:
  double group_lr(int group) const override { return configs_[size_t(group)].lr; }
  void store_group_lr(int group, double lr) override { configs_[size_t(group)].lr = lr; }
  std::vector<StateSpec> specs_for(const Slot& slot, bool* factored, kernels::FactoredLayout* layout) const override;
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;

  std::vector<AdamWConfig> configs_;
};

}  // namespace tally::optim
