// The one dispatch point of every op: pick the scalar type (dispatch_float) and the backend (TALLY_KERNEL, from
// core/kernels/dispatch.h).
// On the meta device kernels are skipped: ops still validate, allocate (accounting only) and record.
// bf16 tensors compute on CUDA only (mixed precision); the CPU backend has no bf16 kernels, and a bf16 op on the
// CPU stops with an error naming the op before any kernel is reached.
#pragma once
#include "core/error.h"
#include "core/kernels/dispatch.h"
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

// As above for the tensor's dtype, and T = bf16 for a bf16 tensor on CUDA (or meta, which computes nothing).
template <class F>
void dispatch_float(const Tensor& t, const char* op, F&& fn) {
  switch (t.dtype()) {
    case DType::f32: fn.template operator()<float>(); return;
    case DType::f64: fn.template operator()<double>(); return;
    case DType::bf16:
      TALLY_CHECK(!t.device().is_cpu(), "[", op, "] bf16 compute runs on CUDA only; use f32 on the CPU (got ", t.str(),
                  ")");
      fn.template operator()<bf16>();
      return;
    default: fail("[", op, "] unsupported dtype ", dtype_name(t.dtype()), " (expected f32, f64, or bf16 on CUDA)");
  }
}

// The dtype an op keeps per-row statistics in for inputs of `t` (kernels::acc_t): f32 for bf16, else `t` itself.
constexpr DType acc_dtype(DType t) { return t == DType::bf16 ? DType::f32 : t; }

}  // namespace tally
