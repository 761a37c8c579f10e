// GPT-2 <-> .safetensors in Hugging Face naming: name normalisation (prefix, buffers, tied head), configuration
// inference (shapes, metadata, config.json), Conv1D transposes, and export.
#include "models/safetensors_gpt2.h"

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/io/safetensors.h"
#include "models/checkpoint_common.h"

namespace tally::models {

namespace {

constexpr std::string_view kPrefix = "transformer.";

// The per-layer tensors of a Hugging Face GPT-2 block, in order; Conv1D weights are the (in, out) ones.
struct LayerTensor {
  const char* name;
  bool conv1d;
};
constexpr LayerTensor kLayerTensors[] = {
    {"ln_1.weight", false},    {"ln_1.bias", false},      {"attn.c_attn.weight", true}, {"attn.c_attn.bias", false},
    {"attn.c_proj.weight", true}, {"attn.c_proj.bias", false}, {"ln_2.weight", false},     {"ln_2.bias", false},
    {"mlp.c_fc.weight", true}, {"mlp.c_fc.bias", false},   {"mlp.c_proj.weight", true},  {"mlp.c_proj.bias", false},
};

bool is_conv1d_weight(std::string_view hf_name) {
  for (const LayerTensor& t : kLayerTensors)
    if (t.conv1d && hf_name.size() > std::string_view(t.name).size() && hf_name.ends_with(t.name)) return true;
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

  // config.json beside the file (Hugging Face's): heads, epsilon, and a check that it describes these tensors.
  std::optional<nlohmann::json> hf;
  if (config_json && std::filesystem::exists(*config_json)) {
    try {
      hf = nlohmann::json::parse(io::read_file_text(*config_json));
    } catch (const nlohmann::json::exception& e) {
      fail("[safetensors] '", config_json->string(), "': not valid JSON: ", e.what());
    }
    TALLY_CHECK(hf->is_object(), "[safetensors] '", config_json->string(), "': expected a JSON object, found a ",
                hf->type_name());
    auto expect = [&](const char* key, int64_t have) {
      if (hf->contains(key) && (*hf)[key].is_number_integer())
        TALLY_CHECK((*hf)[key].get<int64_t>() == have, "[safetensors] '", config_json->string(), "' says ", key, " = ",
                    (*hf)[key].get<int64_t>(), " but '", r.source(), "' has ", have);
    };
    expect("n_layer", c.n_layer);
    expect("n_embd", c.n_embd);
    expect("n_positions", c.block_size);
    expect("vocab_size", c.vocab_size);
    if (hf->contains("layer_norm_epsilon") && (*hf)["layer_norm_epsilon"].is_number())
      c.ln_eps = (*hf)["layer_norm_epsilon"].get<double>();
    if (hf->contains("activation_function") && (*hf)["activation_function"].is_string()) {
      std::string act = (*hf)["activation_function"].get<std::string>();
      TALLY_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast", "[safetensors] '",
                  config_json->string(), "': activation_function '", act,
                  "' is not GPT-2's tanh-approximated GELU (gelu_new), the only one tally implements");
    }
  }

  int64_t heads = options.n_head;
  std::string source = "the import options";
  if (heads == 0) {
    auto it = r.metadata().find("n_head");
    if (it != r.metadata().end()) {
      try {
        heads = std::stoll(it->second);
      } catch (const std::exception&) {
        fail(where, "metadata n_head '", it->second, "' is not a number");
      }
      source = "the file's metadata";
    }
  }
  if (heads == 0 && hf && hf->contains("n_head") && (*hf)["n_head"].is_number_integer()) {
    heads = (*hf)["n_head"].get<int64_t>();
    source = config_json->string();
  }
  if (heads == 0) {
    heads = known_gpt2_heads(c.n_layer, c.n_embd);
    source = "the released GPT-2 sizes";
  }
  TALLY_CHECK(heads > 0, where, "cannot tell the number of attention heads of a model with L=", c.n_layer, " C=",
              c.n_embd, ": put a Hugging Face config.json beside the file or pass n_head explicitly");
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
  auto load = [&](const std::string& name, const Tensor& param, bool conv1d) {
    const io::SafetensorsEntry& e = *idx.tensors.at(name);
    Shape want = conv1d ? Shape{param.size(1), param.size(0)} : param.shape();
    TALLY_CHECK(e.shape == want, where, "tensor '", e.name, "' is ", shape_str(e.shape), ", expected ", shape_str(want),
                conv1d ? " (Conv1D: (in, out))" : "");
    std::vector<T> v = read_values<T>(r, e);
    if (conv1d) v = detail::transposed(v, want[0], want[1]);
    detail::assign_from_host(param, v.data(), dtype_v<T>);
  };
  Tensor wte = model.wte.weight();
  load("wte.weight", wte.slice(0, 0, c.vocab_size), false);
  if (c.padded_vocab_size > c.vocab_size) {
    Tensor pad = wte.slice(0, c.vocab_size, c.padded_vocab_size);
    pad.zero_();
  }
  load("wpe.weight", model.wpe.weight(), false);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const nn::Block& b = *model.h[size_t(i)];
    const Tensor params[] = {b.ln_1.weight(),        b.ln_1.bias(),         b.attn.c_attn.weight(), b.attn.c_attn.bias(),
                             b.attn.c_proj.weight(), b.attn.c_proj.bias(),  b.ln_2.weight(),        b.ln_2.bias(),
                             b.mlp.c_fc.weight(),    b.mlp.c_fc.bias(),     b.mlp.c_proj.weight(),  b.mlp.c_proj.bias()};
    for (size_t k = 0; k < std::size(kLayerTensors); ++k)
      load(cat("h.", i, ".", kLayerTensors[k].name), params[k], kLayerTensors[k].conv1d);
  }
  load("ln_f.weight", model.ln_f.weight(), false);
  load("ln_f.bias", model.ln_f.bias(), false);

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
  auto expect = [&](const std::string& name, const Shape& want, bool conv1d) {
    const io::SafetensorsEntry& e = *idx.tensors.at(name);
    TALLY_CHECK(e.shape == want, "[safetensors] '", r.source(), "': tensor '", e.name, "' is ", shape_str(e.shape),
                ", expected ", shape_str(want), conv1d ? " (Conv1D: (in, out))" : "", " for a GPT-2 ", c.str());
  };
  expect("wte.weight", {c.vocab_size, C}, false);
  expect("wpe.weight", {c.block_size, C}, false);
  expect("ln_f.weight", {C}, false);
  expect("ln_f.bias", {C}, false);
  const Shape shapes[] = {{C}, {C}, {C, 3 * C}, {3 * C}, {C, C}, {C}, {C}, {C}, {C, 4 * C}, {4 * C}, {4 * C, C}, {C}};
  for (int64_t i = 0; i < c.n_layer; ++i)
    for (size_t k = 0; k < std::size(kLayerTensors); ++k)
      expect(cat("h.", i, ".", kLayerTensors[k].name), shapes[k], kLayerTensors[k].conv1d);
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
template <class T>
void save_all(const GPT2& model, const std::filesystem::path& path) {
  const GPT2Config& c = model.config();
  std::vector<std::vector<T>> buffers;
  std::vector<io::SafetensorsTensor> tensors;
  const auto named = model.named_parameters();
  buffers.reserve(named.size());
  for (const auto& [name, p] : named) {
    Tensor src = p.impl() == model.wte.weight().impl() ? p.slice(0, 0, c.vocab_size) : p;  // drop padding rows
    std::vector<T> v = detail::values_of<T>(src);
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
                  {"vocab_size", std::to_string(c.vocab_size)}};
  io::write_safetensors(path, tensors, opt);
}
}  // namespace

void save_safetensors_gpt2(const GPT2& model, const std::filesystem::path& path) {
  TALLY_CHECK(!model.device().is_meta(), "[safetensors] cannot save '", path.string(),
              "': the model is on the meta device");
  NoGradGuard no_grad;
  if (model.dtype() == DType::f64)
    save_all<double>(model, path);
  else
    save_all<float>(model, path);
}

}  // namespace tally::models
