// Model tensors from metadata alone: safetensors headers, sharded indexes, JSON shape lists (see model_shapes.h).
#include "train/model_shapes.h"

#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/io/file.h"
#include "core/io/safetensors.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace tally::train {

namespace {

// Element size of a safetensors dtype name; 0 when unknown.
size_t element_size(const std::string& dtype) {
  if (auto t = io::safe_dtype_from_name(dtype)) return io::safe_dtype_size(*t);
  return 0;
}

// A dtype as a shape list may write it: safetensors' spelling, or torch's ("float32", "torch.bfloat16", "half").
std::optional<std::string> safetensors_dtype(std::string name) {
  if (io::safe_dtype_from_name(name)) return name;
  if (name.starts_with("torch.")) name = name.substr(6);
  static const std::map<std::string, std::string> torch_names = {
      {"float32", "F32"}, {"float", "F32"},   {"bfloat16", "BF16"}, {"float16", "F16"}, {"half", "F16"},
      {"float64", "F64"}, {"double", "F64"},  {"int64", "I64"},     {"long", "I64"},    {"int32", "I32"},
      {"int", "I32"},     {"int16", "I16"},   {"short", "I16"},     {"int8", "I8"},     {"uint8", "U8"},
      {"bool", "BOOL"},   {"float8_e4m3fn", "F8_E4M3"}, {"float8_e5m2", "F8_E5M2"}, {"complex64", "C64"},
  };
  if (auto it = torch_names.find(name); it != torch_names.end()) return it->second;
  return std::nullopt;
}

std::string shape_json(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A shape whose element count and f64 bytes fit in int64, so every later product is safe.
void check_size(const std::string& where, const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n) || n > std::numeric_limits<int64_t>::max() / 8)
      fail(where, "shape ", shape_json(shape), " has more elements than tally can count");
}

// Ordered JSON: a shape list and an index keep the file's order.
using ordered_json = nlohmann::ordered_json;

ordered_json parse_json_file(const fs::path& path, const char* what) {
  const std::string text = io::read_file_text(path);  // names the file when missing or unreadable
  try {
    return ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("[shapes] '", path.string(), "': the ", what, " is not valid JSON: ", e.what());
  }
}

std::vector<ModelTensor> from_header(const io::SafetensorsHeader& h) {
  std::vector<ModelTensor> out;
  for (const io::SafetensorsEntry& e : h.tensors) {
    check_size(cat("[shapes] '", h.source, "': tensor '", e.name, "': "), e.shape);
    out.push_back({.name = e.name, .shape = e.shape, .dtype = io::safe_dtype_name(e.dtype)});
  }
  return out;
}

ModelShapes read_shape_list(const fs::path& path, const ordered_json& doc) {
  ModelShapes m{.source = path.string(), .format = "shape list"};
  const std::string where = cat("[shapes] '", m.source, "': ");
  const ordered_json* list = &doc;
  if (doc.is_object()) {
    auto it = doc.find("tensors");
    if (it == doc.end())
      fail(where, "expected a JSON array of {\"name\", \"shape\"} objects, an object with such a \"tensors\" array, ",
           "or a sharded checkpoint's index with a \"weight_map\"; found an object with neither");
    list = &*it;
    if (auto d = doc.find("description"); d != doc.end() && d->is_string()) m.description = d->get<std::string>();
  }
  if (!list->is_array())
    fail(where, "the tensors must be a JSON array of {\"name\", \"shape\"} objects, found a JSON ", list->type_name());
  std::set<std::string> seen;
  for (size_t i = 0; i < list->size(); ++i) {
    const ordered_json& e = (*list)[i];
    const std::string at = cat(where, "entry ", i, ": ");
    if (!e.is_object()) fail(at, "expected an object {\"name\", \"shape\"}, found a JSON ", e.type_name());
    auto name = e.find("name");
    if (name == e.end() || !name->is_string() || name->get<std::string>().empty())
      fail(at, "\"name\" must be a non-empty string");
    ModelTensor t{.name = name->get<std::string>()};
    const std::string tw = cat(where, "tensor '", t.name, "' (entry ", i, "): ");
    if (!seen.insert(t.name).second) fail(tw, "the name appears twice");
    auto shape = e.find("shape");
    if (shape == e.end() || !shape->is_array()) fail(tw, "\"shape\" must be an array of dims, such as [768, 3072]");
    for (const ordered_json& d : *shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        fail(tw, "shape ", shape->dump(), " must hold non-negative integers");
      t.shape.push_back(d.get<int64_t>());
    }
    check_size(tw, t.shape);
    if (auto dt = e.find("dtype"); dt != e.end()) {
      if (!dt->is_string()) fail(tw, "\"dtype\" must be a string such as \"F32\" or \"bfloat16\"");
      auto known = safetensors_dtype(dt->get<std::string>());
      if (!known)
        fail(tw, "unknown dtype \"", dt->get<std::string>(), "\" (safetensors' F32, BF16, F16, F64, I64, ... or ",
             "torch's float32, bfloat16, float16, ...)");
      t.dtype = *known;
    }
    m.tensors.push_back(std::move(t));
  }
  return m;
}

ModelShapes read_index(const fs::path& path, const ordered_json& doc) {
  ModelShapes m{.source = path.string()};
  const std::string where = cat("[shapes] '", m.source, "': ");
  const ordered_json& map = doc.at("weight_map");
  if (!map.is_object()) fail(where, "\"weight_map\" must be an object {tensor name: shard file}");
  // The shards in the order the weight map first names them; each header read once.
  std::vector<std::string> shards;
  std::map<std::string, io::SafetensorsHeader> headers;
  for (const auto& [name, file] : map.items()) {
    if (!file.is_string())
      fail(where, "tensor '", name, "': its shard must be a file name, found a JSON ", file.type_name());
    const std::string shard = file.get<std::string>();
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos)
      fail(where, "tensor '", name, "': shard '", shard, "' is not a file name in the index's directory");
    if (headers.count(shard)) continue;
    const fs::path shard_path = path.parent_path() / shard;
    std::error_code ec;
    if (!fs::exists(shard_path, ec))
      fail(where, "shard '", shard, "' (of tensor '", name, "') is not in ",
           path.parent_path().empty() ? std::string(".") : path.parent_path().string());
    headers.emplace(shard, io::read_safetensors_header(shard_path));
    shards.push_back(shard);
  }
  std::map<std::pair<std::string, std::string>, const io::SafetensorsEntry*> entries;  // (shard, tensor name)
  for (const auto& [shard, h] : headers)
    for (const io::SafetensorsEntry& e : h.tensors) entries.emplace(std::pair(shard, e.name), &e);
  for (const auto& [name, file] : map.items()) {
    const std::string shard = file.get<std::string>();
    const io::SafetensorsHeader& h = headers.at(shard);
    auto it = entries.find({shard, name});
    if (it == entries.end())
      fail(where, "the weight map puts tensor '", name, "' in shard '", shard, "', which does not hold it");
    const io::SafetensorsEntry* e = it->second;
    check_size(cat("[shapes] '", h.source, "': tensor '", name, "': "), e->shape);
    m.tensors.push_back({.name = name, .shape = e->shape, .dtype = io::safe_dtype_name(e->dtype)});
  }
  m.format = cat("safetensors index (", shards.size(), shards.size() == 1 ? " shard)" : " shards)");
  return m;
}

}  // namespace

bool ModelTensor::trained() const {
  return dtype.empty() || dtype == "F64" || dtype == "F32" || dtype == "F16" || dtype == "BF16" ||
         dtype.starts_with("F8_");
}

int64_t ModelTensor::stored_bytes() const { return numel(shape) * int64_t(element_size(dtype)); }

// A tally checkpoint's model.safetensors stores the embedding padded to a multiple of 128 rows (GPT-2's 50,257 as
// 50,304), and training keeps no state for the padding: its rows are left out, the vocabulary read from the
// checkpoint's state.json (the shapes a plan of the model itself uses, as `tally memory --model` and inspect count).
void drop_padding_rows(ModelShapes& m, const io::SafetensorsHeader& h, const fs::path& path) {
  const auto format = h.metadata.find("format");
  if (format == h.metadata.end() || format->second != kCheckpointFormat) return;
  const fs::path state = path.parent_path() / "state.json";
  int64_t vocab = -1;
  try {
    const ordered_json s = parse_json_file(state, "checkpoint state");
    vocab = s.at("model_config").at("vocab_size").get<int64_t>();
  } catch (const std::exception&) {
    return;  // no state beside it: the tensors as stored
  }
  for (ModelTensor& t : m.tensors)
    if (t.name == "transformer.wte.weight" && !t.shape.empty() && vocab > 0 && t.shape[0] > vocab) {
      m.format = cat("safetensors header of a tally checkpoint (wte's ", t.shape[0] - vocab,
                     " padding rows left out: training keeps no state for them)");
      t.shape[0] = vocab;
    }
}

ModelShapes read_model_shapes(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("[shapes] '", path.string(), "': no such file");
  if (fs::is_directory(path, ec))
    fail("[shapes] '", path.string(), "' is a directory: give its model.safetensors, its ",
         "model.safetensors.index.json, or a shape list");
  ModelShapes m;
  if (path.extension() == ".json") {
    const ordered_json doc = parse_json_file(path, "file");
    m = doc.is_object() && doc.contains("weight_map") ? read_index(path, doc) : read_shape_list(path, doc);
  } else {
    const io::SafetensorsHeader h = io::read_safetensors_header(path);
    m = {.source = path.string(), .format = "safetensors header", .tensors = from_header(h)};
    drop_padding_rows(m, h, path);
  }
  if (m.tensors.empty()) fail("[shapes] '", m.source, "' lists no tensors");
  return m;
}

}  // namespace tally::train
