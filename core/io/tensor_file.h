// Named tensors <-> .safetensors files, dtype kept (f32, f64, bf16, i32, i64, u16, u8). Tensors on any device
// are copied to the host for writing; reading yields contiguous CPU tensors (allocated under the current
// MemoryScope). Used by tally checkpoints, `tally inspect`, and tests loading golden data.
#pragma once
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace tally::io {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// The tensor called `name`; throws naming `where` (a file, a checkpoint) when absent.
const Tensor& find_tensor(const NamedTensors& tensors, const std::string& name, const std::string& where);

// Throws naming the first tensor of `tensors` that `expected` lacks: "<context>'<file>' holds tensor 'x', which
// <described_by> has no place for: the two disagree" (context: e.g. "--resume 'DIR': checkpoint ").
void require_no_other_tensors(const NamedTensors& tensors, const std::set<std::string>& expected,
                              const std::string& context, const std::string& file, const std::string& described_by);

// Writes atomically (temp file + fsync + rename). Names must be unique. The file orders tensors as Python's
// safetensors does (by dtype size, then name), so read them back by name, not by position.
void save_tensors(const std::filesystem::path& path, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata = {});

struct LoadedTensors {
  NamedTensors tensors;  // in file order
  std::map<std::string, std::string, std::less<>> metadata;
  // The tensor called `name`; throws naming the file when absent.
  const Tensor& at(const std::string& name) const;
  std::string source;
};

LoadedTensors load_tensors(const std::filesystem::path& path);

}  // namespace tally::io
