// GPT-2 <-> .safetensors in Hugging Face naming: name normalisation (prefix, buffers, tied head), configuration
// inference (shapes, metadata, config.json), Conv1D transposes, and export.
#include "models/safetensors_gpt2.h"

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/io/safetensors.h"
#include "models/checkpoint_common.h"

namespace tally::models {

namespace {

constexpr std::string_view kPrefix = "transformer.";

// How a file holds a weight: as tally does, or transposed as Hugging Face's Conv1D holds it, (in, out).
enum class Stored { as_is, conv1d };

// The per-layer tensors of a Hugging Face GPT-2 block, in order: the name, how the file holds it, the block's
// parameter it loads into, and its shape in the file in widths C: (w[0] C) for a vector, (w[0] C, w[1] C) for a matrix.
struct LayerTensor {
  const char* name;
  Stored stored;
  Tensor (*param)(const nn::Block&);
  int64_t w[2];
};
constexpr LayerTensor kLayerTensors[] = {
    {"ln_1.weight", Stored::as_is, [](const nn::Block& b) { return b.ln_1.weight(); }, {1, 0}},
    {"ln_1.bias", Stored::as_is, [](const nn::Block& b) { return b.ln_1.bias(); }, {1, 0}},
    {"attn.c_attn.weight", Stored::conv1d, [](const nn::Block& b) { return b.attn.c_attn.weight(); }, {1, 3}},
    {"attn.c_attn.bias", Stored::as_is, [](const nn::Block& b) { return b.attn.c_attn.bias(); }, {3, 0}},
    {"attn.c_proj.weight", Stored::conv1d, [](const nn::Block& b) { return b.attn.c_proj.weight(); }, {1, 1}},
    {"attn.c_proj.bias", Stored::as_is, [](const nn::Block& b) { return b.attn.c_proj.bias(); }, {1, 0}},
    {"ln_2.weight", Stored::as_is, [](const nn::Block& b) { return b.ln_2.weight(); }, {1, 0}},
    {"ln_2.bias", Stored::as_is, [](const nn::Block& b) { return b.ln_2.bias(); }, {1, 0}},
    {"mlp.c_fc.weight", Stored::conv1d, [](const nn::Block& b) { return b.mlp.c_fc.weight(); }, {1, 4}},
    {"mlp.c_fc.bias", Stored::as_is, [](const nn::Block& b) { return b.mlp.c_fc.bias(); }, {4, 0}},
    {"mlp.c_proj.weight", Stored::conv1d, [](const nn::Block& b) { return b.mlp.c_proj.weight(); }, {4, 1}},
    {"mlp.c_proj.bias", Stored::as_is, [](const nn::Block& b) { return b.mlp.c_proj.bias(); }, {1, 0}},
};
Shape file_shape(const LayerTensor& t, int64_t C) {
  return t.w[1] > 0 ? Shape{t.w[0] * C, t.w[1] * C} : Shape{t.w[0] * C};
}
const char* layout_note(Stored stored) { return stored == Stored::conv1d ? " (Conv1D: (in, out))" : ""; }

bool is_conv1d_weight(std::string_view hf_name) {
  for (const LayerTensor& t : kLayerTensors)
    if (t.stored == Stored::conv1d && hf_name.size() > std::string_view(t.name).size() && hf_name.ends_with(t.name))
      return true;
  return false;
}

// The file's tensors by canonical name (without the "transformer." prefix), buffers dropped, the head set aside.
struct FileIndex {
  std::map<std::string, const io::SafetensorsEntry*> tensors;  // "wte.weight", "h.3.mlp.c_fc.weight", ...
  const io::SafetensorsEntry* lm_head = nullptr;
  int64_t n_layer = 0;
};

FileIndex index_file(const io::SafetensorsReader& r) {
  const std::string where = cat("[safetensors] '", r.source(), "': ");
  FileIndex idx;
  std::set<int64_t> layers;
  for (const io::SafetensorsEntry& e : r.tensors()) {
    std::string_view n = e.name;
    if (n == "lm_head.weight") {
      idx.lm_head = &e;
      continue;
    }
    if (n.starts_with(kPrefix)) n.remove_prefix(kPrefix.size());
    bool known = n == "wte.weight" || n == "wpe.weight" || n == "ln_f.weight" || n == "ln_f.bias";
    if (!known && n.starts_with("h.")) {
      size_t dot = n.find('.', 2);
      std::string_view num = n.substr(2, dot == std::string_view::npos ? 0 : dot - 2);
      bool digits = !num.empty() && num.size() < 6 && num.find_first_not_of("0123456789") == std::string_view::npos;
      if (digits) {
        std::string_view rest = n.substr(dot + 1);
        if (rest == "attn.bias" || rest == "attn.masked_bias") continue;  // causal-mask buffers of older HF versions
        for (const LayerTensor& t : kLayerTensors) known = known || rest == t.name;
        if (known) layers.insert(std::stoll(std::string(num)));
      }
    }
    TALLY_CHECK(known, where, "unexpected tensor '", e.name, "' for a GPT-2 model (expected HF GPT-2 names such as ",
                "transformer.h.0.attn.c_attn.weight)");
    auto [it, inserted] = idx.tensors.emplace(std::string(n), &e);
    TALLY_CHECK(inserted, where, "tensor '", n, "' appears twice (with and without the 'transformer.' prefix)");
  }
  for (const char* n : {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"})
    TALLY_CHECK(idx.tensors.count(n), where, "missing tensor '", n, "' (with or without the 'transformer.' prefix)");
  TALLY_CHECK(!layers.empty(), where, "no transformer blocks (h.0.*) found");
  idx.n_layer = *layers.rbegin() + 1;
  for (int64_t i = 0; i < idx.n_layer; ++i)
    for (const LayerTensor& t : kLayerTensors)
      TALLY_CHECK(idx.tensors.count(cat("h.", i, ".", t.name)), where, "missing tensor 'h.", i, ".", t.name, "' (",
                  idx.n_layer, " layers found)");
  return idx;
}

int64_t known_gpt2_heads(int64_t n_layer, int64_t n_embd) {
  const int64_t table[][3] = {{12, 768, 12}, {24, 1024, 16}, {36, 1280, 20}, {48, 1600, 25}};
  for (const auto& row : table)
    if (row[0] == n_layer && row[1] == n_embd) return row[2];
  return 0;
}

// Hugging Face's config.json beside the weights, checked against what the tensors say: every field that the tensors
// determine must agree with them, and every field that selects an architecture tally does not implement is refused.
// Each error names the field, config.json and both values (or what tally needs instead).
class HfConfigFile {
 public:
  HfConfigFile(const std::filesystem::path& path, std::string weights)
      : path_(path.string()), weights_(std::move(weights)) {
    try {
      j_ = nlohmann::json::parse(io::read_file_text(path));
    } catch (const nlohmann::json::exception& e) {
      fail("[safetensors] '", path_, "': not valid JSON: ", e.what());
    }
    TALLY_CHECK(j_.is_object(), "[safetensors] '", path_, "': expected a JSON object, found a ", j_.type_name());
  }
  const std::string& path() const { return path_; }

  // The integer field `key`, if present (null counts as absent); any other type is an error.
  std::optional<int64_t> integer(const char* key) const {
    if (!j_.contains(key) || j_[key].is_null()) return std::nullopt;
    TALLY_CHECK(j_[key].is_number_integer(), "[safetensors] '", path_, "': ", key, " must be an integer, found ",
                j_[key].dump());
    return j_[key].get<int64_t>();
  }
  std::optional<double> number(const char* key) const {
    if (!j_.contains(key) || j_[key].is_null()) return std::nullopt;
    TALLY_CHECK(j_[key].is_number(), "[safetensors] '", path_, "': ", key, " must be a number, found ", j_[key].dump());
    return j_[key].get<double>();
  }
  // A field the tensors determine: present, it must equal `have`.
  void expect_integer(const char* key, int64_t have, std::string_view what = "has") const {
    if (auto v = integer(key))
      TALLY_CHECK(*v == have, "[safetensors] '", path_, "' says ", key, " = ", *v, " but '", weights_, "' ", what, " ",
                  have);
  }
  // A field that selects an architecture: present, it must be `want`; `why` says what tally implements.
  void expect_value(const char* key, const nlohmann::json& want, std::string_view why) const {
    if (!j_.contains(key) || j_[key] == want) return;
    fail("[safetensors] '", path_, "' says ", key, " = ", j_[key].dump(), " but tally needs ", want.dump(), ": ", why);
  }
  std::optional<std::string> string(const char* key) const {
    if (!j_.contains(key) || j_[key].is_null()) return std::nullopt;
    TALLY_CHECK(j_[key].is_string(), "[safetensors] '", path_, "': ", key, " must be a string, found ", j_[key].dump());
    return j_[key].get<std::string>();
  }

 private:
  std::string path_, weights_;
  nlohmann::json j_;
};

// config_json: Hugging Face's config.json beside the file, if any is to be consulted.
GPT2Config infer_config(const io::SafetensorsReader& r, const FileIndex& idx,
                        const std::optional<std::filesystem::path>& config_json,
                        const SafetensorsImportOptions& options) {
  const std::string where = cat("[safetensors] '", r.source(), "': ");
  const auto& wte = *idx.tensors.at("wte.weight");
  const auto& wpe = *idx.tensors.at("wpe.weight");
  TALLY_CHECK(wte.shape.size() == 2 && wpe.shape.size() == 2 && wte.shape[1] == wpe.shape[1], where,
              "wte ", shape_str(wte.shape), " and wpe ", shape_str(wpe.shape), " must be (V, C) and (maxT, C)");
  GPT2Config c;
  c.n_layer = idx.n_layer;
  c.vocab_size = wte.shape[0];
  c.n_embd = wte.shape[1];
  c.block_size = wpe.shape[0];
  c.padded_vocab_size = padded_vocab(c.vocab_size, options.vocab_multiple);

  // The heads the file's own metadata records (save_safetensors_gpt2 writes them).
  std::optional<int64_t> metadata_heads;
  if (auto it = r.metadata().find("n_head"); it != r.metadata().end()) {
    try {
      size_t used = 0;
      metadata_heads = std::stoll(it->second, &used);
      if (used != it->second.size()) throw std::invalid_argument("trailing characters");
    } catch (const std::exception&) {
      fail(where, "metadata n_head '", it->second, "' is not a number");
    }
  }

  // Its layer-norm epsilon likewise (config.json's, when there is one, wins: as in transformers, it is the model's).
  std::optional<double> metadata_eps;
  if (auto it = r.metadata().find("layer_norm_epsilon"); it != r.metadata().end()) {
    const nlohmann::json v = nlohmann::json::parse(it->second, nullptr, false);
    TALLY_CHECK(v.is_number() && v.get<double>() > 0 && std::isfinite(v.get<double>()), where,
                "metadata layer_norm_epsilon '", it->second, "' is not a positive number");
    metadata_eps = v.get<double>();
    c.ln_eps = *metadata_eps;
  }

  std::optional<int64_t> config_heads;
  std::string config_path;
  if (config_json && std::filesystem::exists(*config_json)) {
    const HfConfigFile hf(*config_json, r.source());
    config_path = hf.path();
    hf.expect_integer("n_layer", c.n_layer);
    hf.expect_integer("n_embd", c.n_embd);
    hf.expect_integer("n_positions", c.block_size);
    hf.expect_integer("vocab_size", c.vocab_size);
    // n_inner (null: 4 * n_embd) is the MLP's width, c_fc's (C, inner) in the file (check_shapes then holds it to
    // tally's 4 * C).
    if (const auto& fc = *idx.tensors.at("h.0.mlp.c_fc.weight"); fc.shape.size() == 2)
      hf.expect_integer("n_inner", fc.shape[1], "has an mlp.c_fc of width");
    config_heads = hf.integer("n_head");
    if (config_heads && metadata_heads)
      TALLY_CHECK(*config_heads == *metadata_heads, "[safetensors] '", hf.path(), "' says n_head = ", *config_heads,
                  " but the metadata of '", r.source(), "' says n_head = ", *metadata_heads);
    if (auto eps = hf.number("layer_norm_epsilon")) {
      TALLY_CHECK(*eps > 0, "[safetensors] '", hf.path(), "': layer_norm_epsilon must be positive, found ", *eps);
      c.ln_eps = *eps;
    }
    // tally has one dropout probability (embeddings and residual branches); a training run sets its own.
    if (auto p = hf.number("resid_pdrop")) {
      TALLY_CHECK(*p >= 0 && *p < 1, "[safetensors] '", hf.path(), "': resid_pdrop must be in [0, 1), found ", *p);
      c.dropout = *p;
    }
    if (auto act = hf.string("activation_function"))
      TALLY_CHECK(*act == "gelu_new" || *act == "gelu_pytorch_tanh" || *act == "gelu_fast", "[safetensors] '",
                  hf.path(), "': activation_function '", *act,
                  "' is not GPT-2's tanh-approximated GELU (gelu_new), the only one tally implements");
    hf.expect_value("model_type", "gpt2", "tally implements GPT-2");
    hf.expect_value("tie_word_embeddings", true, "tally's GPT-2 ties the output head to the token embedding");
    hf.expect_value("scale_attn_weights", true, "tally scales attention scores by 1/sqrt(head size)");
    hf.expect_value("scale_attn_by_inverse_layer_idx", false, "tally does not scale attention by layer");
    hf.expect_value("add_cross_attention", false, "tally's GPT-2 is a decoder without cross-attention");
  }

  int64_t heads = options.n_head;
  std::string source = "the import options";
  if (heads == 0 && metadata_heads) {
    heads = *metadata_heads;
    source = "the file's metadata";
  }
  if (heads == 0 && config_heads) {
    heads = *config_heads;
    source = config_path;
  }
  if (heads == 0) {
    heads = known_gpt2_heads(c.n_layer, c.n_embd);
    source = "the released GPT-2 sizes";
  }
  TALLY_CHECK(heads > 0, where, "cannot tell the number of attention heads of a model with L=", c.n_layer,
              " C=", c.n_embd,
              ": put a Hugging Face config.json (with n_head) beside the file, or give the tally checkpoint directory "
              "the file ",
              "came from");
  TALLY_CHECK(c.n_embd % heads == 0, where, "n_head ", heads, " (from ", source, ") does not divide C=", c.n_embd);
  c.n_head = heads;
  c.validate();
  return c;
}

template <class T>
std::vector<T> read_values(const io::SafetensorsReader& r, const io::SafetensorsEntry& e) {
  if constexpr (std::is_same_v<T, float>)
    return r.read_floats(e.name);
  else
    return r.read_doubles(e.name);
}

template <class T>
void load_all(GPT2& model, const io::SafetensorsReader& r, const FileIndex& idx) {
  const std::string where = cat("[safetensors] '", r.source(), "': ");
  const GPT2Config& c = model.config();
  NoGradGuard no_grad;
  // file tensor -> parameter, with the file's expected shape.
  auto load = [&](const std::string& name, const Tensor& param, Stored stored) {
    const io::SafetensorsEntry& e = *idx.tensors.at(name);
    Shape want = stored == Stored::conv1d ? Shape{param.size(1), param.size(0)} : param.shape();
    TALLY_CHECK(e.shape == want, where, "tensor '", e.name, "' is ", shape_str(e.shape), ", expected ", shape_str(want),
                layout_note(stored));
    std::vector<T> v = read_values<T>(r, e);
    if (stored == Stored::conv1d) v = detail::transposed(v, want[0], want[1]);
    detail::assign_from_host(param, v.data(), dtype_v<T>);
  };
  Tensor wte = model.wte.weight();
  load("wte.weight", wte.slice(0, 0, c.vocab_size), Stored::as_is);
  if (c.padded_vocab_size > c.vocab_size) {
    Tensor pad = wte.slice(0, c.vocab_size, c.padded_vocab_size);
    pad.zero_();
  }
  load("wpe.weight", model.wpe.weight(), Stored::as_is);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const nn::Block& b = *model.h[size_t(i)];
    for (const LayerTensor& t : kLayerTensors) load(cat("h.", i, ".", t.name), t.param(b), t.stored);
  }
  load("ln_f.weight", model.ln_f.weight(), Stored::as_is);
  load("ln_f.bias", model.ln_f.bias(), Stored::as_is);

  if (idx.lm_head) {  // a tied head stored anyway (older exports): it must be wte, value for value
    const io::SafetensorsEntry& head = *idx.lm_head;
    const io::SafetensorsEntry& emb = *idx.tensors.at("wte.weight");
    TALLY_CHECK(head.shape == emb.shape && read_values<T>(r, head) == read_values<T>(r, emb), where,
                "lm_head.weight differs from wte: an untied output head is not supported (tally's GPT-2 ties them)");
  }
}

}  // namespace

namespace {

// Every tensor's shape against the configuration, before a model of that configuration is allocated: the sizes a
// file claims through wte and wpe alone must not make the import allocate more than the file could fill.
void check_shapes(const io::SafetensorsReader& r, const FileIndex& idx, const GPT2Config& c) {
  const int64_t C = c.n_embd;
  auto expect = [&](const std::string& name, const Shape& want, Stored stored) {
    const io::SafetensorsEntry& e = *idx.tensors.at(name);
    TALLY_CHECK(e.shape == want, "[safetensors] '", r.source(), "': tensor '", e.name, "' is ", shape_str(e.shape),
                ", expected ", shape_str(want), layout_note(stored), " for a GPT-2 ", c.str());
  };
  expect("wte.weight", {c.vocab_size, C}, Stored::as_is);
  expect("wpe.weight", {c.block_size, C}, Stored::as_is);
  expect("ln_f.weight", {C}, Stored::as_is);
  expect("ln_f.bias", {C}, Stored::as_is);
  for (int64_t i = 0; i < c.n_layer; ++i)
    for (const LayerTensor& t : kLayerTensors) expect(cat("h.", i, ".", t.name), file_shape(t, C), t.stored);
}

std::unique_ptr<GPT2> load_from_reader(const io::SafetensorsReader& reader,
                                       const std::optional<std::filesystem::path>& config_json,
                                       const SafetensorsImportOptions& options) {
  FileIndex idx = index_file(reader);
  GPT2Config config = infer_config(reader, idx, config_json, options);
  check_shapes(reader, idx, config);
  auto model = std::make_unique<GPT2>(config, GPT2Options{.device = options.device, .dtype = options.dtype,
                                                          .init = Init::none});
  if (model->dtype() == DType::f64)
    load_all<double>(*model, reader, idx);
  else
    load_all<float>(*model, reader, idx);
  return model;
}

}  // namespace

GPT2Config read_safetensors_gpt2_config(const std::filesystem::path& path, const SafetensorsImportOptions& options) {
  io::SafetensorsReader reader(path);
  FileIndex idx = index_file(reader);
  GPT2Config config = infer_config(reader, idx, path.parent_path() / "config.json", options);
  check_shapes(reader, idx, config);
  return config;
}

void load_safetensors_gpt2_into(GPT2& model, const std::filesystem::path& path) {
  io::SafetensorsReader reader(path);
  FileIndex idx = index_file(reader);
  const GPT2Config& c = model.config();
  const auto& wte = *idx.tensors.at("wte.weight");
  const auto& wpe = *idx.tensors.at("wpe.weight");
  const bool fits = idx.n_layer == c.n_layer && wte.shape == Shape({c.vocab_size, c.n_embd}) &&
                    wpe.shape == Shape({c.block_size, c.n_embd});
  TALLY_CHECK(fits,
              "[safetensors] '", reader.source(), "' holds L=", idx.n_layer, " wte ", shape_str(wte.shape), " wpe ",
              shape_str(wpe.shape), " but the model is ", c.str());
  if (model.dtype() == DType::f64)
    load_all<double>(model, reader, idx);
  else
    load_all<float>(model, reader, idx);
}

std::unique_ptr<GPT2> load_safetensors_gpt2(const std::filesystem::path& path, const SafetensorsImportOptions& options) {
  io::SafetensorsReader reader(path);
  return load_from_reader(reader, path.parent_path() / "config.json", options);
}

std::unique_ptr<GPT2> load_safetensors_gpt2_from_memory(std::span<const uint8_t> file, const std::string& name,
                                                        const SafetensorsImportOptions& options) {
  return load_from_reader(io::SafetensorsReader::from_memory(file, name), std::nullopt, options);
}

namespace {

// The values of a parameter as the file's element type T (float, double or bf16).
template <class T>
std::vector<T> file_values(const Tensor& t) {
  if constexpr (std::is_same_v<T, bf16>) {
    std::vector<float> f = detail::values_of<float>(t);
    std::vector<bf16> out(f.size());
    for (size_t i = 0; i < f.size(); ++i) out[i] = float_to_bf16(f[i]);
    return out;
  } else {
    return detail::values_of<T>(t);
  }
}

template <class T>
void save_all(const GPT2& model, const std::filesystem::path& path) {
  const GPT2Config& c = model.config();
  std::vector<std::vector<T>> buffers;
  std::vector<io::SafetensorsTensor> tensors;
  const auto named = model.named_parameters();
  buffers.reserve(named.size());
  for (const auto& [name, p] : named) {
    Tensor src = p.impl() == model.wte.weight().impl() ? p.slice(0, 0, c.vocab_size) : p;  // drop padding rows
    std::vector<T> v = file_values<T>(src);
    std::vector<int64_t> shape = src.shape();
    if (is_conv1d_weight(name)) {
      v = detail::transposed(v, shape[0], shape[1]);
      std::swap(shape[0], shape[1]);
    }
    buffers.push_back(std::move(v));
    tensors.push_back({.name = name, .dtype = io::to_safe_dtype(dtype_v<T>), .shape = shape, .data = buffers.back().data()});
  }
  io::SafetensorsWriteOptions opt;
  opt.metadata = {{"format", "pt"},
                  {"n_layer", std::to_string(c.n_layer)},
                  {"n_head", std::to_string(c.n_head)},
                  {"n_embd", std::to_string(c.n_embd)},
                  {"n_positions", std::to_string(c.block_size)},
                  {"vocab_size", std::to_string(c.vocab_size)},
                  {"layer_norm_epsilon", nlohmann::json(c.ln_eps).dump()}};
  io::write_safetensors(path, tensors, opt);
}
}  // namespace

DType export_dtype(const GPT2& model, ExportDType dtype) {
  switch (dtype) {
    case ExportDType::as_model: return model.dtype() == DType::f64 ? DType::f64 : DType::f32;
    case ExportDType::f32: return DType::f32;
    case ExportDType::bf16: return DType::bf16;
  }
  fail("[safetensors] unknown export dtype");
}

void save_safetensors_gpt2(const GPT2& model, const std::filesystem::path& path,
                           const SafetensorsExportOptions& options) {
  TALLY_CHECK(!model.device().is_meta(), "[safetensors] cannot save '", path.string(),
              "': the model is on the meta device");
  NoGradGuard no_grad;
  switch (export_dtype(model, options.dtype)) {
    case DType::f64: save_all<double>(model, path); break;
    case DType::bf16: save_all<bf16>(model, path); break;
    default: save_all<float>(model, path); break;
  }
}

}  // namespace tally::models
