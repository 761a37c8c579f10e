// Adafactor: configuration checks, state layout (transformers' names and order), kernel dispatch, internals.
#include "optim/adafactor.h"

#include <cmath>

#include "optim/validate.h"

namespace tally::optim {

void validate(const AdafactorConfig& c, int group) {
  const char* op = "[adafactor]";
  check_required_lr(op, group, c.lr);
  check_eps(op, group, "eps[0] (eps1)", c.eps[0]);
  check_positive(op, group, "clip_threshold", c.clip_threshold);
  TALLY_CHECK(c.decay_rate < 0.0, op, " group ", group, ": decay_rate must be < 0 (beta2_t = 1 - t^decay_rate), got ",
              c.decay_rate);
  if (c.beta1) check_in(op, group, "beta1", *c.beta1, kUnitClosed);
  check_weight_decay(op, group, c.weight_decay);
  TALLY_CHECK(c.min_dim_to_factor >= 1, op, " group ", group, ": min_dim_to_factor must be >= 1");
}

FactoredDims Adafactor::factoring(const Shape& shape, const AdafactorConfig& c) {
  return factored_dims(shape, c.factoring, c.min_dim_to_factor);
}

std::vector<StateSpec> Adafactor::state_specs(const Shape& shape, const AdafactorConfig& c) {
  const FactoredDims f = factoring(shape, c);
  std::vector<StateSpec> s;
  if (c.beta1) s.push_back({.name = "exp_avg", .shape = shape});
  if (f.factored) {
    s.push_back({.name = "exp_avg_sq_row", .shape = drop_dim(shape, f.b), .index = StateIndex::rows});
    s.push_back({.name = "exp_avg_sq_col", .shape = drop_dim(shape, f.a), .index = StateIndex::columns});
  } else {
    s.push_back({.name = "exp_avg_sq", .shape = shape});
  }
  return s;
}

void Adafactor::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const AdafactorConfig& c = config_of(s);
  const bool has_m = s.has("exp_avg");
  TALLY_CHECK(has_m == c.beta1.has_value(), "[adafactor.step] '", s.name, "': beta1 was ",
              has_m ? "set" : "unset", " when its state was allocated and is ", c.beta1 ? "set" : "unset",
              " now; the first moment cannot be added or dropped after allocation");
  const double beta2t = 1.0 - std::pow(double(s.step), c.decay_rate);
  float* m = has_m ? s.f32("exp_avg") : nullptr;
  const Device dev = s.param.device();
  const KernelGradient g = kernel_gradient(s, grad);
  if (s.factored) {
    kernels::AdafactorFactoredArgs a{
        .layout = s.layout,
        .param = param_f32(s),
        .grad = g.f32,
        .exp_avg = m,
        .exp_avg_sq_row = s.f32("exp_avg_sq_row"),
        .exp_avg_sq_col = s.f32("exp_avg_sq_col"),
        .lr = c.lr,
        .beta1 = c.beta1.value_or(0.0),
        .beta2t = beta2t,
        .eps1 = c.eps[0],
        .clip_threshold = c.clip_threshold,
        .weight_decay = c.weight_decay,
        .grad_scale = o.grad_scale,
        .workspace = workspace,
        .exact_exp_avg_sq = s.exact.defined() ? s.exact.data<float>() : nullptr,
        .stats = stats,
        .shard = sharding(s),
        .bf16_param = g.bf16,
    };
    if (launches_later(s, g, stats, kernels::kDenseBatchMax)) {
      deferred_.on(dev, [this] { finish_updates(); }).factored.push_back(a);
      return;
    }
    TALLY_KERNEL(dev, adafactor_factored_step, a);
  } else {
    kernels::AdafactorDenseArgs a{
        .n = s.param.numel(),
        .param = param_f32(s),
        .grad = g.f32,
        .exp_avg = m,
        .exp_avg_sq = s.f32("exp_avg_sq"),
        .lr = c.lr,
        .beta1 = c.beta1.value_or(0.0),
        .beta2t = beta2t,
        .eps1 = c.eps[0],
        .clip_threshold = c.clip_threshold,
        .weight_decay = c.weight_decay,
        .grad_scale = o.grad_scale,
        .workspace = workspace,
        .stats = stats,
        .shard = sharding(s),
        .bf16_param = g.bf16,
    };
    if (launches_later(s, g, stats, kernels::kDenseBatchMax)) {
      deferred_.on(dev, [this] { finish_updates(); }).dense.push_back(a);
      return;
    }
    TALLY_KERNEL(dev, adafactor_dense_step, a);
  }
}

// On CUDA, tensors are launched together after the other slots (launches_later), as CAME's are: six launches per
// batch of factored tensors (adafactor_factored_steps) instead of six per tensor, one block per small dense tensor
// (adafactor_dense_steps) instead of three launches.
void Adafactor::finish_updates() {
  const Deferred d = deferred_.take();
  if (!d.factored.empty()) {
    // The workspace is the one held for every slot's own step: batches take what fits of it.
    const HeldWorkspace w = held_workspace(d.device);
    TALLY_KERNEL(d.device, adafactor_factored_steps, d.factored.data(), int64_t(d.factored.size()), w.data, w.bytes);
  }
  if (!d.dense.empty()) TALLY_KERNEL(d.device, adafactor_dense_steps, d.dense.data(), int64_t(d.dense.size()));
}

void Adafactor::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);
  const AdafactorConfig& c = config_of(s);
  record_clip_internals(s, stats, c.clip_threshold);
  if (c.beta1) s.internals.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / double(s.whole.numel()));
}

}  // namespace tally::optim
