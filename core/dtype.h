// Element types, their sizes and names, and bfloat16 conversions (round-to-nearest-even and stochastic).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace tally {

enum class DType : uint8_t { f32, f64, bf16, i32, i64, u16, u8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // "f32", "bf16", ... (throws on unknown)
constexpr bool is_floating(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::bf16; }

// bfloat16 stored as its 16 raw bits.
struct bf16 {
  uint16_t bits = 0;
};

inline float bf16_to_float(bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest, ties to even; NaN stays NaN.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

// The sum of two bf16 values as NCCL forms it (and tally's MPI and test engines, which have no bf16 of their own):
// widened, added in f32, rounded to the nearest bf16.
inline bf16 bf16_add(bf16 a, bf16 b) { return float_to_bf16(bf16_to_float(a) + bf16_to_float(b)); }

// Stochastic rounding: adds 16 random bits below the kept mantissa before truncating.
inline bf16 float_to_bf16_stochastic(float f, uint32_t random_bits) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) >= 0x7f800000u) return float_to_bf16(f);
  u += (random_bits & 0xffffu);
  return bf16{uint16_t(u >> 16)};
}

// Maps a C++ scalar type to its DType.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<uint16_t> { static constexpr DType value = DType::u16; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <class T> inline constexpr DType dtype_v = dtype_of<T>::value;

}  // namespace tally
