// `tally export --format hf` against transformers (golden data: tests/reference/make_hf_export_reference.py): the
// directory's JSON files equal transformers' own field by field, its tokenizer files are GPT-2's, tally's tokenizer
// and AutoTokenizer give the same ids for the prompt, and the logits of the exported model read back by tally equal
// those AutoModelForCausalLM computed from the same directory (f32 and bf16 weights). Then: what an export does to an
// existing directory, a failed write, and the errors for a config.json that disagrees with the tensors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>

#include "core/autograd/node.h"
#include "core/io/file.h"
#include "core/io/safetensors.h"
#include "data/tokenizer.h"
#include "models/hf_gpt2.h"
#include "models/safetensors_gpt2.h"
#include "tests/models/test_helpers.h"
#include "tests/test_util.h"
#include "train/commands.h"
#include "train/setup.h"

using namespace tally;
using namespace tally::models;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path golden_dir() { return test::reference_dir() / "hf_export"; }

// The test model of make_hf_export_reference.py: L2 NH4 C32 T32, GPT-2's vocabulary.
constexpr int64_t kL = 2, kNH = 4, kC = 32, kT = 32, kV = 50257;

// The script's tensor_names(): HF names in the order the weight formula numbers them.
std::vector<std::string> formula_names() {
  const char* layer[] = {"ln_1.weight",     "ln_1.bias",       "attn.c_attn.weight", "attn.c_attn.bias",
                         "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",      "ln_2.bias",
                         "mlp.c_fc.weight", "mlp.c_fc.bias",   "mlp.c_proj.weight", "mlp.c_proj.bias"};
  std::vector<std::string> names = {"wte.weight", "wpe.weight"};
  for (int64_t i = 0; i < kL; ++i)
    for (const char* n : layer) names.push_back(cat("h.", i, ".", n));
  names.push_back("ln_f.weight");
  names.push_back("ln_f.bias");
  for (std::string& n : names) n = "transformer." + n;
  return names;
}

// The script's hf_shape().
std::vector<int64_t> formula_shape(const std::string& name) {
  const std::pair<const char*, std::vector<int64_t>> shapes[] = {
      {"wte.weight", {kV, kC}},          {"wpe.weight", {kT, kC}},         {"c_attn.weight", {kC, 3 * kC}},
      {"c_attn.bias", {3 * kC}},         {"attn.c_proj.weight", {kC, kC}}, {"mlp.c_fc.weight", {kC, 4 * kC}},
      {"mlp.c_fc.bias", {4 * kC}},       {"mlp.c_proj.weight", {4 * kC, kC}}};
  for (const auto& [suffix, shape] : shapes)
    if (name.ends_with(suffix)) return shape;
  return {kC};
}

// The script's weights(): tensor j, element i = base + scale * u, u from splitmix64's top 24 bits, rounded to float.
// Every product below is either exact (scale 0.5, 0.25) or added to a zero base, so a fused multiply-add gives the
// same float as numpy's separate operations.
std::vector<float> formula_values(const std::string& name, uint64_t j) {
  int64_t n = 1;
  for (int64_t d : formula_shape(name)) n *= d;
  const bool layer_norm = name.find(".ln_") != std::string::npos;
  double base = 0, scale = 0.25;
  if (layer_norm && name.ends_with(".weight")) base = 1, scale = 0.5;
  else if (layer_norm) scale = 0.2;
  else if (name.ends_with(".bias")) scale = 0.1;
  std::vector<float> v(static_cast<size_t>(n));
  for (uint64_t i = 0; i < uint64_t(n); ++i) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull + (j + 1) * 0xD1B54A32D192ED03ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double u = double(z >> 40) / double(1 << 24) - 0.5;
    v[i] = float(base + scale * u);
  }
  return v;
}

// The script's input: model.safetensors in HF naming (heads in the metadata) and a config.json with the dropout.
fs::path write_formula_model(const fs::path& dir) {
  fs::create_directories(dir);
  const std::vector<std::string> names = formula_names();
  std::vector<std::vector<float>> values;
  std::vector<io::SafetensorsTensor> tensors;
  values.reserve(names.size());
  for (size_t j = 0; j < names.size(); ++j) {
    values.push_back(formula_values(names[j], j));
    tensors.push_back({.name = names[j], .dtype = io::SafeDType::f32, .shape = formula_shape(names[j]),
                       .data = values.back().data()});
  }
  io::write_safetensors(dir / "model.safetensors", tensors, {.metadata = {{"format", "pt"}, {"n_head", "4"}}});
  io::write_file_atomic(dir / "config.json", std::string(R"({"n_head": 4, "resid_pdrop": 0.1, "embd_pdrop": 0.1})"));
  return dir / "model.safetensors";
}

json read_json(const fs::path& p) { return json::parse(io::read_file_text(p)); }

// tally's file against transformers' own: the same keys (transformers_version aside: tally is not transformers),
// each value equal and of the same JSON type (0 and 0.0 differ).
void check_same_fields(const fs::path& ours_path, const fs::path& golden_path) {
  INFO("tally's ", ours_path.string(), " against transformers' ", golden_path.string());
  json ours = read_json(ours_path), golden = read_json(golden_path);
  REQUIRE(ours.is_object());
  REQUIRE(golden.is_object());
  CHECK(ours.contains("transformers_version") == false);
  golden.erase("transformers_version");
  for (auto it = golden.begin(); it != golden.end(); ++it) {  // no structured binding inside INFO (clang 14)
    const std::string k = it.key();
    const json& want = it.value();
    INFO("field ", k, ": transformers ", want.dump());
    REQUIRE(ours.contains(k));
    INFO("tally ", ours[k].dump());
    CHECK(ours[k] == want);
    CHECK(ours[k].type() == want.type());
  }
  for (auto it = ours.begin(); it != ours.end(); ++it) {
    const std::string k = it.key();
    INFO("field ", k, " only in tally's file");
    CHECK(golden.contains(k));
  }
}

int run_export(const std::vector<std::string>& args) {
  train::Args a = {"--checkpoint"};
  a.insert(a.end(), args.begin(), args.end());
  return train::cmd_export(a);
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// Staging directories left beside `dir` (there must be none).
size_t staging_left(const fs::path& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir.parent_path()))
    if (e.path().filename().string().starts_with(cat(".", dir.filename().string(), ".tmp-"))) ++n;
  return n;
}

}  // namespace

TEST_SUITE("models") {

TEST_CASE("hf export: config.json, generation_config.json and tokenizer files equal transformers' own") {
  const fs::path dir = test::temp_dir("hf_export_files");
  const fs::path src = write_formula_model(dir / "src");
  REQUIRE(run_export({src.string(), "--format", "hf", "--out", (dir / "f32").string()}) == 0);
  REQUIRE(run_export({src.string(), "--format", "hf", "--dtype", "bf16", "--out", (dir / "bf16").string()}) == 0);

  const std::set<std::string> expected = {"model.safetensors", "config.json", "generation_config.json",
                                          "vocab.json",        "merges.txt",  "tokenizer_config.json"};
  for (const char* d : {"f32", "bf16"}) CHECK(files_in(dir / d) == expected);
  check_same_fields(dir / "f32" / "config.json", golden_dir() / "config.json");
  check_same_fields(dir / "bf16" / "config.json", golden_dir() / "config.bf16.json");
  check_same_fields(dir / "f32" / "generation_config.json", golden_dir() / "generation_config.json");
  check_same_fields(dir / "f32" / "tokenizer_config.json", golden_dir() / "tokenizer_config.json");
  // vocab.json and merges.txt are GPT-2's encoder.json and vocab.bpe, byte for byte.
  const fs::path gpt2 = data::Tokenizer::default_dir();
  CHECK(io::read_file(dir / "f32" / "vocab.json") == io::read_file(gpt2 / "encoder.json"));
  CHECK(io::read_file(dir / "f32" / "merges.txt") == io::read_file(gpt2 / "vocab.bpe"));
  // model.safetensors holds exactly the tensors transformers loaded when the golden logits were made: the input's, in
  // its names and (in, out) layout, bit for bit (f32) or rounded to nearest even (bf16), tagged "pt" as
  // from_pretrained requires. (Reading the export back in tally alone could not see a layout error that import and
  // export make alike.)
  const std::vector<std::string> names = formula_names();
  for (const char* d : {"f32", "bf16"}) {
    const std::string label = d;
    io::SafetensorsReader r(dir / d / "model.safetensors");
    CHECK(r.metadata().at("format") == "pt");
    CHECK(r.tensors().size() == names.size());
    for (size_t j = 0; j < names.size(); ++j) {
      INFO(label, " ", names[j]);
      REQUIRE(r.find(names[j]) != nullptr);
      CHECK(r.at(names[j]).shape == formula_shape(names[j]));
      CHECK(r.at(names[j]).dtype == (label == "f32" ? io::SafeDType::f32 : io::SafeDType::bf16));
      std::vector<float> want = formula_values(names[j], j);
      if (label == "bf16")
        for (float& x : want) x = bf16_to_float(float_to_bf16(x));
      CHECK(r.read_floats(names[j]) == want);
    }
  }
  fs::remove_all(dir);
}

// Tolerance: tally computes in float32, the golden logits are transformers' float64 from the same weights; over
// C = 32 and two layers float32 rounding gives max |diff| ~1e-6 at logits of size ~1-3 (measured: see MESSAGE). The
// bound 2e-5 + 1e-5 |ref| is ~10x that; a wrong field (heads, epsilon, activation, dropout on in eval) or a
// misplaced tensor moves logits by 1e-3 or more.
TEST_CASE("hf export: the exported model's logits equal transformers' from the same directory") {
  const fs::path dir = test::temp_dir("hf_export_logits");
  const fs::path src = write_formula_model(dir / "src");
  io::SafetensorsReader golden(golden_dir() / "golden.safetensors");
  const std::string prompt = golden.metadata().at("prompt");
  const std::vector<int32_t> ids = golden.read_typed<int32_t>("prompt_ids");
  const std::vector<int32_t> columns = golden.read_typed<int32_t>("columns");
  const int64_t T = int64_t(ids.size());

  // tally's tokenizer gives AutoTokenizer's ids (<|endoftext|> in the prompt is the special token).
  CHECK(data::Tokenizer::load().encode(prompt, data::SpecialTokens::allowed) == ids);

  for (const char* dtype : {"f32", "bf16"}) {
    const std::string label = dtype;
    INFO("export ", label);
    const fs::path out = dir / dtype;
    REQUIRE(run_export({src.string(), "--format", "hf", "--dtype", dtype, "--out", out.string()}) == 0);
    auto model = train::load_model_file(out, Device::cpu());  // the directory, as --init and --checkpoint take it
    CHECK(model->config().n_head == kNH);
    CHECK(model->config().dropout == 0.1);  // read from the exported config.json
    if (label == "bf16") {  // the weights came back as the formula's floats rounded to nearest even
      std::vector<float> want = formula_values("transformer.wpe.weight", 1);
      for (float& x : want) x = bf16_to_float(float_to_bf16(x));
      CHECK(model->wpe.weight().to_vector<float>() == want);
    }
    NoGradGuard no_grad;
    model->eval();
    const Tensor idx = from_vector(ids, {1, T}, {.dtype = DType::i32});
    const std::vector<double> logits = model->forward(idx).to_vector<double>();
    REQUIRE(logits.size() == size_t(T * kV));
    std::vector<double> at_columns, logsumexp;
    for (int64_t t = 0; t < T; ++t) {
      const double* row = logits.data() + t * kV;
      for (int32_t c : columns) at_columns.push_back(row[c]);
      double mx = -INFINITY, sum = 0;
      for (int64_t v = 0; v < kV; ++v) mx = std::max(mx, row[v]);
      for (int64_t v = 0; v < kV; ++v) sum += std::exp(row[v] - mx);
      logsumexp.push_back(mx + std::log(sum));
    }
    const test::Closeness lc = test::compare(at_columns, golden.read_doubles(label + ".logits"), 1e-5, 2e-5);
    const test::Closeness sc = test::compare(logsumexp, golden.read_doubles(label + ".logsumexp"), 1e-5, 2e-5);
    MESSAGE(label, ": logits max |diff| ", lc.max_abs, ", log-sum-exp max |diff| ", sc.max_abs);
    CHECK(lc.ok());
    CHECK(sc.ok());
  }
  fs::remove_all(dir);
}

TEST_CASE("hf export: an existing directory is replaced only where it holds a previous export") {
  const fs::path dir = test::temp_dir("hf_export_existing");
  GPT2 model(test::tiny_config(), {.seed = 5});  // V 500: no tokenizer files
  const fs::path out = dir / "out";

  // A directory holding anything else is refused, naming the file; nothing is written.
  fs::create_directories(out);
  io::write_file_atomic(out / "notes.txt", std::string("mine"));
  CHECK_THROWS_WITH_AS(save_hf_gpt2(model, out), doctest::Contains("holds 'notes.txt', which a Hugging Face export"),
                       Error);
  CHECK(files_in(out) == std::set<std::string>{"notes.txt"});
  CHECK(io::read_file_text(out / "notes.txt") == "mine");
  fs::remove(out / "notes.txt");
  fs::create_directories(out / "sub");
  CHECK_THROWS_WITH_AS(save_hf_gpt2(model, out), doctest::Contains("holds 'sub'"), Error);
  fs::remove(out / "sub");

  // An empty directory, then the same directory again: the previous export is replaced.
  save_hf_gpt2(model, out);
  CHECK(files_in(out) == std::set<std::string>{"model.safetensors", "config.json", "generation_config.json"});
  GPT2 other(test::tiny_config(), {.seed = 6});
  save_hf_gpt2(other, out.string() + "/", {.dtype = ExportDType::bf16});  // a trailing slash names the same directory
  CHECK(read_json(out / "config.json")["dtype"] == "bfloat16");
  CHECK(io::SafetensorsReader(out / "model.safetensors").at("transformer.wte.weight").dtype == io::SafeDType::bf16);
  CHECK(staging_left(out) == 0);

  // A previous export's tokenizer files are not left beside a model they were not exported with.
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json"})
    io::write_file_atomic(out / f, std::string("{}"));
  save_hf_gpt2(model, out);
  CHECK(files_in(out) == std::set<std::string>{"model.safetensors", "config.json", "generation_config.json"});

  // A directory of the same names that transformers' save_pretrained wrote (its weights record only "format"): not a
  // previous export, refused, untouched. So is one whose weights are missing or unreadable.
  const fs::path theirs = dir / "theirs";
  fs::create_directories(theirs);
  const float one = 1.0f;
  io::SafetensorsWriteOptions pt;
  pt.metadata = {{"format", "pt"}};
  const std::vector<io::SafetensorsTensor> wte = {
      {.name = "transformer.wte.weight", .dtype = io::SafeDType::f32, .shape = {1, 1}, .data = &one}};
  io::write_safetensors(theirs / "model.safetensors", wte, pt);
  io::write_file_atomic(theirs / "config.json", std::string("{\"model_type\": \"gpt2\"}"));
  const auto weights = io::read_file(theirs / "model.safetensors");
  CHECK_THROWS_WITH_AS(save_hf_gpt2(model, theirs),
                       doctest::Contains("holds a model that tally did not export (its model.safetensors records no "
                                         "n_layer, n_head and vocab_size"),
                       Error);
  CHECK(io::read_file(theirs / "model.safetensors") == weights);
  CHECK(io::read_file_text(theirs / "config.json") == "{\"model_type\": \"gpt2\"}");
  fs::remove(theirs / "model.safetensors");
  CHECK_THROWS_WITH_AS(save_hf_gpt2(model, theirs), doctest::Contains("its model.safetensors is missing"), Error);
  CHECK(staging_left(theirs) == 0);

  // A link to "new/" (as tab completion writes it), dangling: the export is made there, whole, the link kept.
  fs::create_symlink("new/", dir / "to-new");
  save_hf_gpt2(model, dir / "to-new");
  CHECK(fs::is_symlink(dir / "to-new"));
  CHECK(files_in(dir / "new") == std::set<std::string>{"model.safetensors", "config.json", "generation_config.json"});
  CHECK(staging_left(dir / "new") == 0);
  save_hf_gpt2(other, dir / "to-new");  // and again, replacing that export
  CHECK(files_in(dir / "new") == std::set<std::string>{"model.safetensors", "config.json", "generation_config.json"});

  // A file where the directory should be.
  io::write_file_atomic(dir / "file", std::string("x"));
  CHECK_THROWS_WITH_AS(save_hf_gpt2(model, dir / "file"), doctest::Contains("exists and is not a directory"), Error);

  // A tokenizer of another vocabulary.
  CHECK_THROWS_WITH_AS(save_hf_gpt2(model, dir / "tok", {.tokenizer = HfTokenizerFiles{.vocab_size = 50257}}),
                       doctest::Contains("the tokenizer has 50257 tokens but the model's vocabulary has 500"), Error);
  CHECK_FALSE(fs::exists(dir / "tok"));
  fs::remove_all(dir);
}

TEST_CASE("hf export: a failed write leaves the directory as it was") {
  const fs::path dir = test::temp_dir("hf_export_fault");
  GPT2 model(test::tiny_config(), {.seed = 7});
  const fs::path out = dir / "out";
  // The disk "fills up" after 1000 bytes of model.safetensors (core/io/file.h's fault injection).
  ::setenv("TALLY_FAULT_WRITE_AFTER_BYTES", "1000", 1);
  CHECK_THROWS_WITH_AS(save_hf_gpt2(model, out), doctest::Contains("no space left on device"), Error);
  CHECK_FALSE(fs::exists(out));  // a new directory appears whole or not at all
  CHECK(staging_left(out) == 0);

  ::unsetenv("TALLY_FAULT_WRITE_AFTER_BYTES");
  save_hf_gpt2(model, out);
  const auto before = io::read_file(out / "model.safetensors");
  GPT2 other(test::tiny_config(), {.seed = 8});
  ::setenv("TALLY_FAULT_WRITE_AFTER_BYTES", "1000", 1);
  CHECK_THROWS_AS(save_hf_gpt2(other, out), Error);
  ::unsetenv("TALLY_FAULT_WRITE_AFTER_BYTES");
  CHECK(io::read_file(out / "model.safetensors") == before);  // the previous export is intact
  CHECK(staging_left(out) == 0);
  fs::remove_all(dir);
}

TEST_CASE("hf import: config.json is checked against the tensors, naming the field, the file and both values") {
  const fs::path dir = test::temp_dir("hf_import_config");
  models::GPT2Config config = test::tiny_config();
  config.dropout = 0.25;
  GPT2 model(config, {.seed = 9});
  save_hf_gpt2(model, dir / "hf");
  const fs::path weights = dir / "hf" / "model.safetensors", config_path = dir / "hf" / "config.json";
  const json good = read_json(config_path);

  // As written, it loads back as the model it was: heads, dropout, values.
  auto back = train::load_model_file(dir / "hf", Device::cpu());
  CHECK(back->config().n_head == 2);
  CHECK(back->config().dropout == 0.25);
  CHECK(back->wte.weight().to_vector<float>() == model.wte.weight().to_vector<float>());
  CHECK(train::load_model_file(weights, Device::cpu())->config() == back->config());

  auto with = [&](const char* key, const json& value) {
    json j = good;
    j[key] = value;
    io::write_file_atomic(config_path, j.dump(2));
  };
  auto refused = [&](const char* key, const json& value, const std::string& message) {
    INFO(key, " = ", value.dump());
    with(key, value);
    CHECK_THROWS_WITH_AS(train::load_model_file(dir / "hf", Device::cpu()), doctest::Contains(message.c_str()), Error);
  };
  const std::string cfg = cat("'", config_path.string(), "'"), file = cat("'", weights.string(), "'");
  refused("n_layer", 3, cfg + " says n_layer = 3 but " + file + " has 2");
  refused("n_embd", 64, cfg + " says n_embd = 64 but " + file + " has 32");
  refused("n_positions", 1024, cfg + " says n_positions = 1024 but " + file + " has 32");
  refused("vocab_size", 50257, cfg + " says vocab_size = 50257 but " + file + " has 500");
  refused("n_inner", 64, cfg + " says n_inner = 64 but " + file + " has an mlp.c_fc of width 128");
  refused("n_head", 4, cfg + " says n_head = 4 but the metadata of " + file + " says n_head = 2");
  refused("n_layer", "2", cfg + ": n_layer must be an integer, found \"2\"");
  refused("tie_word_embeddings", false, cfg + " says tie_word_embeddings = false but tally needs true");
  refused("model_type", "gpt_neo", cfg + " says model_type = \"gpt_neo\" but tally needs \"gpt2\"");
  refused("scale_attn_by_inverse_layer_idx", true, "scale_attn_by_inverse_layer_idx = true but tally needs false");
  refused("activation_function", "relu", "activation_function 'relu' is not GPT-2's");
  refused("resid_pdrop", 1.5, cfg + ": resid_pdrop must be in [0, 1), found 1.5");
  refused("layer_norm_epsilon", 0, cfg + ": layer_norm_epsilon must be positive");

  io::write_file_atomic(config_path, std::string("{\"n_head\": 2,"));
  CHECK_THROWS_WITH_AS(train::load_model_file(dir / "hf", Device::cpu()),
                       doctest::Contains((cfg + ": not valid JSON").c_str()), Error);
  io::write_file_atomic(config_path, std::string("[2]"));
  CHECK_THROWS_WITH_AS(train::load_model_file(dir / "hf", Device::cpu()),
                       doctest::Contains((cfg + ": expected a JSON object, found a array").c_str()), Error);

  // Fields that agree, or that transformers leaves null, load.
  with("n_inner", nullptr);
  CHECK(train::load_model_file(dir / "hf", Device::cpu())->config() == back->config());
  with("layer_norm_epsilon", 1e-6);
  CHECK(train::load_model_file(dir / "hf", Device::cpu())->config().ln_eps == 1e-6);
  fs::remove_all(dir);
}

TEST_CASE("hf export: the JSON for a vocabulary without GPT-2's <|endoftext|>, and the CLI's tokenizer check") {
  const json c = hf_config_json(test::tiny_config(), DType::f32);
  CHECK(c["bos_token_id"].is_null());
  CHECK(c["eos_token_id"].is_null());
  CHECK(c["n_positions"] == 32);
  const json g = hf_generation_config_json(test::tiny_config());
  CHECK_FALSE(g.contains("bos_token_id"));
  CHECK_FALSE(g.contains("eos_token_id"));

  const fs::path dir = test::temp_dir("hf_export_cli_vocab");
  GPT2 model(test::tiny_config(), {.seed = 10});
  save_safetensors_gpt2(model, dir / "m.safetensors");
  CHECK_THROWS_WITH_AS(run_export({(dir / "m.safetensors").string(), "--format", "hf", "--out", (dir / "a").string()}),
                       doctest::Contains("the model's vocabulary has 500 tokens but the GPT-2 tokenizer"), Error);
  CHECK_FALSE(fs::exists(dir / "a"));
  CHECK(run_export({(dir / "m.safetensors").string(), "--format", "hf", "--no-tokenizer", "--out",
                    (dir / "a").string()}) == 0);
  CHECK(files_in(dir / "a") == std::set<std::string>{"model.safetensors", "config.json", "generation_config.json"});
  fs::remove_all(dir);
}

}  // TEST_SUITE
