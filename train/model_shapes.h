// The tensors of any model known by name, shape and stored dtype alone, read from metadata: nothing of the weights is
// read. Three sources:
//   - a .safetensors file: its 8-byte header length and JSON header only (a multi-gigabyte file costs kilobytes);
//   - a sharded checkpoint's *.safetensors.index.json: its "weight_map", and the header of each shard it names,
//     from the index's own directory;
//   - a shape list: a JSON array of {"name": "h.0.attn.c_attn.weight", "shape": [768, 2304], "dtype": "F32"}
//     ("dtype" optional: safetensors' spelling or torch's, "float32", "torch.bfloat16"), or an object whose
//     "tensors" is that array (its other keys, such as "description", describe the model).
// Every problem (missing file, corrupt header, a bad shape) is a tally::Error naming the file and the tensor.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/shape.h"

namespace tally::train {

struct ModelTensor {
  std::string name = {};
  Shape shape = {};
  std::string dtype = {};  // as stored, in safetensors' spelling ("F32", "BF16", "I64"); "" when a list gives none
  // A tensor that training updates: a floating-point one (or one of unknown dtype). Integer and boolean tensors
  // (position ids, masks) are buffers, not parameters.
  bool trained() const;
  int64_t stored_bytes() const;  // numel * the stored element size; 0 when the dtype is unknown
};

struct ModelShapes {
  std::string source = {};       // the file read
  std::string format = {};       // "safetensors header", "safetensors index (2 shards)", "shape list"
  std::string description = {};  // a shape list's "description", else ""
  std::vector<ModelTensor> tensors = {};  // in the file's order (a safetensors file: data order)
};

// Reads FILE by its name: *.json is an index (when it has a "weight_map") or a shape list; anything else is read
// as a safetensors file.
ModelShapes read_model_shapes(const std::filesystem::path& path);

}  // namespace tally::train
