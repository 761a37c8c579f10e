// CUDA kernels: attention over (B, NH, T, HS) operands addressed through (b, h, t) strides, as cuBLAS
// products plus fused softmax kernels. q/k/v of GPT-2's fused qkv have no single batch stride over (b, h)
// (heads step by HS, batches by T*3C), so every product is one cublasGemmBatchedEx over device arrays of
// per-(b, h) pointers, built by a kernel (no host round trip). The (b, h) pairs run in chunks so that the
// score buffers in the workspace stay bounded (kCudaAttentionScoreBudget elements each, kernels.h)
// whatever B*NH*T*T is.
// Causal self-attention runs in blocks of kCudaAttentionBlock (kernels.h) query rows (and, for dV and dK, of keys): the rows
// [r0, r1) see keys [0, r1) only, so each block's products and softmax rows stop there and the masked corner above
// the diagonal is neither computed nor stored: (R + 1) / 2R of the square's work with R blocks, 62.5% at T = 1024
// (R = 4; smaller blocks would save more work but launch more, smaller products). Other attention (not causal, or
// Tq != Tk) is one block of all rows and keys.
// Forward: S = scale Q K^T; P = causal softmax(S) in place, lse saved; O = P V.
// Backward: S again, P = exp(S - lse); dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(P dP)); dQ = scale dS K;
// dK = scale dS^T Q. P and dS are made row block by row block over the lower triangle of the pair's slot; dV and
// dK are then products by blocks of keys, each over the query rows that see them.
// Workspace layout: [2 score buffers of G*Tq*Tk][pointer arrays].
// bf16 operands: the score buffers are float (acc_t), S and dP come out of cuBLAS in float, softmax statistics
// are float; P and dS, which feed further bf16 products, are rounded to bf16 and written over the first half of
// their own float rows (row stride 2*Tk in bf16 elements), so bf16 needs no more workspace than f32.
// bf16 with TALLY_CUDNN_ATTENTION=1: cuDNN's fused attention instead when it takes the problem within this planned
// workspace (attention_cudnn.h); these kernels otherwise.
#include <algorithm>
#include <type_traits>

#include "core/cuda/common.cuh"
#include "core/kernels/cuda/attention_cudnn.h"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/cuda/gemm.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::block_merge;
using tally::cuda::block_sum;
using tally::cuda::grid_for;
using tally::cuda::MaxSum;
using tally::cuda::row_threads;
using tally::cuda::stream;

// Row stride (in T elements) of P and dS as the products read them: bf16 rows sit over their float rows.
template <class T>
int64_t probs_ld(const AttentionLayout& l) {
  return std::is_same_v<T, bf16> ? 2 * l.Tk : l.Tk;
}

int64_t pairs_of(const AttentionLayout& l) { return l.B * l.NH; }

// Query rows [r0, r0 + rows) and the keys [0, keys) they see.
struct RowBlock {
  int64_t r0 = 0, rows = 0, keys = 0;
};

// Blocks (kCudaAttentionBlock rows or keys) for causal self-attention (Tq == Tk: row and key blocks then share their
// bounds, so a key block's rows have every one of its keys within their own row blocks' keys); one block otherwise
// (cross or key/value-cached attention).
bool blocked(const AttentionLayout& l) { return cuda_attention_blocked(l); }
int64_t row_blocks(const AttentionLayout& l) { return cuda_attention_row_blocks(l); }
int64_t key_blocks(const AttentionLayout& l) { return cuda_attention_row_blocks(l); }

RowBlock row_block(const AttentionLayout& l, int64_t r) {
  if (!blocked(l)) return {0, l.Tq, l.Tk};
  const int64_t r0 = r * kCudaAttentionBlock, r1 = std::min(l.Tq, r0 + kCudaAttentionBlock);
  return {r0, r1 - r0, r1};  // row i sees keys j <= i
}

// Keys [c0, c0 + keys) and the query rows [r0, Tq) that see them: the column blocks of the backward's dV and dK,
// each one product over the rows below the diagonal (no sum over blocks: one rounding, as one product).
struct KeyBlock {
  int64_t c0 = 0, keys = 0, r0 = 0, rows = 0;
};

KeyBlock key_block(const AttentionLayout& l, int64_t c) {
  if (!blocked(l)) return {0, l.Tk, 0, l.Tq};
  const int64_t c0 = c * kCudaAttentionBlock, c1 = std::min(l.Tk, c0 + kCudaAttentionBlock);
  return {c0, c1 - c0, c0, l.Tq - c0};  // query rows from c0 on see keys from c0
}

int64_t backward_chunk(const AttentionLayout& l) { return cuda_attention_backward_chunk(l); }

int64_t pointer_region_offset(const AttentionLayout& l, int64_t elem_size) {
  return (2 * backward_chunk(l) * l.Tq * l.Tk * elem_size + 255) / 256 * 256;
}

// The pointer arrays of every block: set s (row block s, then key block s - row_blocks) holds kCudaAttentionPointerArrays
// arrays of one pointer per pair.
struct PointerArrays {
  void** base;
  int64_t pairs;
  PointerArrays set(int64_t s) const { return {base + s * kCudaAttentionPointerArrays * pairs, pairs}; }
  void** array(int which) const { return base + which * pairs; }
};

PointerArrays pointers_in(void* workspace, const AttentionLayout& l, int64_t elem_size) {
  TALLY_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0, "[attention] workspace is not 16-byte aligned");
  return {reinterpret_cast<void**>(static_cast<char*>(workspace) + pointer_region_offset(l, elem_size)), pairs_of(l)};
}

// Per-pair pointers to each block of the problem (blockIdx.y: the set), for query rows from r0 and keys from c0 (row
// block r: r0 = r * kCudaAttentionBlock, c0 = 0; key block c: both c * kCudaAttentionBlock; 0 when not blocked):
// q, o, dout (inputs) and dq (output) at row r0; k, v and dk, dv at key c0, from their strides; s and dp to row r0 of
// the pair's slot (p mod chunk) in the score buffers, c0 elements of T on (P and dS are T: float in place, or bf16
// over the first half of their float rows; S and dP, written in float, are only ever addressed with c0 = 0).
// sets: (pointer sets, kCudaAttentionPointerArrays, pairs); q, k, v, o, dout, dq, dk, dv: (B, NH, T, HS) through
// l's (q k v o) and g's (dout dq dk dv) strides, each may be null; scores, dscores: (chunk, Tq, Tk) of acc_t<T>.
// Grid: (pairs, pointer sets).
template <class T>
__global__ void build_pointers_kernel(void** sets, int64_t pairs, int64_t NH, const T* q, const T* k, const T* v,
                                      const T* o, const T* dout, T* dq, T* dk, T* dv, const AttentionLayout l,
                                      const AttentionLayout g, acc_t<T>* scores, acc_t<T>* dscores, int64_t chunk,
                                      int64_t slot, int64_t row_sets, int64_t block_size) {
  const int64_t set = blockIdx.y;
  const int64_t key_set = set >= row_sets ? set - row_sets : -1;
  const int64_t r0 = (key_set >= 0 ? key_set : set) * block_size, c0 = key_set >= 0 ? r0 : 0;
  void** arrays = sets + set * kCudaAttentionPointerArrays * pairs;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = p / NH, h = p % NH;
    auto at = [&](const T* base, const int64_t* s, int64_t row) -> void* {
      return base ? const_cast<T*>(base + b * s[0] + h * s[1] + row * s[2]) : nullptr;
    };
    auto in_slot = [&](acc_t<T>* buffer) -> void* {
      return buffer ? reinterpret_cast<T*>(buffer + (p % chunk) * slot + r0 * l.Tk) + c0 : nullptr;
    };
    arrays[0 * pairs + p] = at(q, l.q_strides, r0);
    arrays[1 * pairs + p] = at(k, l.k_strides, c0);
    arrays[2 * pairs + p] = at(v, l.v_strides, c0);
    arrays[3 * pairs + p] = at(o, l.out_strides, r0);
    arrays[4 * pairs + p] = at(dout, g.out_strides, r0);
    arrays[5 * pairs + p] = at(dq, g.q_strides, r0);
    arrays[6 * pairs + p] = at(dk, g.k_strides, c0);
    arrays[7 * pairs + p] = at(dv, g.v_strides, c0);
    arrays[8 * pairs + p] = in_slot(scores);
    arrays[9 * pairs + p] = in_slot(dscores);
  }
}

// Every block's pointer arrays, in one launch.
// arrays: the pointer sets of the workspace; q..dv and scores, dscores as build_pointers_kernel takes them.
template <class T>
void build_pointers(const PointerArrays& arrays, const T* q, const T* k, const T* v, const T* o, const T* dout, T* dq,
                    T* dk, T* dv, const AttentionLayout& l, const AttentionLayout& g, acc_t<T>* scores,
                    acc_t<T>* dscores, int64_t chunk) {
  const int64_t block_size = cuda_attention_blocked(l) ? kCudaAttentionBlock : 0;
  const dim3 grid(grid_for(arrays.pairs, 128), unsigned(cuda_attention_pointer_sets(l)));
  build_pointers_kernel<T><<<grid, 128, 0, stream()>>>(arrays.base, arrays.pairs, l.NH, q, k, v, o, dout, dq, dk, dv,
                                                       l, g, scores, dscores, chunk, l.Tq * l.Tk,
                                                       cuda_attention_row_blocks(l), block_size);
  TALLY_CUDA_LAUNCH_CHECK("build_pointers_kernel");
}

// The score row of a launch's row index: (pair in chunk pp, query row i = block.r0 + row % block.rows).
struct ScoreRow {
  int64_t pp, i;
};
__device__ __forceinline__ ScoreRow score_row(int64_t row, const RowBlock& block) {
  return {row / block.rows, block.r0 + row % block.rows};
}

__device__ __forceinline__ int64_t last_key(const AttentionLayout& l, int64_t i) {
  return l.causal ? i + (l.Tk - l.Tq) : l.Tk - 1;
}

// Writes value(j, row[j]) for j < n over the float row itself: in place (T = float or double), or as bf16 into
// the row's first half (T = bf16; element j then overlaps float j/2). The bf16 case goes in chunks of blockDim.x
// with a barrier between a chunk's reads and its writes: a chunk's writes touch only floats of that chunk or
// earlier ones, all read by then, and never the later chunks' floats (bytes [2j, 2j+2) lie below float j).
template <class T, class Value>
__device__ __forceinline__ void write_probs(acc_t<T>* row, int64_t n, Value value) {
  if constexpr (std::is_same_v<T, bf16>) {
    bf16* out = reinterpret_cast<bf16*>(row);
    for (int64_t j0 = 0; j0 < n; j0 += blockDim.x) {
      const int64_t j = j0 + threadIdx.x;
      const float v = j < n ? value(j, row[j]) : 0.0f;
      __syncthreads();
      if (j < n) out[j] = float_to_bf16_dev(v);
    }
  } else {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) row[j] = value(j, row[j]);
  }
}

// One block per (pair in chunk, query row of the row block): P = softmax over keys j <= last (0 beyond, up to the
// block's keys), over S; lse saved.
// scores: (chunk, Tq, Tk) of acc_t<T>, P written over S as write_probs writes it; lse: (B * NH, Tq), pair pp of
// the chunk at row first_pair + pp.
template <class T>
__global__ void attention_softmax_kernel(acc_t<T>* __restrict__ scores, acc_t<T>* __restrict__ lse, int64_t first_pair,
                                         const AttentionLayout l, const RowBlock block) {
  using A = acc_t<T>;
  const auto [pp, i] = score_row(blockIdx.x, block);
  A* s = scores + (pp * l.Tq + i) * l.Tk;
  const int64_t last = last_key(l, i);
  MaxSum<A> ms{A(-INFINITY), A(0)};
  for (int64_t j = threadIdx.x; j <= last; j += blockDim.x) {
    const A x = s[j];
    if (x > ms.max) {
      ms.sum = ms.sum * exp(ms.max - x) + A(1);
      ms.max = x;
    } else {
      ms.sum += exp(x - ms.max);
    }
  }
  ms = block_merge(ms);
  const A inv = A(1) / ms.sum;
  write_probs<T>(s, block.keys, [&](int64_t j, A x) { return j <= last ? exp(x - ms.max) * inv : A(0); });
  if (threadIdx.x == 0) lse[(first_pair + pp) * l.Tq + i] = ms.max + log(ms.sum);
}

// Backward, before the products: P = exp(S - lse) for j <= last, 0 beyond (over S).
// scores: (chunk, Tq, Tk) of acc_t<T>, P written over S as write_probs writes it; lse: (B * NH, Tq).
template <class T>
__global__ void attention_probs_kernel(acc_t<T>* __restrict__ scores, const acc_t<T>* __restrict__ lse, int64_t first_pair,
                                       const AttentionLayout l, const RowBlock block) {
  using A = acc_t<T>;
  const auto [pp, i] = score_row(blockIdx.x, block);
  A* s = scores + (pp * l.Tq + i) * l.Tk;
  const int64_t last = last_key(l, i);
  const A L = lse[(first_pair + pp) * l.Tq + i];
  write_probs<T>(s, block.keys, [&](int64_t j, A x) { return j <= last ? exp(x - L) : A(0); });
}

// Backward, between the products: dS = P * (dP - D), D = sum_j P[i, j] dP[i, j] (= sum_e O[i, e] dO[i, e] in exact
// arithmetic; from P and dP, a row with one visible key gets dS = 0 exactly, as its gradient is); written over P
// (row stride ldp) once D is summed.
// probs: (chunk, Tq, ldp) of T (P in, dS out); dprobs: (chunk, Tq, Tk) of acc_t<T>. One block per row, as above.
template <class T>
__global__ void attention_dscores_kernel(T* __restrict__ probs, int64_t ldp, const acc_t<T>* __restrict__ dprobs,
                                         const AttentionLayout l, const RowBlock block) {
  using A = acc_t<T>;
  const auto [pp, i] = score_row(blockIdx.x, block);
  T* s = probs + (pp * l.Tq + i) * ldp;
  const A* dp = dprobs + (pp * l.Tq + i) * l.Tk;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < block.keys; j += blockDim.x) acc += double(to_acc(s[j])) * double(dp[j]);
  const A D = A(block_sum(acc));  // every thread's reads are done before any thread writes
  for (int64_t j = threadIdx.x; j < block.keys; j += blockDim.x) s[j] = from_acc<T>(to_acc(s[j]) * (dp[j] - D));
}

template <class T>
const T* const* in_array(const PointerArrays& a, int which, int64_t first) {
  return reinterpret_cast<const T* const*>(a.array(which) + first);
}
template <class T>
T* const* out_array(const PointerArrays& a, int which, int64_t first) {
  return reinterpret_cast<T* const*>(a.array(which) + first);
}

enum Slot { kQ = 0, kK, kV, kO, kDout, kDq, kDk, kDv, kS, kDp };

void check_rows(const AttentionLayout& l, int64_t rows, const char* op) {
  TALLY_CHECK(rows <= int64_t(INT32_MAX), "[", op, "] too many rows in one chunk: ", rows);
}

}  // namespace

int64_t attention_workspace_size(const AttentionLayout& l) { return cuda_attention_workspace_elements(l); }

// out = softmax(scale * q k^T, causal) v, by row blocks and chunks of (b, h) pairs. q, k, v, out: (B, NH, T, HS)
// through l's strides; lse: (B, NH, Tq) contiguous; workspace: attention_workspace_size(l) elements of acc_t<T>.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, acc_t<T>* workspace,
                       const AttentionLayout& l) {
  using A = acc_t<T>;
  const int64_t pairs = pairs_of(l);
  if (pairs == 0 || l.Tq == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {  // cuDNN's fused attention when switched on and it takes the problem
    if (cudnn_attention_forward(q, k, v, out, lse, workspace, attention_workspace_size(l) * int64_t(sizeof(A)), l))
      return;
  }
  const int64_t ldp = probs_ld<T>(l);
  const int64_t chunk = std::min(pairs, 2 * backward_chunk(l));  // forward has no dP: both buffers hold scores
  const PointerArrays all = pointers_in(workspace, l, int64_t(sizeof(A)));
  build_pointers<T>(all, q, k, v, out, nullptr, nullptr, nullptr, nullptr, l, l, workspace, nullptr, chunk);
  for (int64_t r = 0; r < row_blocks(l); ++r) {
    const RowBlock block = row_block(l, r);
    const PointerArrays arrays = all.set(r);
    for (int64_t p0 = 0; p0 < pairs; p0 += chunk) {
      const int64_t n = std::min(chunk, pairs - p0);
      check_rows(l, n * l.Tq, "attention_forward");
      // S (rows, keys) = scale * Q (rows, HS) @ K^T
      gemm_batched_pointers<T, A>(Trans::no, Trans::yes, block.rows, block.keys, l.HS, l.scale,
                                  in_array<T>(arrays, kQ, p0), l.q_strides[2], in_array<T>(arrays, kK, p0),
                                  l.k_strides[2], 0.0, out_array<A>(arrays, kS, p0), l.Tk, n);
      attention_softmax_kernel<T><<<unsigned(n * block.rows), row_threads(block.keys), 0, stream()>>>(workspace, lse,
                                                                                                       p0, l, block);
      TALLY_CUDA_LAUNCH_CHECK("attention_softmax_kernel");
      // O (rows, HS) = P (rows, keys) @ V (keys, HS)
      gemm_batched_pointers<T>(Trans::no, Trans::no, block.rows, l.HS, block.keys, 1.0, in_array<T>(arrays, kS, p0),
                               ldp, in_array<T>(arrays, kV, p0), l.v_strides[2], 0.0, out_array<T>(arrays, kO, p0),
                               l.out_strides[2], n);
    }
  }
}

// dq, dk, dv (g's strides) from dout (g.out_strides) and the saved lse (B, NH, Tq), recomputing P. q, k, v, out:
// (B, NH, T, HS) through l's strides; workspace: attention_workspace_size(l) elements of acc_t<T>.
template <class T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const acc_t<T>* lse, const T* dout, T* dq, T* dk,
                        T* dv, acc_t<T>* workspace, const AttentionLayout& l, const AttentionLayout& g) {
  using A = acc_t<T>;
  const int64_t pairs = pairs_of(l);
  if (pairs == 0 || l.Tq == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (cudnn_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, workspace,
                                 attention_workspace_size(l) * int64_t(sizeof(A)), l, g))
      return;
  }
  const int64_t slot = l.Tq * l.Tk, ldp = probs_ld<T>(l);
  const int64_t chunk = backward_chunk(l);
  A* scores = workspace;
  A* dscores = workspace + chunk * slot;
  const PointerArrays all = pointers_in(workspace, l, int64_t(sizeof(A)));
  build_pointers<T>(all, q, k, v, out, dout, dq, dk, dv, l, g, scores, dscores, chunk);
  for (int64_t p0 = 0; p0 < pairs; p0 += chunk) {
    const int64_t n = std::min(chunk, pairs - p0);
    check_rows(l, n * l.Tq, "attention_backward");
    for (int64_t r = 0; r < row_blocks(l); ++r) {  // S = scale * Q K^T, then P = exp(S - lse)
      const RowBlock block = row_block(l, r);
      const PointerArrays arrays = all.set(r);
      gemm_batched_pointers<T, A>(Trans::no, Trans::yes, block.rows, block.keys, l.HS, l.scale,
                                  in_array<T>(arrays, kQ, p0), l.q_strides[2], in_array<T>(arrays, kK, p0),
                                  l.k_strides[2], 0.0, out_array<A>(arrays, kS, p0), l.Tk, n);
      attention_probs_kernel<T><<<unsigned(n * block.rows), row_threads(block.keys), 0, stream()>>>(scores, lse, p0, l,
                                                                                                     block);
      TALLY_CUDA_LAUNCH_CHECK("attention_probs_kernel");
    }
    for (int64_t c = 0; c < key_blocks(l); ++c) {  // dV (keys, HS) = P^T (keys, rows) @ dO (rows, HS)
      const KeyBlock block = key_block(l, c);
      const PointerArrays arrays = all.set(row_blocks(l) + c);
      gemm_batched_pointers<T>(Trans::yes, Trans::no, block.keys, l.HS, block.rows, 1.0, in_array<T>(arrays, kS, p0),
                               ldp, in_array<T>(arrays, kDout, p0), g.out_strides[2], 0.0,
                               out_array<T>(arrays, kDv, p0), g.v_strides[2], n);
    }
    for (int64_t r = 0; r < row_blocks(l); ++r) {
      const RowBlock block = row_block(l, r);
      const PointerArrays arrays = all.set(r);
      // dP (rows, keys) = dO (rows, HS) @ V^T
      gemm_batched_pointers<T, A>(Trans::no, Trans::yes, block.rows, block.keys, l.HS, 1.0,
                                  in_array<T>(arrays, kDout, p0), g.out_strides[2], in_array<T>(arrays, kV, p0),
                                  l.v_strides[2], 0.0, out_array<A>(arrays, kDp, p0), l.Tk, n);
      // dS = P * (dP - D), over P
      attention_dscores_kernel<T><<<unsigned(n * block.rows), row_threads(block.keys), 0, stream()>>>(
          reinterpret_cast<T*>(scores), ldp, dscores, l, block);
      TALLY_CUDA_LAUNCH_CHECK("attention_dscores_kernel");
      // dQ (rows, HS) = scale * dS (rows, keys) @ K (keys, HS)
      gemm_batched_pointers<T>(Trans::no, Trans::no, block.rows, l.HS, block.keys, l.scale,
                               in_array<T>(arrays, kS, p0), ldp, in_array<T>(arrays, kK, p0), l.k_strides[2], 0.0,
                               out_array<T>(arrays, kDq, p0), g.q_strides[2], n);
    }
    for (int64_t c = 0; c < key_blocks(l); ++c) {  // dK (keys, HS) = scale * dS^T (keys, rows) @ Q (rows, HS)
      const KeyBlock block = key_block(l, c);
      const PointerArrays arrays = all.set(row_blocks(l) + c);
      gemm_batched_pointers<T>(Trans::yes, Trans::no, block.keys, l.HS, block.rows, l.scale,
                               in_array<T>(arrays, kS, p0), ldp, in_array<T>(arrays, kQ, p0), l.q_strides[2], 0.0,
                               out_array<T>(arrays, kDk, p0), g.k_strides[2], n);
    }
  }
}

#define TALLY_INSTANTIATE(T)                                                                                        \
  template void attention_forward<T>(const T*, const T*, const T*, T*, acc_t<T>*, acc_t<T>*, const AttentionLayout&); \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const acc_t<T>*, const T*, T*, T*, T*,  \
                                      acc_t<T>*, const AttentionLayout&, const AttentionLayout&);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
