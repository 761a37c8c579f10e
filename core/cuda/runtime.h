// The few CUDA runtime services the device-independent code needs (implemented in core/cuda/runtime.cu).
// Declared here so that core/*.cpp never includes CUDA headers; only compiled into calls with TALLY_HAS_CUDA.
// Kernels use the internal header core/cuda/common.cuh (stream, cuBLAS handle, checks) instead.
#pragma once
#include <cstdint>
#include <string>

namespace tally::cuda {

// In stream order; `src` may be reused as soon as it returns. Up to 8 MiB (a batch's ids) the bytes go through
// a ring of pinned host buffers and the host does not wait; larger copies wait for the stream.
void memcpy_host_to_device(void* dst, const void* src, int64_t bytes);
void memcpy_device_to_host(void* dst, const void* src, int64_t bytes);
void memcpy_device_to_device(void* dst, const void* src, int64_t bytes);
void synchronize();                      // waits for the device's work; throws on an earlier async error
void synchronize_device(const char* op);  // cudaDeviceSynchronize (all streams), watched as the waits below are
// How many times the host has waited for the device so far (synchronize, a copy to the host, a large copy to the
// device, and a small one whose pinned buffer was still in use): what a training step costs in host waits, checked
// in tests/cuda/test_cuda_gpt2.cpp.
int64_t host_waits();

// A watch over the host's waits for the device. NCCL sets one while a communicator is open (core/dist/nccl.cu): a
// collective whose peer has stopped never ends, and a plain CUDA wait would wait for it forever. While a watch is
// set, every wait above polls the stream and asks `verdict` every millisecond; a non-empty answer (why to give up)
// makes the wait call `cancel` (NCCL: abort the communicator, which ends its kernels) and throw tally::Error naming
// the wait and the reason. Without a watch the waits block in CUDA, as they always have.
class WaitWatch {
 public:
  virtual ~WaitWatch() = default;
  virtual std::string verdict(double waited_seconds) = 0;  // "" to go on waiting
  virtual void cancel() = 0;
};
void set_wait_watch(WaitWatch* watch);  // nullptr: no watch
WaitWatch* wait_watch();

void set_device(int index);
int current_device();
void memory_info(int64_t* free_bytes, int64_t* total_bytes);  // cudaMemGetInfo

// cuBLAS's workspace: tally's own block, so that cuBLAS makes no hidden allocations and its bytes show in the ledger
// (workspace, owner kCublasWorkspaceOwner). Made with a device's first cuBLAS call and kept; plans for CUDA hold it.
inline constexpr int64_t kCublasWorkspaceBytes = int64_t(32) << 20;  // what cuBLAS asks for on Hopper
inline constexpr const char* kCublasWorkspaceOwner = "cuda:cublas_workspace";

// How float32 matrix products run on tensor cores. tf32 (the default) is for training speed (~3e-4 relative
// error on products); strict keeps full FP32 (tests comparing against the CPU use it). double is never affected.
enum class Fp32Matmul : uint8_t { tf32, strict };
void set_fp32_matmul(Fp32Matmul mode);
Fp32Matmul fp32_matmul();

// Sets Fp32Matmul while it lives, restoring the previous mode after.
class Fp32MatmulScope {
 public:
  explicit Fp32MatmulScope(Fp32Matmul mode) : previous_(fp32_matmul()) { set_fp32_matmul(mode); }
  ~Fp32MatmulScope() { set_fp32_matmul(previous_); }
  Fp32MatmulScope(const Fp32MatmulScope&) = delete;
  Fp32MatmulScope& operator=(const Fp32MatmulScope&) = delete;

 private:
  Fp32Matmul previous_;
};

// When on, every kernel launch is followed by a stream synchronize, so that an asynchronous fault is reported
// by the kernel that caused it (slow; for debugging). Also switched on by the environment: TALLY_CUDA_SYNC=1.
enum class LaunchSync : uint8_t { async, after_each_kernel };
void set_launch_sync(LaunchSync mode);

// Name and figures of a device, for logs: "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB".
struct DeviceProperties {
  char name[256] = {};
  int major = 0, minor = 0;
  int multiprocessors = 0;
  int64_t total_memory = 0;
  int64_t l2_bytes = 0;
};
DeviceProperties device_properties(int index);

}  // namespace tally::cuda
