// The Hugging Face GPT-2 model directory: the JSON files transformers expects beside model.safetensors, and writing
// the whole directory through a staging directory (see hf_gpt2.h for the policy on an existing directory).
#include "models/hf_gpt2.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <set>

#include "core/io/file.h"
#include "core/io/safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tally::models {

namespace {

constexpr int64_t kEndOfText = 50256;  // GPT-2's <|endoftext|> (data/tokenizer.h): bos and eos of every GPT-2
constexpr const char* kEndOfTextText = "<|endoftext|>";

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::bf16: return "bfloat16";
    default: fail("[hf] no torch dtype for ", dtype_name(t));
  }
}

json end_of_text_or_null(const GPT2Config& c) { return c.vocab_size > kEndOfText ? json(kEndOfText) : json(nullptr); }

std::string json_text(const json& j) { return j.dump(2) + "\n"; }  // as transformers writes (indent 2, sorted keys)

}  // namespace

const std::vector<std::string>& hf_export_file_names() {
  static const std::vector<std::string> names = {"model.safetensors", "config.json", "generation_config.json",
                                                 "vocab.json",        "merges.txt",  "tokenizer_config.json"};
  return names;
}

json hf_config_json(const GPT2Config& c, DType dtype) {
  // The keys and defaults of transformers' GPT2Config.to_json (5.x) for a tally GPT-2; nlohmann's object keeps keys
  // sorted, as transformers does.
  return {
      {"activation_function", "gelu_new"},
      {"add_cross_attention", false},
      {"architectures", {"GPT2LMHeadModel"}},
      {"attn_pdrop", 0.0},
      {"bos_token_id", end_of_text_or_null(c)},
      {"dtype", torch_dtype_name(dtype)},
      {"embd_pdrop", c.dropout},
      {"eos_token_id", end_of_text_or_null(c)},
      {"initializer_range", 0.02},
      {"layer_norm_epsilon", c.ln_eps},
      {"model_type", "gpt2"},
      {"n_embd", c.n_embd},
      {"n_head", c.n_head},
      {"n_inner", nullptr},
      {"n_layer", c.n_layer},
      {"n_positions", c.block_size},
      {"pad_token_id", nullptr},
      {"reorder_and_upcast_attn", false},
      {"resid_pdrop", c.dropout},
      {"scale_attn_by_inverse_layer_idx", false},
      {"scale_attn_weights", true},
      {"summary_activation", nullptr},
      {"summary_first_dropout", 0.1},
      {"summary_proj_to_labels", true},
      {"summary_type", "cls_index"},
      {"summary_use_proj", true},
      {"tie_word_embeddings", true},
      {"use_cache", true},
      {"vocab_size", c.vocab_size},
  };
}

json hf_generation_config_json(const GPT2Config& c) {
  // transformers' GenerationConfig.from_model_config for this configuration (what save_pretrained writes).
  json j = {{"_from_model_config", true},
            {"output_attentions", false},
            {"output_hidden_states", false},
            {"use_cache", true}};
  if (c.vocab_size > kEndOfText) j["bos_token_id"] = j["eos_token_id"] = kEndOfText;
  return j;
}

json hf_tokenizer_config_json(const GPT2Config& c) {
  // What transformers' GPT2Tokenizer.save_pretrained writes for GPT-2's files, the model's context as
  // model_max_length. "<|endoftext|>" is GPT-2's only special token: bos, eos and unk alike.
  return {{"add_prefix_space", false},
          {"backend", "tokenizers"},
          {"bos_token", kEndOfTextText},
          {"eos_token", kEndOfTextText},
          {"errors", "replace"},
          {"model_max_length", c.block_size},
          {"pad_token", nullptr},
          {"tokenizer_class", "GPT2Tokenizer"},
          {"unk_token", kEndOfTextText}};
}

void save_hf_gpt2(const GPT2& model, const fs::path& dir_in, const HfExportOptions& options) {
  const GPT2Config& c = model.config();
  fs::path dir = fs::absolute(dir_in).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "out/" names "out"
  // A symbolic link is written through (the directory it names is replaced, the link stays), as files are.
  dir = io::through_links(dir);
  if (dir.filename().empty()) dir = dir.parent_path();  // a link to "newdir/" names newdir
  const std::string where = cat("[hf] '", dir_in.string(), "': ");
  if (options.tokenizer)
    TALLY_CHECK(options.tokenizer->vocab_size == c.vocab_size, where, "the tokenizer has ",
                options.tokenizer->vocab_size, " tokens but the model's vocabulary has ", c.vocab_size,
                ": export without tokenizer files");

  // What is there already: nothing, an empty directory, or a previous export; anything else is not ours to replace.
  std::error_code ec;
  const bool existed = fs::exists(dir, ec);
  if (existed) {
    TALLY_CHECK(fs::is_directory(dir), where, "exists and is not a directory");
    const auto& ours = hf_export_file_names();
    std::vector<std::string> foreign;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || std::find(ours.begin(), ours.end(), name) == ours.end()) foreign.push_back(name);
    }
    std::sort(foreign.begin(), foreign.end());
    // The same names as transformers' save_pretrained writes: a previous export is told by its weights' metadata,
    // which tally's exports record (the model's dimensions) and transformers' do not.
    if (foreign.empty() && !fs::is_empty(dir)) {
      bool exported = false;
      try {
        const auto meta = io::read_safetensors_header(dir / "model.safetensors").metadata;
        exported = meta.contains("n_layer") && meta.contains("n_head") && meta.contains("vocab_size");
      } catch (const std::exception&) {  // unreadable weights: no export of ours either
      }
      TALLY_CHECK(exported, where, "the directory holds a model that tally did not export (its model.safetensors ",
                  fs::exists(dir / "model.safetensors") ? "records no n_layer, n_head and vocab_size" : "is missing",
                  ", which tally's exports do): export into a new or empty directory (nothing was written)");
    }
    if (!foreign.empty()) {
      std::string list;
      for (size_t i = 0; i < foreign.size() && i < 5; ++i) list += (i ? ", '" : "'") + foreign[i] + "'";
      if (foreign.size() > 5) list += cat(" and ", foreign.size() - 5, " more");
      fail(where, "the directory holds ", list, ", which a Hugging Face export does not write: export into a new or ",
           "empty directory (nothing was written)");
    }
  }

  const fs::path parent = dir.parent_path();
  fs::create_directories(parent, ec);
  TALLY_CHECK(!ec, "[hf] cannot create '", parent.string(), "': ", ec.message());
  const fs::path stage = parent / cat(".", dir.filename().string(), ".tmp-", ::getpid());
  fs::remove_all(stage, ec);
  fs::create_directory(stage, ec);
  TALLY_CHECK(!ec, "[hf] cannot create '", stage.string(), "': ", ec.message(), " (is the directory writable?)");
  // Interrupted (SIGINT, SIGTERM): the staging directory goes with the process.
  std::vector<fs::path> staged;
  for (const std::string& f : hf_export_file_names()) staged.push_back(stage / f);
  const io::RemovedOnTermination removed_if_killed(staged, {stage});
  std::vector<std::string> written;
  try {
    const DType dtype = export_dtype(model, options.dtype);
    save_safetensors_gpt2(model, stage / "model.safetensors", {.dtype = options.dtype});
    io::write_file_atomic(stage / "config.json", json_text(hf_config_json(c, dtype)));
    io::write_file_atomic(stage / "generation_config.json", json_text(hf_generation_config_json(c)));
    written = {"model.safetensors", "config.json", "generation_config.json"};
    if (options.tokenizer) {
      io::write_file_atomic(stage / "vocab.json", io::read_file(options.tokenizer->encoder_json));
      io::write_file_atomic(stage / "merges.txt", io::read_file(options.tokenizer->vocab_bpe));
      io::write_file_atomic(stage / "tokenizer_config.json", json_text(hf_tokenizer_config_json(c)));
      written.insert(written.end(), {"vocab.json", "merges.txt", "tokenizer_config.json"});
    }
    io::fsync_path(stage);
    if (!existed) {
      fs::rename(stage, dir);
    } else if (::renameat2(AT_FDCWD, stage.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
      // Swapped whole, never file by file (a signal between two files' renames left two exports mixed): one atomic
      // exchange where the file system has it; the staging directory then holds the old export.
      fs::remove_all(stage, ec);
      if (ec)
        std::fprintf(stderr, "%swritten; the previous export, swapped into '%s', could not be removed: %s\n",
                     where.c_str(), stage.c_str(), ec.message().c_str());
    } else {
      // Else the old directory aside, the new one in, the old one removed: killed between those two renames, `dir`
      // is missing and the previous export lies whole in `old`.
      const fs::path old = parent / cat(".", dir.filename().string(), ".old-", ::getpid());
      fs::remove_all(old, ec);
      std::error_code aside;
      fs::rename(dir, old, aside);
      if (!aside) {
        try {
          fs::rename(stage, dir);
        } catch (...) {
          fs::rename(old, dir, ec);
          if (ec)
            std::fprintf(stderr, "%sthe previous export is whole in '%s' (it could not be moved back: %s)\n",
                         where.c_str(), old.c_str(), ec.message().c_str());
          throw;
        }
        fs::remove_all(old, ec);
        if (ec)
          std::fprintf(stderr, "%swritten; the previous export, moved to '%s', could not be removed: %s\n",
                       where.c_str(), old.c_str(), ec.message().c_str());
      } else {  // a directory that cannot move (a mount point, say): its files replaced one by one
        for (const std::string& f : written) fs::rename(stage / f, dir / f);
        for (const std::string& f : hf_export_file_names())
          if (std::find(written.begin(), written.end(), f) == written.end()) fs::remove(dir / f);
        fs::remove(stage);
        io::fsync_path(dir);
      }
    }
    io::fsync_path(parent);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(stage, ec);
    fail(where, "cannot write the export: ", e.what());
  } catch (...) {
    fs::remove_all(stage, ec);
    throw;
  }
}

}  // namespace tally::models
