// The one dispatch point of every op: pick the scalar type (dispatch_float) and the backend (TALLY_KERNEL).
// On the meta device kernels are skipped: ops still validate, allocate (accounting only) and record.
#pragma once
#include "core/error.h"
#include "core/kernels/kernels.h"
#include "core/tensor.h"

namespace tally {

// Calls fn.template operator()<T>() with T = float or double for `dtype`; other dtypes throw naming `op`.
template <class F>
void dispatch_float(DType dtype, const char* op, F&& fn) {
  switch (dtype) {
    case DType::f32: fn.template operator()<float>(); return;
    case DType::f64: fn.template operator()<double>(); return;
    default: fail("[", op, "] unsupported dtype ", dtype_name(dtype), " (expected f32 or f64)");
  }
}

}  // namespace tally

// Runs kernels::<backend>::NAME(args...) for the device: cpu, cuda (when built), nothing on meta.
#ifdef TALLY_HAS_CUDA
#define TALLY_KERNEL(device, NAME, ...)                                            \
  do {                                                                             \
    const ::tally::Device tally_dev_ = (device);                                   \
    if (tally_dev_.is_cpu()) ::tally::kernels::cpu::NAME(__VA_ARGS__);             \
    else if (tally_dev_.is_cuda()) ::tally::kernels::cuda::NAME(__VA_ARGS__);      \
  } while (0)
#else
#define TALLY_KERNEL(device, NAME, ...)                                                               \
  do {                                                                                                \
    const ::tally::Device tally_dev_ = (device);                                                      \
    if (tally_dev_.is_cpu()) ::tally::kernels::cpu::NAME(__VA_ARGS__);                                \
    else if (tally_dev_.is_cuda()) ::tally::fail("[", #NAME, "] tally was built without CUDA");       \
  } while (0)
#endif
