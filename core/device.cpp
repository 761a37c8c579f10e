// Device parsing and printing; CUDA presence when the backend is not built.
#include "core/device.h"

#include <cstdlib>

#include "core/error.h"

namespace tally {

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "meta") return meta();
  if (s == "meta:cuda") return meta(DeviceKind::cuda);
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    char* end = nullptr;
    long i = std::strtol(s.c_str() + 5, &end, 10);
    if (end && *end == '\0' && s.size() > 5 && i >= 0) return cuda(int(i));
  }
  fail("unknown device '", s, "' (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const {
  switch (kind) {
    case DeviceKind::cpu: return "cpu";
    case DeviceKind::meta: return plans == DeviceKind::cuda ? "meta:cuda" : "meta";
    case DeviceKind::cuda: return "cuda:" + std::to_string(index);
  }
  return "?";
}

#ifndef TALLY_HAS_CUDA
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
#endif

}  // namespace tally
