// The CUDA toolkit of every kernel, the ops' (core/kernels/cuda) and the optimizers' (optim/kernels/cuda); .cu
// files only: the one stream and cuBLAS handle every launch, copy, memset and library call runs on, the checks that
// turn CUDA and cuBLAS errors into tally::Error naming the op, launch sizing, scratch memory from the caching
// allocator, 16-byte packs and deterministic warp/block reductions. Kernels follow kernel -> launcher -> entry.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "core/allocator.h"
#include "core/cuda/runtime.h"
#include "core/error.h"

namespace tally::cuda {

// The stream every tally kernel, copy and cuBLAS call of the current device runs on (created blocking, so
// that stray work on the legacy default stream is still ordered with it).
cudaStream_t stream();
// cuBLAS handle of the current device: bound to stream(), workspace from the caching allocator (ledger:
// workspace / "cuda:cublas_workspace").
cublasHandle_t cublas_handle();
// That workspace (kCublasWorkspaceBytes), for the cuBLASLt calls that run on the same stream (core/kernels/cuda/linear.cu).
void* cublas_workspace();
// Multiprocessors of the current device.
int sm_count();

[[noreturn]] void throw_cuda_error(const char* op, const char* call, cudaError_t err, const char* file, int line);
[[noreturn]] void throw_cublas_error(const char* op, const char* call, cublasStatus_t status, const char* file, int line);
// After a launch: cudaGetLastError (and a synchronize under LaunchSync::after_each_kernel), naming the kernel.
void check_launch(const char* kernel, const char* file, int line);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// Blocks for a grid-stride loop over n items of `threads` per block: enough to fill every SM several times,
// never more than the items need (at least 1).
inline unsigned grid_for(int64_t n, int threads) {
  int64_t want = ceil_div(n, threads);
  int64_t cap = int64_t(sm_count()) * (2048 / threads) * 4;
  if (want > cap) want = cap;
  return unsigned(want < 1 ? 1 : want);
}

// W elements of T loaded or stored as one access; with W = kPackSize<T> that is a single 128-bit instruction.
template <class T, int W>
struct alignas(sizeof(T) * W) Vec {
  T v[W];
};
template <class T>
inline constexpr int kPackSize = 16 / int(sizeof(T));
template <class T>
using Pack = Vec<T, kPackSize<T>>;
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

// ---- warp and block reductions (deterministic: a fixed tree for a given block size) ----

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // identical in every lane (IEEE addition is commutative)
}

template <class T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. May be
// called several times in one kernel (it synchronises before reusing its shared slots).
template <class T>
__device__ T block_sum(T v) {
  __shared__ T slots[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  T total = lane < warps ? slots[lane] : T(0);
  return warp_sum(total);
}

// Sum over a block of kBlock threads (a multiple of 32), valid in thread 0 only: each warp's tree, then thread 0
// adds the warps' sums in order. Another order than block_sum's: the optimizer kernels' bits depend on this one.
// `shared` holds kBlock / 32 values; may be called again with the same `shared` (it synchronises first).
template <int kBlock, class T>
__device__ T block_sum_to_first(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < kBlock / 32; ++w) total += shared[w];
  return total;
}

template <class T>
__device__ T block_max(T v) {
  __shared__ T slots[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  T total = lane < warps ? slots[lane] : T(-INFINITY);
  return warp_max(total);
}

// Running (max, sum of exp(x - max)) of a softmax row; merged across threads without a second pass.
template <class T>
struct MaxSum {
  T max;
  T sum;
};

template <class T>
__device__ __forceinline__ MaxSum<T> merge(MaxSum<T> a, MaxSum<T> b) {
  T m = fmax(a.max, b.max);
  if (m == T(-INFINITY)) return {m, T(0)};  // both empty: avoid exp(-inf - -inf) = NaN
  return {m, a.sum * exp(a.max - m) + b.sum * exp(b.max - m)};
}

template <class T>
__device__ __forceinline__ MaxSum<T> warp_merge(MaxSum<T> v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum<T> other{__shfl_xor_sync(0xffffffffu, v.max, o), __shfl_xor_sync(0xffffffffu, v.sum, o)};
    v = merge(v, other);
  }
  return v;
}

template <class T>
__device__ MaxSum<T> block_merge(MaxSum<T> v) {
  __shared__ T slot_max[32];
  __shared__ T slot_sum[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_merge(v);
  __syncthreads();
  if (lane == 0) {
    slot_max[warp] = v.max;
    slot_sum[warp] = v.sum;
  }
  __syncthreads();
  MaxSum<T> total = lane < warps ? MaxSum<T>{slot_max[lane], slot_sum[lane]} : MaxSum<T>{T(-INFINITY), T(0)};
  return warp_merge(total);
}

// Threads per block for a one-block-per-row kernel over rows of n elements.
inline int row_threads(int64_t n) {
  if (n <= 64) return 32;
  if (n <= 512) return 128;
  if (n <= 4096) return 256;
  return 512;
}

}  // namespace tally::cuda

#define TALLY_CUDA_CHECK(op, call)                                                              \
  do {                                                                                          \
    cudaError_t tally_err_ = (call);                                                            \
    if (tally_err_ != cudaSuccess)                                                              \
      ::tally::cuda::throw_cuda_error(op, #call, tally_err_, __FILE__, __LINE__);               \
  } while (0)

#define TALLY_CUBLAS_CHECK(op, call)                                                            \
  do {                                                                                          \
    cublasStatus_t tally_status_ = (call);                                                      \
    if (tally_status_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::tally::cuda::throw_cublas_error(op, #call, tally_status_, __FILE__, __LINE__);          \
  } while (0)

// After every <<<...>>> launch, naming the kernel.
#define TALLY_CUDA_LAUNCH_CHECK(kernel) ::tally::cuda::check_launch(kernel, __FILE__, __LINE__)
