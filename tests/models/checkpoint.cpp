// Checkpoint tests: llm.c model files (fp32 round trip, bf16 version 5, header and size errors) and .safetensors in
// Hugging Face naming (export/import round trip, equality with the HF-written file, the released files' conventions:
// no prefix, mask buffers, a stored tied head; and the errors for untied heads, unknown or missing tensors).
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/io/file.h"
#include "core/io/safetensors.h"
#include "models/checkpoint_llmc.h"
#include "models/safetensors_gpt2.h"
#include "tests/models/test_helpers.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::models;

namespace {

void check_same_parameters(const GPT2& a, const GPT2& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    INFO(pa[i].first);
    CHECK(pa[i].first == pb[i].first);
    CHECK(pa[i].second.to_vector<double>() == pb[i].second.to_vector<double>());
  }
}

std::vector<uint8_t> file_bytes(const std::filesystem::path& p) { return io::read_file(p); }
void write_bytes(const std::filesystem::path& p, const std::vector<uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

}  // namespace

TEST_SUITE("models") {

TEST_CASE("llm.c file: fp32 round trip is exact, header fields as in llm.c") {
  auto dir = test::temp_dir("llmc_roundtrip");
  GPT2 model(test::tiny_config(), {.seed = 21});
  save_llmc(model, dir / "m.bin");
  std::vector<uint8_t> bytes = file_bytes(dir / "m.bin");
  std::array<int32_t, 8> h{};
  std::memcpy(h.data(), bytes.data(), sizeof h);
  CHECK(h == std::array<int32_t, 8>{20240326, 3, 32, 500, 2, 2, 32, 512});
  CHECK(bytes.size() == 1024 + 4 * size_t(test::tiny_config().num_parameters()));
  // The first tensor is wte (Vp, C): row 0 of the model at byte 1024; the padded rows are zero.
  std::vector<float> wte = model.wte.weight().to_vector<float>();
  CHECK(std::memcmp(bytes.data() + 1024, wte.data(), wte.size() * 4) == 0);
  // Then wpe, then ln1w stacked for both layers.
  size_t off = 1024 + wte.size() * 4 + size_t(32 * 32) * 4;
  std::vector<float> ln1w_1 = model.h[1]->ln_1.weight().to_vector<float>();
  CHECK(std::memcmp(bytes.data() + off + 32 * 4, ln1w_1.data(), 32 * 4) == 0);

  auto back = load_llmc(dir / "m.bin");
  check_same_parameters(model, *back);
  GPT2 target(test::tiny_config(), {.seed = 99});
  load_llmc_into(target, dir / "m.bin");
  check_same_parameters(model, target);
  std::filesystem::remove_all(dir);
}

TEST_CASE("llm.c file: an unpadded model is written padded to a multiple of 128 rows, as llm.c writes it") {
  auto dir = test::temp_dir("llmc_unpadded");
  GPT2Config c = test::tiny_config();
  c.padded_vocab_size = c.vocab_size;  // 500, as --no-vocab-pad keeps it
  GPT2 model(c, {.seed = 23});
  save_llmc(model, dir / "m.bin");
  std::vector<uint8_t> bytes = file_bytes(dir / "m.bin");
  std::array<int32_t, 8> h{};
  std::memcpy(h.data(), bytes.data(), sizeof h);
  CHECK(h[3] == 500);
  CHECK(h[7] == 512);
  CHECK(bytes.size() == 1024 + 4 * size_t(c.num_parameters() + 12 * c.n_embd));
  auto back = load_llmc(dir / "m.bin");
  REQUIRE(back->config().padded_vocab_size == 512);
  const std::vector<float> wte = model.wte.weight().to_vector<float>(), read = back->wte.weight().to_vector<float>();
  CHECK(std::equal(wte.begin(), wte.end(), read.begin()));
  CHECK(std::all_of(read.begin() + std::ptrdiff_t(wte.size()), read.end(), [](float x) { return x == 0.0f; }));
  std::filesystem::remove_all(dir);
}

TEST_CASE("llm.c file: bf16 (version 5) stores round-to-nearest-even values and loads them widened") {
  auto dir = test::temp_dir("llmc_bf16");
  GPT2 model(test::tiny_config(), {.seed = 22});
  save_llmc(model, dir / "m.bin", LlmcPrecision::bf16);
  LlmcFileInfo info = read_llmc_info(dir / "m.bin");
  CHECK(info.version == 5);
  CHECK(info.precision == LlmcPrecision::bf16);
  CHECK(std::filesystem::file_size(dir / "m.bin") == 1024 + 2 * uint64_t(test::tiny_config().num_parameters()));
  auto back = load_llmc(dir / "m.bin");
  for (const auto& [name, p] : model.named_parameters()) {
    const std::string label = name;  // no structured binding inside INFO's lambda (clang 14)
    INFO(label);
    std::vector<float> orig = p.to_vector<float>(), got = back->parameter(name).to_vector<float>();
    bool all = true;
    for (size_t i = 0; i < orig.size(); ++i) all = all && got[i] == bf16_to_float(float_to_bf16(orig[i]));
    CHECK(all);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("llm.c file: wrong magic, version, sizes and configs are errors naming the file") {
  auto dir = test::temp_dir("llmc_errors");
  GPT2 model(test::tiny_config(), {.seed = 23});
  save_llmc(model, dir / "good.bin");
  const std::vector<uint8_t> good = file_bytes(dir / "good.bin");
  auto with_int = [&](int index, int32_t value) {
    std::vector<uint8_t> b = good;
    std::memcpy(b.data() + 4 * index, &value, 4);
    return b;
  };
  const std::string bad = (dir / "bad.bin").string();
  write_bytes(bad, with_int(0, 20240520));
  CHECK_THROWS_WITH_AS(load_llmc(bad), doctest::Contains(("'" + bad + "': bad magic 20240520").c_str()), Error);
  write_bytes(bad, with_int(1, 4));
  CHECK_THROWS_WITH_AS(load_llmc(bad), doctest::Contains("unsupported version 4"), Error);
  write_bytes(bad, with_int(5, 3));  // NH 3 does not divide C 32
  CHECK_THROWS_WITH_AS(load_llmc(bad), doctest::Contains("invalid header"), Error);
  write_bytes(bad, std::vector<uint8_t>(good.begin(), good.end() - 4));
  CHECK_THROWS_WITH_AS(load_llmc(bad), doctest::Contains("the file is truncated"), Error);
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  write_bytes(bad, longer);
  CHECK_THROWS_WITH_AS(load_llmc(bad), doctest::Contains("trailing bytes"), Error);
  write_bytes(bad, std::vector<uint8_t>(good.begin(), good.begin() + 100));
  CHECK_THROWS_WITH_AS(load_llmc(bad), doctest::Contains("shorter than the 1024-byte header"), Error);
  CHECK_THROWS_WITH_AS(load_llmc(dir / "missing.bin"), doctest::Contains("missing.bin"), Error);
  GPT2Config other = test::tiny_config();
  other.n_layer = 3;
  GPT2 wrong(other, {.seed = 1});
  CHECK_THROWS_WITH_AS(load_llmc_into(wrong, dir / "good.bin"), doctest::Contains("but the model to load into is L3"),
                       Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors export: HF names and layout, round trip exact, metadata carries the heads") {
  auto dir = test::temp_dir("st_roundtrip");
  GPT2 model(test::tiny_config(), {.seed = 31});
  save_safetensors_gpt2(model, dir / "m.safetensors");
  io::SafetensorsReader r(dir / "m.safetensors");
  CHECK(r.tensors().size() == model.named_parameters().size());
  CHECK(r.find("lm_head.weight") == nullptr);
  CHECK(r.at("transformer.wte.weight").shape == std::vector<int64_t>{500, 32});  // no padding rows
  CHECK(r.at("transformer.h.0.attn.c_attn.weight").shape == std::vector<int64_t>{32, 96});  // Conv1D (in, out)
  CHECK(r.at("transformer.h.1.mlp.c_proj.weight").shape == std::vector<int64_t>{128, 32});
  CHECK(r.metadata().at("n_head") == "2");
  CHECK(r.metadata().at("format") == "pt");
  // Conv1D transpose: file[i][o] == ours[o][i].
  std::vector<float> file_w = r.read_floats("transformer.h.0.attn.c_attn.weight");
  std::vector<float> ours = model.h[0]->attn.c_attn.weight().to_vector<float>();
  CHECK(file_w[size_t(5 * 96 + 70)] == ours[size_t(70 * 32 + 5)]);

  auto back = load_safetensors_gpt2(dir / "m.safetensors");  // heads from the metadata (no config.json here)
  CHECK(back->config() == model.config());
  check_same_parameters(model, *back);
  auto back64 = load_safetensors_gpt2(dir / "m.safetensors", {.dtype = DType::f64});
  check_same_parameters(model, *back64);
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: exporting the imported HF model reproduces HF's file tensor for tensor") {
  auto dir = test::temp_dir("st_hf_again");
  const auto hf_path = test::reference_dir() / "gpt2_tiny" / "model.safetensors";
  auto model = load_safetensors_gpt2(hf_path);
  save_safetensors_gpt2(*model, dir / "again.safetensors");
  io::SafetensorsReader hf(hf_path), again(dir / "again.safetensors");
  CHECK(hf.tensors().size() == again.tensors().size());
  for (const io::SafetensorsEntry& e : hf.tensors()) {
    INFO(e.name);
    REQUIRE(again.find(e.name) != nullptr);
    CHECK(again.at(e.name).shape == e.shape);
    CHECK(again.read_floats(e.name) == hf.read_floats(e.name));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors import: the released files' conventions and the errors") {
  auto dir = test::temp_dir("st_conventions");
  GPT2 model(test::tiny_config(), {.seed = 32});
  save_safetensors_gpt2(model, dir / "ours.safetensors");
  io::SafetensorsReader ours(dir / "ours.safetensors");

  // Rewrites our export under other conventions: names without "transformer.", extra buffers, an lm_head.
  struct Owned {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> values;
  };
  auto rewrite = [&](const std::filesystem::path& out, bool prefix, bool buffers, int head /*0 none, 1 tied, 2 untied*/,
                     const std::string& drop = "", const std::string& extra = "") {
    std::vector<Owned> owned;
    for (const io::SafetensorsEntry& e : ours.tensors()) {
      if (e.name == drop) continue;
      std::string n = prefix ? e.name : e.name.substr(std::string("transformer.").size());
      owned.push_back({n, e.shape, ours.read_floats(e.name)});
    }
    if (buffers)
      for (int i = 0; i < 2; ++i) {
        owned.push_back({cat("h.", i, ".attn.bias"), {1, 1, 32, 32}, std::vector<float>(32 * 32, 1.0f)});
        owned.push_back({cat("h.", i, ".attn.masked_bias"), {}, {-1e4f}});
      }
    if (head) {
      std::vector<float> w = ours.read_floats("transformer.wte.weight");
      if (head == 2) w[7] += 1.0f;
      owned.push_back({"lm_head.weight", {500, 32}, w});
    }
    if (!extra.empty()) owned.push_back({extra, {2}, {1.0f, 2.0f}});
    std::vector<io::SafetensorsTensor> t;
    for (const Owned& o : owned) t.push_back({.name = o.name, .dtype = io::SafeDType::f32, .shape = o.shape, .data = o.values.data()});
    io::write_safetensors(out, t, {.metadata = {{"format", "pt"}}});
  };
  const SafetensorsImportOptions heads{.n_head = 2};

  rewrite(dir / "hub.safetensors", /*prefix*/ false, /*buffers*/ true, /*head*/ 1);
  auto hub = load_safetensors_gpt2(dir / "hub.safetensors", heads);
  check_same_parameters(model, *hub);
  rewrite(dir / "prefixed.safetensors", true, false, 1);
  check_same_parameters(model, *load_safetensors_gpt2(dir / "prefixed.safetensors", heads));

  rewrite(dir / "untied.safetensors", false, false, 2);
  CHECK_THROWS_WITH_AS(load_safetensors_gpt2(dir / "untied.safetensors", heads),
                       doctest::Contains("untied output head is not supported"), Error);
  CHECK_THROWS_WITH_AS(load_safetensors_gpt2(dir / "hub.safetensors"),
                       doctest::Contains("cannot tell the number of attention heads of a model with L=2 C=32"), Error);
  rewrite(dir / "missing.safetensors", true, false, 0, "transformer.h.1.mlp.c_fc.bias");
  CHECK_THROWS_WITH_AS(load_safetensors_gpt2(dir / "missing.safetensors", heads),
                       doctest::Contains("missing tensor 'h.1.mlp.c_fc.bias'"), Error);
  rewrite(dir / "extra.safetensors", true, false, 0, "", "transformer.h.0.attn.rotary");
  CHECK_THROWS_WITH_AS(load_safetensors_gpt2(dir / "extra.safetensors", heads),
                       doctest::Contains("unexpected tensor 'transformer.h.0.attn.rotary'"), Error);

  // config.json beside the file gives the heads, and must describe a tanh-GELU GPT-2 of these sizes.
  std::filesystem::create_directories(dir / "hf");
  std::filesystem::copy_file(dir / "hub.safetensors", dir / "hf" / "model.safetensors");
  io::write_file_atomic(dir / "hf" / "config.json", std::string(R"({"n_head": 2, "n_layer": 2, "n_embd": 32,
      "n_positions": 32, "vocab_size": 500, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5})"));
  check_same_parameters(model, *load_safetensors_gpt2(dir / "hf" / "model.safetensors"));
  io::write_file_atomic(dir / "hf" / "config.json", std::string(R"({"n_head": 2, "activation_function": "relu"})"));
  CHECK_THROWS_WITH_AS(load_safetensors_gpt2(dir / "hf" / "model.safetensors"),
                       doctest::Contains("activation_function 'relu'"), Error);
  io::write_file_atomic(dir / "hf" / "config.json", std::string(R"({"n_head": 2, "n_layer": 3})"));
  CHECK_THROWS_WITH_AS(load_safetensors_gpt2(dir / "hf" / "model.safetensors"),
                       doctest::Contains("says n_layer = 3"), Error);

  GPT2Config other = test::tiny_config();
  other.n_embd = 64;
  GPT2 wrong(other, {.seed = 1});
  CHECK_THROWS_WITH_AS(load_safetensors_gpt2_into(wrong, dir / "ours.safetensors"), doctest::Contains("but the model is"),
                       Error);
  std::filesystem::remove_all(dir);
}

}  // TEST_SUITE
