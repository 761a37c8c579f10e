// Learning-rate schedules (see schedule.h).
#include "optim/schedule.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace tally::optim {

LrSchedule LrSchedule::constant(double lr) {
  TALLY_CHECK(std::isfinite(lr) && lr >= 0.0, "[lr schedule] constant lr must be finite and >= 0, got ", lr);
  return LrSchedule(Kind::constant, WarmupCosine{.peak_lr = lr});
}

LrSchedule LrSchedule::warmup_cosine(const WarmupCosine& c) {
  TALLY_CHECK(std::isfinite(c.peak_lr) && c.peak_lr >= 0.0, "[lr schedule] peak_lr must be finite and >= 0, got ",
              c.peak_lr);
  TALLY_CHECK(c.min_lr >= 0.0 && c.min_lr <= c.peak_lr, "[lr schedule] min_lr must be in [0, peak_lr = ", c.peak_lr,
              "], got ", c.min_lr);
  TALLY_CHECK(c.warmup_steps >= 0 && c.total_steps >= c.warmup_steps, "[lr schedule] need 0 <= warmup_steps (",
              c.warmup_steps, ") <= total_steps (", c.total_steps, ")");
  return LrSchedule(Kind::warmup_cosine, c);
}

double LrSchedule::lr(int64_t step) const {
  TALLY_CHECK(step >= 0, "[lr schedule] step must be >= 0, got ", step);
  if (kind_ == Kind::constant) return c_.peak_lr;
  if (step < c_.warmup_steps) return c_.peak_lr * double(step + 1) / double(c_.warmup_steps);
  if (step >= c_.total_steps) return c_.min_lr;
  const double span = double(c_.total_steps - c_.warmup_steps);
  const double progress = double(step - c_.warmup_steps) / span;  // in [0, 1)
  const double coeff = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return c_.min_lr + coeff * (c_.peak_lr - c_.min_lr);
}

std::string LrSchedule::describe() const {
  if (kind_ == Kind::constant) return cat("constant ", c_.peak_lr);
  return cat("linear warmup ", c_.warmup_steps, " steps to ", c_.peak_lr, ", cosine to ", c_.min_lr, " at step ",
             c_.total_steps);
}

}  // namespace tally::optim
