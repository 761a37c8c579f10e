// llm.c model files: header validation, the 16-tensor layout (per-layer tensors stacked over L), reading fp32/bf16
// into any model, and atomic writing.
#include "models/checkpoint_llmc.h"

#include <array>
#include <string_view>

#include "core/io/file.h"
#include "models/checkpoint_common.h"

namespace tally::models {

namespace {

constexpr int64_t kHeaderInts = 256;
constexpr int64_t kHeaderBytes = kHeaderInts * 4;

// One of the 16 file tensors: the parameters whose values follow one another in the file.
struct Slot {
  const char* name;
  std::vector<Tensor> parts;
};

std::vector<Slot> layout(const GPT2& m) {
  auto per_layer = [&](auto get) {
    std::vector<Tensor> v;
    for (const auto& b : m.h) v.push_back(get(*b));
    return v;
  };
  using nn::Block;
  return {
      {"wte", {m.wte.weight()}},
      {"wpe", {m.wpe.weight()}},
      {"ln1w", per_layer([](const Block& b) { return b.ln_1.weight(); })},
      {"ln1b", per_layer([](const Block& b) { return b.ln_1.bias(); })},
      {"qkvw", per_layer([](const Block& b) { return b.attn.c_attn.weight(); })},
      {"qkvb", per_layer([](const Block& b) { return b.attn.c_attn.bias(); })},
      {"attprojw", per_layer([](const Block& b) { return b.attn.c_proj.weight(); })},
      {"attprojb", per_layer([](const Block& b) { return b.attn.c_proj.bias(); })},
      {"ln2w", per_layer([](const Block& b) { return b.ln_2.weight(); })},
      {"ln2b", per_layer([](const Block& b) { return b.ln_2.bias(); })},
      {"fcw", per_layer([](const Block& b) { return b.mlp.c_fc.weight(); })},
      {"fcb", per_layer([](const Block& b) { return b.mlp.c_fc.bias(); })},
      {"fcprojw", per_layer([](const Block& b) { return b.mlp.c_proj.weight(); })},
      {"fcprojb", per_layer([](const Block& b) { return b.mlp.c_proj.bias(); })},
      {"lnfw", {m.ln_f.weight()}},
      {"lnfb", {m.ln_f.bias()}},
  };
}

size_t element_size(LlmcPrecision p) { return p == LlmcPrecision::f32 ? 4 : 2; }
const char* precision_name(LlmcPrecision p) { return p == LlmcPrecision::f32 ? "fp32" : "bf16"; }

LlmcFileInfo parse_header(const std::string& name, const uint8_t* data, size_t size) {
  const std::string where = cat("[llmc] '", name, "': ");
  TALLY_CHECK(size >= size_t(kHeaderBytes), where, "file is ", size, " bytes, shorter than the ", kHeaderBytes,
              "-byte header (truncated, or not an llm.c model file)");
  std::array<int32_t, kHeaderInts> h{};
  std::memcpy(h.data(), data, kHeaderBytes);
  TALLY_CHECK(h[0] == kLlmcModelMagic, where, "bad magic ", h[0], " (expected ", kLlmcModelMagic,
              "): not an llm.c GPT-2 model file (token shards use 20240520, tokenizers 20240328)");
  LlmcFileInfo info;
  info.version = h[1];
  if (h[1] == 3)
    info.precision = LlmcPrecision::f32;
  else if (h[1] == 5)
    info.precision = LlmcPrecision::bf16;
  else
    fail(where, "unsupported version ", h[1], " (this reader knows 3 = fp32 and 5 = bf16)");
  GPT2Config& c = info.config;
  c.block_size = h[2];
  c.vocab_size = h[3];
  c.n_layer = h[4];
  c.n_head = h[5];
  c.n_embd = h[6];
  c.padded_vocab_size = h[7];
  try {
    c.validate();
  } catch (const Error& e) {
    fail(where, "invalid header (maxT ", h[2], ", V ", h[3], ", L ", h[4], ", NH ", h[5], ", C ", h[6], ", Vp ", h[7],
         "): ", e.what());
  }
  const uint64_t want = uint64_t(kHeaderBytes) + uint64_t(c.num_parameters()) * element_size(info.precision);
  TALLY_CHECK(size == want, where, "file is ", size, " bytes but its header (", c.str(), ", ", precision_name(info.precision),
              ") needs exactly ", want, size < want ? ": the file is truncated" : ": the file has trailing bytes");
  return info;
}

// The weights of a file image whose header has been checked, into a model of the same configuration.
void load_weights(GPT2& model, const std::string& name, const uint8_t* data, size_t size) {
  LlmcFileInfo info = parse_header(name, data, size);
  GPT2Config want = model.config();
  info.config.dropout = want.dropout;  // not stored in the file
  info.config.ln_eps = want.ln_eps;
  TALLY_CHECK(info.config == want, "[llmc] '", name, "' holds a model ", info.config.str(),
              " but the model to load into is ", want.str());
  const DType src = info.precision == LlmcPrecision::f32 ? DType::f32 : DType::bf16;
  const uint8_t* p = data + kHeaderBytes;
  NoGradGuard no_grad;
  for (const Slot& slot : layout(model))
    for (const Tensor& part : slot.parts) {
      detail::assign_from_host(part, p, src);
      p += part.numel() * int64_t(element_size(info.precision));
    }
  TALLY_ASSERT(p == data + size);
}

std::unique_ptr<GPT2> load_image(const std::string& name, const uint8_t* data, size_t size,
                                 const LlmcLoadOptions& options) {
  LlmcFileInfo info = parse_header(name, data, size);
  auto model = std::make_unique<GPT2>(info.config, GPT2Options{.device = options.device, .dtype = options.dtype,
                                                               .init = Init::none});
  load_weights(*model, name, data, size);
  return model;
}

}  // namespace

LlmcFileInfo read_llmc_info(const std::filesystem::path& path) {
  io::MappedFile file(path);
  return parse_header(path.string(), file.data(), file.size());
}

LlmcFileInfo parse_llmc_info(std::span<const uint8_t> file, const std::string& name) {
  return parse_header(name, file.data(), file.size());
}

void load_llmc_into(GPT2& model, const std::filesystem::path& path) {
  io::MappedFile file(path);
  load_weights(model, path.string(), file.data(), file.size());
}

std::unique_ptr<GPT2> load_llmc(const std::filesystem::path& path, const LlmcLoadOptions& options) {
  io::MappedFile file(path);
  return load_image(path.string(), file.data(), file.size(), options);
}

std::unique_ptr<GPT2> load_llmc_from_memory(std::span<const uint8_t> file, const std::string& name,
                                            const LlmcLoadOptions& options) {
  return load_image(name, file.data(), file.size(), options);
}

namespace {
constexpr int64_t kLlmcVocabMultiple = 128;  // llm.c's pad_vocab
}  // namespace

void save_llmc(const GPT2& model, const std::filesystem::path& path, LlmcPrecision precision) {
  TALLY_CHECK(!model.device().is_meta(), "[llmc] cannot save '", path.string(), "': the model is on the meta device");
  const GPT2Config& c = model.config();
  // llm.c's header has no layer-norm epsilon: its models use GPT-2's.
  TALLY_CHECK(
      c.ln_eps == 1e-5, "[llmc] cannot save '", path.string(), "': the model's layer-norm epsilon is ", c.ln_eps,
      ", and llm.c's format has none (its models use GPT-2's 1e-5); export it as safetensors or hf, which keep it");
  std::array<int32_t, kHeaderInts> h{};
  h[0] = kLlmcModelMagic;
  h[1] = precision == LlmcPrecision::f32 ? 3 : 5;
  h[2] = int32_t(c.block_size);
  h[3] = int32_t(c.vocab_size);
  h[4] = int32_t(c.n_layer);
  h[5] = int32_t(c.n_head);
  h[6] = int32_t(c.n_embd);
  // llm.c writes its vocabulary padded to a multiple of 128 rows, which its CUDA kernels read with 16-byte loads: a
  // model kept unpadded (--no-vocab-pad) is written with zero rows up to the next multiple, as llm.c would write it.
  const int64_t Vp = (c.padded_vocab_size + kLlmcVocabMultiple - 1) / kLlmcVocabMultiple * kLlmcVocabMultiple;
  h[7] = int32_t(Vp);
  io::AtomicFileWriter out(path);
  out.write(h.data(), sizeof h);
  auto write_values = [&](const std::vector<float>& v) {
    if (precision == LlmcPrecision::f32) {
      out.write(v.data(), v.size() * sizeof(float));
    } else {
      std::vector<uint16_t> b(v.size());
      for (size_t i = 0; i < v.size(); ++i) b[i] = float_to_bf16(v[i]).bits;
      out.write(b.data(), b.size() * sizeof(uint16_t));
    }
  };
  for (const Slot& slot : layout(model)) {
    for (const Tensor& part : slot.parts) write_values(detail::values_of<float>(part));
    if (std::string_view(slot.name) == "wte")
      write_values(std::vector<float>(size_t((Vp - c.padded_vocab_size) * c.n_embd), 0.0f));
  }
  out.commit();
}

}  // namespace tally::models
