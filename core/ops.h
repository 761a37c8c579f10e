// The op set: every differentiable operation on tensors. Each op validates its inputs (throwing tally::Error
// that names the op and the shapes), allocates its output under the current MemoryScope, dispatches to the
// backend kernel (core/kernels/), and records its backward (written beside the forward in core/ops/*.cpp).
// Floating ops run on f32 and f64 (f64 for gradient checks) on the CPU; f32 (and bf16 where noted) on CUDA.
// Dimension letters in shape comments: B batch, T time, C channels, V vocab, NH heads, HS head size.
#pragma once
#include <vector>

#include "core/random.h"
#include "core/tensor.h"

namespace tally {

// ---- elementwise, broadcasting (numpy rules) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& a);
Tensor add_scalar(const Tensor& a, double s);
Tensor mul_scalar(const Tensor& a, double s);
Tensor rsub_scalar(const Tensor& a, double s);  // s - a
Tensor rdiv_scalar(const Tensor& a, double s);  // s / a
Tensor pow_scalar(const Tensor& a, double exponent);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor gelu(const Tensor& a);  // tanh approximation, as GPT-2

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double s) { return add_scalar(a, s); }
inline Tensor operator+(double s, const Tensor& a) { return add_scalar(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add_scalar(a, -s); }
inline Tensor operator-(double s, const Tensor& a) { return rsub_scalar(a, s); }
inline Tensor operator*(const Tensor& a, double s) { return mul_scalar(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul_scalar(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul_scalar(a, 1.0 / s); }
inline Tensor operator/(double s, const Tensor& a) { return rdiv_scalar(a, s); }

// dst += alpha * src, in place and outside autograd (same shape, dtype and device; dst contiguous).
void add_(Tensor& dst, const Tensor& src, double alpha = 1.0);

// ---- reductions ----
enum class KeepDim : bool { no = false, yes = true };
Tensor sum(const Tensor& a);  // all elements -> shape ()
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, KeepDim keep = KeepDim::no);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, KeepDim keep = KeepDim::no);
Tensor max(const Tensor& a, int64_t dim, KeepDim keep = KeepDim::no);  // values; gradient to the first argmax

// ---- matrix products (BLAS / cuBLAS) ----
// a (..., M, K) @ b (..., K, N) -> (..., M, N). Batch dims broadcast; a 2-D operand is shared by every batch.
// Transposed views (e.g. b.transpose(-1, -2)) are passed to BLAS as transposed operands, not copied.
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., IN) @ weight (OUT, IN)^T + bias (OUT) -> (..., OUT). bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
// gelu(linear(x, weight, bias)) as one op (one cuBLASLt call with a GELU epilogue on CUDA where switched on); keeps
// the pre-activation (..., OUT) for its backward, as linear then gelu would.
Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- shape ----
Tensor cat(const std::vector<Tensor>& parts, int64_t dim);
std::vector<Tensor> split(const Tensor& a, int64_t size, int64_t dim);  // views of `size` along dim

// ---- normalisation and probabilities (over the last dim) ----
Tensor softmax(const Tensor& a);
Tensor log_softmax(const Tensor& a);
// x (..., C), weight (C), bias (C) -> (..., C). Saves mean and rstd (..., 1 each) for backward.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// The residual stream's join: sum = x + residual and normed = layer_norm(sum, weight, bias) in one kernel (x and
// residual of one shape (..., C); on CUDA each row's sum is made in the norm's first pass over it: a read of the sum
// fewer). Both equal add then layer_norm's bit for bit, gradients included; the graph holds add's node and
// layer_norm's, and the memory is theirs, allocated in their order.
struct AddLayerNorm {
  Tensor sum;
  Tensor normed;
};
AddLayerNorm add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                            double eps = 1e-5);

// ---- embeddings and losses ----
// Token ids handed to an op that indexes with them: checked on the host first (a copy to the host: on a GPU, a wait
// for the device), or already checked by the caller where they were made (the shard loader validates all of its data
// against the vocabulary when it opens it), so that a training step does not wait on the device for them.
enum class TokenIds : uint8_t { check, checked_by_caller };
// The host check itself: throws "[op] <what> X at position i of (shape) is outside [0, limit)" for the first id of
// `ids` (i32, on any device but meta) outside [0, limit).
void check_ids_in_range(const char* op, const Tensor& ids, int64_t limit, const std::string& what = "id");

// indices (...) i32 into weight (V, C) -> (..., C). Backward scatter-adds rows (deterministically).
Tensor embedding(const Tensor& indices, const Tensor& weight, TokenIds ids = TokenIds::check);
// logits (N, V) (row stride may exceed V), targets (N) i32 -> scalar mean of -log softmax(logits)[target].
// Fused: probabilities are never stored; backward recomputes them from the saved log-sum-exp.
// With classes = K < V, only the first K columns are classes (a padded vocabulary): the rest are ignored in
// forward and get a zero gradient, written in the same (N, V) buffer (no padded copy).
struct CrossEntropyOptions {
  int64_t classes = 0;  // 0: all V columns
  TokenIds targets = TokenIds::check;
};
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, CrossEntropyOptions options = {});
// cross_entropy(linear(x, weight), targets) over the first `classes` rows of weight, in chunks of chunk_rows rows
// of x, so that the (N, V) logits are never held whole: x (N, C), weight (V, C), targets (N) i32 -> scalar mean.
// Only one chunk's (chunk_rows, V) logits exist at a time. When x or weight needs a gradient, the forward pass also
// computes it chunk by chunk (each chunk's logits turn into their gradient in place, which the two products of
// the classifier's backward then read): dx (N, C) and dweight (V, C) of the mean loss are kept until backward,
// which scales them by the loss's gradient in place. dweight sums over the chunks in weight's dtype.
// Memory: one chunk's logits (workspace) + dx + dweight, against (N, V) logits + (N, V) dlogits unfused.
struct LinearCrossEntropyOptions {
  int64_t classes = 0;     // 0: all V rows of weight
  int64_t chunk_rows = 0;  // 0: one chunk of all N rows
  TokenIds targets = TokenIds::check;
};
Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                            LinearCrossEntropyOptions options = {});

// ---- attention ----
// q (B, NH, Tq, HS), k and v (B, NH, Tk, HS), Tq <= Tk; causal: query i sees keys j <= i + (Tk - Tq).
// Scale 1/sqrt(HS). Fused: saves only the log-sum-exp per query; backward recomputes the probabilities.
// Inputs may be strided views (last dim contiguous).
enum class Causal : bool { no = false, yes = true };
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, Causal causal = Causal::yes);
// GPT-2's attention on the fused projection: qkv (B, T, 3C) -> (B, T, C), NH heads, causal.
// Reads q, k, v in place (no split copies); backward writes one (B, T, 3C) gradient.
Tensor causal_self_attention(const Tensor& qkv, int64_t n_head);

// ---- regularisation ----
// Zeroes each element with probability p and scales the rest by 1/(1-p); the mask comes from `gen` and is
// recomputed in backward (never stored). p == 0 returns the input.
Tensor dropout(const Tensor& a, double p, Generator& gen);

}  // namespace tally
