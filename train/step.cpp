// One optimizer step (see step.h).
#include "train/step.h"

#include <cmath>

#include "core/ledger.h"
#include "core/ops.h"
#include "core/random.h"
#include "optim/clip.h"

namespace tally::train {

StepOutcome optimizer_step(models::GPT2& model, optim::Optimizer& opt, Batches& batches, const StepPlan& plan) {
  const bool meta = model.device().is_meta();
  DataParallel* dp = plan.parallel;
  const int64_t ranks = dp ? dp->world() : 1, rank = dp ? dp->rank() : 0;
  const int64_t parts = plan.accumulation * ranks;  // the step's loss is the mean of `parts` losses
  // Dropout: micro-batch `micro` of rank r is the step's (micro x ranks + r)-th, as the loader deals the data out;
  // its masks come from where one process accumulating all `parts` would draw them, so N ranks train as one does.
  Generator& dropout = model.dropout_generator();
  const uint64_t first_draw = dropout.offset();
  uint64_t draws = 0;
  opt.zero_grad(optim::ZeroGrad::set_to_none);
  // The two numbers the host needs, made on the device in one buffer and read back by one copy after the last
  // backward pass is queued (the step's one wait for a GPU, which meanwhile keeps queueing kernels): the
  // micro-batches' losses summed in double, in order, as each is made (a micro-batch holds nothing after it: memory
  // does not grow with their number), and the squared gradient elements (this rank's share of the norm).
  Tensor readback, loss_slot, squares_slot;
  {
    MemoryScope scope(Category::workspace, "step_readback");
    readback = zeros({2}, {.dtype = DType::f64, .device = model.device()});
    loss_slot = readback.slice(0, 0, 1);
    squares_slot = readback.slice(0, 1, 2);
  }
  for (int64_t micro = 0; micro < plan.accumulation; ++micro) {
    Tensor x, y;  // (B, T) i32
    {
      MemoryScope scope(Category::other, "batch");
      batches.next(x, y);
    }
    draws = model.dropout_draws(x.numel());
    dropout.set_state(dropout.seed(), first_draw + uint64_t(micro * ranks + rank) * draws);
    Tensor loss = model.loss(x, y, batches.ids());
    {
      MemoryScope scope(Category::workspace, "step_readback");
      add_(loss_slot, loss.detach().to(DType::f64).reshape({1}));
    }
    if (parts > 1) loss = loss * (1.0 / double(parts));
    loss.backward();
  }
  dropout.set_state(dropout.seed(), first_draw + uint64_t(parts) * draws);  // past every rank's micro-batches
  if (dp) dp->reduce_gradients();  // every rank now holds the sum (ZeRO 1: of the parts it steps)
  double loss_sum = 0, squares = 0;
  {
    MemoryScope scope(Category::workspace, "step_readback");
    if (dp)
      dp->add_grad_squares(squares_slot);
    else
      optim::add_sum_of_squares(optim::defined_grads(model.parameters()), squares_slot);
    if (!meta) {
      const std::vector<double> both = readback.to_vector<double>();
      loss_sum = both[0];
      squares = both[1];
    }
  }
  StepOutcome out;
  const double loss = plan.poison_loss ? NAN : loss_sum / double(plan.accumulation);
  const bool stop = plan.stop_requested && plan.stop_requested->load();
  if (dp) {
    // One rank's NaN is every rank's: they skip the step together; one rank's stop request every rank's too.
    const DataParallel::LossAndNorm both = dp->loss_and_norm(loss, squares, stop);
    out.loss = both.loss;
    out.grad_norm = both.norm;
    out.stop = both.stop;
  } else {
    out.loss = loss;
    out.grad_norm = std::sqrt(squares);
    out.stop = stop;
  }
  if (meta) out.loss = NAN;
  out.finite = meta || (std::isfinite(out.loss) && std::isfinite(out.grad_norm));
  if (out.finite) {
    const double coef = plan.grad_clip > 0 ? optim::clip_coefficient(out.grad_norm, plan.grad_clip) : 1.0;
    opt.step({.grad_scale = coef});  // the clip is fused into the step: the gradients are read scaled
    if (dp) dp->gather_parameters();
  }
  // Past the update (or a skipped one) the gradients are dead: freeing them now keeps evaluation, sampling and
  // checkpointing between steps inside the step's predicted peak.
  opt.zero_grad(optim::ZeroGrad::set_to_none);
  return out;
}

}  // namespace tally::train
