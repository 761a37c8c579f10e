// The state.json of a training checkpoint: what a resume needs beyond the tensors (step, model configuration,
// optimizer counters, data-loader position, dropout RNG, skipped-step count, the run's flags). Written by
// Trainer::save and read back with every field's type and range checked, so a damaged or hand-edited file is a
// tally::Error naming the file and the field, never a crash or an exception of the JSON library.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "data/loader.h"
#include "models/gpt2.h"

namespace tally::train {

struct RunState {
  int64_t step = 0;  // optimizer steps done
  models::GPT2Config model;
  std::string optimizer_kind;
  int64_t optimizer_steps = 0;
  std::map<std::string, int64_t> param_steps;
  data::LoaderPosition loader;
  uint64_t dropout_seed = 0, dropout_offset = 0;
  int64_t skipped_steps = 0;
  DType dtype = DType::f32;  // the model's parameters (bf16: the optimizer's state holds the f32 master weights)
  int32_t world = 1;         // the data-parallel ranks that wrote it (the state is whole, whatever the world)
  int zero = 0;              // their ZeRO stage
  nlohmann::json flags = nlohmann::json::object();
};

nlohmann::json to_json(const RunState& s);
// where: the file the JSON came from (appears in every error).
RunState run_state_from_json(const nlohmann::json& j, const std::string& where);
// The same from the file's text (invalid JSON is a tally::Error naming where).
RunState run_state_from_text(std::string_view text, const std::string& where);
// The model configuration as state.json records it ("model_config"); from_json checks types and validates it.
nlohmann::json model_config_json(const models::GPT2Config& c);
models::GPT2Config model_config_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace tally::train
