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

// Throws tally::Error naming the group and the bad field.
void validate(const SgdConfig& config, int group);

class Sgd final : public OptimizerWith<Sgd, SgdConfig> {
 public:
  static constexpr const char* kKind = "sgd";
  static constexpr bool kFusedBf16 = true;  // its CUDA kernels take FusedBf16 (bf16 gradient in, bf16 parameter out)
  using OptimizerWith::OptimizerWith;

  static std::vector<StateSpec> state_specs(const Shape& shape, const SgdConfig& config);

 private:
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;
};

}  // namespace tally::optim
