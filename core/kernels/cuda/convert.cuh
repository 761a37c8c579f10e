// Element conversions on the device, bit for bit those of the CPU backend (core/kernels/cpu/copy.cpp):
// bf16 <-> float directly (round to nearest even, NaN kept), every other pair through double. Also the compute-type
// loads and stores (to_acc / from_acc) through which the typed kernels read and write bf16 storage.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/dtype.h"
#include "core/kernels/kernels.h"

namespace tally::kernels::cuda {

__device__ __forceinline__ float bf16_to_float_dev(bf16 v) { return __uint_as_float(uint32_t(v.bits) << 16); }

__device__ __forceinline__ bf16 float_to_bf16_dev(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

template <class T>
__device__ __forceinline__ double to_double_dev(T v) {
  if constexpr (std::is_same_v<T, bf16>) return double(bf16_to_float_dev(v));
  else return double(v);
}

template <class T>
__device__ __forceinline__ T from_double_dev(double v) {
  if constexpr (std::is_same_v<T, bf16>) return float_to_bf16_dev(float(v));
  else return T(v);
}

template <class D, class S>
__device__ __forceinline__ D convert_dev(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else if constexpr (std::is_same_v<D, bf16> && std::is_same_v<S, float>) return float_to_bf16_dev(v);
  else if constexpr (std::is_same_v<D, float> && std::is_same_v<S, bf16>) return bf16_to_float_dev(v);
  else return from_double_dev<D>(to_double_dev(v));
}

// A stored element as the compute type acc_t<T> (exact), and a computed value stored back: the identity for float
// and double (so their kernels are unchanged), round to nearest even for bf16.
template <class T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  if constexpr (std::is_same_v<T, bf16>) return bf16_to_float_dev(v);
  else return v;
}
template <class T>
__device__ __forceinline__ T from_acc(acc_t<T> v) {
  if constexpr (std::is_same_v<T, bf16>) return float_to_bf16_dev(v);
  else return v;
}

// Calls f.template operator()<T>() with the C++ type of `t`.
template <class F>
void with_dtype(DType t, F&& f) {
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

}  // namespace tally::kernels::cuda
