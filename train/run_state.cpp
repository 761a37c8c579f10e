// state.json of a training checkpoint (see run_state.h): writing, and reading with every field checked.
#include "train/run_state.h"

#include <limits>

#include "core/error.h"

using nlohmann::json;

namespace tally::train {

namespace {

std::string hex(const std::vector<uint8_t>& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (uint8_t b : bytes) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

std::vector<uint8_t> unhex(const std::string& s, const std::string& where) {
  TALLY_CHECK(s.size() % 2 == 0, "[checkpoint] '", where, "': 'loader' is not a hex string of whole bytes");
  std::vector<uint8_t> out(s.size() / 2);
  auto nib = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    fail("[checkpoint] '", where, "': 'loader' holds a character that is not a lowercase hex digit");
  };
  for (size_t i = 0; i < out.size(); ++i) out[i] = uint8_t(nib(s[2 * i]) << 4 | nib(s[2 * i + 1]));
  return out;
}

// A value for an error message: scalars as written, arrays and objects by kind (a deeply nested value is never
// printed whole, which would also recurse as deep as it is nested).
std::string shown(const json& v) {
  if (v.is_structured()) return cat("a JSON ", v.type_name());
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 60) + "..." : s;
}

// Checked access to the fields of a JSON object: each failure names the file and the field.
struct Fields {
  const json& obj;
  std::string where, prefix;

  Fields(const json& o, std::string w, std::string p) : obj(o), where(std::move(w)), prefix(std::move(p)) {
    TALLY_CHECK(obj.is_object(), "[checkpoint] '", where, "': ",
                prefix.empty() ? std::string("the file") : "field '" + prefix.substr(0, prefix.size() - 1) + "'",
                " must be a JSON object, found ", obj.type_name());
  }
  const json& at(const std::string& key) const {
    auto it = obj.find(key);
    TALLY_CHECK(it != obj.end(), "[checkpoint] '", where, "': missing field '", prefix, key, "'");
    return *it;
  }
  int64_t integer(const std::string& key, int64_t min = 0) const {
    const json& v = at(key);
    const bool ok = v.is_number_integer() &&
                    (!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max()));
    TALLY_CHECK(ok, "[checkpoint] '", where, "': field '", prefix, key, "' must be an integer, found ", shown(v));
    const int64_t x = v.get<int64_t>();
    TALLY_CHECK(x >= min, "[checkpoint] '", where, "': field '", prefix, key, "' is ", x, ", expected at least ", min);
    return x;
  }
  uint64_t unsigned_integer(const std::string& key) const {
    const json& v = at(key);
    TALLY_CHECK(v.is_number_unsigned(), "[checkpoint] '", where, "': field '", prefix, key,
                "' must be a non-negative integer, found ", shown(v));
    return v.get<uint64_t>();
  }
  double number(const std::string& key) const {
    const json& v = at(key);
    TALLY_CHECK(v.is_number(), "[checkpoint] '", where, "': field '", prefix, key, "' must be a number, found ", shown(v));
    return v.get<double>();
  }
  std::string string(const std::string& key) const {
    const json& v = at(key);
    TALLY_CHECK(v.is_string(), "[checkpoint] '", where, "': field '", prefix, key, "' must be a string, found ",
                shown(v));
    return v.get<std::string>();
  }
  Fields object(const std::string& key) const { return Fields(at(key), where, prefix + key + "."); }
};

}  // namespace

json model_config_json(const models::GPT2Config& c) {
  return {{"n_layer", c.n_layer},       {"n_head", c.n_head},         {"n_embd", c.n_embd},
          {"block_size", c.block_size}, {"vocab_size", c.vocab_size}, {"padded_vocab_size", c.padded_vocab_size},
          {"dropout", c.dropout},       {"ln_eps", c.ln_eps}};
}

models::GPT2Config model_config_from_json(const json& j, const std::string& where) {
  Fields f(j, where, "model_config.");
  models::GPT2Config c;
  c.n_layer = f.integer("n_layer", 1);
  c.n_head = f.integer("n_head", 1);
  c.n_embd = f.integer("n_embd", 1);
  c.block_size = f.integer("block_size", 1);
  c.vocab_size = f.integer("vocab_size", 1);
  c.padded_vocab_size = f.integer("padded_vocab_size", 1);
  if (j.contains("dropout")) c.dropout = f.number("dropout");
  if (j.contains("ln_eps")) c.ln_eps = f.number("ln_eps");  // absent before it was recorded: GPT-2's 1e-5
  try {
    c.validate();
  } catch (const Error& e) {
    fail("[checkpoint] '", where, "': model_config: ", e.what());
  }
  return c;
}

json to_json(const RunState& s) {
  json param_steps = json::object();
  for (const auto& [name, n] : s.param_steps) param_steps[name] = n;
  return {{"step", s.step},
          {"model_config", model_config_json(s.model)},
          {"optimizer", {{"kind", s.optimizer_kind}, {"steps", s.optimizer_steps}, {"param_steps", param_steps}}},
          {"loader", hex(s.loader.to_bytes())},
          {"dropout_rng", {{"seed", s.dropout_seed}, {"offset", s.dropout_offset}}},
          {"skipped_steps", s.skipped_steps},
          {"dtype", dtype_name(s.dtype)},
          {"parallel", {{"world", s.world}, {"zero", s.zero}}},
          {"flags", s.flags}};
}

RunState run_state_from_json(const json& j, const std::string& where) {
  Fields f(j, where, "");
  RunState s;
  s.step = f.integer("step");
  s.model = model_config_from_json(f.at("model_config"), where);
  Fields opt = f.object("optimizer");
  s.optimizer_kind = opt.string("kind");
  s.optimizer_steps = opt.integer("steps");
  Fields steps = opt.object("param_steps");
  for (const auto& [name, v] : steps.obj.items()) s.param_steps[name] = steps.integer(name);
  try {
    s.loader = data::LoaderPosition::from_bytes(unhex(f.string("loader"), where));
  } catch (const Error& e) {
    fail("[checkpoint] '", where, "': 'loader': ", e.what());
  }
  Fields rng = f.object("dropout_rng");
  s.dropout_seed = rng.unsigned_integer("seed");
  s.dropout_offset = rng.unsigned_integer("offset");
  s.skipped_steps = j.contains("skipped_steps") ? f.integer("skipped_steps") : 0;
  if (j.contains("dtype")) {  // absent in checkpoints written before mixed precision: f32
    const std::string dtype = f.string("dtype");
    TALLY_CHECK(dtype == "f32" || dtype == "bf16", "[checkpoint] '", where, "': field 'dtype' must be \"f32\" or \"bf16\", found \"",
                dtype, "\"");
    s.dtype = dtype == "bf16" ? DType::bf16 : DType::f32;
  }
  if (j.contains("parallel")) {  // absent in checkpoints of single-process runs written before data parallelism
    Fields par = f.object("parallel");
    const int64_t world = par.integer("world"), zero = par.integer("zero");
    TALLY_CHECK(world >= 1 && world <= (int64_t(1) << 20), "[checkpoint] '", where,
                "': field 'parallel.world' must be a positive number of ranks, found ", world);
    TALLY_CHECK(zero == 0 || zero == 1, "[checkpoint] '", where, "': field 'parallel.zero' must be 0 or 1, found ", zero);
    s.world = int32_t(world);
    s.zero = int(zero);
  }
  if (j.contains("flags")) {
    TALLY_CHECK(j["flags"].is_object(), "[checkpoint] '", where, "': field 'flags' must be a JSON object");
    s.flags = j["flags"];
  }
  return s;
}

RunState run_state_from_text(std::string_view text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("[checkpoint] '", where, "' is not valid JSON: ", e.what());
  }
  return run_state_from_json(j, where);
}

}  // namespace tally::train
