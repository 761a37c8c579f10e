// The one dispatch point of every op: pick the scalar type (dispatch_float) and the backend (TALLY_KERNEL).
// On the meta device kernels are skipped: ops still validate, allocate (accounting only) and record.
// bf16 tensors compute on CUDA only (mixed precision); the CPU backend has no bf16 kernels, and a bf16 op on the
// CPU stops with an error naming the op before any kernel is reached.
#pragma once
#include <type_traits>
#include <utility>

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

namespace detail {

// True for a kernel argument that carries bf16 data (a bf16 pointer, or GEMM arguments over bf16 matrices).
template <class A> struct is_bf16_arg : std::false_type {};
template <> struct is_bf16_arg<bf16*> : std::true_type {};
template <> struct is_bf16_arg<const bf16*> : std::true_type {};
template <> struct is_bf16_arg<kernels::GemmArgs<bf16>> : std::true_type {};
template <class... A>
inline constexpr bool has_bf16_arg = (is_bf16_arg<std::remove_cvref_t<A>>::value || ...);

// Runs a CPU kernel. A call with bf16 data is not even instantiated (there is no bf16 CPU kernel to link): it
// can only be reached past dispatch_float's device check by calling a kernel directly, and then it throws.
template <class Kernel, class... A>
void cpu_kernel(const char* name, [[maybe_unused]] Kernel&& kernel, A&&... args) {
  if constexpr (has_bf16_arg<A...>) fail("[", name, "] bf16 compute runs on CUDA only; use f32 on the CPU");
  else kernel(std::forward<A>(args)...);
}

}  // namespace detail

}  // namespace tally

// Runs kernels::<backend>::NAME(args...) for the device: cpu, cuda (when built), nothing on meta. The CPU call
// goes through a generic lambda so that bf16 instantiations (CUDA only) never reference a CPU symbol.
#define TALLY_KERNEL_CPU_(NAME, ...) \
  ::tally::detail::cpu_kernel(#NAME, [&](auto&&... tally_a_) { ::tally::kernels::cpu::NAME(tally_a_...); }, __VA_ARGS__)
#ifdef TALLY_HAS_CUDA
#define TALLY_KERNEL(device, NAME, ...)                                            \
  do {                                                                             \
    const ::tally::Device tally_dev_ = (device);                                   \
    if (tally_dev_.is_cpu()) TALLY_KERNEL_CPU_(NAME, __VA_ARGS__);                 \
    else if (tally_dev_.is_cuda()) ::tally::kernels::cuda::NAME(__VA_ARGS__);      \
  } while (0)
#else
#define TALLY_KERNEL(device, NAME, ...)                                                               \
  do {                                                                                                \
    const ::tally::Device tally_dev_ = (device);                                                      \
    if (tally_dev_.is_cpu()) TALLY_KERNEL_CPU_(NAME, __VA_ARGS__);                                    \
    else if (tally_dev_.is_cuda()) ::tally::fail("[", #NAME, "] tally was built without CUDA");       \
  } while (0)
#endif
