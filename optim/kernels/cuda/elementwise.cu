// CUDA kernels of the one-pass optimizers (AdamW, SGD with momentum), the gradient-norm helpers and the
// workspace sizes. Same rounding points as optim/kernels/cpu/elementwise.cpp (fmaf exactly where torch fuses).
// AdamW reads g, p, m, v and writes p, m, v (28 bytes per parameter) with float4 loads when aligned; for a bf16
// parameter (FusedBf16) it reads the bf16 gradient and writes the bf16 parameter too (28 bytes, not 40 unfused).
#include "core/kernels/cuda/convert.cuh"
#include "core/philox.h"
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

int64_t factored_workspace_bytes(const FactoredLayout& layout) { return cuda_factored_workspace_bytes(layout); }

int64_t dense_workspace_bytes(int64_t) { return cuda_dense_workspace_bytes(); }

namespace {

struct AdamWScalars {
  float gs, keep, w, b2, one_b2, bc2_sqrt, eps, neg_step_size;
  double inv_bc1;
  bool wd;
};

struct AdamWOut {
  float p, m, v, step, denom;
};

__device__ inline AdamWOut adamw_element(float g, float p, float m0, float v0, const AdamWScalars& s) {
  AdamWOut o;
  g = g * s.gs;
  if (s.wd) p = p * s.keep;
  o.m = s.w < 0.5f ? fmaf(s.w, g - m0, m0) : fmaf(-(g - m0), 1.0f - s.w, g);
  o.v = fmaf(s.one_b2 * g, g, v0 * s.b2);
  o.denom = sqrtf(o.v) / s.bc2_sqrt + s.eps;
  o.step = (s.neg_step_size * o.m) / o.denom;
  o.p = p + o.step;
  return o;
}

// AdamW on n elements, 4 per thread (float4 when vec); g, p, m, v: (n). With kStats, block sums of the update
// direction^2, m^2 and the applied step^2 (slots 0-2), block_sums: (gridDim.x, kSums).
template <bool kStats>
__global__ void adamw_kernel(int64_t n, const float* g, float* p, float* m, float* v, AdamWScalars s, bool vec,
                             double* block_sums) {
  double acc[3] = {0, 0, 0};
  auto account = [&](const AdamWOut& o) {
    if (kStats) {
      const double dir = double(o.m) / double(o.denom) * s.inv_bc1;
      acc[0] += dir * dir;
      acc[1] += double(o.m) * o.m;
      acc[2] += double(o.step) * o.step;
    }
  };
  const int64_t stride = int64_t(gridDim.x) * kThreads * 4;
  for (int64_t e0 = (blockIdx.x * int64_t(kThreads) + threadIdx.x) * 4; e0 < n; e0 += stride) {
    if (vec && e0 + 4 <= n) {
      const float4 gv = *reinterpret_cast<const float4*>(g + e0);
      float4 pv = *reinterpret_cast<float4*>(p + e0);
      float4 mv = *reinterpret_cast<float4*>(m + e0);
      float4 vv = *reinterpret_cast<float4*>(v + e0);
      float* pp[4] = {&pv.x, &pv.y, &pv.z, &pv.w};
      float* mp[4] = {&mv.x, &mv.y, &mv.z, &mv.w};
      float* vp[4] = {&vv.x, &vv.y, &vv.z, &vv.w};
      const float gs[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const AdamWOut o = adamw_element(gs[t], *pp[t], *mp[t], *vp[t], s);
        *pp[t] = o.p, *mp[t] = o.m, *vp[t] = o.v;
        account(o);
      }
      *reinterpret_cast<float4*>(p + e0) = pv;
      *reinterpret_cast<float4*>(m + e0) = mv;
      *reinterpret_cast<float4*>(v + e0) = vv;
    } else {
      for (int64_t e = e0; e < imin(n, e0 + 4); ++e) {
        const AdamWOut o = adamw_element(g[e], p[e], m[e], v[e], s);
        p[e] = o.p, m[e] = o.m, v[e] = o.v;
        account(o);
      }
    }
  }
  if constexpr (kStats) write_block_sums(acc, block_sums);
}

// A bf16 parameter (FusedBf16): adamw_element on the master, then the bf16 parameter as round_to_bf16 writes it.
// Each thread takes whole 8-element Philox blocks (two float4 of p, m, v and 16 bytes of g when aligned).
// g, p, m, v, out.param: (n).
__global__ void adamw_rounded_kernel(int64_t n, const bf16* g, float* p, float* m, float* v, AdamWScalars s, bool vec,
                                     FusedBf16 out) {
  const int64_t blocks = int64_t(round_to_bf16_blocks(n));
  for (int64_t b = blockIdx.x * int64_t(kThreads) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * kThreads) {
    const rng::Philox4 r = rng::philox4x32_10(out.seed, out.offset + uint64_t(b));
    const int64_t e0 = 8 * b;
    if (vec && e0 + 8 <= n) {
      float pe[8], me[8], ve[8], ge[8];
      for (int h = 0; h < 2; ++h) {
        const float4 pv = reinterpret_cast<const float4*>(p + e0)[h], mv = reinterpret_cast<const float4*>(m + e0)[h];
        const float4 vv = reinterpret_cast<const float4*>(v + e0)[h];
        const float4 gv = load4(g + e0 + 4 * h);
        pe[4 * h] = pv.x, pe[4 * h + 1] = pv.y, pe[4 * h + 2] = pv.z, pe[4 * h + 3] = pv.w;
        me[4 * h] = mv.x, me[4 * h + 1] = mv.y, me[4 * h + 2] = mv.z, me[4 * h + 3] = mv.w;
        ve[4 * h] = vv.x, ve[4 * h + 1] = vv.y, ve[4 * h + 2] = vv.z, ve[4 * h + 3] = vv.w;
        ge[4 * h] = gv.x, ge[4 * h + 1] = gv.y, ge[4 * h + 2] = gv.z, ge[4 * h + 3] = gv.w;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const AdamWOut o = adamw_element(ge[j], pe[j], me[j], ve[j], s);
        pe[j] = o.p, me[j] = o.m, ve[j] = o.v;
      }
      for (int h = 0; h < 2; ++h) {
        reinterpret_cast<float4*>(p + e0)[h] = make_float4(pe[4 * h], pe[4 * h + 1], pe[4 * h + 2], pe[4 * h + 3]);
        reinterpret_cast<float4*>(m + e0)[h] = make_float4(me[4 * h], me[4 * h + 1], me[4 * h + 2], me[4 * h + 3]);
        reinterpret_cast<float4*>(v + e0)[h] = make_float4(ve[4 * h], ve[4 * h + 1], ve[4 * h + 2], ve[4 * h + 3]);
      }
      store_rounded_bf16x8(out.param + e0, pe, r);
    } else {
      for (int j = 0; j < 8 && e0 + j < n; ++j) {
        const int64_t e = e0 + j;
        const AdamWOut o = adamw_element(load(g + e), p[e], m[e], v[e], s);
        p[e] = o.p, m[e] = o.m, v[e] = o.v;
        out.param[e].bits = rounded_bf16(o.p, r, j);
      }
    }
  }
}

struct SgdScalars {
  float gs, wdf, mom, damp, neg_lr;
  bool wd, nesterov, first;
};
struct SgdOut {
  float d, b, step;  // the direction, the new momentum buffer (0 without one), the applied change
};

// One element of torch's SGD: d = g (+ wd p); with momentum b = mom b + (1-dampening) d (d on the first step) and d = b
// (Nesterov: d + mom b); p += -lr d. Every SGD kernel (fused bf16 or not) runs this.
__device__ inline SgdOut sgd_element(float g, float* p, float* buf, const SgdScalars& s) {
  float d = g * s.gs;
  if (s.wd) d = fmaf(*p, s.wdf, d);
  float b = 0;
  if (buf) {
    b = s.first ? d : fmaf(d, s.damp, *buf * s.mom);
    *buf = b;
    d = s.nesterov ? fmaf(b, s.mom, d) : b;
  }
  *p = fmaf(d, s.neg_lr, *p);
  return {d, b, s.neg_lr * d};
}

// SGD on n elements; g, p, buf (null without momentum): (n). With kStats, block sums of d^2, b^2 and the applied
// step^2 (slots 0-2), block_sums: (gridDim.x, kSums).
template <bool kStats>
__global__ void sgd_kernel(int64_t n, const float* g, float* p, float* buf, SgdScalars s, double* block_sums) {
  double acc[3] = {0, 0, 0};
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const SgdOut o = sgd_element(g[e], p + e, buf ? buf + e : nullptr, s);
    if (kStats) {
      acc[0] += double(o.d) * o.d;
      if (buf) acc[1] += double(o.b) * o.b;
      acc[2] += double(o.step) * o.step;
    }
  }
  if constexpr (kStats) write_block_sums(acc, block_sums);
}

// A bf16 parameter (FusedBf16): sgd_element on the master, then the bf16 parameter as round_to_bf16 writes it; each
// thread takes whole 8-element Philox blocks.
// p, buf (null without momentum), out.grad, out.param: (n).
__global__ void sgd_rounded_kernel(int64_t n, float* p, float* buf, SgdScalars s, FusedBf16 out) {
  update_rounded_blocks(n, out, [&](int64_t e) {
    sgd_element(load(out.grad + e), p + e, buf ? buf + e : nullptr, s);
    return p[e];
  });
}

// Block sums of x[e]^2 (slot 0); x: (n); block_sums: (gridDim.x, kSums).
__global__ void sum_squares_kernel(int64_t n, const float* x, double* block_sums) {
  double acc = 0;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads)
    acc += double(x[e]) * x[e];
  write_block_sum(acc, block_sums);
}

// x[e] *= s; x: (n).
__global__ void scale_kernel(int64_t n, float* x, float s) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) x[e] *= s;
}

}  // namespace

// One AdamW step, one elementwise pass; param, grad (or bf16_param.grad), exp_avg, exp_avg_sq: (n).
void adamw_step(const AdamWArgs& a) {
  if (a.n == 0) return;
  const double bc1 = 1.0 - pow(a.beta1, double(a.step));
  const double bc2 = 1.0 - pow(a.beta2, double(a.step));
  AdamWScalars s;  // (no designated initializers: .cu files must also build as C++17)
  s.gs = float(a.grad_scale);
  s.keep = float(1.0 - a.lr * a.weight_decay);
  s.w = float(1.0 - a.beta1);
  s.b2 = float(a.beta2);
  s.one_b2 = float(1.0 - a.beta2);
  s.bc2_sqrt = float(sqrt(bc2));
  s.eps = float(a.eps);
  s.neg_step_size = float(-(a.lr / bc1));
  s.inv_bc1 = 1.0 / bc1;
  s.wd = a.weight_decay != 0.0;
  check_fused(a.bf16_param, a.grad, a.stats, nullptr, "adamw_step");
  if (a.bf16_param.grad) {
    const FusedBf16& f = a.bf16_param;
    const bool vec = aligned16({f.grad, f.param, a.param, a.exp_avg, a.exp_avg_sq});
    adamw_rounded_kernel<<<rounded_blocks_grid(a.n), kThreads, 0, stream()>>>(a.n, f.grad, a.param, a.exp_avg,
                                                                              a.exp_avg_sq, s, vec, f);
    TALLY_CUDA_LAUNCH_CHECK("adamw_rounded");
    return;
  }
  const bool vec = aligned16({a.grad, a.param, a.exp_avg, a.exp_avg_sq});
  const int64_t quads = (a.n + 3) / 4;
  if (a.stats) {
    const DenseWorkspace w = carve_dense(a.workspace);
    const int blocks = reduce_blocks(quads);
    adamw_kernel<true><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.param, a.exp_avg, a.exp_avg_sq, s, vec,
                                                          w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("adamw");
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatUpdateSq, kStatExpAvgSq, kStatAppliedSq, 3,
                          "adamw add_block_sums");
  } else {
    const unsigned blocks = unsigned(imin((quads + kThreads - 1) / kThreads, int64_t(1) << 30));
    adamw_kernel<false><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.param, a.exp_avg, a.exp_avg_sq, s, vec,
                                                           nullptr);
    TALLY_CUDA_LAUNCH_CHECK("adamw");
  }
}

// One SGD step, one elementwise pass; param, grad (or bf16_param.grad), momentum_buffer (null without momentum): (n).
void sgd_step(const SgdArgs& a) {
  if (a.n == 0) return;
  SgdScalars s;  // (no designated initializers: .cu files must also build as C++17)
  s.gs = float(a.grad_scale);
  s.wdf = float(a.weight_decay);
  s.mom = float(a.momentum);
  s.damp = float(1.0 - a.dampening);
  s.neg_lr = float(-a.lr);
  s.wd = a.weight_decay != 0.0;
  s.nesterov = a.nesterov == Nesterov::yes;
  s.first = a.first_step;
  check_fused(a.bf16_param, a.grad, a.stats, nullptr, "sgd_step");
  if (a.bf16_param.grad) {
    sgd_rounded_kernel<<<rounded_blocks_grid(a.n), kThreads, 0, stream()>>>(a.n, a.param, a.momentum_buffer, s,
                                                                            a.bf16_param);
    TALLY_CUDA_LAUNCH_CHECK("sgd_rounded");
    return;
  }
  if (a.stats) {
    const DenseWorkspace w = carve_dense(a.workspace);
    const int blocks = reduce_blocks(a.n);
    sgd_kernel<true><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.param, a.momentum_buffer, s, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("sgd");
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatUpdateSq, kStatExpAvgSq, kStatAppliedSq, 3,
                          "sgd add_block_sums");
  } else {
    const unsigned blocks = unsigned(imin((a.n + kThreads - 1) / kThreads, int64_t(1) << 30));
    sgd_kernel<false><<<blocks, kThreads, 0, stream()>>>(a.n, a.grad, a.param, a.momentum_buffer, s, nullptr);
    TALLY_CUDA_LAUNCH_CHECK("sgd");
  }
}

// out[0] += the sum of x^2; x: (n); workspace: dense_workspace_bytes(n) bytes.
void sum_squares(const float* x, int64_t n, double* out, void* workspace) {
  if (n == 0) return;
  const DenseWorkspace w = carve_dense(workspace);
  const int blocks = reduce_blocks(n);
  sum_squares_kernel<<<blocks, kThreads, 0, stream()>>>(n, x, w.block_sums);
  TALLY_CUDA_LAUNCH_CHECK("sum_squares");
  launch_add_block_sums(w.block_sums, blocks, out, 0, 0, 0, 1, "sum_squares total");
}

namespace {

// sum_squares_many: tasks of one launch, each over its own run of blocks (grid-stride within the run).
constexpr int kSquaresTasks = 128;
struct SquaresTask {
  const void* x;
  int64_t n;
  int is_bf16;
  int first_block;
};
struct SquaresBatch {
  SquaresTask task[kSquaresTasks];
  int count;
};
static_assert(sizeof(SquaresBatch) <= 4000, "sum_squares_batch: the launch's parameters must stay under 4 KiB");

// Blocks of one tensor: one per 8192 elements, 1..256 (the launch takes at most kMaxBlocks).
int squares_blocks(int64_t n) { return int(std::clamp<int64_t>((n + 8191) / 8192, 1, 256)); }

// Block sums of x^2 of each task over its run of blocks [first_block, the next task's); task x: (k.n), f32 or
// bf16; block_sums: (gridDim.x, kSums), slot 0.
__global__ void sum_squares_batch(const SquaresBatch b, double* block_sums) {
  int t = 0;
  while (t + 1 < b.count && b.task[t + 1].first_block <= int(blockIdx.x)) ++t;
  const SquaresTask& k = b.task[t];
  const int64_t blocks = (t + 1 < b.count ? b.task[t + 1].first_block : int(gridDim.x)) - k.first_block;
  const int64_t first = (int64_t(blockIdx.x) - k.first_block) * kThreads + threadIdx.x, stride = blocks * kThreads;
  double acc = 0;
  if (k.is_bf16) {
    const bf16* x = static_cast<const bf16*>(k.x);
    for (int64_t e = first; e < k.n; e += stride) {
      const double v = double(tally::kernels::cuda::bf16_to_float_dev(x[e]));
      acc += v * v;
    }
  } else {
    const float* x = static_cast<const float*>(k.x);
    for (int64_t e = first; e < k.n; e += stride) acc += double(x[e]) * x[e];
  }
  write_block_sum(acc, block_sums);
}

}  // namespace

int64_t squares_workspace_bytes(const SquaresInput*, int64_t) { return cuda_dense_workspace_bytes(); }

// out[0] += the sums of squares of the tensors xs (count): up to kSquaresTasks of them and kMaxBlocks blocks per
// launch.
void sum_squares_many(const SquaresInput* xs, int64_t count, double* out, void* workspace) {
  const DenseWorkspace w = carve_dense(workspace);
  SquaresBatch b{};
  int blocks = 0;
  auto launch = [&] {
    if (b.count == 0) return;
    sum_squares_batch<<<unsigned(blocks), kThreads, 0, stream()>>>(b, w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("sum_squares_many");
    launch_add_block_sums(w.block_sums, blocks, out, 0, 0, 0, 1, "sum_squares_many total");
    b.count = 0;
    blocks = 0;
  };
  for (int64_t i = 0; i < count; ++i) {
    if (xs[i].n == 0) continue;
    const int need = squares_blocks(xs[i].n);
    if (b.count == kSquaresTasks || blocks + need > kMaxBlocks) launch();
    b.task[b.count++] = SquaresTask{xs[i].x, xs[i].n, xs[i].dtype == DType::bf16 ? 1 : 0, blocks};
    blocks += need;
  }
  launch();
}

// x[e] *= s; x: (n).
void scale(float* x, int64_t n, double s) {
  if (n == 0) return;
  const unsigned blocks = unsigned(imin((n + kThreads - 1) / kThreads, 65535));
  scale_kernel<<<blocks, kThreads, 0, stream()>>>(n, x, float(s));
  TALLY_CUDA_LAUNCH_CHECK("scale");
}

}  // namespace tally::optim::kernels::cuda
