// CUDA emulation (see include/cuda_runtime.h): the runtime, cuBLAS and cuBLASLt functions over host memory, one device
// with 2 "SMs" (small grids). Errors that the real runtime would give for bad arguments are reported too.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>

#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include "core/dtype.h"

constinit thread_local uint3 threadIdx;
constinit thread_local uint3 blockIdx;
constinit thread_local dim3 blockDim;
constinit thread_local dim3 gridDim;

namespace tally_emu {
// The one stream cudaStreamCreateWithFlags hands out.
const cudaStream_t kStream = reinterpret_cast<cudaStream_t>(0x1);
constinit thread_local Block* current_block = nullptr;
constinit thread_local int linear_tid = 0;

void check_config(const char* kernel, const Config& c) {
  const unsigned threads = c.block.x * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.y > 65535 ||
      c.grid.z > 65535) {
    std::fprintf(stderr, "cuda_emu: invalid launch of %s: grid (%u,%u,%u) block (%u,%u,%u)\n", kernel, c.grid.x,
                 c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z);
    std::abort();
  }
  if (threads % 32 != 0) std::fprintf(stderr, "cuda_emu: note: %s: block of %u threads (not whole warps)\n", kernel, threads);
  check_stream(c.stream, kernel);
}

void check_stream(cudaStream_t s, const char* what) {
  if (s == kStream) return;
  std::fprintf(stderr, "cuda_emu: %s runs on %s, not on tally's stream (tally::cuda::stream())\n", what,
               s ? "an unknown stream" : "the legacy default stream");
  std::abort();
}

// ---- the threads of a block as fibers ----
// Each CUDA thread of the block being run is a fiber with its own stack on the launching host thread. The block's
// scheduler resumes them in thread order; a fiber runs until it waits at a barrier or ends. Switching saves the
// callee-saved registers on the fiber's stack and swaps the stack pointer (x86-64 System V; no kernel changes the
// floating-point control words, which all fibers share): tens of nanoseconds, where a host thread per CUDA thread
// paid the kernel's scheduler at every barrier.

namespace {

// AddressSanitizer is told of each switch, so that it checks each fiber's stack as a stack (CUDA_EMU_ASAN=1).
void asan_start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}
void asan_finish_switch(void* fake_stack_save, const void** bottom_old, size_t* size_old) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
  (void)fake_stack_save, (void)bottom_old, (void)size_old;
#endif
}

constexpr size_t kStackBytes = size_t(256) << 10;  // per CUDA thread; the lowest page is a guard
constexpr size_t kGuardBytes = 4096;

struct Fiber {
  void* sp = nullptr;                  // the saved stack pointer while it is switched out
  char* stack = nullptr;               // kStackBytes, guard page first
  const Barrier* waiting = nullptr;    // the barrier it waits at, and that barrier's generation when it arrived
  uint64_t generation = 0;
  bool done = false;
  void* asan_fake_stack = nullptr;
};

struct Scheduler {
  std::vector<Fiber> fibers;  // one per CUDA thread of the block; stacks kept from launch to launch
  Fiber* running = nullptr;
  void* sp = nullptr;  // the scheduler's stack pointer while a fiber runs
  const void* asan_stack_bottom = nullptr;
  size_t asan_stack_size = 0;
  void* asan_fake_stack = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
};
thread_local Scheduler sched;

}  // namespace

// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, switches to `to` (a stack
// saved the same way, or laid out so by start_fiber) and restores from it.
extern "C" void tally_emu_switch(void** save, void* to);
asm(R"(
  .text
  .globl tally_emu_switch
  .type tally_emu_switch, @function
tally_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tally_emu_switch, .-tally_emu_switch
)");
static_assert(sizeof(void*) == 8, "the CUDA emulator's fibers switch x86-64 stacks");

namespace {

// The scheduler switches into fiber f, and f back to the scheduler (`finished`: f's stack is no longer needed).
void enter(Fiber& f) {
  sched.running = &f;
  asan_start_switch(&sched.asan_fake_stack, f.stack + kGuardBytes, kStackBytes - kGuardBytes);
  tally_emu_switch(&sched.sp, f.sp);
  asan_finish_switch(sched.asan_fake_stack, nullptr, nullptr);
  sched.running = nullptr;
}
void leave(Fiber& f, bool finished) {
  asan_start_switch(finished ? nullptr : &f.asan_fake_stack, sched.asan_stack_bottom, sched.asan_stack_size);
  void* unused = nullptr;
  tally_emu_switch(finished ? &unused : &f.sp, sched.sp);
  asan_finish_switch(f.asan_fake_stack, nullptr, nullptr);
}

[[noreturn]] void fiber_main() {
  asan_finish_switch(nullptr, &sched.asan_stack_bottom, &sched.asan_stack_size);
  Fiber& f = *sched.running;
  sched.body(sched.ctx);
  f.done = true;
  leave(f, /*finished=*/true);
  std::abort();  // never resumed
}

// Lays out f's stack so that switching to it enters fiber_main with the alignment of a function's entry.
void start_fiber(Fiber& f) {
#if defined(__SANITIZE_ADDRESS__)
  // A reused stack still carries the poisoned red zones of the frames its last fiber left (it never returns).
  ASAN_UNPOISON_MEMORY_REGION(f.stack + kGuardBytes, kStackBytes - kGuardBytes);
#endif
  auto* top = reinterpret_cast<uint64_t*>(f.stack + kStackBytes);  // 16-byte aligned
  *--top = 0;                                              // fiber_main's return address: it never returns
  *--top = reinterpret_cast<uint64_t>(&fiber_main);        // popped by tally_emu_switch's ret
  for (int r = 0; r < 6; ++r) *--top = 0;                  // rbp, rbx, r12-r15
  f.sp = top;
  f.waiting = nullptr;
  f.done = false;
  f.asan_fake_stack = nullptr;
}

char* new_stack() {
  void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED || mprotect(p, kGuardBytes, PROT_NONE) != 0) {
    std::fprintf(stderr, "cuda_emu: cannot map a fiber stack of %zu bytes\n", kStackBytes);
    std::abort();
  }
  return static_cast<char*>(p);
}

}  // namespace

void arrive_and_wait(Barrier& b) {
  if (++b.arrived == b.count) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  Fiber& f = *sched.running;
  f.waiting = &b;
  f.generation = b.generation;
  leave(f, /*finished=*/false);
}

void check_whole_warp(const Block& b, int t) {
  const int lanes = std::min(32, b.threads - (t & ~31));
  if (b.warp[size_t(t / 32)].count == lanes) return;
  std::fprintf(stderr, "cuda_emu: a full-mask warp shuffle in block (%u,%u,%u), thread %d, after %d lanes of its warp "
               "returned\n", blockIdx.x, blockIdx.y, blockIdx.z, t, lanes - b.warp[size_t(t / 32)].count);
  std::abort();
}

void run_block(const char* kernel, Block& block, void (*body)(void*), void* ctx) {
  if (sched.running) {
    std::fprintf(stderr, "cuda_emu: %s launched from inside a kernel\n", kernel);
    std::abort();
  }
  const int n = block.threads;
  // A thread that has returned is counted out of its warp (a shuffle after that aborts: check_whole_warp) but stays
  // counted at the block's barrier: a __syncthreads that some threads skip by returning is reported as the hang it
  // may be (the CUDA guide leaves it undefined), as is one they skip by a branch. Counts start whole for each block.
  block.sync = {.count = n};
  for (size_t w = 0; w < block.warp.size(); ++w) block.warp[w] = {.count = std::min(32, n - 32 * int(w))};
  while (int(sched.fibers.size()) < n) sched.fibers.push_back({.stack = new_stack()});
  for (int t = 0; t < n; ++t) start_fiber(sched.fibers[size_t(t)]);
  sched.body = body;
  sched.ctx = ctx;
  current_block = &block;
  for (int left = n; left > 0;) {
    bool progress = false;
    for (int t = 0; t < n; ++t) {
      Fiber& f = sched.fibers[size_t(t)];
      if (f.done || (f.waiting && f.waiting->generation == f.generation)) continue;
      f.waiting = nullptr;
      linear_tid = t;
      threadIdx = {unsigned(t % int(blockDim.x)), unsigned((t / int(blockDim.x)) % int(blockDim.y)),
                   unsigned(t / int(blockDim.x * blockDim.y))};
      enter(f);
      progress = true;
      if (f.done) {
        --left;
        --block.warp[size_t(t / 32)].count;  // lanes already waiting at a shuffle then wait for ever: a hang, reported
      }
    }
    if (!progress) {
      int at_sync = 0;
      for (int t = 0; t < n; ++t) at_sync += !sched.fibers[size_t(t)].done && sched.fibers[size_t(t)].waiting == &block.sync;
      std::fprintf(stderr,
                   "cuda_emu: %s hangs in block (%u,%u,%u): %d of %d threads wait at __syncthreads, %d at warp "
                   "shuffles, %d have returned (a barrier some threads never reach)\n",
                   kernel, blockIdx.x, blockIdx.y, blockIdx.z, at_sync, n, left - at_sync, n - left);
      std::abort();
    }
  }
  current_block = nullptr;
}
}  // namespace tally_emu

namespace {
std::mutex mu;
std::unordered_map<void*, size_t> allocations;
size_t allocated = 0;
constexpr size_t kEmuMemory = size_t(8) << 30;  // the "device" has 8 GiB
}  // namespace

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
cudaError_t cudaGetLastError() { return cudaSuccess; }
// CUDA_EMU_DEVICES devices (1 unless set), all the same host memory: the processes of an emulated multi-GPU run take
// one each (cudaSetDevice(local rank)).
namespace {
int device_count() {
  static const int n = [] {
    const char* v = std::getenv("CUDA_EMU_DEVICES");
    return v && std::atoi(v) > 0 ? std::atoi(v) : 1;
  }();
  return n;
}
thread_local int current_device = 0;
}  // namespace
cudaError_t cudaGetDeviceCount(int* n) {
  *n = device_count();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= device_count()) return cudaErrorInvalidValue;
  current_device = d;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = tally_emu::kStream;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 2;
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  tally_emu::check_stream(s, "cudaMemcpyAsync");
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s) {
  tally_emu::check_stream(s, "cudaMemsetAsync");
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
namespace tally_emu {
namespace {
std::atomic<bool> g_stalled{false};
// A blocking wait on a stalled stream: as on a GPU, forever.
void wait_while_stalled() {
  while (g_stalled.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}
}  // namespace
void set_stream_stalled(bool stalled) { g_stalled.store(stalled); }
}  // namespace tally_emu

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  tally_emu::check_stream(s, "cudaStreamSynchronize");
  tally_emu::wait_while_stalled();
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
  tally_emu::check_stream(s, "cudaStreamQuery");
  return tally_emu::g_stalled.load() ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = reinterpret_cast<cudaEvent_t>(0x3);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t s) {
  tally_emu::check_stream(s, "cudaEventRecord");
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return tally_emu::g_stalled.load() ? cudaErrorNotReady : cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  tally_emu::wait_while_stalled();
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  tally_emu::wait_while_stalled();
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  std::lock_guard<std::mutex> lock(mu);
  *free_b = kEmuMemory - allocated;
  *total_b = kEmuMemory;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof(*p));
  std::strcpy(p->name, "tally CUDA emulator");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 2;
  p->totalGlobalMem = kEmuMemory;
  p->l2CacheSize = 1 << 20;
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu);
  if (bytes > kEmuMemory - allocated) return cudaErrorMemoryAllocation;
  // Poisoned (NaN bytes), so that outputs a kernel forgets to write show up in comparisons.
  void* q = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!q) return cudaErrorMemoryAllocation;
  std::memset(q, 0xFF, (bytes + 255) / 256 * 256);
  allocations[q] = bytes;
  allocated += bytes;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lock(mu);
  auto it = allocations.find(p);
  if (it == allocations.end()) return cudaErrorInvalidValue;
  allocated -= it->second;
  allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

// ---- cuBLAS ----

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(0x2);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t s) {
  tally_emu::check_stream(s, "cublasSetStream");
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void* p, size_t) {
  return p ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
const char* cublasGetStatusName(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}
const char* cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "invalid value"; }

namespace {

double load(const void* p, cudaDataType_t t, long long i) {
  if (t == CUDA_R_16BF) return double(tally::bf16_to_float(static_cast<const tally::bf16*>(p)[i]));
  return t == CUDA_R_32F ? double(static_cast<const float*>(p)[i]) : static_cast<const double*>(p)[i];
}
void store(void* p, cudaDataType_t t, long long i, double v) {
  if (t == CUDA_R_16BF) static_cast<tally::bf16*>(p)[i] = tally::float_to_bf16(float(v));
  else if (t == CUDA_R_32F) static_cast<float*>(p)[i] = float(v);
  else static_cast<double*>(p)[i] = v;
}
size_t element_size(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : t == CUDA_R_32F ? 4 : 8; }
double scalar(const void* p, cublasComputeType_t c) {
  return c == CUBLAS_COMPUTE_64F ? *static_cast<const double*>(p) : double(*static_cast<const float*>(p));
}

bool valid(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb, int ldc,
           cudaDataType_t at, cudaDataType_t bt, cudaDataType_t ct, cublasComputeType_t compute) {
  if (m < 0 || n < 0 || k < 0) return false;
  if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k)) return false;
  if (ldb < std::max(1, tb == CUBLAS_OP_N ? k : n)) return false;
  if (ldc < std::max(1, m)) return false;
  // The combinations tally uses, as cuBLAS allows them: same-type operands; C of their type, or f32 for bf16.
  if (at != bt || (at != ct && !(at == CUDA_R_16BF && ct == CUDA_R_32F))) return false;
  if ((at == CUDA_R_64F) != (compute == CUBLAS_COMPUTE_64F)) return false;
  if (at == CUDA_R_16BF && compute != CUBLAS_COMPUTE_32F) return false;
  return true;
}

// Column-major C (m, n) = alpha op(A) (m, k) op(B) (k, n) + beta C; C is not read when beta == 0.
void gemm_one(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, double alpha, const void* A,
              cudaDataType_t t, int lda, const void* B, int ldb, double beta, void* C, cudaDataType_t ct, int ldc) {
#pragma omp parallel for schedule(static)  // columns are independent: the emulator's one parallel part
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      for (int p = 0; p < k; ++p) {
        double a = ta == CUBLAS_OP_N ? load(A, t, i + (long long)p * lda) : load(A, t, p + (long long)i * lda);
        double b = tb == CUBLAS_OP_N ? load(B, t, p + (long long)j * ldb) : load(B, t, j + (long long)p * ldb);
        acc += a * b;
      }
      long long ci = i + (long long)j * ldc;
      store(C, ct, ci, beta == 0.0 ? alpha * acc : alpha * acc + beta * load(C, ct, ci));
    }
}

}  // namespace

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B, cudaDataType_t bt,
                            int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (!valid(ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, compute)) return CUBLAS_STATUS_INVALID_VALUE;
  gemm_one(ta, tb, m, n, k, scalar(alpha, compute), A, at, lda, B, ldb, scalar(beta, compute), C, ct, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                          const void* alpha, const void* A, cudaDataType_t at, int lda, long long sa,
                                          const void* B, cudaDataType_t bt, int ldb, long long sb, const void* beta, void* C,
                                          cudaDataType_t ct, int ldc, long long sc, int batch, cublasComputeType_t compute,
                                          cublasGemmAlgo_t) {
  if (!valid(ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, compute) || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const size_t es = element_size(at), cs = element_size(ct);
  for (int b = 0; b < batch; ++b)
    gemm_one(ta, tb, m, n, k, scalar(alpha, compute), static_cast<const char*>(A) + b * sa * es, at, lda,
             static_cast<const char*>(B) + b * sb * es, ldb, scalar(beta, compute), static_cast<char*>(C) + b * sc * cs,
             ct, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void* alpha, const void* const A[], cudaDataType_t at, int lda,
                                   const void* const B[], cudaDataType_t bt, int ldb, const void* beta, void* const C[],
                                   cudaDataType_t ct, int ldc, int batch, cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (!valid(ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, compute) || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  for (int b = 0; b < batch; ++b)
    gemm_one(ta, tb, m, n, k, scalar(alpha, compute), A[b], at, lda, B[b], ldb, scalar(beta, compute), C[b], ct, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

// ---- cuBLASLt (see include/cublasLt.h) ----

struct cublasLtMatmulDescOpaque {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  int32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};
struct cublasLtMatrixLayoutOpaque {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};
struct cublasLtMatmulPreferenceOpaque {
  uint64_t workspace = 0;
};

namespace {

template <class V>
cublasStatus_t read_attribute(V* dst, const void* v, size_t bytes) {
  if (!v || bytes != sizeof(V)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(dst, v, sizeof(V));
  return CUBLAS_STATUS_SUCCESS;
}

// The problem's m, n, k when the layouts agree with the operations and each other, as cuBLASLt requires.
bool lt_valid(const cublasLtMatmulDescOpaque& d, const cublasLtMatrixLayoutOpaque& a, const cublasLtMatrixLayoutOpaque& b,
              const cublasLtMatrixLayoutOpaque& c, const cublasLtMatrixLayoutOpaque& dl, int64_t* m, int64_t* n,
              int64_t* k) {
  *m = int64_t(dl.rows), *n = int64_t(dl.cols);
  *k = int64_t(d.transa == CUBLAS_OP_N ? a.cols : a.rows);
  const uint64_t a_rows = d.transa == CUBLAS_OP_N ? uint64_t(*m) : uint64_t(*k);
  const uint64_t b_rows = d.transb == CUBLAS_OP_N ? uint64_t(*k) : uint64_t(*n);
  const uint64_t b_cols = d.transb == CUBLAS_OP_N ? uint64_t(*n) : uint64_t(*k);
  if (a.rows != a_rows || b.rows != b_rows || b.cols != b_cols) return false;
  if (c.rows != dl.rows || c.cols != dl.cols || c.type != dl.type || c.ld != dl.ld) return false;
  for (const cublasLtMatrixLayoutOpaque* l : {&a, &b, &dl})
    if (l->ld < std::max<int64_t>(1, int64_t(l->rows))) return false;
  if (a.type != b.type || a.type != dl.type || d.scale != CUDA_R_32F) return false;
  if (a.type == CUDA_R_16BF && d.compute != CUBLAS_COMPUTE_32F) return false;
  if (a.type == CUDA_R_32F && d.compute != CUBLAS_COMPUTE_32F && d.compute != CUBLAS_COMPUTE_32F_FAST_TF32) return false;
  if (a.type == CUDA_R_64F) return false;  // tally never asks: double goes through cublasGemmEx
  switch (d.epilogue) {
    case CUBLASLT_EPILOGUE_DEFAULT: return true;
    case CUBLASLT_EPILOGUE_BIAS:
    case CUBLASLT_EPILOGUE_BGRADB: return d.bias != nullptr;
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: return d.bias && d.aux && d.aux_ld % 8 == 0 && d.aux_ld >= *m;
    default: return false;
  }
}

double gelu_tanh(double v) { return 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  *h = reinterpret_cast<cublasLtHandle_t>(0x3);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  *d = new cublasLtMatmulDescOpaque{compute, scale};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete d;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void* v,
                                              size_t bytes) {
  switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA: {
      int32_t t;
      if (read_attribute(&t, v, bytes) != CUBLAS_STATUS_SUCCESS) return CUBLAS_STATUS_INVALID_VALUE;
      d->transa = cublasOperation_t(t);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_TRANSB: {
      int32_t t;
      if (read_attribute(&t, v, bytes) != CUBLAS_STATUS_SUCCESS) return CUBLAS_STATUS_INVALID_VALUE;
      d->transb = cublasOperation_t(t);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
      uint32_t e;
      if (read_attribute(&e, v, bytes) != CUBLAS_STATUS_SUCCESS) return CUBLAS_STATUS_INVALID_VALUE;
      d->epilogue = int32_t(e);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return read_attribute(&d->bias, v, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return read_attribute(&d->aux, v, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return read_attribute(&d->aux_ld, v, bytes);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  *l = new cublasLtMatrixLayoutOpaque{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete l;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = new cublasLtMatmulPreferenceOpaque;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a,
                                                    const void* v, size_t bytes) {
  if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return read_attribute(&p->workspace, v, bytes);
  uint32_t align;
  return read_attribute(&align, v, bytes);
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t dl, cublasLtMatmulPreference_t,
                                              int requested, cublasLtMatmulHeuristicResult_t results[],
                                              int* returned) {
  int64_t m, n, k;
  if (requested < 1 || !lt_valid(*d, *a, *b, *c, *dl, &m, &n, &k)) return CUBLAS_STATUS_INVALID_VALUE;
  results[0] = {};
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void* alpha_p, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta_p,
                              const void* C, cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  tally_emu::check_stream(stream, "cublasLtMatmul");
  int64_t m, n, k;
  if (!algo || !lt_valid(*d, *a, *b, *c, *dl, &m, &n, &k) || (workspace_bytes > 0 && !workspace))
    return CUBLAS_STATUS_INVALID_VALUE;
  const double alpha = *static_cast<const float*>(alpha_p), beta = *static_cast<const float*>(beta_p);
  const cudaDataType_t t = a->type;
  auto op_a = [&](int64_t i, int64_t p) {  // op(A) (m, k)
    return d->transa == CUBLAS_OP_N ? load(A, t, i + p * a->ld) : load(A, t, p + i * a->ld);
  };
  auto op_b = [&](int64_t p, int64_t j) {  // op(B) (k, n)
    return d->transb == CUBLAS_OP_N ? load(B, t, p + j * b->ld) : load(B, t, j + p * b->ld);
  };
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p) acc += op_a(i, p) * op_b(p, j);
      double v = alpha * acc + (beta == 0.0 ? 0.0 : beta * load(C, t, i + j * c->ld));
      if (d->epilogue == CUBLASLT_EPILOGUE_BIAS || d->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS)
        v += load(d->bias, t, i);  // along D's rows
      if (d->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
        store(d->aux, t, i + j * d->aux_ld, v);
        v = gelu_tanh(v);
      }
      store(D, t, i + j * dl->ld, v);
    }
  if (d->epilogue == CUBLASLT_EPILOGUE_BGRADB)  // along D's columns: op(B)'s columns summed over k
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < k; ++p) sum += op_b(p, j);
      store(const_cast<void*>(d->bias), t, j, sum);
    }
  return CUBLAS_STATUS_SUCCESS;
}
