// Named tensors to and from .safetensors (see tensor_file.h).
#include "core/io/tensor_file.h"

#include <cstring>
#include <set>

#include "core/autograd/node.h"
#include "core/io/safetensors.h"

namespace tally::io {

void save_tensors(const std::filesystem::path& path, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata) {
  NoGradGuard no_grad;
  std::vector<Tensor> host;  // keeps the host copies alive while writing
  std::vector<SafetensorsTensor> entries;
  std::set<std::string> seen;
  host.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    TALLY_CHECK(t.defined(), "[save_tensors] '", path.string(), "': tensor '", name, "' is undefined");
    TALLY_CHECK(seen.insert(name).second, "[save_tensors] '", path.string(), "': duplicate tensor name '", name, "'");
    TALLY_CHECK(!t.device().is_meta(), "[save_tensors] '", path.string(), "': tensor '", name, "' is on the meta device");
    MemoryScope scope(Category::workspace, "save_tensors");
    host.push_back(t.to(Device::cpu()).contiguous());
  }
  for (size_t i = 0; i < tensors.size(); ++i)
    entries.push_back({tensors[i].first, to_safe_dtype(host[i].dtype()), host[i].shape(), host[i].data_ptr()});
  write_safetensors(path, entries, {.metadata = metadata});
}

const Tensor& find_tensor(const NamedTensors& tensors, const std::string& name, const std::string& where) {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  fail("'", where, "' has no tensor named '", name, "'");
}

void require_no_other_tensors(const NamedTensors& tensors, const std::set<std::string>& expected,
                              const std::string& context, const std::string& file, const std::string& described_by) {
  for (const auto& [name, t] : tensors)
    TALLY_CHECK(expected.count(name), context, "'", file, "' holds tensor '", name, "', which ", described_by,
                " has no place for: the two disagree");
}

const Tensor& LoadedTensors::at(const std::string& name) const { return find_tensor(tensors, name, source); }

LoadedTensors load_tensors(const std::filesystem::path& path) {
  SafetensorsReader reader(path);
  LoadedTensors out;
  out.source = path.string();
  out.metadata = reader.metadata();
  for (const SafetensorsEntry& e : reader.tensors()) {
    std::optional<DType> dt = to_tally_dtype(e.dtype);
    TALLY_CHECK(dt.has_value(), "[load_tensors] '", path.string(), "': tensor '", e.name, "' has dtype ",
                safe_dtype_name(e.dtype), ", which tally does not hold");
    Tensor t = empty(e.shape, {.dtype = *dt});
    if (!e.bytes.empty()) std::memcpy(t.data_ptr(), e.bytes.data(), e.bytes.size());
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace tally::io
