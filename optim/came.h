// CAME (Luo et al., ACL 2023), step for step as the official came-pytorch 0.1.3 (docs/optimizers.md gives the
// algorithm and its state formulas): factored second moment over the last two dims, RMS-clipped update, first
// moment of the clipped update, confidence (instability) factors, decoupled weight decay, no bias correction.
// A few options beyond the package, all off by default, are in CameConfig.
#pragma once
#include <array>

#include "optim/optimizer.h"

namespace tally::optim {

// Where the confidence factors R and C start.
enum class ConfidenceInit : uint8_t {
  zeros,  // the package: step 1's confidence scale is about 1/sqrt(1-b3) (x100 at b3 = 0.9999)
  ones,   // R = C = 1: early steps are not amplified by the not-yet-averaged instability
};

struct CameConfig {
  double lr = 0.0;  // required (> 0), as in the package
  std::array<double, 3> betas = {0.9, 0.999, 0.9999};  // first moment, second moment, instability
  std::array<double, 2> eps = {1e-30, 1e-16};          // added to g^2, and to the instability, before means
  double clip_threshold = 1.0;                         // on the RMS of the normalised update
  double weight_decay = 0.0;                           // decoupled: p -= lr * weight_decay * p
  // ---- beyond came-pytorch 0.1.3 (defaults reproduce the package) ----
  Factoring factoring = Factoring::last_two_dims;
  int64_t min_dim_to_factor = 128;                     // with Factoring::two_largest_dims only
  DType exp_avg_dtype = DType::f32;                    // bf16: first moment stored in bf16 (RNE), math in f32
  ConfidenceInit confidence_init = ConfidenceInit::zeros;
};

// Throws tally::Error naming the group and the bad field.
void validate(const CameConfig& config, int group);

class Came final : public OptimizerWith<Came, CameConfig> {
 public:
  static constexpr const char* kKind = "came";
  static constexpr bool kFusedBf16 = true;  // its CUDA kernels take FusedBf16 (bf16 gradient in, bf16 parameter out)
  static constexpr bool kSumsOverTensor = true;  // the RMS clip
  using OptimizerWith::OptimizerWith;

  // The state a parameter of this shape gets, in the package's order and names.
  static std::vector<StateSpec> state_specs(const Shape& shape, const CameConfig& config);
  static FactoredDims factoring(const Shape& shape, const CameConfig& config);

 private:
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;
  // Column sums: 2 rounds (second moment, instability).
  dist::Traffic cross_rank_traffic(const Slot& slot) const override { return factored_sums(slot, 2); }
  // With the confidence factors' rows (and columns, when cut) gathered by record_internals.
  dist::Traffic inspection_traffic(const Slot& slot) const override;
  void finish_updates() override;
  // CUDA steps deferred by update() (launches_later), launched together by finish_updates().
  using Deferred = DeferredSteps<kernels::CameFactoredArgs, kernels::CameDenseArgs>;
  Deferred deferred_;
};

}  // namespace tally::optim
