// The checks the optimizers' validate() share: each refuses a group's setting with a message that names the
// optimizer (op: "[adamw]"), the group, the setting and the value given.
#pragma once
#include <array>
#include <span>
#include <string>

namespace tally::optim {

// An interval [lo, hi] or [lo, hi) of a setting's allowed values.
struct Interval {
  double lo = 0.0;
  double hi = 1.0;
  bool closed_above = false;  // hi itself allowed
  bool contains(double v) const { return v >= lo && (closed_above ? v <= hi : v < hi); }
  std::string str() const;  // "[0, 1)"
  bool operator==(const Interval&) const = default;
};
inline constexpr Interval kUnitOpen{.lo = 0.0, .hi = 1.0, .closed_above = false};   // [0, 1)
inline constexpr Interval kUnitClosed{.lo = 0.0, .hi = 1.0, .closed_above = true};  // [0, 1]

// Why validate() refuses an epsilon of 0 (the optimizers that divide by a root of their second moment).
inline constexpr const char* kEpsMustBePositive =
    "must be > 0 (with 0, an element whose gradient stays 0 is updated by 0/0 = NaN)";

// lr finite and >= 0 (the optimizers with a default learning rate).
void check_lr(const char* op, int group, double lr);
// lr finite and > 0 (the optimizers whose configuration has no usable default: "lr is required").
void check_required_lr(const char* op, int group, double lr);
// A finite value >= 0: weight_decay, SGD's momentum.
void check_finite_nonnegative(const char* op, int group, const char* name, double value);
inline void check_weight_decay(const char* op, int group, double weight_decay) {
  check_finite_nonnegative(op, group, "weight_decay", weight_decay);
}
// value > 0 ("clip_threshold must be > 0, got 0").
void check_positive(const char* op, int group, const char* name, double value);
// An epsilon added to a root of a second moment: > 0, with the reason (kEpsMustBePositive).
void check_eps(const char* op, int group, const char* name, double eps);
// value within `in`; `why` (may be empty) follows the interval: "beta must be in [0, 1) (at 1 ...), got 1".
void check_in(const char* op, int group, const char* name, double value, Interval in, const char* why = "");
// betas[i] within in[i]: "betas must be in [0, 1), got (0.9, 1)" when every interval is the same, else
// "betas must be in [0, 1], [0, 1) and [0, 1) (why), got (...)".
void check_betas(const char* op, int group, std::span<const double> betas, std::span<const Interval> in,
                 const char* why = "");
template <size_t N>
void check_betas(const char* op, int group, const std::array<double, N>& betas, Interval in) {
  std::array<Interval, N> every;
  every.fill(in);
  check_betas(op, group, betas, every);
}

}  // namespace tally::optim
