// Parity with Hugging Face transformers (golden data from tests/reference/make_gpt2_reference.py): a small GPT-2
// saved by save_pretrained is imported from .safetensors; logits, loss and every parameter gradient are compared with
// HF's float64 results, for tally's float32 model (padded and unpadded head) and float64 model. Then: the same weights
// through llm.c's file format (written and read back) give bitwise identical logits.
// Tolerance criterion everywhere: |a - b| <= atol + rtol |b|, atol relative to the tensor's largest |b|. Achieved
// (this machine): f32 logits max |diff| 1.7e-7 (max |ref| 0.48), loss 3e-8 relative, gradients max|diff|/max|ref|
// <= 7.4e-7; f64 logits 4e-16, loss 1.4e-16, gradients 1.2e-15. The tolerances below leave a margin of 5-30x.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/io/safetensors.h"
#include "models/checkpoint_llmc.h"
#include "models/safetensors_gpt2.h"
#include "tests/models/test_helpers.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::models;

namespace {

std::filesystem::path weights_path() { return test::reference_dir() / "gpt2_tiny" / "model.safetensors"; }
std::filesystem::path golden_path() { return test::reference_dir() / "gpt2_tiny_golden.safetensors"; }

bool conv1d(const std::string& name) {
  for (const char* s : {"c_attn.weight", "c_proj.weight", "c_fc.weight"})
    if (name.ends_with(s)) return true;
  return false;
}

// Our gradient of `name` in HF's layout (Conv1D transposed, wte without padding rows).
std::vector<double> grad_hf_layout(const GPT2& m, const std::string& name) {
  Tensor p = m.parameter(name);
  Tensor g = p.grad();
  if (name == "transformer.wte.weight") g = g.slice(0, 0, m.config().vocab_size);
  if (conv1d(name)) g = g.transpose(0, 1);
  return g.to_vector<double>();
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

struct Tolerance {
  double rtol, atol_rel;  // atol = atol_rel * max |reference|
};

// Runs forward + backward on the golden batch and compares with HF; returns the worst relative errors seen.
void check_against_golden(GPT2& model, Tolerance logits_tol, Tolerance grad_tol, double loss_rtol) {
  io::SafetensorsReader golden(golden_path());
  std::vector<int32_t> idx_v = golden.read_typed<int32_t>("idx"), tgt_v = golden.read_typed<int32_t>("targets");
  Shape bt = golden.at("idx").shape;
  Tensor idx = from_vector(idx_v, bt), tgt = from_vector(tgt_v, bt);
  GPT2::Output out = model.forward_with_loss(idx, tgt);

  std::vector<double> ref_logits = golden.read_doubles("logits");
  test::Closeness lc = test::compare(out.logits.to_vector<double>(), ref_logits, logits_tol.rtol,
                                     logits_tol.atol_rel * max_abs(ref_logits));
  MESSAGE("logits: max |diff| ", lc.max_abs, " (max |ref| ", max_abs(ref_logits), ")");
  CHECK(lc.ok());
  const double ref_loss = golden.read_doubles("loss")[0];
  MESSAGE("loss: ours ", out.loss.item(), " HF ", ref_loss, " rel diff ", std::abs(out.loss.item() - ref_loss) / ref_loss);
  CHECK(std::abs(out.loss.item() - ref_loss) <= loss_rtol * ref_loss);

  model.clear_grads();
  out.loss.backward();
  double worst_ratio = 0;  // max over tensors of max|diff| / max|ref|
  std::string worst_name;
  size_t compared = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    const std::string label = name;  // no structured binding inside INFO's lambda (clang 14)
    INFO("gradient of ", label);
    std::vector<double> ref = golden.read_doubles("grad." + name);
    std::vector<double> ours = grad_hf_layout(model, name);
    double scale = max_abs(ref);
    test::Closeness c = test::compare(ours, ref, grad_tol.rtol, grad_tol.atol_rel * scale);
    INFO("max |diff| ", c.max_abs, " max |ref| ", scale, " worst at ", c.worst_index);
    CHECK(c.ok());
    CHECK(scale > 0);  // every gradient is exercised
    if (c.max_abs / scale > worst_ratio) {
      worst_ratio = c.max_abs / scale;
      worst_name = name;
    }
    ++compared;
  }
  CHECK(compared == golden.tensors().size() - 4);  // every grad.* tensor of the file was compared
  MESSAGE("gradients: worst max|diff|/max|ref| = ", worst_ratio, " (", worst_name, ")");
}

}  // namespace

TEST_SUITE("models") {

TEST_CASE("parity with HF GPT-2: float32, unpadded head") {
  auto model = load_safetensors_gpt2(weights_path(), {.vocab_multiple = 1});
  CHECK(model->config().n_head == 4);  // from config.json beside the weights
  CHECK(model->config().padded_vocab_size == 500);
  check_against_golden(*model, {.rtol = 1e-5, .atol_rel = 2e-6}, {.rtol = 1e-4, .atol_rel = 5e-6}, 1e-6);
}

TEST_CASE("parity with HF GPT-2: float32, padded head (500 -> 512)") {
  auto model = load_safetensors_gpt2(weights_path());
  CHECK(model->config().padded_vocab_size == 512);
  check_against_golden(*model, {.rtol = 1e-5, .atol_rel = 2e-6}, {.rtol = 1e-4, .atol_rel = 5e-6}, 1e-6);
  std::vector<double> pad = model->wte.weight().grad().slice(0, 500, 512).to_vector<double>();
  CHECK(max_abs(pad) == 0.0);  // padded rows are never predicted: no gradient reaches them
}

TEST_CASE("parity with HF GPT-2: float64 matches to rounding") {
  auto model = load_safetensors_gpt2(weights_path(), {.dtype = DType::f64});
  check_against_golden(*model, {.rtol = 1e-12, .atol_rel = 1e-13}, {.rtol = 1e-10, .atol_rel = 1e-12}, 1e-13);
}

TEST_CASE("same weights via safetensors and via an llm.c file give bitwise identical logits") {
  auto dir = test::temp_dir("gpt2_llmc_parity");
  io::SafetensorsReader golden(golden_path());
  Shape bt = golden.at("idx").shape;
  Tensor idx = from_vector(golden.read_typed<int32_t>("idx"), bt);
  // The file holds the vocabulary padded to a multiple of 128 rows (500 -> 512), as llm.c writes it, whether the
  // model was padded or not: both files read back as the padded model.
  auto padded = load_safetensors_gpt2(weights_path(), {.vocab_multiple = 128});
  REQUIRE(padded->config().padded_vocab_size == 512);
  for (int64_t multiple : {int64_t(1), int64_t(128)}) {
    INFO("vocab_multiple ", multiple);
    auto from_st = load_safetensors_gpt2(weights_path(), {.vocab_multiple = multiple});
    save_llmc(*from_st, dir / "model.bin");
    LlmcFileInfo info = read_llmc_info(dir / "model.bin");
    CHECK(info.version == 3);
    CHECK(info.config.padded_vocab_size == 512);
    CHECK(std::filesystem::file_size(dir / "model.bin") == 1024 + 4 * uint64_t(padded->config().num_parameters()));
    auto from_llmc = load_llmc(dir / "model.bin");
    CHECK(from_llmc->config() == padded->config());
    for (const auto& [name, p] : padded->named_parameters())
      CHECK(from_llmc->parameter(name).to_vector<float>() == p.to_vector<float>());
    CHECK(from_llmc->forward(idx).to_vector<float>() == padded->forward(idx).to_vector<float>());
  }
  std::filesystem::remove_all(dir);
}

}  // TEST_SUITE
