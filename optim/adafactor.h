// Adafactor exactly as Hugging Face transformers' Adafactor with scale_parameter=False, relative_step=False,
// warmup_init=False (the configuration the CAME paper compares against): factored second moment over the last
// two dims with beta2_t = 1 - t^decay_rate, RMS clipping, the update scaled by lr before the optional first
// moment, decoupled weight decay p -= wd*lr*p. eps[1] only matters with scale_parameter, which is not offered.
#pragma once
#include <array>
#include <optional>

#include "optim/optimizer.h"

namespace tally::optim {

struct AdafactorConfig {
  double lr = 0.0;                             // required (> 0): relative steps are not offered
  std::array<double, 2> eps = {1e-30, 1e-3};   // eps[0] added to g^2; eps[1] unused (scale_parameter=False)
  double clip_threshold = 1.0;
  double decay_rate = -0.8;                    // beta2_t = 1 - t^decay_rate
  std::optional<double> beta1 = std::nullopt;  // set: keep a first moment (of lr-scaled updates)
  double weight_decay = 0.0;
  // ---- beyond transformers (defaults reproduce it) ----
  Factoring factoring = Factoring::last_two_dims;
  int64_t min_dim_to_factor = 128;             // with Factoring::two_largest_dims only
};

// Throws tally::Error naming the group and the bad field.
void validate(const AdafactorConfig& config, int group);

class Adafactor final : public OptimizerWith<Adafactor, AdafactorConfig> {
 public:
  static constexpr const char* kKind = "adafactor";
  static constexpr bool kFusedBf16 = true;  // its CUDA kernels take FusedBf16 (bf16 gradient in, bf16 parameter out)
  static constexpr bool kSumsOverTensor = true;  // the RMS clip
  using OptimizerWith::OptimizerWith;

  // transformers' names and order: exp_avg (with beta1), then exp_avg_sq_row/_col or exp_avg_sq.
  static std::vector<StateSpec> state_specs(const Shape& shape, const AdafactorConfig& config);
  static FactoredDims factoring(const Shape& shape, const AdafactorConfig& config);

 private:
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;
  // Column sums: 1 round (second moment).
  dist::Traffic cross_rank_traffic(const Slot& slot) const override { return factored_sums(slot, 1); }
  void finish_updates() override;
  // CUDA steps deferred by update() (launches_later), launched together by finish_updates().
  using Deferred = DeferredSteps<kernels::AdafactorFactoredArgs, kernels::AdafactorDenseArgs>;
  Deferred deferred_;
};

}  // namespace tally::optim
