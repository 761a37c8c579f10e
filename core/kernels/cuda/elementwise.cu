// CUDA kernels: broadcasting binary ops, unary ops (incl. GELU and its backward), axpy, scale_by.
// Contiguous operands take a vectorised path (16-byte loads and stores, e.g. float4) when every pointer is
// 16-byte aligned; broadcast layouts are collapsed on the host and walked with 32-bit index arithmetic when
// the sizes allow. Results match the CPU's to rounding (GPU exp/tanh differ by an ulp or two). Functors compute in
// acc_t<T>: bf16 elements are widened to float on load and rounded to nearest even on store.
#include "core/cuda/common.cuh"
#include "core/kernels/cuda/convert.cuh"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

namespace {

using tally::cuda::aligned16;
using tally::cuda::grid_for;
using tally::cuda::kPackSize;
using tally::cuda::stream;
using tally::cuda::Vec;

constexpr int kThreads = 256;

// ---- op functors ----

template <class T>
struct Add {
  __device__ T operator()(T x, T y) const { return x + y; }
};
template <class T>
struct Sub {
  __device__ T operator()(T x, T y) const { return x - y; }
};
template <class T>
struct Mul {
  __device__ T operator()(T x, T y) const { return x * y; }
};
template <class T>
struct Div {
  __device__ T operator()(T x, T y) const { return x / y; }
};

template <class T>
__device__ __forceinline__ T gelu_value(T x) {
  const T s = T(0.7978845608028654);  // sqrt(2/pi)
  T u = s * (x + T(0.044715) * x * x * x);
  // 0.5 x (1 + tanh(u)) == x * sigmoid(2u), as on the CPU: no cancellation in 1 + tanh(u) for x << 0 (at x = -3 the
  // tanh form loses about 6 bits of f32).
  return x / (T(1) + exp(T(-2) * u));
}

template <class T, UnaryOp op>
struct Unary {
  T s;
  __device__ T operator()(T x) const {
    if constexpr (op == UnaryOp::neg) return -x;
    else if constexpr (op == UnaryOp::exp) return exp(x);
    else if constexpr (op == UnaryOp::log) return log(x);
    else if constexpr (op == UnaryOp::sqrt) return sqrt(x);
    else if constexpr (op == UnaryOp::rsqrt) return T(1) / sqrt(x);
    else if constexpr (op == UnaryOp::tanh) return tanh(x);
    else if constexpr (op == UnaryOp::gelu) return gelu_value(x);
    else if constexpr (op == UnaryOp::add_scalar) return x + s;
    else if constexpr (op == UnaryOp::mul_scalar) return x * s;
    else if constexpr (op == UnaryOp::rsub_scalar) return s - x;
    else if constexpr (op == UnaryOp::rdiv_scalar) return s / x;
    else return pow(x, s);  // pow_scalar
  }
};

// ---- kernels ----

// out[i] = f(a[i], b[i]) over contiguous arrays, W elements per access (W = 1: any alignment).
// a, b, out: (n).
template <class T, int W, class F>
__global__ void binary_contiguous_kernel(const T* a, const T* b, T* __restrict__ out, int64_t n, F f) {
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t vecs = n / W;
  for (int64_t i = start; i < vecs; i += step) {
    Vec<T, W> x = reinterpret_cast<const Vec<T, W>*>(a)[i];
    Vec<T, W> y = reinterpret_cast<const Vec<T, W>*>(b)[i];
    Vec<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_acc<T>(f(to_acc(x.v[k]), to_acc(y.v[k])));
    reinterpret_cast<Vec<T, W>*>(out)[i] = r;
  }
  for (int64_t i = vecs * W + start; i < n; i += step) out[i] = from_acc<T>(f(to_acc(a[i]), to_acc(b[i])));
}

// One operand is a single value (broadcast scalar): out[i] = f(a[i], s) or f(s, b[i]).
// v, out: (n); scalar: one element, read on the device.
template <class T, int W, class F, bool kScalarIsA>
__global__ void binary_scalar_kernel(const T* v, const T* scalar, T* __restrict__ out, int64_t n, F f) {
  const acc_t<T> s = to_acc(*scalar);
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t vecs = n / W;
  for (int64_t i = start; i < vecs; i += step) {
    Vec<T, W> x = reinterpret_cast<const Vec<T, W>*>(v)[i];
    Vec<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_acc<T>(kScalarIsA ? f(s, to_acc(x.v[k])) : f(to_acc(x.v[k]), s));
    reinterpret_cast<Vec<T, W>*>(out)[i] = r;
  }
  for (int64_t i = vecs * W + start; i < n; i += step)
    out[i] = from_acc<T>(kScalarIsA ? f(s, to_acc(v[i])) : f(to_acc(v[i]), s));
}

// General broadcast: the contiguous output index is decomposed along the collapsed shape.
// out: (n) contiguous over l.shape; a, b read through l.a_stride, l.b_stride (0 along a broadcast dim).
template <class T, class Index, class F>
__global__ void binary_broadcast_kernel(const T* a, const T* b, T* __restrict__ out, const BroadcastLayout l, Index n, F f) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    Index rem = i;
    int64_t aoff = 0, boff = 0;
    for (int d = l.ndim - 1; d >= 0; --d) {
      Index size = Index(l.shape[d]);
      Index idx = rem % size;
      rem /= size;
      aoff += int64_t(idx) * l.a_stride[d];
      boff += int64_t(idx) * l.b_stride[d];
    }
    out[i] = from_acc<T>(f(to_acc(a[aoff]), to_acc(b[boff])));
  }
}

// out[i] = f(a[i]) over contiguous arrays, W elements per access (W = 1: any alignment); a, out: (n).
template <class T, int W, class F>
__global__ void unary_kernel(const T* a, T* __restrict__ out, int64_t n, F f) {
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t vecs = n / W;
  for (int64_t i = start; i < vecs; i += step) {
    Vec<T, W> x = reinterpret_cast<const Vec<T, W>*>(a)[i];
    Vec<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_acc<T>(f(to_acc(x.v[k])));
    reinterpret_cast<Vec<T, W>*>(out)[i] = r;
  }
  for (int64_t i = vecs * W + start; i < n; i += step) out[i] = from_acc<T>(f(to_acc(a[i])));
}

template <class T>
struct GeluBackward {
  __device__ T operator()(T v, T dy) const {
    const T s = T(0.7978845608028654);
    T u = s * (v + T(0.044715) * v * v * v);
    T du = s * (T(1) + T(3 * 0.044715) * v * v);
    // With g = sigmoid(2u): 0.5 (1 + tanh u) = g and 0.5 (1 - tanh^2 u) = 2 g (1 - g) (no cancellation, as the CPU).
    T g = T(1) / (T(1) + exp(T(-2) * u));
    return dy * (g + T(2) * v * g * (T(1) - g) * du);
  }
};

// y[i] += alpha * x[i] (y and x may be the same array).
// y, x: (n).
template <class T, int W>
__global__ void axpy_kernel(T* y, const T* x, int64_t n, acc_t<T> alpha) {
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t vecs = n / W;
  for (int64_t i = start; i < vecs; i += step) {
    Vec<T, W> xv = reinterpret_cast<const Vec<T, W>*>(x)[i];
    Vec<T, W> yv = reinterpret_cast<Vec<T, W>*>(y)[i];
#pragma unroll
    for (int k = 0; k < W; ++k) yv.v[k] = from_acc<T>(to_acc(yv.v[k]) + alpha * to_acc(xv.v[k]));
    reinterpret_cast<Vec<T, W>*>(y)[i] = yv;
  }
  for (int64_t i = vecs * W + start; i < n; i += step) y[i] = from_acc<T>(to_acc(y[i]) + alpha * to_acc(x[i]));
}

// x[i] *= *scale, the scale read on the device.
// x: (n); scale: one value.
template <class T, int W>
__global__ void scale_by_kernel(T* x, const acc_t<T>* scale, int64_t n) {
  const acc_t<T> s = *scale;
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t vecs = n / W;
  for (int64_t i = start; i < vecs; i += step) {
    Vec<T, W> xv = reinterpret_cast<Vec<T, W>*>(x)[i];
#pragma unroll
    for (int k = 0; k < W; ++k) xv.v[k] = from_acc<T>(to_acc(xv.v[k]) * s);
    reinterpret_cast<Vec<T, W>*>(x)[i] = xv;
  }
  for (int64_t i = vecs * W + start; i < n; i += step) x[i] = from_acc<T>(to_acc(x[i]) * s);
}

// ---- launchers ----

// Drops size-1 dims and fuses neighbours whose strides chain in both operands (the output is contiguous).
BroadcastLayout collapse(const BroadcastLayout& in) {
  BroadcastLayout out;
  for (int i = 0; i < in.ndim; ++i) {
    if (in.shape[i] == 1) continue;
    if (out.ndim > 0) {
      int j = out.ndim - 1;
      if (out.a_stride[j] == in.shape[i] * in.a_stride[i] && out.b_stride[j] == in.shape[i] * in.b_stride[i]) {
        out.shape[j] *= in.shape[i];
        out.a_stride[j] = in.a_stride[i];
        out.b_stride[j] = in.b_stride[i];
        continue;
      }
    }
    out.shape[out.ndim] = in.shape[i];
    out.a_stride[out.ndim] = in.a_stride[i];
    out.b_stride[out.ndim] = in.b_stride[i];
    out.ndim += 1;
  }
  return out;
}

// out (contiguous, layout.shape) = f(a, b): binary_contiguous_kernel, binary_scalar_kernel or
// binary_broadcast_kernel, as the collapsed layout allows (the first two in 16-byte vectors when their arrays are
// aligned).
template <class T, class F>
void binary_launch(const T* a, const T* b, T* out, const BroadcastLayout& layout, F f) {
  int64_t n = 1;
  for (int i = 0; i < layout.ndim; ++i) n *= layout.shape[i];
  if (n == 0) return;
  BroadcastLayout l = collapse(layout);
  const unsigned grid = grid_for(n, kThreads);
  constexpr int P = kPackSize<T>;
  const bool a_dense = l.ndim == 0 || (l.ndim == 1 && l.a_stride[0] == 1);
  const bool b_dense = l.ndim == 0 || (l.ndim == 1 && l.b_stride[0] == 1);
  const bool a_scalar = l.ndim == 1 && l.a_stride[0] == 0, b_scalar = l.ndim == 1 && l.b_stride[0] == 0;
  if (a_dense && b_dense) {
    if (aligned16(a) && aligned16(b) && aligned16(out))
      binary_contiguous_kernel<T, P><<<grid_for(n / P + 1, kThreads), kThreads, 0, stream()>>>(a, b, out, n, f);
    else
      binary_contiguous_kernel<T, 1><<<grid, kThreads, 0, stream()>>>(a, b, out, n, f);
    TALLY_CUDA_LAUNCH_CHECK("binary_contiguous_kernel");
    return;
  }
  if (a_dense && b_scalar) {
    if (aligned16(a) && aligned16(out))
      binary_scalar_kernel<T, P, F, false><<<grid_for(n / P + 1, kThreads), kThreads, 0, stream()>>>(a, b, out, n, f);
    else
      binary_scalar_kernel<T, 1, F, false><<<grid, kThreads, 0, stream()>>>(a, b, out, n, f);
    TALLY_CUDA_LAUNCH_CHECK("binary_scalar_kernel");
    return;
  }
  if (a_scalar && b_dense) {
    if (aligned16(b) && aligned16(out))
      binary_scalar_kernel<T, P, F, true><<<grid_for(n / P + 1, kThreads), kThreads, 0, stream()>>>(b, a, out, n, f);
    else
      binary_scalar_kernel<T, 1, F, true><<<grid, kThreads, 0, stream()>>>(b, a, out, n, f);
    TALLY_CUDA_LAUNCH_CHECK("binary_scalar_kernel");
    return;
  }
  if (n <= int64_t(INT32_MAX))
    binary_broadcast_kernel<T, uint32_t><<<grid, kThreads, 0, stream()>>>(a, b, out, l, uint32_t(n), f);
  else
    binary_broadcast_kernel<T, uint64_t><<<grid, kThreads, 0, stream()>>>(a, b, out, l, uint64_t(n), f);
  TALLY_CUDA_LAUNCH_CHECK("binary_broadcast_kernel");
}

// out[i] = op(a[i]); a, out: (n), in 16-byte vectors when both are aligned.
template <class T, UnaryOp op>
void unary_launch(const T* a, T* out, int64_t n, double scalar) {
  using C = acc_t<T>;
  Unary<C, op> f{C(scalar)};
  constexpr int P = kPackSize<T>;
  if (aligned16(a) && aligned16(out))
    unary_kernel<T, P><<<grid_for(n / P + 1, kThreads), kThreads, 0, stream()>>>(a, out, n, f);
  else
    unary_kernel<T, 1><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(a, out, n, f);
  TALLY_CUDA_LAUNCH_CHECK("unary_kernel");
}

}  // namespace

// out (contiguous, l.shape) = a op b; a and b read through l's strides (0 along a broadcast dim).
template <class T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const BroadcastLayout& l) {
  switch (op) {
    case BinaryOp::add: binary_launch(a, b, out, l, Add<acc_t<T>>{}); return;
    case BinaryOp::sub: binary_launch(a, b, out, l, Sub<acc_t<T>>{}); return;
    case BinaryOp::mul: binary_launch(a, b, out, l, Mul<acc_t<T>>{}); return;
    case BinaryOp::div: binary_launch(a, b, out, l, Div<acc_t<T>>{}); return;
  }
}

// out[i] = op(a[i]) over n contiguous elements; scalar feeds the *_scalar ops.
template <class T>
void unary(UnaryOp op, const T* a, T* out, int64_t n, double scalar) {
  if (n <= 0) return;
  switch (op) {
    case UnaryOp::neg: unary_launch<T, UnaryOp::neg>(a, out, n, scalar); return;
    case UnaryOp::exp: unary_launch<T, UnaryOp::exp>(a, out, n, scalar); return;
    case UnaryOp::log: unary_launch<T, UnaryOp::log>(a, out, n, scalar); return;
    case UnaryOp::sqrt: unary_launch<T, UnaryOp::sqrt>(a, out, n, scalar); return;
    case UnaryOp::rsqrt: unary_launch<T, UnaryOp::rsqrt>(a, out, n, scalar); return;
    case UnaryOp::tanh: unary_launch<T, UnaryOp::tanh>(a, out, n, scalar); return;
    case UnaryOp::gelu: unary_launch<T, UnaryOp::gelu>(a, out, n, scalar); return;
    case UnaryOp::add_scalar: unary_launch<T, UnaryOp::add_scalar>(a, out, n, scalar); return;
    case UnaryOp::mul_scalar: unary_launch<T, UnaryOp::mul_scalar>(a, out, n, scalar); return;
    case UnaryOp::rsub_scalar: unary_launch<T, UnaryOp::rsub_scalar>(a, out, n, scalar); return;
    case UnaryOp::rdiv_scalar: unary_launch<T, UnaryOp::rdiv_scalar>(a, out, n, scalar); return;
    case UnaryOp::pow_scalar: unary_launch<T, UnaryOp::pow_scalar>(a, out, n, scalar); return;
  }
}

// dx[i] = dy[i] * gelu'(x[i]) (tanh approximation); x, dy, dx: (n).
template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n) {
  if (n <= 0) return;
  constexpr int P = kPackSize<T>;
  if (aligned16(x) && aligned16(dy) && aligned16(dx))
    binary_contiguous_kernel<T, P><<<grid_for(n / P + 1, kThreads), kThreads, 0, stream()>>>(x, dy, dx, n, GeluBackward<acc_t<T>>{});
  else
    binary_contiguous_kernel<T, 1><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(x, dy, dx, n, GeluBackward<acc_t<T>>{});
  TALLY_CUDA_LAUNCH_CHECK("gelu_backward (binary_contiguous_kernel)");
}

// y[i] += alpha * x[i]; y, x: (n).
template <class T>
void axpy(T* y, const T* x, int64_t n, double alpha) {
  if (n <= 0) return;
  constexpr int P = kPackSize<T>;
  if (aligned16(x) && aligned16(y))
    axpy_kernel<T, P><<<grid_for(n / P + 1, kThreads), kThreads, 0, stream()>>>(y, x, n, acc_t<T>(alpha));
  else
    axpy_kernel<T, 1><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(y, x, n, acc_t<T>(alpha));
  TALLY_CUDA_LAUNCH_CHECK("axpy_kernel");
}

// x[i] *= *scale, the scale read on the device (no host wait); x: (n).
template <class T>
void scale_by(T* x, const acc_t<T>* scale, int64_t n) {
  if (n <= 0) return;
  constexpr int P = kPackSize<T>;
  if (aligned16(x))
    scale_by_kernel<T, P><<<grid_for(n / P + 1, kThreads), kThreads, 0, stream()>>>(x, scale, n);
  else
    scale_by_kernel<T, 1><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(x, scale, n);
  TALLY_CUDA_LAUNCH_CHECK("scale_by_kernel");
}

#define TALLY_INSTANTIATE(T)                                                                    \
  template void binary<T>(BinaryOp, const T*, const T*, T*, const BroadcastLayout&);            \
  template void unary<T>(UnaryOp, const T*, T*, int64_t, double);                               \
  template void gelu_backward<T>(const T*, const T*, T*, int64_t);                              \
  template void axpy<T>(T*, const T*, int64_t, double);                                         \
  template void scale_by<T>(T*, const acc_t<T>*, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
TALLY_INSTANTIATE(bf16)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cuda
