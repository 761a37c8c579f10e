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

// Throws tally::Error naming the group and the bad field.
void validate(const AdamWConfig& config, int group);

class AdamW final : public OptimizerWith<AdamW, AdamWConfig> {
 public:
  static constexpr const char* kKind = "adamw";
  static constexpr bool kFusedBf16 = true;  // its CUDA kernels take FusedBf16 (bf16 gradient in, bf16 parameter out)
  using OptimizerWith::OptimizerWith;

  static std::vector<StateSpec> state_specs(const Shape& shape, const AdamWConfig& config);

 private:
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;
};

}  // namespace tally::optim
