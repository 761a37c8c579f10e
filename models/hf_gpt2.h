// A Hugging Face model directory for GPT-2, as transformers' from_pretrained reads it: model.safetensors
// (models/safetensors_gpt2.h), config.json (GPT2Config, the fields transformers itself writes), generation_config.json
// and, given the GPT-2 tokenizer's files, vocab.json, merges.txt and tokenizer_config.json for AutoTokenizer.
// Reading such a directory back is load_safetensors_gpt2(DIR/model.safetensors): it checks config.json against the
// tensors. The tokenizer itself lives in data/tokenizer.h; this file only copies its two files.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/safetensors_gpt2.h"

namespace tally::models {

// GPT-2's tokenizer files, as data/tokenizer.h reads them (the caller has checked that they load).
struct HfTokenizerFiles {
  std::filesystem::path encoder_json = {};  // written as vocab.json, byte for byte
  std::filesystem::path vocab_bpe = {};     // written as merges.txt, byte for byte
  int64_t vocab_size = 50257;               // must equal the model's V
};

struct HfExportOptions {
  ExportDType dtype = ExportDType::f32;           // model.safetensors' element type, config.json's dtype
  std::optional<HfTokenizerFiles> tokenizer = {};  // nullopt: no tokenizer files (a model whose V is not GPT-2's)
};

// The files save_hf_gpt2 may write. An existing directory may hold these only (a previous export), and is replaced
// whole, so it never mixes two exports (a previous export's tokenizer files, say, do not stay beside one without).
const std::vector<std::string>& hf_export_file_names();

// The JSON files' contents (tests compare them with transformers' own output, field by field).
// config.json: what transformers' GPT2Config.to_json writes for this model, but for transformers_version (tally is not
// transformers). The weights' element type is "dtype", formerly "torch_dtype": transformers writes and reads "dtype"
// since 4.56 and warns about "torch_dtype"; older versions consult "torch_dtype" only when loading with
// torch_dtype="auto", and without it take the weights' own type, which is the same.
// Dropout: resid_pdrop and embd_pdrop are the model's training dropout, attn_pdrop 0 (tally has no dropout on
// attention probabilities). bos/eos_token_id: GPT-2's <|endoftext|> (50256) where the vocabulary holds it, else null.
nlohmann::json hf_config_json(const GPT2Config& config, DType dtype);
nlohmann::json hf_generation_config_json(const GPT2Config& config);
nlohmann::json hf_tokenizer_config_json(const GPT2Config& config);

// Writes the directory `dir` (created with its parents if missing). Every file is written into a staging directory
// beside `dir` first, so a failure (a full disk, say) leaves `dir` as it was. A new `dir` appears whole (one rename);
// an existing one is exchanged with the staging directory in one atomic rename (RENAME_EXCHANGE) and the old one
// removed; where the file system lacks that, moved aside, the new one renamed in, the old one removed (a process killed
// between those two renames leaves no `dir` and the previous export whole in `.<dir>.old-<pid>` beside it). Never a
// directory of two exports' files; one that cannot be moved (a mount point) has its files replaced one by one. An
// existing `dir` must be empty or hold only files of hf_export_file_names() (a previous export): anything else there is
// refused, naming the files, and nothing is written.
void save_hf_gpt2(const GPT2& model, const std::filesystem::path& dir, const HfExportOptions& options = {});

}  // namespace tally::models
