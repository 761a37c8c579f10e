// CPU kernels: strided copy with dtype conversion, and fill.
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/kernels/kernels.h"

namespace tally::kernels::cpu {

namespace {

template <class T>
double to_double(T v) {
  if constexpr (std::is_same_v<T, bf16>) return double(bf16_to_float(v));
  else return double(v);
}

template <class T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, bf16>) return float_to_bf16(float(v));
  else return T(v);
}

template <class D, class S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else if constexpr (std::is_same_v<D, bf16> && std::is_same_v<S, float>) return float_to_bf16(v);
  else if constexpr (std::is_same_v<D, float> && std::is_same_v<S, bf16>) return bf16_to_float(v);
  else return from_double<D>(to_double(v));
}

template <class F>
void with_type(DType t, F&& f) {
  switch (t) {
    case DType::f32: f.template operator()<float>(); return;
    case DType::f64: f.template operator()<double>(); return;
    case DType::bf16: f.template operator()<bf16>(); return;
    case DType::i32: f.template operator()<int32_t>(); return;
    case DType::i64: f.template operator()<int64_t>(); return;
    case DType::u16: f.template operator()<uint16_t>(); return;
    case DType::u8: f.template operator()<uint8_t>(); return;
  }
}

bool dense(const StridedLayout& l, const int64_t* stride) {
  int64_t expected = 1;
  for (int i = l.ndim - 1; i >= 0; --i) {
    if (l.shape[i] == 1) continue;
    if (stride[i] != expected) return false;
    expected *= l.shape[i];
  }
  return true;
}

template <class D, class S>
void copy_typed(D* dst, const S* src, const StridedLayout& l) {
  int64_t n = 1;
  for (int i = 0; i < l.ndim; ++i) n *= l.shape[i];
  if (n == 0) return;
  if (dense(l, l.dst_stride) && dense(l, l.src_stride)) {
    if constexpr (std::is_same_v<D, S>) {
      std::memcpy(dst, src, size_t(n) * sizeof(D));
    } else {
#pragma omp parallel for if (n > (1 << 16))
      for (int64_t i = 0; i < n; ++i) dst[i] = convert<D>(src[i]);
    }
    return;
  }
  // Innermost dim as the contiguous-ish run; outer dims enumerated by a linear row index.
  int last = l.ndim - 1;
  int64_t inner = last >= 0 ? l.shape[last] : 1;
  int64_t ds = last >= 0 ? l.dst_stride[last] : 1, ss = last >= 0 ? l.src_stride[last] : 1;
  int64_t rows = n / inner;
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, doff = 0, soff = 0;
    for (int d = last - 1; d >= 0; --d) {
      int64_t idx = rem % l.shape[d];
      rem /= l.shape[d];
      doff += idx * l.dst_stride[d];
      soff += idx * l.src_stride[d];
    }
    D* dp = dst + doff;
    const S* sp = src + soff;
    for (int64_t i = 0; i < inner; ++i) dp[i * ds] = convert<D>(sp[i * ss]);
  }
}

}  // namespace

void copy_strided(void* dst, DType dst_dtype, const void* src, DType src_dtype, const StridedLayout& layout) {
  with_type(dst_dtype, [&]<class D>() {
    with_type(src_dtype, [&]<class S>() { copy_typed(static_cast<D*>(dst), static_cast<const S*>(src), layout); });
  });
}

void fill(void* dst, DType dtype, int64_t n, double value) {
  with_type(dtype, [&]<class D>() {
    D v = from_double<D>(value);
    D* p = static_cast<D*>(dst);
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) p[i] = v;
  });
}

}  // namespace tally::kernels::cpu
