// Helpers shared by the op implementations: argument checks that name the op and the shapes.
#pragma once
#include "core/autograd/node.h"
#include "core/ops.h"
#include "core/ops/dispatch.h"

namespace tally::detail {

inline void check_defined(const char* op, const Tensor& t, const char* what) {
  TALLY_CHECK(t.defined(), "[", op, "] ", what, " is undefined");
}

// Same dtype and device; floating.
inline void check_pair(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, "first operand");
  check_defined(op, b, "second operand");
  TALLY_CHECK(a.dtype() == b.dtype(), "[", op, "] dtype mismatch: ", a.str(), " vs ", b.str());
  TALLY_CHECK(a.device() == b.device(), "[", op, "] device mismatch: ", a.str(), " vs ", b.str());
}

// f32, f64, or bf16 (which dispatch_float then accepts on CUDA only).
inline void check_floating(const char* op, const Tensor& t) {
  TALLY_CHECK(t.defined(), "[", op, "] input is undefined");
  TALLY_CHECK(is_floating(t.dtype()), "[", op, "] needs an f32 or f64 tensor (or bf16 on CUDA), got ", t.str());
}

// Options for an op's per-row statistics (mean/rstd, log-sum-exp, losses) of input `t`: f32 for bf16 inputs.
inline TensorOptions acc_options(const Tensor& t) { return {.dtype = acc_dtype(t.dtype()), .device = t.device()}; }

// A saved output: shares storage without the grad_fn link (an output saved with its own node would form a cycle).
inline Tensor saved(const Tensor& t) { return t.detach(); }

}  // namespace tally::detail
