// SM3: configuration checks (the reference's ranges), state layout (its names, shapes and order), kernel dispatch
// and internals. The arithmetic is in optim/kernels/ (sm3.cpp, sm3.cu).
#include "optim/sm3.h"

#include <algorithm>
#include <cmath>

#include "optim/kernels/cuda_workspace.h"
#include "optim/validate.h"

namespace tally::optim {

namespace {

kernels::Sm3Shape sm3_shape(const Shape& shape) {
  TALLY_CHECK(shape.size() <= size_t(kernels::kSm3MaxDims), "[sm3] a parameter of shape ", shape_str(shape), " has ",
              shape.size(), " dims; SM3 keeps one accumulator per dim for at most ", kernels::kSm3MaxDims);
  kernels::Sm3Shape s{.rank = int(shape.size())};
  for (size_t k = 0; k < shape.size(); ++k) s.dims[k] = shape[k];
  return s;
}

}  // namespace

// The shape the kernel walks: the whole tensor's while this rank holds all of it (shard() views a scalar as a vector
// of one), else the part: a range of a vector's elements, or of the indices of dim 0 of a tensor of 2+ dims.
kernels::Sm3Shape Sm3::kernel_shape(const Slot& s) {
  return sm3_shape(s.param.numel() == s.whole.numel() ? s.whole.shape() : s.param.shape());
}

void validate(const Sm3Config& c, int group) {
  const char* op = "[sm3]";
  check_lr(op, group, c.lr);
  check_in(op, group, "momentum", c.momentum, kUnitOpen);
  check_in(op, group, "beta", c.beta, kUnitOpen,
           " (at 1 the accumulators never take a gradient and the update is g / sqrt(eps))");
  check_eps(op, group, "eps", c.eps);
  check_weight_decay(op, group, c.weight_decay);
}

std::vector<StateSpec> Sm3::state_specs(const Shape& shape, const Sm3Config& c) {
  const int rank = sm3_shape(shape).rank;
  std::vector<StateSpec> s;
  if (c.momentum > 0.0) s.push_back({.name = "momentum_buffer", .shape = shape});
  if (rank <= 1) {
    s.push_back({.name = "accumulator_0", .shape = shape});
    return s;
  }
  for (int k = 0; k < rank; ++k) {
    Shape acc(size_t(rank), 1);  // (1, .., shape[k], .., 1)
    acc[size_t(k)] = shape[size_t(k)];
    const StateIndex index = k == 0 ? StateIndex::dim0 : StateIndex::other_dim;
    s.push_back({.name = cat("accumulator_", k), .shape = acc, .index = index});
  }
  return s;
}

int64_t Sm3::workspace_for(const Slot& s) const {
  if (s.param.numel() == 0) return 0;
  if (s.param.device().backend() == DeviceKind::cuda) return kernels::cuda_sm3_workspace_bytes(kernel_shape(s));
  return TALLY_KERNEL(Device::cpu(), sm3_workspace_bytes, kernel_shape(s));
}

void Sm3::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const Sm3Config& c = config_of(s);
  const KernelGradient g = kernel_gradient(s, grad);
  kernels::Sm3Args a{
      .shape = kernel_shape(s),
      .param = param_f32(s),
      .grad = g.f32,
      .momentum_buffer = s.has("momentum_buffer") ? s.f32("momentum_buffer") : nullptr,
      .lr = c.lr,
      .momentum = c.momentum,
      .beta = c.beta,
      .eps = c.eps,
      .weight_decay = c.weight_decay,
      .grad_scale = o.grad_scale,
      .workspace = workspace,
      .stats = stats,
      .bf16_param = g.bf16,
  };
  for (int k = 0; k < std::max(1, a.shape.rank); ++k) a.accumulators[k] = s.f32(cat("accumulator_", k));
  TALLY_KERNEL(s.param.device(), sm3_step, a);
  if (comm() && s.whole.dim() >= 2) complete_maxima(s);
}

// ZeRO 1 cut dim 0: the kernel took the other dims' accumulators as maxima over this rank's indices of dim 0 (with
// beta > 0, also over their old values, which every rank holds); the maxima over every rank's complete them, the
// same bits as the whole tensor's. A rank holding no index of dim 0 ran no kernel: with beta == 0, where the new
// maxima replace the old values, it contributes zeros (v >= 0: the identity of the maxima).
void Sm3::complete_maxima(Slot& s) {
  for (int k = 1; k < s.whole.dim(); ++k) {
    Tensor& acc = s.tensors[s.index_of(cat("accumulator_", k))];
    if (s.param.numel() == 0 && config_of(s).beta == 0.0) acc.zero_();
    comm()->all_reduce_max(acc.data<float>(), acc.numel(), acc.device());
  }
}

dist::Traffic Sm3::cross_rank_traffic(const Slot& s) const {
  dist::Traffic t;  // none for a vector
  for (int k = 1; k < s.whole.dim(); ++k) t += {1, s.whole.size(k) * int64_t(sizeof(float))};
  return t;
}

void Sm3::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);  // update_rms: of what lr multiplies (the momentum buffer when kept)
  s.internals.clipped_update_rms = s.internals.update_rms;  // no clipping in SM3
  if (s.has("momentum_buffer")) s.internals.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / double(s.whole.numel()));
}

}  // namespace tally::optim
