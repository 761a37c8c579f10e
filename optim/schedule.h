// Learning-rate schedules: a small value class with lr(step). Constant, or linear warmup followed by cosine
// decay to a floor (nanoGPT / llm.c style). `step` counts from 0: lr(0) is the rate of the first update.
#pragma once
#include <cstdint>
#include <string>

namespace tally::optim {

struct WarmupCosine {
  double peak_lr = 0.0;      // reached at the end of warmup
  int64_t warmup_steps = 0;  // lr(s) = peak * (s + 1) / warmup_steps for s < warmup_steps
  int64_t total_steps = 0;   // cosine from peak (at warmup_steps) down to min_lr (at total_steps), min_lr after
  double min_lr = 0.0;       // the floor
};

class LrSchedule {
 public:
  static LrSchedule constant(double lr);
  static LrSchedule warmup_cosine(const WarmupCosine& config);

  double lr(int64_t step) const;
  double peak() const { return c_.peak_lr; }
  // lr(step) / peak(): what Optimizer::set_lr_factor takes when groups have different base rates.
  double factor(int64_t step) const { return c_.peak_lr > 0 ? lr(step) / c_.peak_lr : 0.0; }
  std::string describe() const;

 private:
  enum class Kind : uint8_t { constant, warmup_cosine };
  LrSchedule(Kind k, WarmupCosine c) : kind_(k), c_(c) {}
  Kind kind_;
  WarmupCosine c_;
};

}  // namespace tally::optim
