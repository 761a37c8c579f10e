// CUDA kernels: embedding gather, and its deterministic backward without float atomics.
// Backward sorts the token positions by id (CUB radix sort: stable, so each id's positions stay ascending),
// then one block per distinct id sums its rows of dout in position order, in T: the same additions in the
// same order as the CPU backend, hence bit-identical results (bf16: summed in float, rounded once). Ids absent
// from the batch get zero rows.
#include <cub/device/device_radix_sort.cuh>

#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::align256;
using tally::cuda::aligned16;
using tally::cuda::ceil_div;
using tally::cuda::grid_for;
using tally::cuda::kPackSize;
using tally::cuda::stream;
using tally::cuda::Vec;

// out (N, C) = weight[indices]: blockIdx.y walks rows, threads walk W-wide column groups.
template <class T, int W>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ indices, const T* __restrict__ weight,
                                         T* __restrict__ out, int64_t N, int64_t C) {
  const int64_t groups = C / W;
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  for (int64_t r = blockIdx.y; r < N; r += gridDim.y) {
    const Vec<T, W>* src = reinterpret_cast<const Vec<T, W>*>(weight + int64_t(indices[r]) * C);
    reinterpret_cast<Vec<T, W>*>(out + r * C)[g] = src[g];
  }
}

__global__ void iota_kernel(uint32_t* __restrict__ p, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = uint32_t(i);
}

// Block j handles sorted position j if it starts a run of equal ids: dweight[id] = sum of dout rows of the run.
template <class T>
__global__ void embedding_backward_kernel(const uint32_t* __restrict__ sorted_ids, const uint32_t* __restrict__ positions,
                                          const T* __restrict__ dout, T* __restrict__ dweight, int64_t N, int64_t C) {
  const int64_t start = blockIdx.x;
  const uint32_t id = sorted_ids[start];
  if (start > 0 && sorted_ids[start - 1] == id) return;
  int64_t end = start + 1;
  while (end < N && sorted_ids[end] == id) ++end;
  T* dst = dweight + int64_t(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t<T> acc = acc_t<T>(0);
    for (int64_t k = start; k < end; ++k) acc += to_acc(dout[int64_t(positions[k]) * C + c]);
    dst[c] = from_acc<T>(acc);
  }
}

}  // namespace

template <class T>
void embedding_forward(const int32_t* indices, const T* weight, T* out, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  constexpr int P = kPackSize<T>;
  const unsigned rows = unsigned(N < 65535 ? N : 65535);
  if (C % P == 0 && aligned16(weight) && aligned16(out)) {
    const int64_t groups = C / P;
    const int threads = groups >= 256 ? 256 : int(ceil_div(groups, 32) * 32);
    embedding_forward_kernel<T, P><<<dim3(unsigned(ceil_div(groups, threads)), rows), threads, 0, stream()>>>(indices, weight,
                                                                                                            out, N, C);
  } else {
    const int threads = C >= 256 ? 256 : int(ceil_div(C, 32) * 32);
    embedding_forward_kernel<T, 1><<<dim3(unsigned(ceil_div(C, threads)), rows), threads, 0, stream()>>>(indices, weight,
                                                                                                        out, N, C);
  }
  TALLY_CUDA_LAUNCH_CHECK("embedding_forward_kernel");
}

template <class T>
void embedding_backward(const int32_t* indices, const T* dout, T* dweight, int64_t N, int64_t V, int64_t C) {
  if (V == 0 || C == 0) return;
  TALLY_CUDA_CHECK("embedding_backward", cudaMemsetAsync(dweight, 0, size_t(V * C) * sizeof(T), stream()));
  if (N == 0) return;
  TALLY_CHECK(N <= int64_t(INT32_MAX) && V <= int64_t(UINT32_MAX), "[embedding_backward] sizes beyond 32 bits: N=", N,
              " V=", V);
  int end_bit = 1;  // sort only the bits an id in [0, V) can have
  while (end_bit < 32 && (int64_t(1) << end_bit) < V) ++end_bit;
  // Ids are checked non-negative by the op, so sorting their bits as unsigned keeps their order.
  const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(indices);
  size_t temp_bytes = 0;
  TALLY_CUDA_CHECK("embedding_backward",
                   cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, static_cast<uint32_t*>(nullptr),
                                                   static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
                                                   int(N), 0, end_bit, stream()));
  const int64_t ids_bytes = align256(N * int64_t(sizeof(uint32_t)));
  tally::cuda::Scratch scratch(3 * ids_bytes + align256(int64_t(temp_bytes)), "embedding_backward_sort");
  uint32_t* sorted_ids = scratch.as<uint32_t>(0);
  uint32_t* positions_in = scratch.as<uint32_t>(ids_bytes);
  uint32_t* positions = scratch.as<uint32_t>(2 * ids_bytes);
  void* temp = scratch.as<char>(3 * ids_bytes);
  iota_kernel<<<grid_for(N, 256), 256, 0, stream()>>>(positions_in, N);
  TALLY_CUDA_LAUNCH_CHECK("iota_kernel");
  TALLY_CUDA_CHECK("embedding_backward",
                   cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, sorted_ids, positions_in, positions, int(N),
                                                   0, end_bit, stream()));
  const int threads = C >= 256 ? 256 : int(ceil_div(C, 32) * 32);
  embedding_backward_kernel<T><<<unsigned(N), threads, 0, stream()>>>(sorted_ids, positions, dout, dweight, N, C);
  TALLY_CUDA_LAUNCH_CHECK("embedding_backward_kernel");
}

#define TALLY_INSTANTIATE(T)                                                                  \
  template void embedding_forward<T>(const int32_t*, const T*, T*, int64_t, int64_t);         \
  template void embedding_backward<T>(const int32_t*, const T*, T*, int64_t, int64_t, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
