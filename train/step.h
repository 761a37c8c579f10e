// One optimizer step of a GPT-2, top to bottom: for each micro-batch, batch -> forward -> loss -> backward (the
// gradients accumulate, each loss scaled by 1/(accumulation x ranks)); then, data-parallel, the gradients summed
// over the ranks; the global gradient norm -> clip -> optimizer step -> (ZeRO 1) the updated parts gathered ->
// gradients freed. A non-finite loss or norm skips the optimizer, whose state stays untouched. The same function
// runs on the meta device to predict a step's memory (train/memory_plan.h), so the plan is of this very code.
#pragma once
#include <atomic>
#include <cstdint>

#include "core/tensor.h"
#include "models/gpt2.h"
#include "optim/optimizer.h"
#include "train/data_parallel.h"

namespace tally::train {

// Where a step's micro-batches come from: (B, T) i32 inputs and targets on the model's device.
class Batches {
 public:
  virtual ~Batches() = default;
  virtual void next(Tensor& inputs, Tensor& targets) = 0;
  // Whether the ids were checked against the model's vocabulary where they were made (then the step does not copy
  // them back to the host to check them: no wait on the device).
  virtual TokenIds ids() const { return TokenIds::check; }
};

struct StepPlan {
  int64_t accumulation = 1;   // micro-batches per optimizer step
  double grad_clip = 1.0;     // global-norm clip (0: off)
  bool poison_loss = false;   // fault injection (core/faults.h): the step's loss reads as NaN
  DataParallel* parallel = nullptr;  // data-parallel over ranks, or null: one process
  // A request to stop after this step (SIGINT/SIGTERM/SIGHUP), or null. Data-parallel, it is read when the loss is
  // summed over the ranks and summed with it, so that every rank stops after the same step.
  const std::atomic<bool>* stop_requested = nullptr;
};

struct StepOutcome {
  double loss = 0;       // mean over the micro-batches and ranks (NaN on the meta device)
  double grad_norm = 0;  // before clipping
  bool finite = true;    // false: the optimizer did not run
  bool stop = false;     // some rank had a stop request when the loss was summed: every rank stops after this step
};

StepOutcome optimizer_step(models::GPT2& model, optim::Optimizer& optimizer, Batches& batches, const StepPlan& plan);

}  // namespace tally::train
