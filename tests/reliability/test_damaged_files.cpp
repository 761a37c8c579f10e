// Every file format tally reads, damaged the two ways storage damages files: truncated, and with one bit flipped.
// Each damaged copy must either load or be refused with a tally::Error (a FlagError for configs) that names the
// file -- never a crash or another exception. Where the format can detect the damage, it must: a truncated file
// of a sized format, a flipped magic or version, and any flip anywhere in a tally checkpoint (CRC-32C manifest).
// Formats without checksums (llm.c, safetensors, token shards) cannot see a flipped weight or token: such copies
// load, and the tests say so rather than pretend otherwise.
#include <doctest/doctest.h>

#include <fstream>
#include <functional>
#include <numeric>

#include "core/io/file.h"
#include "core/ops.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "models/checkpoint_llmc.h"
#include "models/safetensors_gpt2.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/flags.h"
#include "train/trainer.h"

using namespace tally;
namespace fs = std::filesystem;

namespace {

enum class Outcome { loaded, refused };

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void spit(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes; }

// Loads a damaged file; a refusal must name it. what describes the damage for failure messages.
Outcome attempt(const std::function<void()>& load, const fs::path& file, const std::string& what) {
  INFO(what);
  try {
    load();
    return Outcome::loaded;
  } catch (const Error& e) {
    CHECK_MESSAGE(std::string(e.what()).find(file.filename().string()) != std::string::npos, std::string(e.what()));
    return Outcome::refused;
  } catch (const train::FlagError& e) {
    CHECK_MESSAGE(std::string(e.what()).find(file.filename().string()) != std::string::npos, std::string(e.what()));
    return Outcome::refused;
  } catch (const std::exception& e) {
    FAIL("not a tally::Error: " << e.what());
  }
  return Outcome::refused;
}

// Damaged copies of `file` (restored afterwards), each passed to load. Truncations: to every length in `cuts`.
// Flips: bit (i % 8) of byte i for each i in `flips`.
struct Damage {
  fs::path file;
  std::function<void()> load;

  std::map<Outcome, int> truncate(const std::vector<size_t>& cuts) const {
    const std::string good = slurp(file);
    std::map<Outcome, int> n;
    for (size_t len : cuts) {
      if (len >= good.size()) continue;
      spit(file, good.substr(0, len));
      ++n[attempt(load, file, cat(file.filename().string(), " truncated to ", len, " of ", good.size(), " bytes"))];
    }
    spit(file, good);
    return n;
  }
  // Returns the flips that loaded.
  std::vector<size_t> flip(const std::vector<size_t>& positions, int bits_per_byte = 1) const {
    const std::string good = slurp(file);
    std::vector<size_t> loaded;
    for (size_t i : positions) {
      if (i >= good.size()) continue;
      for (int k = 0; k < bits_per_byte; ++k) {
        std::string bad = good;
        const int bit = bits_per_byte == 8 ? k : int(i % 8);
        bad[i] = char(bad[i] ^ (1 << bit));
        spit(file, bad);
        if (attempt(load, file, cat(file.filename().string(), ": bit ", bit, " of byte ", i, " flipped")) == Outcome::loaded)
          loaded.push_back(i);
      }
    }
    spit(file, good);
    return loaded;
  }
};

std::vector<size_t> range(size_t from, size_t to) {
  std::vector<size_t> v(to - from);
  std::iota(v.begin(), v.end(), from);
  return v;
}
// n positions spread evenly over [from, to).
std::vector<size_t> spread(size_t from, size_t to, size_t n) {
  std::vector<size_t> v;
  for (size_t k = 0; k < n; ++k) v.push_back(from + (to - from) * k / n);
  return v;
}
std::vector<size_t> cuts_of(size_t size) {
  std::vector<size_t> v = {0, 1, 7, 8, 100, size / 3, size / 2, size - 2, size - 1};
  return v;
}

models::GPT2Config small_config() {
  models::GPT2Config c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 8;
  c.block_size = 8;
  c.vocab_size = 20;
  c.padded_vocab_size = 24;
  return c;
}

}  // namespace

TEST_SUITE("reliability") {

TEST_CASE("damaged files: llm.c token shard") {
  const fs::path dir = test::temp_dir("damage_shard"), file = dir / "train.bin";
  std::vector<uint16_t> tokens(300);
  std::iota(tokens.begin(), tokens.end(), uint16_t(0));
  data::write_shard(file, tokens);
  Damage d{file, [&] {
             data::DataLoader loader(data::ShardSet::open(file.string(), {.vocab_limit = 300}), {.batch = 2, .seq_len = 8});
             loader.next();
           }};
  CHECK(d.truncate(cuts_of(fs::file_size(file)))[Outcome::loaded] == 0);
  CHECK(d.flip(range(0, 12), 8).empty());  // magic, version, token count: every bit is checked
  // A flipped token id loads unless it leaves the vocabulary (the format has no checksum): some of each.
  const std::vector<size_t> loaded = d.flip(spread(1024, fs::file_size(file), 64));
  CHECK(!loaded.empty());
  CHECK(loaded.size() < 64);
  fs::remove_all(dir);
}

TEST_CASE("damaged files: llm.c model file (fp32 and bf16)") {
  const fs::path dir = test::temp_dir("damage_llmc");
  models::GPT2 model(small_config(), {.seed = 1});
  for (auto precision : {models::LlmcPrecision::f32, models::LlmcPrecision::bf16}) {
    const fs::path file = dir / (precision == models::LlmcPrecision::f32 ? "model.bin" : "model_bf16.bin");
    models::save_llmc(model, file, precision);
    Damage d{file, [&] { models::load_llmc(file); }};
    const size_t size = fs::file_size(file);
    CHECK(d.truncate(cuts_of(size))[Outcome::loaded] == 0);  // the header fixes the size exactly
    CHECK(d.flip(range(0, 8), 8).empty());                    // magic and version
    d.flip(range(8, 32), 8);  // the shape fields: refused when the size no longer matches; V and NH can still fit
    CHECK(d.flip(spread(1024, size, 32)).size() == 32);  // weights: no checksum in llm.c's format
  }
  fs::remove_all(dir);
}

TEST_CASE("damaged files: safetensors GPT-2 (Hugging Face naming)") {
  const fs::path dir = test::temp_dir("damage_safetensors"), file = dir / "model.safetensors";
  models::GPT2 model(small_config(), {.seed = 1});
  models::save_safetensors_gpt2(model, file);
  Damage d{file, [&] { models::load_safetensors_gpt2(file, {.vocab_multiple = 8}); }};
  const size_t size = fs::file_size(file);
  uint64_t header = 0;
  std::memcpy(&header, slurp(file).data(), 8);
  CHECK(d.truncate(cuts_of(size))[Outcome::loaded] == 0);
  CHECK(d.flip(range(0, 8), 8).empty());  // the header length
  // The JSON header: most flips break the JSON, a name, a dtype, a shape or an offset; a flip inside the
  // metadata's "format" value, say, is harmless and loads.
  const std::vector<size_t> header_loaded = d.flip(range(8, 8 + size_t(header)));
  CHECK(header_loaded.size() < header / 4);
  CHECK(d.flip(spread(8 + size_t(header), size, 32)).size() == 32);  // weights: the format has no checksum
  fs::remove_all(dir);
}

TEST_CASE("damaged files: tally checkpoint -- every truncation and every single-bit flip of every file is refused") {
  const fs::path run = test::temp_dir("damage_ckpt");
  train::CheckpointContent c;
  c.model = {{"w", from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3})}, {"b", from_vector<float>({0.5f}, {1})}};
  c.optimizer = {{"w:exp_avg", from_vector<float>({0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f}, {2, 3}).to(DType::bf16)},
                 {"w:step", from_vector<int64_t>({7}, {1})}};
  c.state = {{"loader", "0123abcd"}, {"note", "hello"}};
  const fs::path dir = train::save_checkpoint(run, 5, c);
  for (const char* name : {"model.safetensors", "optimizer.safetensors", "state.json", "manifest.json"}) {
    const fs::path file = dir / name;
    Damage d{file, [&] { train::load_checkpoint(dir); }};
    const size_t size = fs::file_size(file);
    // Dropping manifest.json's final newline leaves the same JSON: nothing is damaged.
    const size_t last = std::string(name) == "manifest.json" ? size - 1 : size;
    CHECK_MESSAGE(d.truncate(range(0, last))[Outcome::loaded] == 0, name);
    CHECK_MESSAGE(d.flip(range(0, size), 8).empty(), name);
  }
  CHECK(io::find_tensor(train::load_checkpoint(dir).model, "w", "t").to_vector<float>()[5] == 6.0f);  // restored
  fs::remove_all(run);
}

TEST_CASE("damaged files: a training run's checkpoint (state.json's loader position, RNG, config) via --resume") {
  // The CRC catches damage; a state.json that is well formed but wrong (edited by hand, or written with a
  // matching checksum) is refused by its own checks, naming the field.
  const fs::path run = test::temp_dir("damage_state");
  train::Flags f("train", "", train::train_flags());
  f.parse({"--model", "tiny", "--batch", "2", "--seq", "16", "--steps", "1", "--eval-every", "0", "--val-batches", "1",
           "--out", run.string(), "--threads", "1"});
  const train::RunConfig config = train::run_config(f);
  train::Trainer(config).run();
  const fs::path dir = run / "step-00000001", state = dir / "state.json";
  const std::string good = slurp(state);
  auto resume_with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(good);
    edit(j);
    const std::string text = j.dump(2) + "\n";
    spit(state, text);
    // Re-seal the manifest so that only the content checks stand between the file and the run.
    nlohmann::json m = nlohmann::json::parse(slurp(dir / "manifest.json"));
    m["files"]["state.json"] = {{"bytes", text.size()}, {"crc32c", io::crc32c_hex(io::crc32c(text.data(), text.size()))}};
    spit(dir / "manifest.json", m.dump(2) + "\n");
    std::string msg;
    try {
      train::Trainer t(config);
      t.resume(dir);
    } catch (const Error& e) {
      msg = e.what();
    }
    return msg;
  };
  CHECK(resume_with([](nlohmann::json&) {}).empty());  // unchanged: resumes
  CHECK(resume_with([](nlohmann::json& j) {
          j["loader"] = "00ff";
        }).find("state.json': 'loader': [loader] position: expected 104 bytes") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j["loader"] = std::string(160, 'z'); }).find("not a lowercase hex digit") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j["optimizer"]["steps"] = "three"; }).find("field 'optimizer.steps' must be an integer, found \"three\"") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j["dropout_rng"]["seed"] = -1; }).find("field 'dropout_rng.seed' must be a non-negative integer") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j["model_config"]["n_layer"] = 1e300; }).find("field 'model_config.n_layer' must be an integer") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j["model_config"]["n_embd"] = 48; }).find("differs from this run's") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j["step"] = 9; }).find("manifest.json' is for step 1") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j.erase("optimizer"); }).find("missing field 'optimizer'") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j = nlohmann::json::array(); }).find("state.json' does not record that step") != std::string::npos);
  CHECK(resume_with([](nlohmann::json& j) { j["dropout_rng"] = 7; }).find("field 'dropout_rng' must be a JSON object, found number") != std::string::npos);
  // The same state with a model configuration far larger than the tensors saved: loading the model file refuses
  // before allocating it.
  resume_with([](nlohmann::json& j) { j["model_config"]["n_layer"] = 60000; });
  CHECK_THROWS_WITH_AS(train::load_model_file(dir, Device::cpu()), doctest::Contains("has no tensor named 'transformer.h.2"), Error);
  // One layer fewer than the tensors saved: the second layer's tensors have no place (not silently left out).
  resume_with([](nlohmann::json& j) { j["model_config"]["n_layer"] = 1; });
  CHECK_THROWS_WITH_AS(train::load_model_file(dir, Device::cpu()), doctest::Contains("holds tensor 'transformer.h.1."),
                       Error);
  {  // The run's configuration saying one layer as well: the resume refuses the tensors it has no place for too.
    train::RunConfig one = config;
    one.model.n_layer = 1;
    train::Trainer t(one);
    CHECK_THROWS_WITH_AS(t.resume(dir), doctest::Contains("holds tensor 'transformer.h.1."), Error);
  }
  fs::remove_all(run);
}

TEST_CASE("damaged files: GPT-2 tokenizer files (encoder.json, vocab.bpe)") {
  const fs::path enc = test::data_file(data::DataFile::gpt2_encoder), bpe = test::data_file(data::DataFile::gpt2_vocab);
  if (enc.empty() || bpe.empty()) {
    MESSAGE("SKIPPED: GPT-2 tokenizer files (encoder.json, vocab.bpe) neither found nor downloaded");
    return;
  }
  const fs::path dir = test::temp_dir("damage_tokenizer");
  fs::copy_file(enc, dir / "encoder.json");
  fs::copy_file(bpe, dir / "vocab.bpe");
  for (const char* name : {"encoder.json", "vocab.bpe"}) {
    const fs::path file = dir / name;
    Damage d{file, [&] { data::Tokenizer::load(dir); }};
    const size_t size = fs::file_size(file);
    CHECK_MESSAGE(d.truncate({0, 1, 100, size / 2, size - 20})[Outcome::loaded] == 0, name);
    // Flips inside tokens change a merge or an id: the two files no longer agree, or a byte leaves the alphabet.
    CHECK_MESSAGE(d.flip(spread(40, size - 40, 6)).empty(), name);
  }
  fs::remove_all(dir);
}

TEST_CASE("damaged files: JSON configuration for --config") {
  const fs::path dir = test::temp_dir("damage_config"), file = dir / "run.json";
  spit(file, R"({"model": "tiny", "batch": 4, "seq": 64, "optimizer": "adamw", "lr": 0.001, "no-shuffle": true})");
  Damage d{file, [&] {
             train::Flags f("train", "", train::train_flags());
             f.merge_json_file(file.string());
             train::run_config(f, train::DataResolution::skip);
           }};
  CHECK(d.truncate(range(0, fs::file_size(file)))[Outcome::loaded] == 0);  // JSON cannot end early
  d.flip(range(0, fs::file_size(file)), 8);  // refused (named) or, e.g. "batch": 4 -> 5, a different valid config
  fs::remove_all(dir);
}

}  // TEST_SUITE
