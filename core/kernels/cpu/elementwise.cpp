// CPU kernels: broadcasting binary ops, unary ops (incl. GELU and its backward), axpy, scale_by.
#include <algorithm>
#include <cmath>

#include "core/kernels/cpu/vec_math.h"
#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

namespace {

constexpr int64_t kParallelMin = 1 << 15;

template <class T, class F>
void binary_loop(const T* a, const T* b, T* out, const BroadcastLayout& l, F f) {
  int64_t n = 1;
  for (int i = 0; i < l.ndim; ++i) n *= l.shape[i];
  if (n == 0) return;
  int last = l.ndim - 1;
  int64_t inner = last >= 0 ? l.shape[last] : 1;
  int64_t as = last >= 0 ? l.a_stride[last] : 0, bs = last >= 0 ? l.b_stride[last] : 0;
  int64_t rows = n / inner;
  // Few long rows (1-D operands, a bias over one long row): each row in pieces, so that every thread has work.
  const int64_t pieces = rows >= 16 ? 1 : std::max<int64_t>(1, inner / kParallelMin);
  const int64_t piece = (inner + pieces - 1) / pieces;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t job = 0; job < rows * pieces; ++job) {
    const int64_t r = job / pieces, lo = (job % pieces) * piece, hi = std::min(inner, lo + piece);
    int64_t rem = r, aoff = 0, boff = 0;
    for (int d = last - 1; d >= 0; --d) {
      int64_t idx = rem % l.shape[d];
      rem /= l.shape[d];
      aoff += idx * l.a_stride[d];
      boff += idx * l.b_stride[d];
    }
    const T* ap = a + aoff;
    const T* bp = b + boff;
    T* op = out + r * inner;
    if (as == 1 && bs == 1) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) op[i] = f(ap[i], bp[i]);
    } else if (as == 1 && bs == 0) {
      T bv = bp[0];
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) op[i] = f(ap[i], bv);
    } else {
      for (int64_t i = lo; i < hi; ++i) op[i] = f(ap[i * as], bp[i * bs]);
    }
  }
}

template <class T, class F>
void unary_loop(const T* a, T* out, int64_t n, F f) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = f(a[i]);
}

template <class T>
inline T gelu_value(T x) {
  const T s = T(0.7978845608028654);  // sqrt(2/pi)
  T u = s * (x + T(0.044715) * x * x * x);
  // 0.5 x (1 + tanh(u)) == x * sigmoid(2u): one vectorisable exp, and no cancellation in 1 + tanh for x << 0.
  return x * sigmoid_fast(T(2) * u);
}

}  // namespace

template <class T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const BroadcastLayout& l) {
  switch (op) {
    case BinaryOp::add: binary_loop(a, b, out, l, [](T x, T y) { return x + y; }); return;
    case BinaryOp::sub: binary_loop(a, b, out, l, [](T x, T y) { return x - y; }); return;
    case BinaryOp::mul: binary_loop(a, b, out, l, [](T x, T y) { return x * y; }); return;
    case BinaryOp::div: binary_loop(a, b, out, l, [](T x, T y) { return x / y; }); return;
  }
}

template <class T>
void unary(UnaryOp op, const T* a, T* out, int64_t n, double scalar) {
  T s = T(scalar);
  switch (op) {
    case UnaryOp::neg: unary_loop(a, out, n, [](T x) { return -x; }); return;
    case UnaryOp::exp: unary_loop(a, out, n, [](T x) { return std::exp(x); }); return;
    case UnaryOp::log: unary_loop(a, out, n, [](T x) { return std::log(x); }); return;
    case UnaryOp::sqrt: unary_loop(a, out, n, [](T x) { return std::sqrt(x); }); return;
    case UnaryOp::rsqrt: unary_loop(a, out, n, [](T x) { return T(1) / std::sqrt(x); }); return;
    case UnaryOp::tanh: unary_loop(a, out, n, [](T x) { return std::tanh(x); }); return;
    case UnaryOp::gelu: unary_loop(a, out, n, [](T x) { return gelu_value(x); }); return;
    case UnaryOp::add_scalar: unary_loop(a, out, n, [s](T x) { return x + s; }); return;
    case UnaryOp::mul_scalar: unary_loop(a, out, n, [s](T x) { return x * s; }); return;
    case UnaryOp::rsub_scalar: unary_loop(a, out, n, [s](T x) { return s - x; }); return;
    case UnaryOp::rdiv_scalar: unary_loop(a, out, n, [s](T x) { return s / x; }); return;
    case UnaryOp::pow_scalar: unary_loop(a, out, n, [s](T x) { return std::pow(x, s); }); return;
  }
}

template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n) {
  const T s = T(0.7978845608028654);
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    T v = x[i];
    T u = s * (v + T(0.044715) * v * v * v);
    T du = s * (T(1) + T(3 * 0.044715) * v * v);
    // With g = sigmoid(2u): 0.5 (1 + tanh u) = g and 0.5 (1 - tanh^2 u) = 2 g (1 - g).
    T g = sigmoid_fast(T(2) * u);
    dx[i] = dy[i] * (g + T(2) * v * g * (T(1) - g) * du);
  }
}

template <class T>
void axpy(T* y, const T* x, int64_t n, double alpha) {
  T a = T(alpha);
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <class T>
void scale_by(T* x, const acc_t<T>* scale, int64_t n) {
  const T s = *scale;
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

#define TALLY_INSTANTIATE(T)                                                                    \
  template void binary<T>(BinaryOp, const T*, const T*, T*, const BroadcastLayout&);            \
  template void unary<T>(UnaryOp, const T*, T*, int64_t, double);                               \
  template void gelu_backward<T>(const T*, const T*, T*, int64_t);                              \
  template void axpy<T>(T*, const T*, int64_t, double);                                         \
  template void scale_by<T>(T*, const acc_t<T>*, int64_t);
TALLY_INSTANTIATE(float)
TALLY_INSTANTIATE(double)
#undef TALLY_INSTANTIATE

}  // namespace tally::kernels::cpu
