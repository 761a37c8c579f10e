// Device parsing and printing; CUDA presence when the backend is not built.
#include "core/device.h"

#include <string>

#include "core/error.h"

namespace tally {

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "meta") return meta();
  if (s == "meta:cuda") return meta(DeviceKind::cuda);
  if (s == "cuda") return cuda(0);
  // "cuda:N": N in decimal digits only (no sign, no space), small enough for an int.
  if (const std::string n = s.rfind("cuda:", 0) == 0 ? s.substr(5) : "";
      !n.empty() && n.size() <= 6 && n.find_first_not_of("0123456789") == std::string::npos)
    return cuda(std::stoi(n));
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
