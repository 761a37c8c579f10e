// TALLY_KERNEL(device, NAME, args...): the one backend dispatch of the ops (kernels::cpu / kernels::cuda of
// core/kernels/kernels.h) and the optimizers (optim/kernels/optim_kernels.h). It runs the backend's NAME for the
// device and yields the kernel's result (a workspace size, say), runs nothing on the meta device (a value-returning
// query yields 0 there: a caller that plans with a backend's figures asks that backend), and stops with an error
// naming NAME on a CUDA device when tally was built without CUDA.
#pragma once
#include <type_traits>
#include <utility>

#include "core/device.h"
#include "core/error.h"
#include "core/kernels/kernels.h"

namespace tally::detail {

// True for a kernel argument that carries bf16 data (a bf16 pointer, or GEMM arguments over bf16 matrices).
template <class A> struct is_bf16_arg : std::false_type {};
template <> struct is_bf16_arg<bf16*> : std::true_type {};
template <> struct is_bf16_arg<const bf16*> : std::true_type {};
template <> struct is_bf16_arg<kernels::GemmArgs<bf16>> : std::true_type {};
template <class... A>
inline constexpr bool has_bf16_arg = (is_bf16_arg<std::remove_cvref_t<A>>::value || ...);

// Stands for the CUDA backend in a build without it.
struct NoCudaBackend {};

// Calls cpu(args...) or cuda(args...) for the device; R() on meta. kCpuBf16: whether the CPU backend of this kernel
// contract has bf16 kernels (the ops' has none: a CPU call with bf16 data is then not even instantiated, as there
// is no symbol to link; it can only be reached past dispatch_float's device check, and throws).
template <bool kCpuBf16, class Cpu, class Cuda, class... A>
auto run_kernel(Device device, const char* name, [[maybe_unused]] Cpu cpu, [[maybe_unused]] Cuda cuda, A&&... args)
    -> decltype(cpu(args...)) {
  using R = decltype(cpu(args...));
  if (device.is_cpu()) {
    if constexpr (!kCpuBf16 && has_bf16_arg<A...>) fail("[", name, "] bf16 compute runs on CUDA only; use f32 on the CPU");
    else return cpu(args...);
  } else if (device.is_cuda()) {
    if constexpr (std::is_same_v<Cuda, NoCudaBackend>) fail("[", name, "] tally was built without CUDA");
    else return cuda(args...);
  }
  return R();  // meta: accounting only, no kernel runs
}

}  // namespace tally::detail

// NAME is looked up from the call site as kernels::cpu::NAME and kernels::cuda::NAME: tally::kernels in the ops,
// tally::optim::kernels in the optimizers. It may name a template instance (random_normal<T>). Each backend call
// goes through a generic lambda whose result type is read from the kernel's declaration, so that a CPU call the
// dispatch never makes is never instantiated.
#define TALLY_KERNEL_CALL_(BACKEND, NAME)                                         \
  [](auto&&... tally_a_) -> decltype(kernels::BACKEND::NAME(tally_a_...)) {       \
    return kernels::BACKEND::NAME(tally_a_...);                                   \
  }
#ifdef TALLY_HAS_CUDA
#define TALLY_KERNEL_CUDA_(NAME) TALLY_KERNEL_CALL_(cuda, NAME)
#else
#define TALLY_KERNEL_CUDA_(NAME) ::tally::detail::NoCudaBackend{}
#endif
#define TALLY_KERNEL(device, NAME, ...)                                                                       \
  ::tally::detail::run_kernel<kernels::cpu::kHasBf16Kernels>((device), #NAME, TALLY_KERNEL_CALL_(cpu, NAME), \
                                                             TALLY_KERNEL_CUDA_(NAME), __VA_ARGS__)
