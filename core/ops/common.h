// Helpers shared by the op implementations: argument checks that name the op and the shapes.
#pragma once
#include "core/autograd/node.h"
#include "core/ops.h"
#include "core/ops/dispatch.h"

namespace tally::detail {

inline void check_defined(const char* op, const Tensor& t, const char* what) {
  TALLY_CHECK(t.defined(), "[", op, "] ", what, " is undefined");
}

// Both defined, of the same dtype and device; the messages name the operands ("[linear] dtype mismatch: x f32(2, 3)
// cpu vs bias f64(3,) cpu").
inline void check_pair(const char* op, const char* a_name, const Tensor& a, const char* b_name, const Tensor& b) {
  check_defined(op, a, a_name);
  check_defined(op, b, b_name);
  TALLY_CHECK(a.dtype() == b.dtype(), "[", op, "] dtype mismatch: ", a_name, " ", a.str(), " vs ", b_name, " ",
              b.str());
  TALLY_CHECK(a.device() == b.device(), "[", op, "] device mismatch: ", a_name, " ", a.str(), " vs ", b_name, " ",
              b.str());
}

// f32, f64, or bf16 (which dispatch_float then accepts on CUDA only).
inline void check_floating(const char* op, const Tensor& t) {
  TALLY_CHECK(t.defined(), "[", op, "] input is undefined");
  TALLY_CHECK(is_floating(t.dtype()), "[", op, "] needs an f32 or f64 tensor (or bf16 on CUDA), got ", t.str());
}

// Options for an op's per-row statistics (mean/rstd, log-sum-exp, losses) of input `t`: f32 for bf16 inputs.
inline TensorOptions acc_options(const Tensor& t) { return {.dtype = acc_dtype(t.dtype()), .device = t.device()}; }

// A kernel's scratch: `bytes` (a formula of the sizes, so that a meta plan holds the same) on t's device, as
// workspace owned by `owner` in the ledger; undefined when 0 bytes. Pass it down with data_or_null.
inline Tensor kernel_workspace(const Tensor& t, int64_t bytes, const char* owner) {
  if (bytes == 0) return Tensor();
  MemoryScope scope(Category::workspace, owner);
  return empty({bytes}, {.dtype = DType::u8, .device = t.device()});
}
// The bytes a CUDA kernel of t's device needs (the CPU's kernels need none).
inline int64_t cuda_only(const Tensor& t, int64_t bytes) { return t.device().backend() == DeviceKind::cuda ? bytes : 0; }
inline void* data_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// A saved output: shares storage without the grad_fn link (an output saved with its own node would form a cycle).
inline Tensor saved(const Tensor& t) { return t.detach(); }

}  // namespace tally::detail
