// CPU kernel of LAMB as pytorch_optimizer 4.1.0's Lamb steps on its foreach path (its default), two passes over the
// tensor with the trust ratio between them:
//   1. read g, p, m, v; write m, v; sum ||p'||^2 and ||u||^2 in double (p' = p * (1 - lr*wd): decoupled decay)
//   2. read m, v, p; write p = p' - step_size * (trust * u), u recomputed from m and v (the same float operations)
// 40 bytes per f32 parameter (the moments are read twice rather than u stored and read back: the same traffic,
// no extra memory). Sharded (ZeRO 1), the two norms are sums over every rank's part.
//
// Rounding as torch's CPU kernels: m = m*b1 + (1-b1)*g and v's addcmul fused as torch fuses them; u as its foreach
// ops do it (sqrt, + eps, reciprocal, times m); the norms in double, rounded to float as torch's; the trust ratio
// in float; p += -step_size * (u*trust) fused.
#include <algorithm>
#include <cmath>

#include "optim/kernels/cpu/float_vectors.h"
#include "optim/kernels/cpu/traversals.h"

namespace tally::optim::kernels::cpu {

using namespace detail;

namespace {

// The per-element arithmetic both passes share.
struct LambElement {
  float gs = 1;
  float b1 = 0, one_minus_b1 = 1, b2 = 0, one_minus_b2 = 1;
  float eps = 0;
  float keep = 1;  // 1 - lr*wd with decoupled decay (exactly 1 without: p*1 == p), else 1
  float wd = 0;    // LambDecay::in_update: u += wd*p

  // exp_avg.mul_(b1).add_(g, alpha=1-b1); exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2).
  void moments(float g, float* m, float* v) const {
    *m = std::fma(g, one_minus_b1, *m * b1);
    *v = std::fma(one_minus_b2 * g, g, *v * b2);
  }
  // u = m * (1 / (sqrt(v) + eps)) (+ wd * p, added to the update as torch's add_(p, alpha=wd)).
  template <bool kInUpdate>
  float normalised(float m, float v, float kept) const {
    const float u = (1.0f / (std::sqrt(v) + eps)) * m;
    return kInUpdate ? std::fma(kept, wd, u) : u;
  }
};

template <bool kStats, bool kInUpdate>
void lamb(const LambArgs& a) {
  const LambElement lamb{.gs = float(a.grad_scale),
                         .b1 = float(a.beta1),
                         .one_minus_b1 = float(1.0 - a.beta1),
                         .b2 = float(a.beta2),
                         .one_minus_b2 = float(1.0 - a.beta2),
                         .eps = float(a.eps),
                         .keep = kInUpdate ? 1.0f : float(1.0 - a.weight_decay * a.lr),
                         .wd = float(a.weight_decay)};
  // Pass 1: the moments, ||p'||^2, ||u||^2 and (statistics) ||m||^2.
  double sums[kExtras] = {};
  for_each_range(a.n, sums, [&](int64_t i0, int64_t i1, double* e) {
    const LambElement el = lamb;
    float* __restrict m = a.exp_avg;
    float* __restrict v = a.exp_avg_sq;
    const float* __restrict p = a.param;
    const float* __restrict grad = a.grad;
    double wsq = 0, usq = 0, msq = 0;
#pragma omp simd reduction(+ : wsq, usq, msq)
    for (int64_t i = i0; i < i1; ++i) {
      el.moments(grad[i] * el.gs, m + i, v + i);
      const float kept = p[i] * el.keep;
      const float u = el.normalised<kInUpdate>(m[i], v[i], kept);
      wsq += squared(kept);
      usq += squared(u);
      if constexpr (kStats) msq += squared(m[i]);
    }
    e[0] += wsq;
    e[1] += usq;
    e[2] += msq;
  });
  // The trust ratio from the whole tensor's norms (torch's float32 norms, clamp and division).
  double norms_sq[2] = {sums[0], sums[1]};
  if (a.shard.sum) (*a.shard.sum)(norms_sq, 2);
  const float weight_norm = std::min(float(std::sqrt(norms_sq[0])), float(a.clamp));
  const float update_norm = float(std::sqrt(norms_sq[1]));
  const float trust = weight_norm != 0.0f && update_norm != 0.0f ? weight_norm / (update_norm + lamb.eps) : 1.0f;
  // Pass 2: p = p' - step_size * (trust * u).
  const float neg_step = float(-a.step_size);
  double applied[kExtras] = {};
  for_each_range(a.n, applied, [&](int64_t i0, int64_t i1, double* e) {
    const LambElement el = lamb;
    const float* __restrict m = a.exp_avg;
    const float* __restrict v = a.exp_avg_sq;
    float* __restrict p = a.param;
    const float tr = trust, ns = neg_step;
    double app = 0;
#pragma omp simd reduction(+ : app)
    for (int64_t i = i0; i < i1; ++i) {
      const float kept = p[i] * el.keep;
      const float scaled = el.normalised<kInUpdate>(m[i], v[i], kept) * tr;
      p[i] = std::fma(scaled, ns, kept);
      if constexpr (kStats) app += squared(ns * scaled);
    }
    e[0] += app;
  });
  if constexpr (kStats) {  // this part's sums (the base adds them over the ranks)
    a.stats[kStatUpdateSq] += sums[1];
    a.stats[kStatExpAvgSq] += sums[2];
    a.stats[kStatAppliedSq] += applied[0];
  }
}

}  // namespace

void lamb_step(const LambArgs& a) {
  refuse_fused_bf16(a.bf16_param, "lamb_step");
  if (a.n == 0 && !a.shard.sum) return;  // a rank with no element of a sharded tensor still adds its (zero) norms
  with_flag(a.stats != nullptr,
            [&]<bool S>() { with_flag(a.decay == LambDecay::in_update, [&]<bool U>() { lamb<S, U>(a); }); });
}

}  // namespace tally::optim::kernels::cpu
