// `tally memory --shapes`: the state tally plans for a model's shapes against what the reference implementations
// (came-pytorch 0.1.3, torch.optim.AdamW and SGD, transformers' Adafactor) really allocated for the same models
// (tests/reference/state_bytes/, made by make_state_bytes_reference.py), tensor by tensor and to the byte, with every
// difference named by the reference rules; the three shape sources (safetensors header, sharded index, shape list)
// and their errors; the factoring descriptions; the state variants; ZeRO-1 and bf16 figures.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/io/safetensors.h"
#include "core/ledger.h"
#include "optim/registry.h"
#include "tests/test_util.h"
#include "train/shape_memory.h"

using namespace tally;
using namespace tally::train;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path state_bytes_dir() { return test::reference_dir() / "state_bytes"; }

json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE_MESSAGE(in.good(), "cannot open ", p.string());
  return json::parse(in);
}

// torch's dtype names as make_state_bytes_reference.py writes them.
std::string torch_dtype(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    default: return dtype_name(d);
  }
}

// A scratch directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("tally_shapes_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

// A safetensors file of `header` JSON (padded to 8 bytes) followed by `data_bytes` bytes (sparse: nothing written).
void write_safetensors_header(const fs::path& p, std::string header, uint64_t data_bytes) {
  while (header.size() % 8) header += ' ';
  std::ofstream out(p, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out.close();
  fs::resize_file(p, 8 + n + data_bytes);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

const char* kModels[] = {"gpt2_tiny", "llama_tiny", "bert_tiny", "t5_tiny", "conv_experts"};

}  // namespace

TEST_SUITE("memory shapes") {

TEST_CASE("memory shapes: tally's state equals what the reference implementations allocated, tensor by tensor") {
  int compared = 0, extras = 0;
  for (const std::string model : kModels) {
    const fs::path file = state_bytes_dir() / (model + ".json");
    const json ref = read_json(file);
    // The shapes come through tally's own reader: the reference file is a shape list (an object with "tensors").
    const ModelShapes shapes = read_model_shapes(file);
    REQUIRE(shapes.tensors.size() == ref["tensors"].size());
    for (const auto& item : ref["cases"].items()) {
      const std::string case_name = item.key();  // not a structured binding: INFO captures it
      const json& c = item.value();
      INFO(model, " / ", case_name, " (", c["reference"].get<std::string>(), ")");
      OptimizerChoice choice{.name = c["tally"]["optimizer"].get<std::string>()};
      for (const auto& [k, v] : c["tally"]["settings"].items()) choice.settings.set(k, v.get<std::string>());
      const ReferenceRule* rule = find_reference_rule(choice.name);
      REQUIRE(rule != nullptr);
      const StateFigures f = plan_state(shapes.tensors, choice, DType::f32);
      REQUIRE(f.tensors.size() == shapes.tensors.size());
      int64_t reference_total = 0;
      for (size_t i = 0; i < shapes.tensors.size(); ++i) {
        const std::string& name = shapes.tensors[i].name;
        INFO("tensor ", name, " ", shape_str(shapes.tensors[i].shape));
        const json& want = c["state"].at(name);
        const optim::TensorState& got = f.tensors[i];
        REQUIRE(got.param == name);
        std::set<std::string> matched;
        // Every state tensor tally keeps, the reference keeps too: same name, shape, dtype, bytes.
        for (const optim::StateSpec& s : got.states) {
          INFO("state ", s.name);
          REQUIRE(want.contains(s.name));
          const json& w = want[s.name];
          CHECK(w["shape"].get<Shape>() == s.shape);
          CHECK(w["dtype"].get<std::string>() == torch_dtype(s.dtype));
          CHECK(w["bytes"].get<int64_t>() == s.bytes());
          matched.insert(s.name);
          ++compared;
        }
        // Everything else the reference keeps is a documented difference, exactly as the rule states it.
        for (const auto& entry : want.items()) {
          const std::string key = entry.key();
          const json& w = entry.value();
          reference_total += w.value("bytes", int64_t(0));
          if (matched.count(key)) continue;
          INFO("reference-only state ", key);
          if (w.contains("python")) {
            CHECK(w["python"].get<std::string>() == "int");
            CHECK(std::count(rule->python_numbers.begin(), rule->python_numbers.end(), key) == 1);
            continue;
          }
          auto x = std::find_if(rule->extras.begin(), rule->extras.end(),
                                [&](const ReferenceExtra& e) { return e.state == key; });
          REQUIRE_MESSAGE(x != rule->extras.end(), "the reference keeps '", key, "', which no rule explains");
          CHECK(w["shape"].get<Shape>() == x->shape);
          CHECK(w["dtype"].get<std::string>() == x->dtype);
          CHECK(w["bytes"].get<int64_t>() == x->bytes);
          ++extras;
        }
        // And every extra of the rule is really there for every parameter.
        for (const ReferenceExtra& x : rule->extras) CHECK(want.contains(x.state));
        for (const std::string& k : rule->python_numbers) CHECK(want.contains(k));
      }
      // The report's reference figure is the reference's total, to the byte.
      const ShapesReport report = plan_shapes(shapes, {choice}, {});
      const json j = shapes_report_json(report);
      CHECK(j["optimizers"][0]["reference"]["state_bytes"].get<int64_t>() == reference_total);
    }
  }
  CHECK(compared > 1000);
  CHECK(extras > 100);
}

TEST_CASE("memory shapes: the reference's factoring rule is tally's default: the last two dims of 2+ dims") {
  // came-pytorch 0.1.3 and transformers: factored = len(shape) >= 2, statistics over shape[:-1] and
  // shape[:-2] + shape[-1:]. The golden files hold 0-d, 1-D, [1, n], 3-D and 4-D tensors.
  const json ref = read_json(state_bytes_dir() / "conv_experts.json");
  const ModelShapes shapes = read_model_shapes(state_bytes_dir() / "conv_experts.json");
  const StateFigures came = plan_state(shapes.tensors, {.name = "came"}, DType::f32);
  for (size_t i = 0; i < shapes.tensors.size(); ++i) {
    const Shape& s = shapes.tensors[i].shape;
    const bool reference_factored = ref["cases"]["came"]["state"][shapes.tensors[i].name].contains("exp_avg_sq_row");
    CHECK(reference_factored == (s.size() >= 2));
    CHECK(came.factoring[i].factored == reference_factored);
  }
}

TEST_CASE("memory shapes: the factoring decision in words") {
  using optim::describe_factoring;
  using optim::factored_dims;
  using optim::Factoring;
  CHECK(describe_factoring({768, 3072}, factored_dims({768, 3072}, Factoring::last_two_dims, 128)) ==
        "factored: last two dims 768x3072");
  CHECK(describe_factoring({8, 4096, 14336}, factored_dims({8, 4096, 14336}, Factoring::last_two_dims, 128)) ==
        "factored: last two dims 4096x14336 (8 such matrices)");
  CHECK(describe_factoring({768}, factored_dims({768}, Factoring::last_two_dims, 128)) == "not factored: 1-D");
  CHECK(describe_factoring({}, factored_dims({}, Factoring::last_two_dims, 128)) == "not factored: 0-D");
  CHECK(describe_factoring({4096, 3, 11008}, factored_dims({4096, 3, 11008}, Factoring::two_largest_dims, 128)) ==
        "factored: dims 0 and 2 (4096x11008), the two largest (3 such matrices)");
  CHECK(describe_factoring({4096, 64, 50}, factored_dims({4096, 64, 50}, Factoring::two_largest_dims, 128)) ==
        "not factored: its two largest dims are 4096x64, and 64 < 128");
  CHECK(describe_factoring({768, 3072}, optim::FactoredDims{}) == "dense (this optimizer does not factor)");
  // Through the optimizers built on the meta device.
  const std::vector<ModelTensor> t = {{.name = "w", .shape = {64, 32}}, {.name = "b", .shape = {32}}};
  const StateFigures came = plan_state(t, {.name = "came"}, DType::f32);
  CHECK(describe_factoring(t[0].shape, came.factoring[0]) == "factored: last two dims 64x32");
  CHECK(describe_factoring(t[1].shape, came.factoring[1]) == "not factored: 1-D");
  const StateFigures adamw = plan_state(t, {.name = "adamw"}, DType::f32);
  CHECK(adamw.factoring[0].reason == optim::FactoringReason::never);
}

TEST_CASE("memory shapes: the ledger's bytes are the closed-form prediction's, for every registered optimizer") {
  const ModelShapes shapes = read_model_shapes(state_bytes_dir() / "conv_experts.json");
  std::vector<optim::NamedShape> named;
  int64_t n = 0;
  for (const ModelTensor& t : shapes.tensors) named.push_back({.name = t.name, .shape = t.shape}), n += numel(t.shape);
  const Ledger& meta = ledger(Device::meta());
  const int64_t live_before = meta.total().live_requested;
  for (const optim::OptimizerEntry& e : optim::optimizers()) {
    INFO(e.name);
    const OptimizerChoice choice{.name = e.name};
    const StateFigures f32 = plan_state(shapes.tensors, choice, DType::f32);
    CHECK(f32.state == optim::total_bytes(e.predict(named, {}, {})));
    CHECK(f32.parameters == 4 * n);
    CHECK(f32.gradients == 4 * n);
    // bf16 with f32 master weights: 2-byte parameters and gradients, the masters in the state.
    const StateFigures bf16 = plan_state(shapes.tensors, choice, DType::bf16);
    CHECK(bf16.parameters == 2 * n);
    CHECK(bf16.gradients == 2 * n);
    CHECK(bf16.state_by_kind.at("master") == 4 * n);
    CHECK(bf16.state == f32.state + 4 * n);
    // ZeRO 1 over 3 ranks: each rank's part as the closed form cuts it; the parameters and gradients whole.
    for (int r = 0; r < 3; ++r) {
      const optim::ShardOf shard{.rank = r, .world = 3};
      const Parallelism zero1{.world = 3, .rank = r, .zero = ZeroStage::zero1};
      const StateFigures part = plan_state(shapes.tensors, choice, DType::f32, zero1);
      CHECK(part.state == optim::total_bytes(e.predict(named, {}, shard)));
      CHECK(part.parameters == 4 * n);
      CHECK(part.comm_buffer > 0);
    }
    CHECK(meta.total().live_requested == live_before);  // everything planned was freed
  }
}

TEST_CASE("memory shapes: every setting that changes the state gets a row, and only those") {
  // A matrix, a vector and a 3-D tensor whose two largest dims are under 128 (so optax's rule differs).
  const std::vector<ModelTensor> t = {
      {.name = "w", .shape = {256, 512}}, {.name = "b", .shape = {512}}, {.name = "e", .shape = {4, 16, 24}}};
  std::vector<OptimizerChoice> all;
  for (const optim::OptimizerEntry& e : optim::optimizers()) all.push_back({.name = e.name});
  std::set<std::string> labels;
  for (const PlannedOptimizer& p : with_state_variants(all, t)) labels.insert(p.label);
  for (const char* want : {"came", "came --came-bf16-m", "came --came-factor-largest", "adamw", "adafactor",
                           "adafactor --no-adafactor-beta1", "adafactor --came-factor-largest", "sgd",
                           "sgd --momentum 0"})
    CHECK_MESSAGE(labels.count(want) == 1, want);
  for (const char* not_state : {"came --came-confidence-ones", "came --beta1 0", "adamw --beta1 0",
                                "adamw --weight-decay 0", "sgd --nesterov"})
    CHECK_MESSAGE(labels.count(not_state) == 0, not_state);
  // Matrices only (2-D, both dims >= 128): optax's rule factors the same dims, so no row for it.
  std::set<std::string> matrices;
  for (const PlannedOptimizer& p : with_state_variants(all, {t[0], t[1]})) matrices.insert(p.label);
  CHECK(matrices.count("came --came-factor-largest") == 0);
  CHECK(matrices.count("came --came-bf16-m") == 1);
  // Settings given on the command line stay in every row of their optimizer; a row names the value it tries.
  OptimizerChoice sgd{.name = "sgd"};
  sgd.settings.set("momentum", "0.5");
  OptimizerChoice came{.name = "came"};
  came.settings.set("came-bf16-m", "true");
  std::vector<std::string> given;
  for (const PlannedOptimizer& p : with_state_variants({sgd, came}, {t[0]})) given.push_back(p.label);
  CHECK(given == std::vector<std::string>{"sgd --momentum 0.5", "sgd --momentum 0", "came --came-bf16-m",
                                          "came without --came-bf16-m"});
}

TEST_CASE("memory shapes: a safetensors header, a sharded index and a shape list give the same tensors") {
  const ModelShapes file = read_model_shapes(state_bytes_dir() / "llama_tiny.safetensors");
  const ModelShapes index =
      read_model_shapes(state_bytes_dir() / "llama_tiny_sharded" / "model.safetensors.index.json");
  const ModelShapes list = read_model_shapes(state_bytes_dir() / "llama_tiny.json");
  CHECK(file.format == "safetensors header");
  CHECK(index.format == "safetensors index (2 shards)");
  CHECK(list.format == "shape list");
  auto by_name = [](const ModelShapes& m) {
    std::map<std::string, std::pair<Shape, std::string>> out;
    for (const ModelTensor& t : m.tensors) out[t.name] = {t.shape, t.dtype};
    return out;
  };
  CHECK(by_name(file) == by_name(index));
  CHECK(by_name(file) == by_name(list));  // "float32" in the list reads as F32
  CHECK(file.tensors.size() == 21);
  // The header reader sees what the full reader sees.
  const io::SafetensorsReader full(state_bytes_dir() / "llama_tiny.safetensors");
  const io::SafetensorsHeader h = io::read_safetensors_header(state_bytes_dir() / "llama_tiny.safetensors");
  REQUIRE(h.tensors.size() == full.tensors().size());
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    CHECK(h.tensors[i].name == full.tensors()[i].name);
    CHECK(h.tensors[i].shape == full.tensors()[i].shape);
    CHECK(h.tensors[i].begin == full.tensors()[i].begin);
    CHECK(h.tensors[i].bytes.empty());
  }
  CHECK(h.header_size == full.header_size());
  CHECK(h.metadata == full.metadata());
}

TEST_CASE("memory shapes: only the header of a large safetensors file is read") {
  // A 6 GiB file (sparse: its data is never written, so never read either) of one bf16 tensor and an i64 buffer.
  TempDir dir;
  const fs::path p = dir.path / "big.safetensors";
  const int64_t rows = 49152, cols = 65536;  // 3 Gi elements of BF16
  const uint64_t bytes = uint64_t(rows * cols) * 2;
  const std::string header = cat(R"({"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[)", rows, ",", cols,
                                 R"(],"data_offsets":[0,)", bytes, R"(]},)",
                                 R"("pos":{"dtype":"I64","shape":[8],"data_offsets":[)", bytes, ",", bytes + 64, "]}}");
  write_safetensors_header(p, header, bytes + 64);
  const ModelShapes m = read_model_shapes(p);
  REQUIRE(m.tensors.size() == 2);
  CHECK(m.tensors[0].shape == Shape{rows, cols});
  CHECK(m.tensors[0].trained());
  CHECK_FALSE(m.tensors[1].trained());  // an integer buffer is left out of training
  const ShapesReport r = plan_shapes(m, {{.name = "came"}, {.name = "adamw"}}, {});
  CHECK(r.parameter_count == rows * cols);
  REQUIRE(r.trained.size() == 1);
  CHECK(r.rows[0].f32.state == 4 * rows * cols + 8 * (rows + cols));  // came: exp_avg + 4 factored statistics
  CHECK(r.adamw_f32 == 8 * rows * cols);
}

TEST_CASE("memory shapes: bad input is a clear error naming the file and the tensor") {
  TempDir dir;
  const fs::path d = dir.path;
  CHECK(error_of([&] { read_model_shapes(d / "missing.safetensors"); }).find("no such file") != std::string::npos);
  CHECK(error_of([&] { read_model_shapes(d); }).find("is a directory") != std::string::npos);
  // Safetensors: too short, a header length past the end, a header that is no JSON, sizes that do not add up.
  write_text(d / "short.safetensors", "abc");
  CHECK(error_of([&] { read_model_shapes(d / "short.safetensors"); }).find("truncated") != std::string::npos);
  write_text(d / "long.safetensors", std::string("\xff\x00\x00\x00\x00\x00\x00\x00{}", 10));
  CHECK(error_of([&] { read_model_shapes(d / "long.safetensors"); }).find("header length 255 is larger") !=
        std::string::npos);
  write_safetensors_header(d / "garbage.safetensors", "{not json", 0);
  CHECK(error_of([&] { read_model_shapes(d / "garbage.safetensors"); }).find("not valid JSON") != std::string::npos);
  write_safetensors_header(d / "size.safetensors", R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,60]}})", 60);
  const std::string size_error = error_of([&] { read_model_shapes(d / "size.safetensors"); });
  CHECK(size_error.find("tensor 'w'") != std::string::npos);
  CHECK(size_error.find("size mismatch") != std::string::npos);
  write_safetensors_header(d / "past.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  CHECK(error_of([&] { read_model_shapes(d / "past.safetensors"); }).find("outside the data section") !=
        std::string::npos);
  // Shape lists.
  auto list_error = [&](const std::string& text) {
    write_text(d / "list.json", text);
    return error_of([&] { read_model_shapes(d / "list.json"); });
  };
  CHECK(list_error("[{\"name\": \"w\", \"shape\": [2, -1]}]").find("tensor 'w' (entry 0): shape [2,-1] must hold "
                                                                   "non-negative integers") != std::string::npos);
  CHECK(list_error("[{\"name\": \"w\", \"shape\": [2.5]}]").find("non-negative integers") != std::string::npos);
  CHECK(list_error("[{\"name\": \"w\", \"shape\": \"2x3\"}]").find("\"shape\" must be an array") != std::string::npos);
  CHECK(list_error("[{\"name\": \"w\"}]").find("tensor 'w' (entry 0)") != std::string::npos);
  CHECK(list_error("[{\"shape\": [2]}]").find("entry 0: \"name\" must be a non-empty string") != std::string::npos);
  CHECK(list_error("[{\"name\": \"w\", \"shape\": [2]}, {\"name\": \"w\", \"shape\": [3]}]").find("appears twice") !=
        std::string::npos);
  CHECK(list_error("[{\"name\": \"w\", \"shape\": [2], \"dtype\": \"F7\"}]").find("unknown dtype \"F7\"") !=
        std::string::npos);
  CHECK(list_error("[{\"name\": \"w\", \"shape\": [4294967296, 4294967296]}]").find("more elements than") !=
        std::string::npos);
  CHECK(list_error("[]").find("lists no tensors") != std::string::npos);
  CHECK(list_error("{\"model\": 1}").find("found an object with neither") != std::string::npos);
  CHECK(list_error("[1, 2").find("not valid JSON") != std::string::npos);
  CHECK(list_error("3").find("must be a JSON array") != std::string::npos);
  // Indexes: a missing shard, a shard outside the index's directory, a tensor the shard does not hold.
  auto index_error = [&](const std::string& text) {
    write_text(d / "model.safetensors.index.json", text);
    return error_of([&] { read_model_shapes(d / "model.safetensors.index.json"); });
  };
  CHECK(index_error(R"({"weight_map": {"w": "absent.safetensors"}})").find("shard 'absent.safetensors'") !=
        std::string::npos);
  CHECK(index_error(R"({"weight_map": {"w": "../x.safetensors"}})").find("is not a file name in the index's") !=
        std::string::npos);
  write_safetensors_header(d / "one.safetensors", R"({"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  CHECK(index_error(R"({"weight_map": {"w": "one.safetensors"}})").find("does not hold it") != std::string::npos);
  CHECK(index_error(R"({"weight_map": ["w"]})").find("\"weight_map\" must be an object") != std::string::npos);
  // Tensors each within bounds, too many elements in all.
  std::string huge = "[";
  for (int i = 0; i < 64; ++i)
    huge += cat(i ? "," : "", R"({"name": "t)", i, R"(", "shape": [1073741824, 536870912]})");
  write_text(d / "huge.json", huge + "]");
  CHECK(error_of([&] { plan_shapes(read_model_shapes(d / "huge.json"), {{.name = "adamw"}}, {}); })
            .find("elements in all") != std::string::npos);
  // Tensors of no element, a zero after the first dim included: planned (no state), for every optimizer.
  write_text(d / "empty.json", R"([{"name": "a", "shape": [5, 0]}, {"name": "b", "shape": [2, 0, 3]},
                                    {"name": "c", "shape": [4, 6]}])");
  std::vector<OptimizerChoice> every;
  for (const optim::OptimizerEntry& e : optim::optimizers()) every.push_back({.name = e.name});
  CHECK_NOTHROW(plan_shapes(read_model_shapes(d / "empty.json"), every, {}));
  // Nothing to train.
  write_text(d / "ints.json", R"([{"name": "ids", "shape": [8], "dtype": "int64"}])");
  CHECK(error_of([&] { plan_shapes(read_model_shapes(d / "ints.json"), {{.name = "came"}}, {}); })
            .find("no floating-point tensor") != std::string::npos);
}

TEST_CASE("memory shapes: the report lists every optimizer, sorted by state bytes, with its reference") {
  const ModelShapes m = read_model_shapes(state_bytes_dir() / "gpt2_tiny.json");
  std::vector<OptimizerChoice> all;
  for (const optim::OptimizerEntry& e : optim::optimizers()) all.push_back({.name = e.name});
  const ShapesReport r = plan_shapes(m, all, {});
  const std::string text = format_shapes_report(r, TensorListing::by_shape);
  for (const optim::OptimizerEntry& e : optim::optimizers()) CHECK(text.find("\n" + e.name + " ") != std::string::npos);
  CHECK(text.find("came-pytorch 0.1.3 (came_pytorch.CAME): ") != std::string::npos);
  CHECK(text.find(" bytes: the same state tensors, and 'RMS' for each parameter") != std::string::npos);
  CHECK(text.find("'step': a 0-d float32 tensor (4 bytes) per parameter") != std::string::npos);
  CHECK(text.find("beyond came-pytorch 0.1.3 (came_pytorch.CAME): --came-bf16-m") != std::string::npos);
  CHECK(text.find("--came-bf16-m (tally only): exp_avg is kept in bf16") != std::string::npos);
  CHECK(text.find("factored: last two dims 64x16") != std::string::npos);
  CHECK(text.find("not factored: 1-D") != std::string::npos);
  // Largest state first.
  const size_t adamw = text.find("\nadamw "), sgd_plain = text.find("\nsgd --momentum 0 ");
  REQUIRE(adamw != std::string::npos);
  REQUIRE(sgd_plain != std::string::npos);
  CHECK(adamw < sgd_plain);
  const json j = shapes_report_json(r);
  CHECK(j["parameters"]["count"].get<int64_t>() == r.parameter_count);
  for (const json& o : j["optimizers"]) {
    CHECK(o["f32"]["tensors"].size() == r.trained.size());
    CHECK(o["f32"]["total"].get<int64_t>() ==
          4 * r.parameter_count * 2 + o["f32"]["state_bytes"].get<int64_t>());
  }
}

}  // TEST_SUITE
