// Per-element arithmetic that CAME's and Adafactor's CPU kernels share, each formula written once (internal to
// optim/kernels/cpu): the EMA in torch's rounding, g^2 + eps1, the normalised update (dense and factored), the RMS
// clip's divisor and division, decoupled weight decay. Templates over V = float or floatx16 (16 elements side by
// side, the same rounding per lane). Kernel-specific steps (CAME's moment and instability) are in came.cpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "optim/kernels/cpu/float_vectors.h"

namespace tally::optim::kernels::cpu::detail {

// m*b + x*(1-b) rounded as torch's m.mul_(b).add_(x, alpha=1-b): m*b rounded, then x*(1-b) added to it fused.
template <class V>
inline V ema(V m, V x, float b, float one_b) {
  return fused_mul_add(x, splat<V>(one_b), m * b);
}

// A row or column statistic's EMA towards the mean sum / count (the mean rounded to float first).
inline float ema_of_mean(float stat, double sum, int64_t count, float b, float one_b) {
  return ema(stat, float(sum / double(count)), b, one_b);
}

// g^2 + eps1 (g already scaled): what the second moment averages.
template <class V>
inline V square_plus_eps(V g, float eps1) {
  return g * g + eps1;
}

// The update of a dense (not factored) second moment v: g / sqrt(v) as torch's v.rsqrt().mul_(g) (1/sqrt rounded
// on its own).
inline float dense_normalised(float g, float v) { return (1.0f / std::sqrt(v)) * g; }

// The update of a factored second moment: (g*gs) / sqrt(v_hat), whose 1/sqrt(v_hat) is the row factor times the
// column factor (the package's _approx_sq_grad). rf may be one float for 16 columns.
template <class R, class V>
inline V factored_normalised(R rf, V cf, V g, float gs) {
  return (rf * cf) * (g * gs);
}

// The clipping divisor max(1, RMS / threshold), in float as the package computes it, with what divide() takes.
struct ClipDivisor {
  float d = 1;         // the divisor (dense steps divide by it exactly)
  float inv_d = 1;     // 1 / d
  float residual = 1;  // the d of divide()'s residual step: d, or 0 when d is infinite (an RMS past float's range over
                       // a tiny threshold): u / inf is +-0, which divide() then gives exactly (with d, 0 * inf = NaN)
};
inline ClipDivisor clip_divisor(double sum_sq, int64_t numel, double threshold) {
  const float rms = float(std::sqrt(sum_sq)) / float(std::sqrt(double(numel)));
  const float d = std::max(1.0f, rms / float(threshold));
  return {.d = d, .inv_d = 1.0f / d, .residual = std::isinf(d) ? 0.0f : d};
}

// u / d for the clip: the reciprocal product corrected by one fused residual step. Vector division costs more
// than the rest of the pass; this equals the correctly rounded quotient except in a few elements per million,
// which are one ulp off (the divisor itself already differs from the package's by float rounding).
template <class V>
inline V divide(V u, const ClipDivisor& c) {
  const V q = u * c.inv_d;
  return fused_mul_add(fused_mul_add(-q, splat<V>(c.residual), u), splat<V>(c.inv_d), q);
}

// Decoupled weight decay, then the step: p + p*decay (decay = -lr*wd, fused as torch's p.add_(p, alpha=-lr*wd);
// decay = 0 without weight decay is an exact no-op), minus step.
template <class V>
inline V decay_and_step(V p, float decay, V step) {
  return fused_mul_add(p, splat<V>(decay), p) - step;
}

}  // namespace tally::optim::kernels::cpu::detail
