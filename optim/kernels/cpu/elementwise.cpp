// CPU kernels of the one-pass optimizers (AdamW, SGD with momentum), the gradient-norm helpers (sum of
// squares in double, in-place scale) and the workspace sizes of the factored steps.
// AdamW reads g, p, m, v and writes p, m, v: 28 bytes per f32 parameter, the minimum for the algorithm.
// Rounding follows torch's CPU kernels op by op: std::fma exactly where torch fuses (add with alpha, addcmul,
// lerp), separate roundings elsewhere; the build compiles these files with -ffp-contract=off so that nothing
// else is fused (and a step is bit-identical with and without inspection statistics).
#include <cmath>

#include "core/error.h"
#include "optim/kernels/cpu/traversals.h"

namespace tally::optim::kernels::cpu {

using namespace detail;

int64_t factored_workspace_bytes(const FactoredLayout& layout) {
  return carve(nullptr, layout, make_block_plan(layout)).bytes;
}

int64_t dense_workspace_bytes(int64_t) { return 0; }

namespace {

// torch.optim.AdamW's single-tensor step (foreach=False, the CPU default), op for op.
// Loop-invariant choices are template parameters so that every loop vectorizes (no control flow inside).
template <bool kStats, bool kLowWeight>
void adamw(const AdamWArgs& a) {
  const double bc1 = 1.0 - std::pow(a.beta1, double(a.step));
  const double bc2 = 1.0 - std::pow(a.beta2, double(a.step));
  const float neg_step_size = float(-(a.lr / bc1));
  const float bc2_sqrt = float(std::sqrt(bc2));
  const float gs = float(a.grad_scale), eps = float(a.eps);
  const float keep = float(1.0 - a.lr * a.weight_decay);  // 1 without weight decay: p * 1 == p exactly
  const float w = float(1.0 - a.beta1);  // lerp weight
  const float b2 = float(a.beta2), one_b2 = float(1.0 - a.beta2);
  const double inv_bc1 = 1.0 / bc1;
  double ex[kExtras] = {};
  for_each_range(a.n, ex, [=](int64_t i0, int64_t i1, double* e) {
    double usq = 0, msq = 0, app = 0;
    float* param = a.param;
    float* exp_avg = a.exp_avg;
    float* exp_avg_sq = a.exp_avg_sq;
    const float* grad = a.grad;
    // Locals, not captures: the stores could otherwise alias them and force reloads.
    const float gs_ = gs, keep_ = keep, w_ = w, b2_ = b2, one_b2_ = one_b2, bc2_sqrt_ = bc2_sqrt, eps_ = eps;
    const float neg_step_size_ = neg_step_size;
#pragma omp simd reduction(+ : usq, msq, app)
    for (int64_t i = i0; i < i1; ++i) {
      const float g = grad[i] * gs_;
      const float p = param[i] * keep_;
      const float m0 = exp_avg[i];
      // torch's lerp: weight < 0.5 ? self + weight * (end - self) : end - (end - self) * (1 - weight), fused
      const float m = kLowWeight ? std::fma(w_, g - m0, m0) : std::fma(-(g - m0), 1.0f - w_, g);
      // exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2): the product (value*g)*g fused into the add
      const float v = std::fma(one_b2_ * g, g, exp_avg_sq[i] * b2_);
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      const float denom = std::sqrt(v) / bc2_sqrt_ + eps_;
      // param.addcdiv_(m, denom, value=-step_size) = p + (value*m)/denom
      const float step = (neg_step_size_ * m) / denom;
      param[i] = p + step;
      if constexpr (kStats) {
        const double dir = double(m) / double(denom) * inv_bc1;
        usq += dir * dir;
        msq += double(m) * double(m);
        app += double(step) * double(step);
      }
    }
    e[0] += usq;
    e[1] += msq;
    e[2] += app;
  });
  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += ex[0];
    a.stats[kStatExpAvgSq] += ex[1];
    a.stats[kStatAppliedSq] += ex[2];
  }
}

// torch.optim.SGD: d = g + wd*p; buf = first ? d : momentum*buf + (1-dampening)*d;
// d = nesterov ? d + momentum*buf : buf; p -= lr*d. Without weight decay wd = 0 gives fma(p, 0, g) == g.
template <bool kStats, bool kMomentum, bool kNesterov, bool kFirst>
void sgd(const SgdArgs& a) {
  const float gs = float(a.grad_scale), wdf = float(a.weight_decay), mom = float(a.momentum);
  const float damp = float(1.0 - a.dampening), neg_lr = float(-a.lr);
  float* buf = a.momentum_buffer;
  double ex[kExtras] = {};
  for_each_range(a.n, ex, [&](int64_t i0, int64_t i1, double* e) {
    double usq = 0, msq = 0, app = 0;
#pragma omp simd reduction(+ : usq, msq, app)
    for (int64_t i = i0; i < i1; ++i) {
      float d = std::fma(a.param[i], wdf, a.grad[i] * gs);  // grad.add(param, alpha=wd)
      if constexpr (kMomentum) {
        // buf.mul_(momentum).add_(d, alpha=1-dampening); the first step copies d
        const float b = kFirst ? d : std::fma(d, damp, buf[i] * mom);
        buf[i] = b;
        if constexpr (kStats) msq += double(b) * double(b);
        d = kNesterov ? std::fma(b, mom, d) : b;
      }
      const float step = neg_lr * d;
      a.param[i] = std::fma(d, neg_lr, a.param[i]);  // param.add_(d, alpha=-lr)
      if constexpr (kStats) {
        usq += double(d) * double(d);
        app += double(step) * double(step);
      }
    }
    e[0] += usq;
    e[1] += msq;
    e[2] += app;
  });
  if constexpr (kStats) {
    a.stats[kStatUpdateSq] += ex[0];
    a.stats[kStatExpAvgSq] += ex[1];
    a.stats[kStatAppliedSq] += ex[2];
  }
}

}  // namespace

void adamw_step(const AdamWArgs& a) {
  refuse_fused_bf16(a.bf16_param, "adamw_step");
  if (a.n == 0) return;
  with_flag(a.stats != nullptr, [&]<bool S>() {
    with_flag(1.0 - a.beta1 < 0.5, [&]<bool W>() { adamw<S, W>(a); });
  });
}

void sgd_step(const SgdArgs& a) {
  refuse_fused_bf16(a.bf16_param, "sgd_step");
  if (a.n == 0) return;
  with_flag(a.stats != nullptr, [&]<bool S>() {
    with_flag(a.momentum_buffer != nullptr, [&]<bool M>() {
      with_flag(a.nesterov == Nesterov::yes, [&]<bool N>() {
        with_flag(a.first_step, [&]<bool F>() { sgd<S, M, N, F>(a); });
      });
    });
  });
}

void sum_squares(const float* x, int64_t n, double* out, void*) {
  double ex[kExtras] = {};
  for_each_range(n, ex, [&](int64_t i0, int64_t i1, double* e) {
    e[0] += lane_sum(i0, i1, [&](int64_t i) { return double(x[i]) * double(x[i]); });
  });
  out[0] += ex[0];
}

int64_t squares_workspace_bytes(const SquaresInput*, int64_t) { return 0; }

void sum_squares_many(const SquaresInput* xs, int64_t count, double* out, void* workspace) {
  for (int64_t i = 0; i < count; ++i) {
    if (xs[i].dtype == DType::bf16) sum_squares_bf16(static_cast<const bf16*>(xs[i].x), xs[i].n, out, workspace);
    else sum_squares(static_cast<const float*>(xs[i].x), xs[i].n, out, workspace);
  }
}

void scale(float* x, int64_t n, double s) {
  const float f = float(s);
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] *= f;
}

}  // namespace tally::optim::kernels::cpu
