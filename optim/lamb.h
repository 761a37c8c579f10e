// LAMB exactly as pytorch_optimizer 4.1.0's Lamb at its defaults (You et al. 2019, "Large Batch Optimization for
// Deep Learning"), on its foreach path (the reference's default on the CPU and on CUDA): Adam's moments without
// bias correction, u = m / (sqrt(v) + eps), and per tensor the trust ratio ||p|| / (||u|| + eps) with ||p|| clamped
// to at most `clamp` (1 when either norm is zero); p -= step_size * trust * u, where step_size = lr / (1 - beta1^t)
// (the reference's adam_debias=False). Weight decay is decoupled by default (p *= 1 - lr*wd before the step, and the
// trust ratio sees the decayed p); LambDecay::in_update adds wd*p to u inside the trust ratio instead, as the paper.
// State exp_avg, exp_avg_sq (f32).
#pragma once
#include <array>

#include "optim/optimizer.h"

namespace tally::optim {

using kernels::LambDecay;

enum class LambBiasCorrection : uint8_t {
  step_size,  // step_size = lr / (1 - beta1^t): the reference's default (adam_debias=False)
  none,       // step_size = lr (the reference's adam_debias=True)
};

struct LambConfig {
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-6;
  double weight_decay = 0.0;
  LambDecay decay = LambDecay::decoupled;  // the reference's weight_decouple=True
  double clamp = 10.0;                     // the reference's Lamb.clamp: at most this weight norm
  LambBiasCorrection bias_correction = LambBiasCorrection::step_size;
};

// Throws tally::Error naming the group and the bad field.
void validate(const LambConfig& config, int group);

class Lamb final : public OptimizerWith<Lamb, LambConfig> {
 public:
  static constexpr const char* kKind = "lamb";
  static constexpr bool kFusedBf16 = true;  // its CUDA kernels take FusedBf16 (bf16 gradient in, bf16 parameter out)
  static constexpr bool kSumsOverTensor = true;  // its two norms
  using OptimizerWith::OptimizerWith;

  static std::vector<StateSpec> state_specs(const Shape& shape, const LambConfig& config);
  // What the trust-scaled update of a step is multiplied by at the tensor's step t (1, 2, ...).
  static double step_size(const LambConfig& config, int64_t t);

 private:
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;
  // The two norms' squares of each tensor, summed over the ranks.
  dist::Traffic cross_rank_traffic(const Slot&) const override { return {1, 2 * int64_t(sizeof(double))}; }
};

}  // namespace tally::optim
