// CUDA runtime services: device presence (false/0, never a crash, without a driver or GPU), the one stream and
// cuBLAS handle per device, copies, synchronisation, error reporting and the FP32 matmul mode.
// Per-device state is created on first use and deliberately never destroyed (no teardown-order hazards at exit).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "core/cuda/common.cuh"
#include "core/cuda/cuda_allocator.h"
#include "core/cuda/env_switch.h"
#include "core/device.h"
#include "core/ledger.h"
#include "core/wait.h"

namespace tally {

namespace {
int probe_device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: not an error for tally, just no CUDA
    return 0;
  }
  return n;
}
}  // namespace

int cuda_device_count() {
  static const int count = probe_device_count();
  return count;
}

bool cuda_available() { return cuda_device_count() > 0; }

namespace cuda {

namespace {

constexpr int kMaxDevices = 64;

// A pinned host buffer that host-to-device copies go through, and the event that marks its last copy done.
struct Upload {
  void* host = nullptr;  // cudaHostAlloc'd
  int64_t bytes = 0;
  cudaEvent_t done = nullptr;
  bool in_flight = false;  // `done` was recorded after a copy from it
};
constexpr int kUploadBuffers = 4;  // a micro-batch's inputs and targets, and the next micro-batch's
constexpr int64_t kUploadMaxBytes = int64_t(8) << 20;  // larger copies (weights, checkpoints) wait as before

struct DeviceState {
  std::once_flag stream_once, cublas_once;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  void* cublas_workspace = nullptr;
  int sms = 0;
  std::mutex upload_mu;
  Upload uploads[kUploadBuffers];
  int next_upload = 0;
};

DeviceState& state(int device) {
  static DeviceState* states = new DeviceState[kMaxDevices];  // never freed: see the file comment
  TALLY_CHECK(device >= 0 && device < kMaxDevices, "[cuda] device index ", device, " out of range");
  return states[device];
}

std::atomic<uint8_t> g_fp32_matmul{uint8_t(Fp32Matmul::tf32)};

// TALLY_CUDA_SYNC=1: a wait after each kernel (a fault is reported by the kernel that caused it). Read on first use
// (env_on refuses a value other than 0 or 1 by throwing, which static initialisation could not report).
EnvSwitch g_sync_after_each_kernel{"TALLY_CUDA_SYNC"};

void init_stream(DeviceState& s, int device) {
  TALLY_CUDA_CHECK("cuda", cudaStreamCreateWithFlags(&s.stream, cudaStreamDefault));
  TALLY_CUDA_CHECK("cuda", cudaDeviceGetAttribute(&s.sms, cudaDevAttrMultiProcessorCount, device));
}

}  // namespace

int current_device() {
  int d = 0;
  TALLY_CUDA_CHECK("cuda", cudaGetDevice(&d));
  return d;
}

cudaStream_t stream() {
  int d = current_device();
  DeviceState& s = state(d);
  std::call_once(s.stream_once, [&] { init_stream(s, d); });
  return s.stream;
}

int sm_count() {
  int d = current_device();
  DeviceState& s = state(d);
  std::call_once(s.stream_once, [&] { init_stream(s, d); });
  return s.sms;
}

cublasHandle_t cublas_handle() {
  int d = current_device();
  DeviceState& s = state(d);
  cudaStream_t st = stream();
  std::call_once(s.cublas_once, [&] {
    TALLY_CUBLAS_CHECK("cublas", cublasCreate(&s.cublas));
    TALLY_CUBLAS_CHECK("cublas", cublasSetStream(s.cublas, st));
    // Our own workspace, so that cuBLAS makes no hidden allocations and its bytes show in the ledger.
    Block ws;
    {
      MemoryScope scope(Category::workspace, kCublasWorkspaceOwner);
      ws = caching_allocator(d).allocate(kCublasWorkspaceBytes);
    }
    TALLY_CUBLAS_CHECK("cublas", cublasSetWorkspace(s.cublas, ws.ptr, size_t(kCublasWorkspaceBytes)));
    s.cublas_workspace = ws.ptr;
  });
  return s.cublas;
}

void* cublas_workspace() {
  cublas_handle();  // made with the handle
  return state(current_device()).cublas_workspace;
}

void throw_cuda_error(const char* op, const char* call, cudaError_t err, const char* file, int line) {
  (void)cudaGetLastError();  // clear a non-sticky error so that later launch checks do not report it again
  fail("[", op, "] CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ", call, " at ", file, ":",
       line);
}

void throw_cublas_error(const char* op, const char* call, cublasStatus_t status, const char* file, int line) {
  fail("[", op, "] cuBLAS error ", cublasGetStatusName(status), " (", cublasGetStatusString(status), ") in ", call, " at ",
       file, ":", line);
}

void set_fp32_matmul(Fp32Matmul mode) { g_fp32_matmul.store(uint8_t(mode)); }
Fp32Matmul fp32_matmul() { return Fp32Matmul(g_fp32_matmul.load()); }

namespace {
std::atomic<int64_t> g_host_waits{0};
std::atomic<WaitWatch*> g_wait_watch{nullptr};

// Every host wait for the device goes through here: `query` asks whether the work is done (cudaStreamQuery,
// cudaEventQuery), `block` waits for it inside CUDA. With a watch set, the host polls and the watch may end the wait
// (see WaitWatch in runtime.h: tally::Error naming `op`); without one, it blocks. Returns the wait's CUDA status.
template <class Query, class Block>
cudaError_t wait_status(const char* op, Query query, Block block) {
  g_host_waits.fetch_add(1);
  WaitWatch* watch = g_wait_watch.load();
  cudaError_t err = cudaSuccess;
  if (!watch) {
    err = block();
  } else {
    const std::string why = wait_until_ready(
        [&] {
          err = query();
          return err == cudaErrorNotReady ? Readiness::pending : Readiness::ready;
        },
        [&](double waited_seconds) { return watch->verdict(waited_seconds); });
    if (!why.empty()) {
      watch->cancel();
      fail("[", op, "] gave up waiting for the GPU: ", why);
    }
  }
  return err;
}

// The same, raising a CUDA error from the wait (named `call`).
template <class Query, class Block>
void wait_for(const char* op, const char* call, Query query, Block block) {
  const cudaError_t err = wait_status(op, query, block);
  if (err != cudaSuccess) throw_cuda_error(op, call, err, __FILE__, __LINE__);
}

void wait_for_stream(const char* op, cudaStream_t s) {
  wait_for(op, "cudaStreamSynchronize", [s] { return cudaStreamQuery(s); }, [s] { return cudaStreamSynchronize(s); });
}

void wait_for_event(const char* op, cudaEvent_t e) {
  wait_for(op, "cudaEventSynchronize", [e] { return cudaEventQuery(e); }, [e] { return cudaEventSynchronize(e); });
}

}  // namespace

void check_launch(const char* kernel, const char* file, int line) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    fail("[", kernel, "] kernel launch failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ", file,
         ":", line);
  if (g_sync_after_each_kernel.on()) {
    cudaStream_t s = stream();
    err = wait_status(kernel, [s] { return cudaStreamQuery(s); }, [s] { return cudaStreamSynchronize(s); });
    if (err != cudaSuccess)
      fail("[", kernel, "] kernel failed while running: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ",
           file, ":", line);
  }
}

void set_launch_sync(LaunchSync mode) {
  mode == LaunchSync::after_each_kernel ? g_sync_after_each_kernel.turn_on() : g_sync_after_each_kernel.turn_off();
}

int64_t host_waits() { return g_host_waits.load(); }

void set_wait_watch(WaitWatch* watch) { g_wait_watch.store(watch); }
WaitWatch* wait_watch() { return g_wait_watch.load(); }

namespace {

// Small copies (a batch's token ids) go through a ring of pinned buffers: the bytes are copied into the next buffer
// and the device copies them from there in stream order, so the host returns at once. It waits only when that buffer
// is still being read by a copy queued kUploadBuffers copies ago (the host is that far ahead of the device).
// The buffers are the runtime's own host memory (at most kUploadBuffers x kUploadMaxBytes, kept), like the CUDA
// context's: not tensors, so not in a device's ledger.
bool upload_through_pinned(void* dst, const void* src, int64_t bytes) {
  if (bytes > kUploadMaxBytes) return false;
  cudaStream_t s = stream();
  DeviceState& st = state(current_device());
  std::lock_guard<std::mutex> lock(st.upload_mu);
  Upload& u = st.uploads[st.next_upload];
  st.next_upload = (st.next_upload + 1) % kUploadBuffers;
  if (!u.done) TALLY_CUDA_CHECK("upload", cudaEventCreateWithFlags(&u.done, cudaEventDisableTiming));
  if (u.in_flight) {
    const cudaError_t ready = cudaEventQuery(u.done);
    if (ready == cudaErrorNotReady) {
      wait_for_event("upload", u.done);
    } else {
      TALLY_CUDA_CHECK("upload", ready);
    }
    u.in_flight = false;
  }
  if (u.bytes < bytes) {
    if (u.host) TALLY_CUDA_CHECK("upload", cudaFreeHost(u.host));
    u.host = nullptr;
    u.bytes = 0;
    TALLY_CUDA_CHECK("upload", cudaHostAlloc(&u.host, size_t(bytes), cudaHostAllocDefault));
    u.bytes = bytes;
  }
  std::memcpy(u.host, src, size_t(bytes));
  TALLY_CUDA_CHECK("upload", cudaMemcpyAsync(dst, u.host, size_t(bytes), cudaMemcpyHostToDevice, s));
  TALLY_CUDA_CHECK("upload", cudaEventRecord(u.done, s));
  u.in_flight = true;
  return true;
}

}  // namespace

void memcpy_host_to_device(void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  if (upload_through_pinned(dst, src, bytes)) return;
  cudaStream_t s = stream();
  TALLY_CUDA_CHECK("memcpy_host_to_device", cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyHostToDevice, s));
  // The host buffer may be freed as soon as we return: wait until the copy has consumed it.
  wait_for_stream("memcpy_host_to_device", s);
}

void memcpy_device_to_host(void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  cudaStream_t s = stream();
  TALLY_CUDA_CHECK("memcpy_device_to_host", cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToHost, s));
  wait_for_stream("memcpy_device_to_host", s);
}

void memcpy_device_to_device(void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  TALLY_CUDA_CHECK("memcpy_device_to_device",
                   cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToDevice, stream()));
}

void synchronize() { wait_for_stream("synchronize", stream()); }

void synchronize_device(const char* op) {
  // Watched, the stream is polled: all of tally's work on a device (kernels, copies, cuBLAS, cuDNN, NCCL) is queued
  // on that one stream.
  cudaStream_t s = stream();
  wait_for(op, "cudaDeviceSynchronize", [s] { return cudaStreamQuery(s); }, [] { return cudaDeviceSynchronize(); });
}

void set_device(int index) {
  TALLY_CHECK(index >= 0 && index < cuda_device_count(), "[set_device] cuda:", index, " does not exist (",
              cuda_device_count(), " CUDA devices)");
  TALLY_CUDA_CHECK("set_device", cudaSetDevice(index));
}

void memory_info(int64_t* free_bytes, int64_t* total_bytes) {
  size_t f = 0, t = 0;
  TALLY_CUDA_CHECK("memory_info", cudaMemGetInfo(&f, &t));
  if (free_bytes) *free_bytes = int64_t(f);
  if (total_bytes) *total_bytes = int64_t(t);
}

DeviceProperties device_properties(int index) {
  TALLY_CHECK(index >= 0 && index < cuda_device_count(), "[device_properties] cuda:", index, " does not exist (",
              cuda_device_count(), " CUDA devices)");
  cudaDeviceProp p{};
  TALLY_CUDA_CHECK("device_properties", cudaGetDeviceProperties(&p, index));
  DeviceProperties out;
  std::memcpy(out.name, p.name, sizeof(out.name) - 1);  // both 256 bytes; the last stays NUL
  out.major = p.major;
  out.minor = p.minor;
  out.multiprocessors = p.multiProcessorCount;
  out.total_memory = int64_t(p.totalGlobalMem);
  out.l2_bytes = int64_t(p.l2CacheSize);
  return out;
}

}  // namespace cuda
}  // namespace tally
