// CUDA kernels of LAMB (pytorch_optimizer 4.1.0's Lamb, foreach path); the arithmetic of
// optim/kernels/cpu/lamb.cpp in three launches: the moments and the block sums of ||p'||^2, ||u||^2 (and ||m||^2)
// over a fixed grid; one block turning them into the trust ratio on the device (no host round trip); the
// trust-scaled step (u recomputed from m and v by the same float operations). ZeRO 1: the two norms are summed over
// the ranks in device memory between the first two launches.
#include "optim/kernels/cuda/common.cuh"

namespace tally::optim::kernels::cuda {

using namespace detail;

namespace {

struct LambScalars {
  float gs, b1, one_minus_b1, b2, one_minus_b2, eps, keep, wd, neg_step, clamp;
  bool in_update;
};

// u = m * (1 / (sqrt(v) + eps)), plus wd*p with LambDecay::in_update.
__device__ inline float lamb_update(float m, float v, float kept, const LambScalars& s) {
  const float u = (1.0f / (sqrtf(v) + s.eps)) * m;
  return s.in_update ? fmaf(kept, s.wd, u) : u;
}

// Pass 1: the moments; block sums of p'^2 (slot 0), u^2 (slot 1), m^2 (slot 2). GT: the gradient's type (f32, or
// bf16 read in place: FusedBf16).
// g, p, m, v: (n); block_sums: (gridDim.x, kSums).
template <class GT>
__global__ void lamb_moments(int64_t n, const GT* g, const float* p, float* m, float* v, LambScalars s,
                             double* block_sums) {
  double acc[3] = {0, 0, 0};
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float x = load(g + e) * s.gs;
    const float mn = fmaf(x, s.one_minus_b1, m[e] * s.b1);
    const float vn = fmaf(s.one_minus_b2 * x, x, v[e] * s.b2);
    m[e] = mn;
    v[e] = vn;
    const float kept = p[e] * s.keep;
    const float u = lamb_update(mn, vn, kept, s);
    acc[0] += double(kept) * kept;
    acc[1] += double(u) * u;
    acc[2] += double(mn) * mn;
  }
  write_block_sums(acc, block_sums);
}

// The trust ratio from the squared norms of p' and u (torch's float32 norms, clamp and division).
__device__ inline float trust_ratio(double weight_sq, double update_sq, float clamp, float eps) {
  const float weight_norm = fminf(float(sqrt(weight_sq)), clamp);
  const float update_norm = float(sqrt(update_sq));
  return weight_norm != 0.0f && update_norm != 0.0f ? weight_norm / (update_norm + eps) : 1.0f;
}

// One block: the norms from the block sums (in order), the trust ratio into *trust; statistics of this tensor. ZeRO 1
// (norms_sq): the two squared norms of this part into norms_sq instead, completed over the ranks before trust_of.
// block_sums: (blocks, kSums); trust: one value; stats: kStatCount doubles, or null; norms_sq: (2), or null.
__global__ void lamb_trust(const double* block_sums, int blocks, float clamp, float eps, float* trust, double* stats,
                           double* norms_sq) {
  __shared__ double shared[kWarps];
  double total[3];
  for (int slot = 0; slot < 3; ++slot) {
    double acc = 0;
    for (int b = threadIdx.x; b < blocks; b += kThreads) acc += block_sums[b * kSums + slot];
    total[slot] = block_sum_to_first<kThreads>(acc, shared);
  }
  if (threadIdx.x != 0) return;
  if (norms_sq) {
    norms_sq[0] = total[0];
    norms_sq[1] = total[1];
  } else {
    *trust = trust_ratio(total[0], total[1], clamp, eps);
  }
  if (stats) {  // this part's sums (the optimizer adds them over the ranks)
    stats[kStatUpdateSq] += total[1];
    stats[kStatExpAvgSq] += total[2];
  }
}

// One warp; its first thread writes the trust ratio.
// norms_sq: (2); trust: one value.
__global__ void trust_of(const double* norms_sq, float clamp, float eps, float* trust) {
  if (threadIdx.x == 0) *trust = trust_ratio(norms_sq[0], norms_sq[1], clamp, eps);
}

// Pass 2 on one element: p = p' + (-step_size) * (u * trust), fused; returns u * trust. Every apply kernel (fused
// bf16 or not) runs this.
__device__ inline float lamb_apply_element(float* p, float m, float v, float tr, const LambScalars& s) {
  const float kept = *p * s.keep;
  const float scaled = lamb_update(m, v, kept, s) * tr;
  *p = fmaf(scaled, s.neg_step, kept);
  return scaled;
}

// Pass 2; block sums of the applied change^2 (slot 0) with kStats.
// p, m, v: (n); trust: one value; block_sums: (gridDim.x, kSums) with kStats.
template <bool kStats>
__global__ void lamb_apply(int64_t n, float* p, const float* m, const float* v, LambScalars s, const float* trust,
                           double* block_sums) {
  const float tr = *trust;
  double acc = 0;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const float scaled = lamb_apply_element(p + e, m[e], v[e], tr, s);
    if (kStats) {
      const float step = s.neg_step * scaled;
      acc += double(step) * step;
    }
  }
  if constexpr (kStats) write_block_sum(acc, block_sums);
}

// Pass 2 of a bf16 parameter (FusedBf16): lamb_apply_element on the master, then the bf16 parameter as round_to_bf16
// writes it; each thread takes whole 8-element Philox blocks.
// p, m, v, out.grad, out.param: (n); trust: one value.
__global__ void lamb_apply_rounded(int64_t n, float* p, const float* m, const float* v, LambScalars s,
                                   const float* trust, FusedBf16 out) {
  const float tr = *trust;
  update_rounded_blocks(n, out, [&](int64_t e) {
    lamb_apply_element(p + e, m[e], v[e], tr, s);
    return p[e];
  });
}

}  // namespace

// One LAMB step: lamb_moments, the trust ratio (lamb_trust; ZeRO 1: the norms summed over the ranks, trust_of), then
// the apply pass. param, grad (or bf16_param.grad), exp_avg, exp_avg_sq: (n).
void lamb_step(const LambArgs& a) {
  if (a.n == 0) {  // a rank with no element of a sharded tensor still adds its (zero) norms
    if (a.shard.sum) sums_without_elements(carve_dense(a.workspace).total, 2, a.shard);
    return;
  }
  const bool in_update = a.decay == LambDecay::in_update;
  LambScalars s;  // (no designated initializers: .cu files must also build as C++17)
  s.gs = float(a.grad_scale);
  s.b1 = float(a.beta1);
  s.one_minus_b1 = float(1.0 - a.beta1);
  s.b2 = float(a.beta2);
  s.one_minus_b2 = float(1.0 - a.beta2);
  s.eps = float(a.eps);
  s.keep = in_update ? 1.0f : float(1.0 - a.weight_decay * a.lr);
  s.wd = float(a.weight_decay);
  s.neg_step = float(-a.step_size);
  s.clamp = float(a.clamp);
  s.in_update = in_update;
  const FusedBf16& fused = a.bf16_param;
  check_fused(fused, a.grad, a.stats, nullptr, "lamb_step");
  const DenseWorkspace w = carve_dense(a.workspace);
  float* trust = w.divisor;  // the dense workspace's one float
  const int blocks = reduce_blocks(a.n);
  if (fused.grad) {
    lamb_moments<bf16><<<unsigned(blocks), kThreads, 0, stream()>>>(a.n, fused.grad, a.param, a.exp_avg, a.exp_avg_sq,
                                                                    s, w.block_sums);
  } else {
    lamb_moments<float><<<unsigned(blocks), kThreads, 0, stream()>>>(a.n, a.grad, a.param, a.exp_avg, a.exp_avg_sq, s,
                                                                     w.block_sums);
  }
  TALLY_CUDA_LAUNCH_CHECK("lamb moments");
  lamb_trust<<<1, kThreads, 0, stream()>>>(w.block_sums, blocks, s.clamp, s.eps, trust, a.stats,
                                           a.shard.sum ? w.total : nullptr);
  TALLY_CUDA_LAUNCH_CHECK("lamb trust");
  if (a.shard.sum) {  // the norms of the whole tensor: summed over the ranks in device memory
    (*a.shard.sum)(w.total, 2);
    trust_of<<<1, 32, 0, stream()>>>(w.total, s.clamp, s.eps, trust);
    TALLY_CUDA_LAUNCH_CHECK("lamb trust_of");
  }
  if (fused.grad) {
    lamb_apply_rounded<<<rounded_blocks_grid(a.n), kThreads, 0, stream()>>>(a.n, a.param, a.exp_avg, a.exp_avg_sq, s,
                                                                            trust, fused);
    TALLY_CUDA_LAUNCH_CHECK("lamb apply_rounded");
  } else if (a.stats) {
    lamb_apply<true><<<unsigned(blocks), kThreads, 0, stream()>>>(a.n, a.param, a.exp_avg, a.exp_avg_sq, s, trust,
                                                                  w.block_sums);
    TALLY_CUDA_LAUNCH_CHECK("lamb apply");
    launch_add_block_sums(w.block_sums, blocks, a.stats, kStatAppliedSq, 0, 0, 1, "lamb add_block_sums");
  } else {
    const unsigned apply_blocks = unsigned(imin((a.n + kThreads - 1) / kThreads, int64_t(1) << 30));
    lamb_apply<false><<<apply_blocks, kThreads, 0, stream()>>>(a.n, a.param, a.exp_avg, a.exp_avg_sq, s, trust,
                                                               nullptr);
    TALLY_CUDA_LAUNCH_CHECK("lamb apply");
  }
}

}  // namespace tally::optim::kernels::cuda
