// The checks the optimizers' validate() share.
#include "optim/validate.h"

#include <cmath>
#include <sstream>

#include "core/error.h"

namespace tally::optim {

std::string Interval::str() const { return cat("[", lo, ", ", hi, closed_above ? "]" : ")"); }

void check_lr(const char* op, int group, double lr) {
  TALLY_CHECK(std::isfinite(lr) && lr >= 0.0, op, " group ", group, ": lr must be >= 0, got ", lr);
}

void check_required_lr(const char* op, int group, double lr) {
  TALLY_CHECK(std::isfinite(lr) && lr > 0.0, op, " group ", group, ": lr is required and must be > 0, got ", lr);
}

void check_finite_nonnegative(const char* op, int group, const char* name, double value) {
  TALLY_CHECK(std::isfinite(value) && value >= 0.0, op, " group ", group, ": ", name, " must be finite and >= 0, got ",
              value);
}

void check_positive(const char* op, int group, const char* name, double value) {
  TALLY_CHECK(value > 0.0, op, " group ", group, ": ", name, " must be > 0, got ", value);
}

void check_eps(const char* op, int group, const char* name, double eps) {
  TALLY_CHECK(eps > 0.0, op, " group ", group, ": ", name, " ", kEpsMustBePositive, ", got ", eps);
}

void check_in(const char* op, int group, const char* name, double value, Interval in, const char* why) {
  TALLY_CHECK(in.contains(value), op, " group ", group, ": ", name, " must be in ", in.str(), why, ", got ", value);
}

void check_betas(const char* op, int group, std::span<const double> betas, std::span<const Interval> in,
                 const char* why) {
  TALLY_ASSERT(betas.size() == in.size() && !betas.empty());
  bool ok = true;
  bool same = true;
  for (size_t i = 0; i < betas.size(); ++i) {
    ok = ok && in[i].contains(betas[i]);
    same = same && in[i] == in[0];
  }
  if (ok) return;
  std::ostringstream allowed;
  if (same) {
    allowed << in[0].str();
  } else {
    for (size_t i = 0; i < in.size(); ++i)
      allowed << (i == 0 ? "" : i + 1 == in.size() ? " and " : ", ") << in[i].str();
  }
  std::ostringstream given;
  for (size_t i = 0; i < betas.size(); ++i) given << (i == 0 ? "" : ", ") << betas[i];
  fail(op, " group ", group, ": betas must be in ", allowed.str(), why, ", got (", given.str(), ")");
}

}  // namespace tally::optim
