// The optimizer kernel contract: one call per parameter tensor and step, raw pointers and plain-number
// hyperparameters only (no Tensor, no state lookup). Declared once in optim_kernels.inc and implemented twice
// with identical signatures: optim::kernels::cpu (optim/kernels/cpu/*.cpp) and optim::kernels::cuda
// (optim/kernels/cuda/*.cu, when built). Parameters, gradients and second-moment state are f32; a first moment
// may be bf16 (stored rounded to nearest even, arithmetic in f32). bf16 parameters are updated through f32 master
// copies (round_to_bf16 writes them back; every optimizer's step may on CUDA read bf16 gradients and
// write bf16 parameters itself: FusedBf16). Pointers are device pointers of the backend.
#pragma once
#include <cstdint>

#include "core/dtype.h"

// Layout helpers are callable from CUDA device code too.
#ifdef __CUDACC__
#define TALLY_OPTIM_HD __host__ __device__
#else
#define TALLY_OPTIM_HD
#endif

namespace tally::optim::kernels {

// A contiguous tensor seen as (P, n, Q, m, S) whose axes n ("rows") and m ("columns") are factored.
// Factoring the last two dims of (..., n, m) is P = prod(leading), Q = S = 1. Row statistics are indexed
// (p, i, q, s) (the tensor's shape without m), column statistics (p, q, j, s) (the shape without n), and the
// row statistic is normalised by its mean over i for each (p, q, s).
struct FactoredLayout {
  int64_t P = 1, n = 1, Q = 1, m = 1, S = 1;
  TALLY_OPTIM_HD int64_t numel() const { return P * n * Q * m * S; }
  TALLY_OPTIM_HD int64_t rows() const { return P * n * Q * S; }  // elements of a row statistic
  TALLY_OPTIM_HD int64_t cols() const { return P * Q * m * S; }  // elements of a column statistic
  TALLY_OPTIM_HD int64_t groups() const { return P * Q * S; }    // row-normalisation groups
};

// The scalars a step reports when asked (Optimizer::set_inspect). The kernel adds into these slots (the caller
// zeroes them); a null stats pointer means "report nothing" and costs nothing.
enum StatSlot : int {
  kStatUpdateSq = 0,    // sum of the squared update direction before clipping (CAME/Adafactor u, AdamW m^/(sqrt v^+eps))
  kStatExpAvgSq = 1,    // sum of the squared new first moment
  kStatAppliedSq = 2,   // sum of the squared applied change lr*direction (weight decay excluded)
  kStatFactorErrSq = 3, // sum of (factored estimate - exact EMA)^2 of g^2+eps1 (needs exact_exp_avg_sq)
  kStatExactSq = 4,     // sum of exact EMA^2
  kStatCount = 8,
};

// ---- ZeRO 1: a tensor cut over the ranks of a data-parallel group (optim::ShardCut) ----
// Adds n doubles, in place, over the ranks (a collective: every rank calls it for every tensor, in the same order).
// `data` is on the kernel's device.
class CrossRankSum {
 public:
  virtual ~CrossRankSum() = default;
  virtual void operator()(double* data, int64_t n) const = 0;
};
// A kernel given a part of a tensor completes the sums a step takes over the whole tensor: the update's RMS (the
// clip), and when the factored row dim is cut the column sums and the row sums per row-group (the row means),
// whose first round also completes the clip's sum (RoundCarries). A rank may hold no element of a tensor: it still
// takes part.
struct Sharding {
  const CrossRankSum* sum = nullptr;  // null: the tensor is whole here (the fields below are then unused)
  int64_t numel = 0;                  // elements of the whole tensor
  int64_t rows = 0;                   // rows_cut: the factored view's n over every rank
  bool rows_cut = false;              // the factored row dim is cut (column statistics are sums over every rank)
};
// What a round of a factored tensor whose rows are cut carries (doubles, in this order): the column sums (cols), the
// row sums per row-group (groups) and, in the round after the second-moment pass, the column sums of the squared
// update S_j = sum_i x_ij^2 / r_i (cols). With S over every rank's rows each rank has the whole tensor's sum of u^2,
// sum_j mean_r * S_j / c_j: the RMS clip then takes no round of its own (two rounds per CAME step, one per
// Adafactor step).
enum class RoundCarries { column_sums, column_and_update_sums };
inline int64_t round_doubles(const FactoredLayout& l, RoundCarries c) {
  return l.cols() + l.groups() + (c == RoundCarries::column_and_update_sums ? l.cols() : 0);
}

// ---- CAME (came-pytorch 0.1.3) ----
// Mixed precision fused into a step on CUDA (every optimizer's): the kernels read the bf16 gradient in place
// of `grad` (widening is exact) and, after updating the f32 master weights (`param`), write the bf16 parameter exactly
// as round_to_bf16(master, param, n, seed, offset) would. This replaces a widening copy and a rounding launch per
// tensor, and the f32 buffer the gradient was widened into. No statistics.
struct FusedBf16 {
  const bf16* grad = nullptr;  // (n) null: not fused (the step reads the f32 `grad`)
  bf16* param = nullptr;       // (n) written from the updated master (the step's `param`)
  uint64_t seed = 0, offset = 0;  // round_to_bf16's Philox key and counter
};

struct CameFactoredArgs {
  FactoredLayout layout;
  float* param = nullptr;        // (layout) updated in place
  const float* grad = nullptr;   // (layout)
  void* exp_avg = nullptr;       // (layout) f32 or bf16 per exp_avg_dtype
  DType exp_avg_dtype = DType::f32;
  float* exp_avg_sq_row = nullptr;   // (rows)
  float* exp_avg_sq_col = nullptr;   // (cols)
  float* exp_avg_res_row = nullptr;  // (rows)
  float* exp_avg_res_col = nullptr;  // (cols)
  double lr = 0, beta1 = 0, beta2 = 0, beta3 = 0, eps1 = 0, eps2 = 0, clip_threshold = 1, weight_decay = 0;
  double grad_scale = 1;              // gradients are multiplied by this as they are read (fused clipping)
  void* workspace = nullptr;          // came_factored_workspace_bytes(layout) bytes
  float* exact_exp_avg_sq = nullptr;  // inspection only: exact EMA of g^2+eps1 (layout), or null
  double* stats = nullptr;            // kStatCount doubles (this part's sums), or null
  Sharding shard = {};                // a part of a tensor cut over ranks (layout: this rank's rows)
  FusedBf16 bf16_param = {};          // CUDA only, without statistics: `grad` is then null, `param` the master weights
};
// Not factored (a vector, or a matrix the factoring rule leaves whole): v is the full second moment.
struct CameDenseArgs {
  int64_t n = 0;
  float* param = nullptr;
  const float* grad = nullptr;
  void* exp_avg = nullptr;
  DType exp_avg_dtype = DType::f32;
  float* exp_avg_sq = nullptr;
  double lr = 0, beta1 = 0, beta2 = 0, eps1 = 0, clip_threshold = 1, weight_decay = 0;
  double grad_scale = 1;
  void* workspace = nullptr;  // dense_workspace_bytes(n) bytes
  double* stats = nullptr;
  Sharding shard = {};
  FusedBf16 bf16_param = {};  // came_dense_steps on CUDA only: `grad` is then null, `param` the master weights
};

// One tensor of a gradient norm (sum_squares_many).
struct SquaresInput {
  const void* x = nullptr;
  int64_t n = 0;
  DType dtype = DType::f32;  // f32 or bf16
};

// The batched dense steps on CUDA (came_dense_steps, adafactor_dense_steps): the largest tensor given a block of its
// own, and the tasks per launch (the launch's parameter block stays under CUDA's classic 4 KiB).
constexpr int64_t kDenseBatchMax = int64_t(1) << 16;
constexpr int kCameDenseBatchTasks = 32;
constexpr int kAdafactorDenseBatchTasks = 32;
// The batched factored steps on CUDA (came_factored_steps, adafactor_factored_steps): the tensors per batch (the
// launch's parameter block, under 4 KiB too).
constexpr int kCameFactoredBatchTasks = 10;
constexpr int kAdafactorFactoredBatchTasks = 12;

// ---- Adafactor (transformers, scale_parameter=False, relative_step=False) ----
struct AdafactorFactoredArgs {
  FactoredLayout layout;
  float* param = nullptr;
  const float* grad = nullptr;
  float* exp_avg = nullptr;  // null without beta1
  float* exp_avg_sq_row = nullptr;
  float* exp_avg_sq_col = nullptr;
  double lr = 0, beta1 = 0, beta2t = 0, eps1 = 0, clip_threshold = 1, weight_decay = 0;
  double grad_scale = 1;
  void* workspace = nullptr;  // adafactor_factored_workspace_bytes(layout)
  float* exact_exp_avg_sq = nullptr;
  double* stats = nullptr;
  Sharding shard = {};
  FusedBf16 bf16_param = {};  // CUDA only, without statistics: `grad` is then null, `param` the master weights
};
struct AdafactorDenseArgs {
  int64_t n = 0;
  float* param = nullptr;
  const float* grad = nullptr;
  float* exp_avg = nullptr;  // null without beta1
  float* exp_avg_sq = nullptr;
  double lr = 0, beta1 = 0, beta2t = 0, eps1 = 0, clip_threshold = 1, weight_decay = 0;
  double grad_scale = 1;
  void* workspace = nullptr;
  double* stats = nullptr;
  Sharding shard = {};
  FusedBf16 bf16_param = {};  // CUDA only, without statistics: `grad` is then null, `param` the master weights
};

// ---- AdamW (torch.optim.AdamW) ----
struct AdamWArgs {
  int64_t n = 0;
  float* param = nullptr;
  const float* grad = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  int64_t step = 1;  // this tensor's step count, already incremented (bias correction)
  double grad_scale = 1;
  void* workspace = nullptr;  // dense_workspace_bytes(n) bytes
  double* stats = nullptr;
  FusedBf16 bf16_param = {};  // CUDA only: `grad` is then null, `param` the master weights
};

// ---- SGD with momentum (torch.optim.SGD) ----
enum class Nesterov : uint8_t { no, yes };
struct SgdArgs {
  int64_t n = 0;
  float* param = nullptr;
  const float* grad = nullptr;
  float* momentum_buffer = nullptr;  // null when momentum == 0
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  Nesterov nesterov = Nesterov::no;
  bool first_step = false;  // the buffer is set to the gradient instead of decayed (torch's `buf is None`)
  double grad_scale = 1;
  void* workspace = nullptr;  // dense_workspace_bytes(n) bytes
  double* stats = nullptr;
  FusedBf16 bf16_param = {};  // CUDA only, without statistics: `grad` is then null, `param` the master weights
};

// ---- SM3 (pytorch_optimizer 4.1.0's SM3) ----
// A tensor of rank >= 2 keeps one accumulator per dim (dims[k] values: maxima over the other dims); a vector or a
// scalar keeps one value per element.
constexpr int kSm3MaxDims = 8;
struct Sm3Shape {
  int rank = 0;                       // 0: a scalar
  int64_t dims[kSm3MaxDims] = {};     // the tensor's shape (dims[0..rank))
};
struct Sm3Args {
  Sm3Shape shape;
  float* param = nullptr;
  const float* grad = nullptr;
  float* momentum_buffer = nullptr;              // (shape) null when momentum == 0
  float* accumulators[kSm3MaxDims] = {};         // rank >= 2: accumulator k has dims[k] values; else one, (shape)
  double lr = 0, momentum = 0, beta = 0, eps = 0, weight_decay = 0;
  double grad_scale = 1;
  void* workspace = nullptr;  // sm3_workspace_bytes(shape) bytes
  double* stats = nullptr;
  FusedBf16 bf16_param = {};  // CUDA only, without statistics: `grad` is then null, `param` the master weights
};

// ---- LAMB (pytorch_optimizer 4.1.0's Lamb, its default foreach path) ----
enum class LambDecay : uint8_t {
  decoupled,  // p *= 1 - lr*wd before the step; the trust ratio sees the decayed p (the reference's default)
  in_update,  // wd*p added to the normalised update, inside the trust ratio (the paper's; weight_decouple=False)
};
struct LambArgs {
  int64_t n = 0;
  float* param = nullptr;
  const float* grad = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  LambDecay decay = LambDecay::decoupled;
  double clamp = 10;      // the weight norm in the trust ratio is clamped to at most this
  double step_size = 0;   // what the trust-scaled update is multiplied by: lr / (1 - beta1^t), or lr
  double grad_scale = 1;
  void* workspace = nullptr;  // dense_workspace_bytes(n) bytes
  double* stats = nullptr;
  Sharding shard = {};        // a part of a tensor cut over ranks: the two norms are sums over every rank
  FusedBf16 bf16_param = {};  // CUDA only, without statistics: `grad` is then null, `param` the master weights
};

// ---- mixed precision (round_to_bf16) ----
// Elements per Philox block of round_to_bf16 (8 x 16 random bits), and the blocks it draws for n elements (what one
// step advances a parameter's counter by).
constexpr int64_t kBf16RoundingBlock = 8;
TALLY_OPTIM_HD inline uint64_t round_to_bf16_blocks(int64_t n) {
  return uint64_t((n + kBf16RoundingBlock - 1) / kBf16RoundingBlock);
}
// The bf16 bits of the float with bits `u`, rounded stochastically with 16 random bits: up with probability
// (low 16 bits of u) / 2^16, so unbiased; NaN stays NaN and Inf stays Inf (core/dtype.h's float_to_bf16_stochastic).
TALLY_OPTIM_HD inline uint16_t stochastic_bf16_bits(uint32_t u, uint32_t random16) {
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  if ((u & 0x7fffffffu) == 0x7f800000u) return uint16_t(u >> 16);
  return uint16_t((u + (random16 & 0xffffu)) >> 16);
}

namespace cpu {
inline constexpr bool kHasBf16Kernels = true;  // the mixed-precision kernels (round_to_bf16, ...) read and write bf16
#include "optim/kernels/optim_kernels.inc"
// The CPU kernels' refusal of a fused bf16 step (FusedBf16 is CUDA's only: on the CPU, step() widens the gradient and
// rounds the parameter around the f32 step); `op` names the kernel in the error.
void refuse_fused_bf16(const FusedBf16& fused, const char* op);
}  // namespace cpu

#ifdef TALLY_HAS_CUDA
namespace cuda {
#include "optim/kernels/optim_kernels.inc"
}  // namespace cuda
#endif

}  // namespace tally::optim::kernels
