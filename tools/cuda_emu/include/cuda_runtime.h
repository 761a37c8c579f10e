// CUDA emulation on the CPU, for checking the CUDA backend's logic on a machine without a GPU (developer tool,
// scripts/cuda_emulate.sh; never part of the product or CI). Stands in for <cuda_runtime.h>: "device" memory
// is host memory, a kernel launch runs every block in turn with one fiber per CUDA thread (switched only where
// the threads must meet), so that __syncthreads (a barrier of the block's fibers), warp shuffles (a per-warp
// exchange at a warp barrier) and __shared__ (static storage, private to the one block running) behave as on a
// GPU. Slow (every CUDA thread runs in turn on one core; cuBLAS's stand-ins use OpenMP); for small sizes. It checks
// indexing, reductions and API use (launch shapes; every launch, copy, memset and cuBLAS call on tally's one
// stream), not timing, the memory model or real cuBLAS.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
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
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
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

// constinit: read directly, without a call to a thread-local initialiser at every use.
extern constinit thread_local uint3 threadIdx;
extern constinit thread_local uint3 blockIdx;
extern constinit thread_local dim3 blockDim;
extern constinit thread_local dim3 gridDim;

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
cudaError_t cudaStreamQuery(cudaStream_t s);
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

// A barrier among `count` threads of the block being run (__syncthreads: all of them; a shuffle: one warp).
struct Barrier {
  int count = 0, arrived = 0;
  uint64_t generation = 0;  // bumped each time the last thread arrives, which lets the waiting ones go on
};

// Per-launch state shared by the threads of the block being run.
struct Block {
  int threads = 0;
  Barrier sync;                 // __syncthreads
  std::vector<Barrier> warp;    // one per warp, for shuffles
  std::vector<uint64_t> exchange;  // two slots per thread, for shuffles
};
extern constinit thread_local Block* current_block;
extern constinit thread_local int linear_tid;

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

// A stream whose work never ends, as a GPU's stays busy in a collective whose peer has stopped (the NCCL stand-in's
// injected faults): while stalled, cudaStreamQuery and cudaEventQuery answer cudaErrorNotReady and the blocking
// waits never return. The launches themselves still run at once (nothing else depends on the stall).
void set_stream_stalled(bool stalled);

// The calling CUDA thread waits at `b` until all the threads it counts have arrived: its fiber gives way to the
// block's others (the last to arrive goes on at once).
void arrive_and_wait(Barrier& b);

// Aborts when a lane of thread t's warp has returned: a full-mask shuffle then reads a lane that is gone.
void check_whole_warp(const Block& b, int t);

// Runs body(ctx) as every thread of the block blockIdx, each thread a fiber on the calling host thread, switched
// only at barriers; aborts, naming the kernel and the block, when the threads wait at barriers that can never all be
// reached (a __syncthreads or full-mask shuffle that some threads skip, by a branch or by returning).
void run_block(const char* kernel, Block& block, void (*body)(void*), void* ctx);

// Runs kernel(args...) for every thread of every block, block after block.
template <class Kernel, class... Args>
void launch(const char* name, const Config& c, Kernel kernel, Args... args) {
  check_config(name, c);
  const int threads = int(c.block.x * c.block.y * c.block.z);
  Block block;  // its barriers' counts are set by run_block for each block
  block.threads = threads;
  block.warp.resize(size_t(threads + 31) / 32);
  block.exchange.assign(2 * size_t(threads), 0);
  blockDim = c.block;
  gridDim = c.grid;
  auto call = [&] { kernel(args...); };
  for (unsigned bz = 0; bz < c.grid.z; ++bz)
    for (unsigned by = 0; by < c.grid.y; ++by)
      for (unsigned bx = 0; bx < c.grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        run_block(name, block, [](void* f) { (*static_cast<decltype(call)*>(f))(); }, &call);
      }
}

}  // namespace tally_emu

inline void __syncthreads() { tally_emu::arrive_and_wait(tally_emu::current_block->sync); }

// Reads lane `src(lane)` of this warp's values (all 32 lanes take part, as a full-mask shuffle). The exchange has
// two halves, used by turns: a lane can write its next value only after every lane of its warp has arrived at that
// next shuffle, so after all have read this one.
template <class T, class Src>
T tally_emu_shuffle(T v, Src src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  tally_emu::Block& b = *tally_emu::current_block;
  const int t = tally_emu::linear_tid, base = t & ~31, lane = t & 31;
  tally_emu::check_whole_warp(b, t);
  tally_emu::Barrier& warp = b.warp[size_t(t / 32)];
  const size_t half = size_t(warp.generation & 1) * size_t(b.threads);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  b.exchange[half + size_t(t)] = bits;
  tally_emu::arrive_and_wait(warp);
  const uint64_t other = b.exchange[half + size_t(base + src(lane))];
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
  return tally_emu_shuffle(v, [lane_mask](int lane) { return lane ^ (lane_mask & 31); });
}
