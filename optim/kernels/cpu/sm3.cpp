// CPU kernel of SM3 as pytorch_optimizer 4.1.0 implements it (dense gradients), one pass over the tensor: read g, p
// (and m); write p (and m); 12 bytes per f32 parameter (20 with momentum), the minimum for the algorithm.
//
// Rank >= 2: the tensor is walked as rows of its last dim, each task a range of indices of dim 0 (a function of the
// shape alone). An element reads the smallest of its accumulators; the new maxima are gathered on the way: dim 0's
// in the task itself (no other task reads its indices, so accumulator_0 is written as soon as an index is done), the
// other dims' in per-task partials (workspace), combined and written after the pass. Maxima are exact whatever the
// order, so the result does not depend on the thread count. Rank <= 1: one accumulator value per element.
//
// Rounding as torch's CPU kernels: v = addcmul(beta*acc, g, g, value=1-beta) fused as fma((1-beta)*g, g, beta*acc);
// rsqrt as two roundings; the momentum's lerp fused as torch's; p.add_(update, alpha=-lr) fused.
#include <algorithm>
#include <cmath>

#include "optim/kernels/cpu/float_vectors.h"
#include "optim/kernels/cpu/traversals.h"

namespace tally::optim::kernels::cpu {

using namespace detail;

namespace {

// The per-element arithmetic, written once for both layouts. The loops take a local copy (stores through float
// pointers could otherwise alias the constants and force reloads).
struct Sm3Element {
  float gs = 1;          // gradient scale (fused clipping)
  float beta = 0, one_minus_beta = 1;
  float eps = 0;
  float w = 0;           // the lerp weight 1 - momentum
  bool low_weight = true;  // w < 0.5: torch's lerp form
  float keep = 1;        // 1 - lr*wd (exactly 1 without weight decay: p*1 == p)
  float neg_lr = 0;

  // v = beta*smallest + (1-beta)*g^2 (beta > 0), smallest + g^2 (beta == 0: torch skips the multiply; the same).
  template <bool kBeta>
  float second_moment(float smallest, float g) const {
    return std::fma(one_minus_beta * g, g, kBeta ? smallest * beta : smallest);
  }
  // The step lr multiplies: u = g / sqrt(v + eps), through the momentum buffer m = lerp(m, u, 1-momentum).
  template <bool kMomentum>
  float direction(float v, float g, float* m) const {
    const float u = (1.0f / std::sqrt(v + eps)) * g;
    if constexpr (!kMomentum) {
      return u;
    } else {
      const float m0 = *m;
      const float mn = low_weight ? std::fma(w, u - m0, m0) : std::fma(-(u - m0), 1.0f - w, u);
      *m = mn;
      return mn;
    }
  }
  // p *= 1 - lr*wd; p += -lr * d (fused, as p.add_(d, alpha=-lr)); returns the applied change.
  float apply(float d, float* p) const {
    const float kept = *p * keep;
    *p = std::fma(d, neg_lr, kept);
    return neg_lr * d;
  }
};

Sm3Element element_of(const Sm3Args& a) {
  return {.gs = float(a.grad_scale),
          .beta = float(a.beta),
          .one_minus_beta = float(1.0 - a.beta),
          .eps = float(a.eps),
          .w = float(1.0 - a.momentum),
          .low_weight = float(1.0 - a.momentum) < 0.5f,
          .keep = float(1.0 - a.lr * a.weight_decay),
          .neg_lr = float(-a.lr)};
}

// Rank 0 or 1: accumulator_0 has the tensor's shape. A vector keeps max(acc, v) when beta > 0, a scalar v itself
// (the reference copies v into a 0-dim accumulator before its per-dim maxima, which a scalar has none of).
template <bool kStats, bool kMomentum, bool kBeta, bool kKeepMax>
void sm3_dense(const Sm3Args& a, int64_t n) {
  float* acc = a.accumulators[0];
  double ex[kExtras] = {};
  for_each_range(n, ex, [&](int64_t i0, int64_t i1, double* e) {
    const Sm3Element el = element_of(a);
    float* __restrict p = a.param;
    float* __restrict m = a.momentum_buffer;
    float* __restrict ac = acc;
    const float* __restrict grad = a.grad;
    double usq = 0, msq = 0, app = 0;
#pragma omp simd reduction(+ : usq, msq, app)
    for (int64_t i = i0; i < i1; ++i) {
      const float g = grad[i] * el.gs;
      const float old = ac[i];
      const float v = el.second_moment<kBeta>(old, g);
      ac[i] = kKeepMax ? std::max(old, v) : v;
      const float d = el.direction<kMomentum>(v, g, kMomentum ? m + i : nullptr);
      const float step = el.apply(d, p + i);
      if constexpr (kStats) {
        usq += squared(d);
        if constexpr (kMomentum) msq += squared(d);
        app += squared(step);
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

// The walk of a tensor of rank >= 2: tasks over dim 0, the partial maxima of dims 1.. in the workspace.
struct Sm3Plan {
  int rank = 0;
  int64_t numel = 1;
  int64_t K = 1;              // the last dim: elements per row
  int64_t rows_per_index = 1; // rows per index of dim 0
  int64_t tasks = 1;
  int64_t partial_floats = 0; // per task: dims[1] + ... + dims[rank-1]
  int64_t offset[kSm3MaxDims] = {};  // of dim k's partials within a task's (k >= 1)
};

Sm3Plan make_plan(const Sm3Shape& s) {
  Sm3Plan pl;
  pl.rank = s.rank;
  for (int k = 0; k < s.rank; ++k) pl.numel *= s.dims[k];
  pl.K = s.dims[s.rank - 1];
  pl.rows_per_index = s.dims[0] == 0 ? 0 : pl.numel / pl.K / s.dims[0];
  pl.tasks = std::clamp<int64_t>(std::min(s.dims[0], pl.numel / 4096), 1, kMaxDenseTasks);
  for (int k = 1; k < s.rank; ++k) {
    pl.offset[k] = pl.partial_floats;
    pl.partial_floats += s.dims[k];
  }
  return pl;
}

template <bool kStats, bool kMomentum, bool kBeta>
void sm3_dims(const Sm3Args& a) {
  const Sm3Shape& s = a.shape;
  const Sm3Plan pl = make_plan(s);
  float* partials = static_cast<float*>(a.workspace);  // (tasks, partial_floats)
  const int r = s.rank;
  const int64_t D0 = s.dims[0], K = pl.K;
  double extras[kMaxDenseTasks][kExtras] = {};
#pragma omp parallel for schedule(static) if (pl.numel > kParallelMin && pl.tasks > 1)
  for (int64_t t = 0; t < pl.tasks; ++t) {
    const Sm3Element el = element_of(a);
    float* part = partials + t * pl.partial_floats;
    std::fill(part, part + pl.partial_floats, 0.0f);  // v >= 0: 0 is the identity of the maxima
    float* __restrict last_part = part + pl.offset[r - 1];
    const float* __restrict last_acc = a.accumulators[r - 1];
    float* __restrict acc0 = a.accumulators[0];
    const float* __restrict grad = a.grad;
    float* __restrict param = a.param;
    float* __restrict mom = a.momentum_buffer;
    double usq = 0, msq = 0, app = 0;
    for (int64_t i0 = D0 * t / pl.tasks; i0 < D0 * (t + 1) / pl.tasks; ++i0) {
      float max0 = 0;
      for (int64_t q = 0; q < pl.rows_per_index; ++q) {
        // The row's indices of dims 1..r-2 (q counts the rows of index i0 in row-major order) and its smallest
        // accumulator over the dims before the last.
        float lead = acc0[i0];
        int64_t idx[kSm3MaxDims] = {};
        for (int64_t rest = q, k = r - 2; k >= 1; --k) {
          idx[k] = rest % s.dims[k];
          rest /= s.dims[k];
          lead = std::min(lead, a.accumulators[k][idx[k]]);
        }
        const int64_t row = (i0 * pl.rows_per_index + q) * K;
        float row_max = 0;
#pragma omp simd reduction(+ : usq, msq, app) reduction(max : row_max)
        for (int64_t j = 0; j < K; ++j) {
          const float g = grad[row + j] * el.gs;
          const float v = el.second_moment<kBeta>(std::min(lead, last_acc[j]), g);
          last_part[j] = std::max(last_part[j], v);
          row_max = std::max(row_max, v);
          const float d = el.direction<kMomentum>(v, g, kMomentum ? mom + row + j : nullptr);
          const float step = el.apply(d, param + row + j);
          if constexpr (kStats) {
            usq += squared(d);
            if constexpr (kMomentum) msq += squared(d);
            app += squared(step);
          }
        }
        max0 = std::max(max0, row_max);
        for (int k = 1; k + 1 < r; ++k) part[pl.offset[k] + idx[k]] = std::max(part[pl.offset[k] + idx[k]], row_max);
      }
      // Every row of index i0 has read accumulator_0[i0]: it takes its new value now.
      acc0[i0] = kBeta ? std::max(acc0[i0], max0) : max0;
    }
    extras[t][0] = usq;
    extras[t][1] = msq;
    extras[t][2] = app;
  }
  // Dims 1..r-1: the maxima over the tasks' partials, then the accumulators (read by every task: written only now).
  for (int k = 1; k < r; ++k) {
    float* acc = a.accumulators[k];
    for (int64_t j = 0; j < s.dims[k]; ++j) {
      float nu = 0;
      for (int64_t t = 0; t < pl.tasks; ++t) nu = std::max(nu, partials[t * pl.partial_floats + pl.offset[k] + j]);
      acc[j] = kBeta ? std::max(acc[j], nu) : nu;
    }
  }
  if constexpr (kStats) {
    for (int64_t t = 0; t < pl.tasks; ++t) {
      a.stats[kStatUpdateSq] += extras[t][0];
      a.stats[kStatExpAvgSq] += extras[t][1];
      a.stats[kStatAppliedSq] += extras[t][2];
    }
  }
}

}  // namespace

int64_t sm3_workspace_bytes(const Sm3Shape& shape) {
  if (shape.rank < 2) return 0;
  const Sm3Plan pl = make_plan(shape);
  return align64(pl.tasks * pl.partial_floats * 4);
}

void sm3_step(const Sm3Args& a) {
  refuse_fused_bf16(a.bf16_param, "sm3_step");
  int64_t n = 1;
  for (int k = 0; k < a.shape.rank; ++k) n *= a.shape.dims[k];
  if (n == 0) return;
  with_flag(a.stats != nullptr, [&]<bool S>() {
    with_flag(a.momentum_buffer != nullptr, [&]<bool M>() {
      with_flag(a.beta > 0.0, [&]<bool B>() {
        if (a.shape.rank >= 2) sm3_dims<S, M, B>(a);
        else if (a.shape.rank == 1) sm3_dense<S, M, B, B>(a, n);
        else sm3_dense<S, M, B, false>(a, n);
      });
    });
  });
}

}  // namespace tally::optim::kernels::cpu
