// CUDA emulation on the CPU, for checking the CUDA backend's logic on a machine without a GPU (developer tool,
// scripts/cuda_emulate.sh; never part of the product or CI). Stands in for <cuda_runtime.h>: "device" memory
// is host memory, a kernel launch runs every block in turn with one std::thread per CUDA thread, so that
// __syncthreads (a std::barrier), warp shuffles (a per-warp exchange) and __shared__ (static storage, private
// to the one block running) behave as on a GPU. Slow; for small sizes. It checks indexing, reductions and API
// use (launch shapes; every launch, copy, memset and cuBLAS call on tally's one stream), not timing, the
// memory model or real cuBLAS.
#pragma once
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using std::exp;
using std::fma;
using std::fmax;
using std::log;
using std::pow;
using std::sqrt;
using std::tanh;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

using cudaStream_t = struct CUstream_st*;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorNoDevice = 100,
  cudaErrorNotReady = 600
};
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
constexpr unsigned cudaStreamDefault = 0;

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  size_t totalGlobalMem;
  int l2CacheSize;
};

const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int device);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
// Pinned host memory and events: plain host memory, and events that are always complete (every launch and copy has
// finished when its call returns).
constexpr unsigned cudaHostAllocDefault = 0;
constexpr unsigned cudaEventDisableTiming = 2;
using cudaEvent_t = struct CUevent_st*;
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);

inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

namespace tally_emu {

// Per-launch state shared by the threads of the block being run.
struct Block {
  int threads = 0;
  std::unique_ptr<std::barrier<>> sync;               // __syncthreads
  std::vector<std::unique_ptr<std::barrier<>>> warp;  // one per warp, for shuffles
  std::vector<uint64_t> exchange;                     // one slot per thread
};
extern thread_local Block* current_block;
extern thread_local int linear_tid;

struct Config {
  dim3 grid, block;
  size_t smem = 0;
  cudaStream_t stream = nullptr;
  Config(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), smem(s), stream(st) {}
};

// Aborts, naming the kernel, on a grid or block the GPU would refuse, or a launch on the legacy default stream.
void check_config(const char* kernel, const Config& c);
// Aborts unless `s` is a stream made by cudaStreamCreateWithFlags: tally runs all its device work on its own stream
// (tally::cuda::stream()), so work on the legacy default stream (a null stream) is a bug. `what` names the call.
void check_stream(cudaStream_t s, const char* what);

// Runs kernel(args...) for every thread of every block, block after block.
template <class Kernel, class... Args>
void launch(const char* name, const Config& c, Kernel kernel, Args... args) {
  check_config(name, c);
  const int threads = int(c.block.x * c.block.y * c.block.z);
  Block block;
  block.threads = threads;
  block.sync = std::make_unique<std::barrier<>>(threads);
  const int warps = (threads + 31) / 32;
  for (int w = 0; w < warps; ++w) block.warp.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
  block.exchange.assign(size_t(threads), 0);
  std::vector<std::thread> pool;
  pool.reserve(size_t(threads));
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      current_block = &block;
      linear_tid = t;
      blockDim = c.block;
      gridDim = c.grid;
      threadIdx = {unsigned(t % int(c.block.x)), unsigned((t / int(c.block.x)) % int(c.block.y)),
                   unsigned(t / int(c.block.x * c.block.y))};
      for (unsigned bz = 0; bz < c.grid.z; ++bz)
        for (unsigned by = 0; by < c.grid.y; ++by)
          for (unsigned bx = 0; bx < c.grid.x; ++bx) {
            blockIdx = {bx, by, bz};
            kernel(args...);
            block.sync->arrive_and_wait();  // the block ends: __shared__ storage may be reused
          }
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace tally_emu

inline void __syncthreads() { tally_emu::current_block->sync->arrive_and_wait(); }

// Reads lane `src(lane)` of this warp's values (all 32 lanes take part, as a full-mask shuffle).
template <class T, class Src>
T tally_emu_shuffle(T v, Src src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  tally_emu::Block& b = *tally_emu::current_block;
  const int t = tally_emu::linear_tid, base = t & ~31, lane = t & 31;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  b.exchange[size_t(t)] = bits;
  b.warp[size_t(t / 32)]->arrive_and_wait();
  uint64_t other = b.exchange[size_t(base + src(lane))];
  b.warp[size_t(t / 32)]->arrive_and_wait();
  T r;
  std::memcpy(&r, &other, sizeof(T));
  return r;
}

// Lanes whose source would pass lane 31 keep their own value, as on the GPU.
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta) {
  return tally_emu_shuffle(v, [delta](int lane) { return lane + int(delta) < 32 ? lane + int(delta) : lane; });
}

template <class T>
T __shfl_sync(unsigned, T v, int src_lane) {
  return tally_emu_shuffle(v, [src_lane](int) { return src_lane & 31; });
}

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  tally_emu::Block& b = *tally_emu::current_block;
  const int t = tally_emu::linear_tid, base = t & ~31, lane = t & 31;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  b.exchange[size_t(t)] = bits;
  b.warp[size_t(t / 32)]->arrive_and_wait();
  uint64_t other = b.exchange[size_t(base + (lane ^ lane_mask))];
  b.warp[size_t(t / 32)]->arrive_and_wait();
  T r;
  std::memcpy(&r, &other, sizeof(T));
  return r;
}
