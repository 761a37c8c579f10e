// SM3 exactly as pytorch_optimizer 4.1.0's SM3 (dense gradients; Anil et al. 2019, "Memory-Efficient Adaptive
// Optimization"): a tensor of rank >= 2 keeps one accumulator per dim instead of a second moment per element. Each
// element's v is the smallest of its accumulators (times beta) plus (1-beta) g^2; each accumulator then takes the
// maximum of v over the other dims (with beta > 0: the maximum with its old value too); the update is
// g / sqrt(v + eps), through the momentum buffer when momentum > 0: m = lerp(m, u, 1-momentum); p -= lr * update.
// A vector or a scalar keeps a full accumulator. State: accumulator_0..accumulator_{rank-1} (the reference's names
// and shapes: accumulator_k is 1 in every dim but k), and momentum_buffer only when momentum > 0.
#pragma once
#include "optim/optimizer.h"

namespace tally::optim {

struct Sm3Config {
  double lr = 0.1;        // the reference's default
  double momentum = 0.0;  // in [0, 1); 0: no momentum buffer
  double beta = 0.0;      // in [0, 1]; 0: sums of g^2 (the paper's SM3-II), > 0: their EMA, kept as maxima
  double eps = 1e-30;     // added to v before the square root
  // ---- beyond the reference (0 reproduces it) ----
  double weight_decay = 0.0;  // decoupled: p *= 1 - lr*wd before the update
};

// Throws tally::Error naming the group and the bad field.
void validate(const Sm3Config& config, int group);

class Sm3 final : public OptimizerWith<Sm3, Sm3Config> {
 public:
  static constexpr const char* kKind = "sm3";
  static constexpr bool kFusedBf16 = true;  // its CUDA kernels take FusedBf16 (bf16 gradient in, bf16 parameter out)
  using OptimizerWith::OptimizerWith;

  // momentum_buffer (momentum > 0), then one accumulator per dim (rank >= 2: ZeRO 1 cuts dim 0, accumulator_0 with
  // it; the others are whole on every rank, maxima completed over ranks) or one of the parameter's shape (rank <= 1).
  static std::vector<StateSpec> state_specs(const Shape& shape, const Sm3Config& config);

 private:
  static kernels::Sm3Shape kernel_shape(const Slot& slot);
  int64_t workspace_for(const Slot& slot) const override;
  void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) override;
  void record_internals(Slot& slot, const double* stats) override;
  // complete_maxima: one all-reduce of maxima per accumulator of dims 1.. (f32).
  dist::Traffic cross_rank_traffic(const Slot& slot) const override;
  void complete_maxima(Slot& slot);
};

}  // namespace tally::optim
