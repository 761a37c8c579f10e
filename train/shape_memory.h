// What training a model of given tensor shapes holds in tally apart from activations: its parameters, their
// gradients, and the state of every registered optimizer (and of each setting that changes that state), for f32
// training and for bf16 training with f32 master weights, whole or as one rank's ZeRO-1 part. `tally memory --shapes`.
//
// Nothing is computed from formulas: the model's parameters are made on the meta device (shapes, no memory), each
// optimizer is built over them through the registry and allocates its state there, and the bytes are read back
// from the meta ledger and the optimizer. They are what the same code allocates on a real device, by construction.
// Also which tensors an optimizer factors and why, and how its state differs from its reference implementation's
// (came-pytorch 0.1.3, torch.optim, transformers' Adafactor): docs/memory.md.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "optim/optimizer.h"
#include "train/memory_plan.h"
#include "train/model_shapes.h"
#include "train/setup.h"

namespace tally::train {

// ---- one optimizer over the tensors ----

// One rank's bytes of one optimizer in one training precision (requested bytes, as the ledger counts them).
struct StateFigures {
  int64_t parameters = 0;
  int64_t gradients = 0;   // one per parameter, of its dtype
  int64_t state = 0;       // optimizer state; with bf16 parameters the f32 master weights ("master") too
  int64_t workspace = 0;   // the optimizer's step workspace (bf16: the f32 buffer gradients are widened into)
  int64_t comm_buffer = 0;  // more than one rank: the data-parallel communication buffer ("dist:bucket")
  std::map<std::string, int64_t> state_by_kind = {};  // by state name ("exp_avg", "master", ...)
  std::vector<optim::TensorState> tensors = {};  // per tensor: this rank's part of its state
  std::vector<optim::FactoredDims> factoring = {};  // per tensor, whole: which dims the optimizer factors, and why
  int64_t total() const { return parameters + gradients + state; }
};

// Builds `tensors` as parameters of dtype `dtype` (f32, or bf16 with f32 master weights) on the meta device, with
// their gradients, and `choice` over them (cut for ZeRO 1 as `parallel` says), allocates its state, and reads the
// bytes. Every tensor is taken as a trained parameter.
StateFigures plan_state(const std::vector<ModelTensor>& tensors, const OptimizerChoice& choice, DType dtype,
                        const Parallelism& parallel = {});

// ---- which optimizers ----

struct PlannedOptimizer {
  std::string label = {};  // "came", "came --came-bf16-m", "sgd --momentum 0": how to ask for it
  OptimizerChoice choice = {};
  std::string varied = {};  // the setting this row changes from its optimizer's row, "" for that row itself
};

// Each of `optimizers`, then one row per setting whose change alters its state for tensors of these shapes: a
// switch turned over, or a number set to 0 (or back to its default). Found by trying every setting the optimizer
// declares, so an optimizer added to the registry comes with its own rows.
std::vector<PlannedOptimizer> with_state_variants(const std::vector<OptimizerChoice>& optimizers,
                                                  const std::vector<ModelTensor>& tensors);

// ---- the reference implementations ----

// A state tensor a reference implementation keeps per parameter and tally does not.
struct ReferenceExtra {
  std::string state = {};  // its key in the reference's optimizer.state[p]: "RMS", "step"
  Shape shape = {};        // {}: a 0-d tensor
  std::string dtype = {};  // torch's spelling, for an f32 parameter: "float32"
  int64_t bytes = 0;
  std::string why = {};
};

// How an optimizer's state compares with its reference's, for f32 parameters at the optimizer's defaults: the same
// state tensors (names, shapes, dtypes, bytes: tests/train/memory_shapes.cpp checks it against what the reference
// allocates), plus `extras`. Settings of tally's the reference does not have are `beyond`.
struct ReferenceRule {
  std::string optimizer = {};       // registry name
  std::string implementation = {};  // "came-pytorch 0.1.3 (came_pytorch.CAME)"
  std::string factoring = {};       // its rule, "" when it keeps dense state only
  std::vector<ReferenceExtra> extras = {};
  std::vector<std::string> python_numbers = {};  // keys it keeps as Python numbers, no tensor ("step")
  std::map<std::string, std::string> beyond = {};  // setting -> how the state then differs from the reference's
};
const std::vector<ReferenceRule>& reference_rules();
const ReferenceRule* find_reference_rule(std::string_view optimizer);  // nullptr when none is recorded

// ---- the report ----

struct PlannedRow {
  PlannedOptimizer optimizer = {};
  StateFigures f32 = {}, bf16 = {};  // the rank `parallel.rank`
  std::vector<int64_t> rank_state = {};  // more than one rank (at most 64): every rank's f32 state bytes
};

struct ShapesReport {
  ModelShapes model = {};
  std::vector<ModelTensor> trained = {};  // the floating-point tensors, in the file's order
  int64_t parameter_count = 0;
  Parallelism parallel = {};
  std::vector<PlannedRow> rows = {};  // in registry order, each optimizer followed by its variants
  int64_t adamw_f32 = -1, adamw_bf16 = -1;  // AdamW's state at its defaults (-1: no AdamW in the registry)
};

ShapesReport plan_shapes(ModelShapes model, const std::vector<OptimizerChoice>& optimizers, Parallelism parallel);

enum class TensorListing : uint8_t {
  by_shape,    // one line per distinct shape, with the count of tensors of that shape
  each_tensor, // one line per tensor
};
std::string format_shapes_report(const ShapesReport& report, TensorListing listing);
nlohmann::json shapes_report_json(const ShapesReport& report);

}  // namespace tally::train
