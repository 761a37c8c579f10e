// Emulator stand-in for CUDA's <cuda_bf16.h>: __nv_bfloat16 as 16 raw bits with the conversions tally's kernels
// use (round to nearest even, as the hardware does), built on core/dtype.h's host conversions.
#pragma once
#include "core/dtype.h"
#include "cuda_runtime.h"

struct __nv_bfloat16 {
  uint16_t bits = 0;
};

inline float __bfloat162float(__nv_bfloat16 v) { return tally::bf16_to_float(tally::bf16{v.bits}); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{tally::float_to_bf16(f).bits}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
