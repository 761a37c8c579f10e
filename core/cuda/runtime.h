// The few CUDA runtime services the device-independent code needs (implemented in core/cuda/runtime.cu).
// Declared here so that core/*.cpp never includes CUDA headers; only compiled into calls with TALLY_HAS_CUDA.
#pragma once
#include <cstdint>

namespace tally::cuda {

void memcpy_host_to_device(void* dst, const void* src, int64_t bytes);
void memcpy_device_to_host(void* dst, const void* src, int64_t bytes);
void memcpy_device_to_device(void* dst, const void* src, int64_t bytes);
void synchronize();                      // waits for the device's work; throws on an earlier async error
void set_device(int index);
void memory_info(int64_t* free_bytes, int64_t* total_bytes);  // cudaMemGetInfo

}  // namespace tally::cuda
