// The kernel contract: raw pointers and sizes only (no Tensor, no autograd). Every kernel is declared once in
// kernels.inc and exists twice with identical signatures: kernels::cpu (core/kernels/cpu/*.cpp) and
// kernels::cuda (core/kernels/cuda/*.cu, when built). Templates are instantiated for float and double on both,
// and for bf16 on CUDA only (mixed precision: bf16 storage, arithmetic and statistics in float, see acc_t).
// Ops (core/ops/) validate, allocate and dispatch; kernels trust their arguments.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/dtype.h"

namespace tally::kernels {

inline constexpr int kMaxDims = 8;

// The type a kernel computes in and keeps per-row statistics in (layer-norm mean/rstd, log-sum-exp, per-row
// losses, attention scores): the element type itself, except float for bf16 storage (a bf16 log-sum-exp would
// be off by up to 1/256 of its value, a bf16 rstd by as much: too coarse for the backward passes that reuse them).
template <class T> struct acc_type { using type = T; };
template <> struct acc_type<bf16> { using type = float; };
template <class T> using acc_t = typename acc_type<T>::type;

// Shape and strides (in elements) of an N-d traversal, outermost first.
struct StridedLayout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t dst_stride[kMaxDims] = {};
  int64_t src_stride[kMaxDims] = {};
};

// Output contiguous of `shape`; a and b read with their (possibly zero, for broadcast) strides.
struct BroadcastLayout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t a_stride[kMaxDims] = {};
  int64_t b_stride[kMaxDims] = {};
};

enum class BinaryOp : uint8_t { add, sub, mul, div };
enum class UnaryOp : uint8_t { neg, exp, log, sqrt, rsqrt, tanh, gelu, add_scalar, mul_scalar, rsub_scalar, rdiv_scalar, pow_scalar };
enum class Trans : uint8_t { no, yes };
enum class SoftmaxKind : uint8_t { softmax, log_softmax };
enum class Activation : uint8_t { none, gelu };  // what follows a Linear's product and bias (linear_forward)

// Row-major batched C = alpha * op(A) @ op(B) + beta * C. op(A) is (M, K), op(B) is (K, N), C is (M, N).
// lda/ldb/ldc are the row strides of A, B, C as stored; batch strides of 0 share one matrix across the batch.
template <class T>
struct GemmArgs {
  Trans trans_a = Trans::no, trans_b = Trans::no;
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  int64_t lda = 0, batch_stride_a = 0;
  const T* B = nullptr;
  int64_t ldb = 0, batch_stride_b = 0;
  T* C = nullptr;
  int64_t ldc = 0, batch_stride_c = 0;
  int64_t batch = 1;
  double alpha = 1.0, beta = 0.0;
};

// The products of a Linear layer, as GemmArgs: y (N, OUT) = x (N, IN) @ w (OUT, IN)^T, and
// dw (OUT, IN) = dy (N, OUT)^T @ x (N, IN). Used by both backends' linear_forward / linear_weight_grad.
template <class T>
GemmArgs<T> linear_forward_product(const T* x, const T* w, T* y, int64_t N, int64_t IN, int64_t OUT) {
  GemmArgs<T> g;
  g.trans_b = Trans::yes;
  g.M = N, g.N = OUT, g.K = IN;
  g.A = x, g.lda = IN;
  g.B = w, g.ldb = IN;
  g.C = y, g.ldc = OUT;
  return g;
}
template <class T>
GemmArgs<T> linear_weight_grad_product(const T* dy, const T* x, T* dw, int64_t N, int64_t IN, int64_t OUT) {
  GemmArgs<T> g;
  g.trans_a = Trans::yes;
  g.M = OUT, g.N = IN, g.K = N;
  g.A = dy, g.lda = OUT;
  g.B = x, g.ldb = IN;
  g.C = dw, g.ldc = IN;
  return g;
}

// Attention over (B, NH, T, HS) operands addressed through strides (last dim contiguous).
struct AttentionLayout {
  int64_t B = 0, NH = 0, Tq = 0, Tk = 0, HS = 0;
  int64_t q_strides[3] = {}, k_strides[3] = {}, v_strides[3] = {}, out_strides[3] = {};  // b, h, t
  bool causal = true;  // query i sees keys j <= i + (Tk - Tq)
  double scale = 1.0;
};

// The CUDA backend's attention workspace, as host arithmetic available in every build, so that the meta device can
// plan a bf16 run (bf16 computes on CUDA only) exactly: kernels/cuda/attention.cu allocates and uses this layout.
// Score buffers of up to kCudaAttentionScoreBudget elements each; in elements of acc_t<T>.
#ifdef TALLY_CUDA_EMULATED
inline constexpr int64_t kCudaAttentionScoreBudget = 1024;  // the CPU emulator exercises chunking on small problems
#else
inline constexpr int64_t kCudaAttentionScoreBudget = int64_t(1) << 25;  // 128 MiB in f32
#endif
inline constexpr int kCudaAttentionPointerArrays = 10;  // q k v o dout dq dk dv s dp
// Causal self-attention (Tq == Tk) runs in blocks of query rows and, for dV and dK, of keys (kernels/cuda/attention.cu);
// other attention is one block. Each block has its set of pointer arrays, all built at once.
#ifdef TALLY_CUDA_EMULATED
inline constexpr int64_t kCudaAttentionBlock = 16;  // the emulator exercises several blocks on small problems
#else
inline constexpr int64_t kCudaAttentionBlock = 256;
#endif
inline bool cuda_attention_blocked(const AttentionLayout& l) { return l.causal && l.Tq == l.Tk; }
inline int64_t cuda_attention_row_blocks(const AttentionLayout& l) {
  return cuda_attention_blocked(l) ? (l.Tq + kCudaAttentionBlock - 1) / kCudaAttentionBlock : 1;
}
// Row blocks' sets first, then as many key blocks' sets.
inline int64_t cuda_attention_pointer_sets(const AttentionLayout& l) { return 2 * cuda_attention_row_blocks(l); }
// (batch, head) pairs per backward chunk (each needs two Tq x Tk buffers); forward chunks are twice that.
inline int64_t cuda_attention_backward_chunk(const AttentionLayout& l) {
  const int64_t per = l.Tq * l.Tk, pairs = l.B * l.NH;
  int64_t g = per > 0 ? kCudaAttentionScoreBudget / per : 1;
  if (g < 1) g = 1;
  return g > pairs ? pairs : g;
}
// Two score buffers, then 256-byte-aligned pointer arrays, a set per block (sized for 4-byte elements, enough for
// 8-byte ones).
inline int64_t cuda_attention_workspace_elements(const AttentionLayout& l) {
  const int64_t score_elems = 2 * cuda_attention_backward_chunk(l) * l.Tq * l.Tk;
  const int64_t pointer_bytes = 256 + int64_t(kCudaAttentionPointerArrays) * cuda_attention_pointer_sets(l) * l.B * l.NH *
                                          int64_t(sizeof(void*));
  return score_elems + 256 / 4 + (pointer_bytes + 3) / 4;
}

// The CUDA reductions' scratch, as formulas of the sizes (plain C++: a plan made without a GPU, on the meta device,
// holds the very bytes the kernels take; the ops allocate it and hand it down).
// Column sums (sum over a non-last dim, bias and LayerNorm weight gradients): out[o, c] = sum over i < n, in f64, by
// row chunks (enough blocks in flight, bounded scratch; a function of the sizes only, so the summation order, hence
// the bits, never depend on the device), whose partial sums (outer, chunks, inner) are then added in order.
inline constexpr int64_t kCudaColTile = 32;            // columns per block
inline constexpr int64_t kCudaChunkRows = 256;         // fewest rows per chunk
inline constexpr int64_t kCudaTargetBlocks = 2048;     // enough blocks to fill any current GPU several times
inline constexpr int64_t kCudaMaxPartials = int64_t(1) << 23;  // doubles of scratch at most (64 MiB)
inline int64_t cuda_column_chunks(int64_t outer, int64_t n, int64_t inner) {
  if (n == 0) return 1;
  const auto up = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t tiles = up(inner, kCudaColTile) * (outer < 65535 ? outer : 65535);
  int64_t chunks = up(n, kCudaChunkRows);
  chunks = std::min(chunks, up(kCudaTargetBlocks, tiles));
  chunks = std::min(chunks, kCudaMaxPartials / std::max<int64_t>(1, outer * inner));
  return std::max<int64_t>(1, std::min<int64_t>(chunks, 65535));
}
inline int64_t cuda_column_sum_workspace_bytes(int64_t outer, int64_t n, int64_t inner) {
  if (outer == 0 || inner == 0) return 0;
  const int64_t chunks = cuda_column_chunks(outer, n, inner);
  return chunks == 1 ? 0 : outer * chunks * inner * 8;
}
// LayerNorm's backward: dweight and dbias are summed in the pass that writes dx (rows up to
// kCudaLayerNormFusedMaxC wide, the block's sums held in shared memory). Tiles of kCudaLayerNormTileRows rows go to at
// most kCudaLayerNormMaxBlocks blocks (a function of N only, so the order of the sums, hence the bits, never depends on
// the device), each leaving f64 partial sums (2, blocks, C) that a second kernel adds in block order. Wider rows, or
// none: the column sums above.
inline constexpr int64_t kCudaLayerNormTileRows = 32;
inline constexpr int64_t kCudaLayerNormMaxBlocks = 256;
inline constexpr int64_t kCudaLayerNormFusedMaxC = 2048;  // 2 x C doubles of shared memory: 32 KiB
inline bool cuda_layernorm_backward_fused(int64_t N, int64_t C) {
  return N > 0 && C > 0 && C <= kCudaLayerNormFusedMaxC;
}
inline int64_t cuda_layernorm_backward_blocks(int64_t N) {
  return std::min((N + kCudaLayerNormTileRows - 1) / kCudaLayerNormTileRows, kCudaLayerNormMaxBlocks);
}
// Scratch of a backward that computes dweight or dbias (none otherwise).
inline int64_t cuda_layernorm_backward_workspace_bytes(int64_t N, int64_t C) {
  if (!cuda_layernorm_backward_fused(N, C)) return cuda_column_sum_workspace_bytes(1, N, C);
  return 2 * cuda_layernorm_backward_blocks(N) * C * 8;
}
// Row sums (sum over the last dim): a few long rows (outer < 256, n > 4 chunks) are split into chunks of
// kCudaRowChunk elements whose f64 partial sums are then added in order; otherwise no scratch.
inline constexpr int64_t kCudaRowChunk = 16384;
inline int64_t cuda_sum_dim_row_parts(int64_t outer, int64_t n) {
  return (n > 4 * kCudaRowChunk && outer < 256) ? (n + kCudaRowChunk - 1) / kCudaRowChunk : 1;
}
// sum_dim (out (outer, inner) = sum over n): columns when inner > 1, else rows.
inline int64_t cuda_sum_dim_workspace_bytes(int64_t outer, int64_t n, int64_t inner) {
  if (outer == 0 || n == 0 || inner == 0) return 0;
  if (inner > 1) return cuda_column_sum_workspace_bytes(outer, n, inner);
  const int64_t parts = cuda_sum_dim_row_parts(outer, n);
  return parts == 1 ? 0 : outer * parts * 8;
}

// Bytes rounded up to whole 256-byte lines: the alignment of each buffer carved out of one CUDA scratch block (plans
// and kernels carve with this one rule).
inline int64_t align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// Embedding backward's scratch on CUDA, in bytes: the ids and their positions, each sorted through two buffers by
// a stable LSD radix sort of 8-bit digits, and each tile's digit counts (256 per tile of kCudaSortTile ids). A
// formula of N alone, so that a plan made without a GPU (the meta device) holds the very bytes the kernel takes.
inline constexpr int64_t kCudaSortTile = 1024;
inline constexpr int64_t kCudaSortDigits = 256;
inline int64_t cuda_sort_tiles(int64_t N) { return (N + kCudaSortTile - 1) / kCudaSortTile; }
inline int64_t cuda_embedding_backward_workspace_bytes(int64_t N) {
  if (N == 0) return 0;
  return 4 * align256(N * 4) + align256(kCudaSortDigits * cuda_sort_tiles(N) * 4);
}

namespace cpu {
// No bf16 kernels: bf16 computes on CUDA only, and TALLY_KERNEL never instantiates a CPU call with bf16 data.
inline constexpr bool kHasBf16Kernels = false;
#include "core/kernels/kernels.inc"
}  // namespace cpu

#ifdef TALLY_HAS_CUDA
namespace cuda {
#include "core/kernels/kernels.inc"
}  // namespace cuda
#endif

}  // namespace tally::kernels
