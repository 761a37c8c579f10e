// CUDA kernels: strided copy with dtype conversion (every pair of the 7 dtypes), and fill.
// Layouts are first collapsed on the host (size-1 dims dropped, mergeable dims fused), so most copies become
// a dense conversion or a cudaMemcpy; the general kernel walks the output index with 32-bit division when
// the element count allows (64-bit division is several times slower on the GPU).
#include <cstring>
#include <type_traits>

#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::grid_for;
using tally::cuda::stream;

constexpr int kThreads = 256;

// Drops size-1 dims and fuses neighbours whose strides chain (outer stride == inner size * inner stride) in
// both tensors. An empty result means a single element.
StridedLayout collapse(const StridedLayout& in) {
  StridedLayout out;
  for (int i = 0; i < in.ndim; ++i) {
    if (in.shape[i] == 1) continue;
    if (out.ndim > 0) {
      int j = out.ndim - 1;
      if (out.dst_stride[j] == in.shape[i] * in.dst_stride[i] && out.src_stride[j] == in.shape[i] * in.src_stride[i]) {
        out.shape[j] *= in.shape[i];
        out.dst_stride[j] = in.dst_stride[i];
        out.src_stride[j] = in.src_stride[i];
        continue;
      }
    }
    out.shape[out.ndim] = in.shape[i];
    out.dst_stride[out.ndim] = in.dst_stride[i];
    out.src_stride[out.ndim] = in.src_stride[i];
    out.ndim += 1;
  }
  return out;
}

// dst[i] = convert(src[i]) over contiguous arrays; dst, src: (n).
template <class D, class S>
__global__ void convert_dense_kernel(D* __restrict__ dst, const S* __restrict__ src, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = convert_dev<D>(src[i]);
}

// dst = convert(src) over the n elements of l.shape, each array addressed through its own strides (l.dst_stride,
// l.src_stride).
// Index: the type the linear output index is decomposed in (uint32_t when every index fits).
template <class D, class S, class Index>
__global__ void copy_strided_kernel(D* __restrict__ dst, const S* __restrict__ src, const StridedLayout l, Index n) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    Index rem = i;
    int64_t doff = 0, soff = 0;
    for (int d = l.ndim - 1; d >= 0; --d) {
      Index size = Index(l.shape[d]);
      Index idx = rem % size;
      rem /= size;
      doff += int64_t(idx) * l.dst_stride[d];
      soff += int64_t(idx) * l.src_stride[d];
    }
    dst[doff] = convert_dev<D>(src[soff]);
  }
}

// One dtype pair of copy_strided (layout.shape, both strides): a cudaMemcpyAsync or convert_dense_kernel when the
// collapsed layout is dense, else copy_strided_kernel.
template <class D, class S>
void copy_typed(D* dst, const S* src, const StridedLayout& layout) {
  int64_t n = 1;
  for (int i = 0; i < layout.ndim; ++i) n *= layout.shape[i];
  if (n == 0) return;
  StridedLayout l = collapse(layout);
  const bool dense = l.ndim == 0 || (l.ndim == 1 && l.dst_stride[0] == 1 && l.src_stride[0] == 1);
  if (dense) {
    if constexpr (std::is_same_v<D, S>) {
      TALLY_CUDA_CHECK("copy_strided", cudaMemcpyAsync(dst, src, size_t(n) * sizeof(D), cudaMemcpyDeviceToDevice, stream()));
    } else {
      convert_dense_kernel<D, S><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, src, n);
      TALLY_CUDA_LAUNCH_CHECK("convert_dense_kernel");
    }
    return;
  }
  if (n <= int64_t(INT32_MAX)) {
    copy_strided_kernel<D, S, uint32_t><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, src, l, uint32_t(n));
  } else {
    copy_strided_kernel<D, S, uint64_t><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, src, l, uint64_t(n));
  }
  TALLY_CUDA_LAUNCH_CHECK("copy_strided_kernel");
}

// dst[i] = value; dst: (n).
template <class D>
__global__ void fill_kernel(D* __restrict__ dst, int64_t n, D value) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = value;
}

// The value as the CPU backend converts it (core/kernels/cpu/copy.cpp: from_double).
template <class D>
D host_from_double(double v) {
  if constexpr (std::is_same_v<D, bf16>) return float_to_bf16(float(v));
  else return D(v);
}

}  // namespace

// dst = convert(src) over layout (its shape, dst_stride and src_stride), between any two dtypes.
void copy_strided(void* dst, DType dst_dtype, const void* src, DType src_dtype, const StridedLayout& layout) {
  with_dtype(dst_dtype, [&]<class D>() {
    with_dtype(src_dtype, [&]<class S>() { copy_typed(static_cast<D*>(dst), static_cast<const S*>(src), layout); });
  });
}

// dst (n elements of dtype) = value: a cudaMemsetAsync when its bytes are all zero, else fill_kernel.
void fill(void* dst, DType dtype, int64_t n, double value) {
  if (n <= 0) return;
  with_dtype(dtype, [&]<class D>() {
    D v = host_from_double<D>(value);
    unsigned char bytes[sizeof(D)];
    std::memcpy(bytes, &v, sizeof(D));
    bool all_zero = true;
    for (unsigned char b : bytes) all_zero = all_zero && b == 0;
    if (all_zero) {
      TALLY_CUDA_CHECK("fill", cudaMemsetAsync(dst, 0, size_t(n) * sizeof(D), stream()));
      return;
    }
    fill_kernel<D><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(static_cast<D*>(dst), n, v);
    TALLY_CUDA_LAUNCH_CHECK("fill_kernel");
  });
}

}  // namespace tally::kernels::cuda
