// The op table: one OpCase per op (core/ops.h, and the autograd-aware views of Tensor), iterated by generic drivers:
//   tests/core/test_ops.cpp        values (given, or computed another way) and finite-difference gradients, f64 CPU
//   tests/cuda/test_cuda_ops.cpp   CUDA against the CPU in f64 and f32, forward and backward (skipped without a GPU)
//   tests/cuda/test_cuda_bf16.cpp  bf16 on CUDA against f32 on the CPU, forward and backward (skipped likewise)
// A case says how to make the op's inputs, runs the op as a lambda, and says what its output is checked against.
//
// Adding an op: write its kernels (core/kernels/cpu, core/kernels/cuda) and its forward and backward (core/ops/),
// then add one OpCase to op_cases.cpp - its forward; variants of its inputs (small ones with given values or for
// finite differences, awkward sizes and strided views for the kernels, Variant::forward where a variant sets one
// of the op's parameters); given values or a reference computed independently; tolerances where the defaults do
// not fit; Backward::none, a narrower `checks` or bf16_output where the op differs. Every driver then runs it.
// What a table cannot say (error messages, memory accounting, statistics of random ops) stays a specific test.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/ops.h"
#include "tests/gradcheck.h"

namespace tally::test {

using Inputs = std::vector<Tensor>;
using OpFn = std::function<Tensor(const Inputs&)>;

// The generic checks a variant runs under (a case's mask and a variant's mask both apply).
enum class Check : unsigned {
  none = 0,
  gradient = 1,  // central finite differences in f64 on the CPU (tests/gradcheck.h)
  cuda = 2,      // CUDA against the CPU in f64 and f32, forward and backward
  bf16 = 4,      // bf16 on CUDA against f32 on the CPU, forward and backward
  all = 7,
};
constexpr Check operator|(Check a, Check b) { return Check(unsigned(a) | unsigned(b)); }
constexpr Check operator&(Check a, Check b) { return Check(unsigned(a) & unsigned(b)); }
constexpr bool has(Check set, Check c) { return (set & c) == c; }
// Inputs too large for finite differences (each sampled element costs two forward passes, and the rounding of a
// large summed loss swamps the difference) or without any to perturb: the devices only.
inline constexpr Check kDevicesOnly = Check::cuda | Check::bf16;

// Whether the op has a backward (an in-place op outside autograd has none).
enum class Backward { yes, none };

// Integer ids spread uniformly over [0, classes), or skewed towards 0 so that many repeat (scatter-add backward).
enum class Spread { uniform, skewed };

// How the values of one input are made. Floating inputs take the dtype of the run; ids are i32.
struct Values {
  enum class Kind { normal, uniform, given, ids, given_ids } kind = Kind::normal;
  double lo = 0, hi = 0;  // uniform in [lo, hi)
  int64_t classes = 0;    // ids in [0, classes)
  Spread spread = Spread::uniform;
  std::vector<double> given = {};  // row-major
};
inline Values normal() { return {}; }  // normal(0, 1)
inline Values uniform(double lo, double hi) { return {.kind = Values::Kind::uniform, .lo = lo, .hi = hi}; }
inline Values given(std::vector<double> v) { return {.kind = Values::Kind::given, .given = std::move(v)}; }
inline Values ids(int64_t classes, Spread spread = Spread::uniform) {
  return {.kind = Values::Kind::ids, .classes = classes, .spread = spread};
}
inline Values given_ids(std::vector<double> v) { return {.kind = Values::Kind::given_ids, .given = std::move(v)}; }

// What the op sees of a leaf input: the leaf itself, or a view of it (transposed, offset, broadcast).
struct View {
  std::string name = "";                            // for messages, e.g. "transpose(0, 1)"
  std::function<Tensor(const Tensor&)> apply = {};  // empty: the leaf itself
};
View transposed(int64_t d0, int64_t d1);
View sliced(int64_t dim, int64_t start, int64_t end);
View permuted(std::vector<int64_t> dims);

// Whether the drivers ask for an input's gradient. A frozen input (a weight that is not trained, an input that is
// data) requires none, so the op runs its one-sided backward, and must leave that input without a gradient.
enum class Grad { taken, frozen };

// One input: a contiguous leaf of `shape` (gradients are taken with respect to it unless frozen), seen through
// `view`.
struct Arg {
  Shape shape = {};
  Values values = normal();  // a call, not "= {}", which trips GCC 12's -Wmaybe-uninitialized in the table
  View view = {};
  Grad grad = Grad::taken;
};

// What an output is checked against in f64 on the CPU: given values, and/or the same output computed another way
// from the same (viewed) inputs - a composition of other ops, or a scalar function element by element.
struct Expect {
  std::vector<double> values = {};  // row-major
  OpFn reference = {};
  std::optional<Shape> shape = {};
  double atol = 1e-6, rtol = 1e-6;  // |got - want| <= atol + rtol |want|, element by element
  bool defined() const { return !values.empty() || bool(reference) || shape.has_value(); }
};
// Expect.reference for an elementwise op: f applied to every element of the first input.
OpFn elementwise(std::function<double(double)> f);

// One set of inputs for a case.
struct Variant {
  std::vector<Arg> args = {};
  std::string note = "";      // what it is for, or the op's parameters ("dims {0, 2} keep")
  OpFn forward = {};          // its own forward when it sets a parameter of the op; the case's otherwise
  Expect expect = {};         // its own expectation; the case's otherwise
  Check checks = Check::all;  // the generic checks that suit these inputs
};

// Device tolerances, as max |got - want| / max |want| over a tensor (scale-aware; 0 asks for bit equality).
struct Tolerance {
  double f64 = 1e-10;  // CUDA against the CPU
  double f32 = 1e-5;
  double bf16 = 1e-2;       // bf16 on CUDA against f32 on the CPU: the output
  double bf16_grad = 1e-2;  // and the gradients
};

// One op: its forward and the variants it runs on, with what the drivers check them against.
struct OpCase {
  std::string op = "";
  OpFn forward = {};  // over the inputs as the op sees them (after their views)
  std::vector<Variant> variants = {};
  Expect expect = {};  // for every variant without its own
  Tolerance tol = {};
  Backward backward = Backward::yes;
  Check checks = Check::all;        // the generic checks the op supports
  DType bf16_output = DType::bf16;  // the output's dtype for bf16 inputs
  GradcheckOptions gradcheck = {};  // the finite differences' step and tolerances, where the defaults do not fit
};

// The table (tests/core/op_cases.cpp).
const std::vector<OpCase>& op_cases();

// ---- for the drivers ----

// add_layer_norm against add then layer_norm on `device` in `dtype` (3, 5, 67): the sum, the norm and the gradients
// of all four inputs, bit for bit (one kernel's arithmetic on the same values), with an upstream gradient for each
// output.
void check_add_layer_norm_as_composed(Device device, DType dtype);

// The checks that apply to variant v of case c.
inline Check checks_of(const OpCase& c, const Variant& v) { return c.checks & v.checks; }
const Expect& expect_of(const OpCase& c, const Variant& v);
// "matmul (3, 4).transpose(0, 1), (4, 5): note"
std::string describe(const OpCase& c, const Variant& v);
// The positions of the variant's frozen inputs (Grad::frozen).
std::vector<size_t> frozen_inputs(const Variant& v);
// The leaves of variant `index`: floating inputs in `dtype`, ids in i32, seeded by the variant's position.
Inputs make_leaves(const Variant& v, size_t index, DType dtype);
// The op on the leaves: each seen through its view, then the variant's (or the case's) forward.
Tensor run(const OpCase& c, const Variant& v, const Inputs& leaves);
// The leaves as the op sees them.
Inputs views_of(const Variant& v, const Inputs& leaves);
// Calls check(case, variant, index) for every variant that runs under `which` (Check::none: every variant), in one
// doctest subcase per op, with the variant described in the failure messages; an exception fails its variant
// only, so one broken op does not hide the others.
void for_each_variant(Check which, const std::function<void(const OpCase&, const Variant&, size_t)>& check);

}  // namespace tally::test
