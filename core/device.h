// Where a tensor lives: the CPU, a CUDA device, or "meta" (shapes and ledger only, no memory: used to
// predict a step's memory exactly by running it without computing anything).
#pragma once
#include <cstdint>
#include <string>

namespace tally {

enum class DeviceKind : uint8_t { cpu, cuda, meta };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  // A meta device's backend: whose allocations a run on it reproduces (each kernel's workspace, the allocator's
  // rounding), so that a plan made on it equals what that backend measures. cpu or cuda; ignored elsewhere.
  DeviceKind plans = DeviceKind::cpu;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int i = 0) { return {DeviceKind::cuda, i}; }
  static Device meta(DeviceKind plans_for = DeviceKind::cpu) { return {DeviceKind::meta, 0, plans_for}; }
  static Device parse(const std::string& s);  // "cpu", "cuda", "cuda:1", "meta", "meta:cuda"

  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  bool is_meta() const { return kind == DeviceKind::meta; }
  // The backend whose kernels this device's tensors follow: cpu or cuda (for a meta device, the one it plans for).
  DeviceKind backend() const { return kind == DeviceKind::meta ? plans : kind; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

// True when the CUDA backend was built and a device is present.
bool cuda_available();
int cuda_device_count();

}  // namespace tally
