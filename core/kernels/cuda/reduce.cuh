// Deterministic column sums shared by reduce.cu (sum_dim, bias_backward) and layernorm.cu (dweight, dbias):
// out[o, c] = sum over rows i of value(o, i, c), in double, with fixed chunk boundaries (a function of the
// sizes only) and fixed reduction trees, so results never depend on timing. No atomics.
#pragma once
#include <algorithm>

#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"

namespace tally::kernels::cuda {

inline constexpr int kColTile = int(kCudaColTile);  // columns per block (one warp-wide row segment)
inline constexpr int kColRows = 16;                  // row phases per block

// Block (kColTile, kColRows); grid (column tiles, min(outer, 65535), chunks). Value(o, i, c) -> double.
// With one chunk the result goes to out (converted to T); else to partial[(o * chunks + chunk) * inner + c].
// out: (outer, inner); partial: (outer, chunks, inner), chunks = gridDim.z (null with one chunk).
template <class T, class Value>
__global__ void column_sum_kernel(int64_t outer, int64_t n, int64_t inner, int64_t rows_per_chunk, Value value,
                                  T* __restrict__ out, double* __restrict__ partial) {
  __shared__ double acc_s[kColRows][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kColTile + tx;
  const int64_t chunk = blockIdx.z, chunks = gridDim.z;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    double acc = 0.0;
    if (c < inner)
      for (int64_t i = r0 + ty; i < r1; i += kColRows) acc += value(o, i, c);
    acc_s[ty][tx] = acc;
    __syncthreads();
    if (ty == 0) {
      double total = 0.0;
#pragma unroll
      for (int k = 0; k < kColRows; ++k) total += acc_s[k][tx];
      if (c < inner) {
        if (chunks == 1) out[o * inner + c] = from_double_dev<T>(total);
        else partial[(o * chunks + chunk) * inner + c] = total;
      }
    }
    __syncthreads();
  }
}

// out[o, c] = sum over chunks of partial, in chunk order.
// partial: (outer, chunks, inner); out: (outer, inner).
template <class T>
__global__ void column_sum_finish_kernel(const double* __restrict__ partial, T* __restrict__ out, int64_t outer,
                                         int64_t chunks, int64_t inner) {
  const int64_t total = outer * inner;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = j / inner, c = j % inner;
    const double* p = partial + o * chunks * inner + c;
    double s = 0.0;
    for (int64_t k = 0; k < chunks; ++k) s += p[k * inner];
    out[j] = from_double_dev<T>(s);
  }
}

// Launches the column sum of value(o, i, c) over i for every (o, c), writing out (outer, inner); workspace holds
// cuda_column_sum_workspace_bytes(outer, n, inner) bytes (the chunks' partial sums; null when that is 0).
template <class T, class Value>
void column_sum(int64_t outer, int64_t n, int64_t inner, Value value, T* out, void* workspace, const char* name) {
  using tally::cuda::ceil_div;
  using tally::cuda::stream;
  if (outer == 0 || inner == 0) return;
  const int64_t chunks = cuda_column_chunks(outer, n, inner);
  const int64_t rows_per_chunk = n == 0 ? 1 : ceil_div(n, chunks);
  const dim3 block(kColTile, kColRows);
  const dim3 grid(unsigned(ceil_div(inner, kColTile)), unsigned(outer < 65535 ? outer : 65535), unsigned(chunks));
  TALLY_CHECK(ceil_div(inner, kColTile) <= int64_t(INT32_MAX), "[", name, "] too many columns: ", inner);
  if (chunks == 1) {
    column_sum_kernel<T><<<grid, block, 0, stream()>>>(outer, n, inner, rows_per_chunk, value, out, nullptr);
    TALLY_CUDA_LAUNCH_CHECK(name);
    return;
  }
  TALLY_CHECK(workspace != nullptr, "[", name, "] no workspace for the column sums of (", outer, ", ", n, ", ", inner,
              ")");
  double* partial = static_cast<double*>(workspace);  // (outer, chunks, inner)
  column_sum_kernel<T><<<grid, block, 0, stream()>>>(outer, n, inner, rows_per_chunk, value, out, partial);
  TALLY_CUDA_LAUNCH_CHECK(name);
  column_sum_finish_kernel<T><<<tally::cuda::grid_for(outer * inner, 256), 256, 0, stream()>>>(partial, out, outer,
                                                                                               chunks, inner);
  TALLY_CUDA_LAUNCH_CHECK("column_sum_finish_kernel");
}

}  // namespace tally::kernels::cuda
