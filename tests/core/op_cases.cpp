// The op table (see op_cases.h): one OpCase per op, in the order of core/ops.h, then the views of Tensor; and the
// helpers the drivers share (making inputs, applying views, describing a variant). Variants come in three kinds:
// small ones with given values or for finite differences, awkward sizes and strided views for the CUDA kernels
// (vector widths, tails, chunked reductions, T = 1), and the sizes around bf16's 8-wide packs.
#include "tests/core/op_cases.h"

#include <doctest/doctest.h>

#include <cmath>
#include <exception>
#include <utility>

namespace tally::test {

// ---- views, references, helpers ----

View transposed(int64_t d0, int64_t d1) {
  return {cat("transpose(", d0, ", ", d1, ")"), [d0, d1](const Tensor& t) { return t.transpose(d0, d1); }};
}
View sliced(int64_t dim, int64_t start, int64_t end) {
  return {cat("slice(", dim, ", ", start, ", ", end, ")"),
          [dim, start, end](const Tensor& t) { return t.slice(dim, start, end); }};
}
View permuted(std::vector<int64_t> dims) {
  std::string name = "permute(";
  for (size_t i = 0; i < dims.size(); ++i) name += cat(i ? ", " : "", dims[i]);
  return {name + ")", [dims](const Tensor& t) { return t.permute(dims); }};
}

OpFn elementwise(std::function<double(double)> f) {
  return [f](const Inputs& x) {
    std::vector<double> v = x[0].to_vector<double>();
    for (double& e : v) e = f(e);
    return from_vector<double>(v, x[0].shape());
  };
}

const Expect& expect_of(const OpCase& c, const Variant& v) { return v.expect.defined() ? v.expect : c.expect; }

std::string describe(const OpCase& c, const Variant& v) {
  std::string s = c.op;
  for (size_t i = 0; i < v.args.size(); ++i) {
    const Arg& a = v.args[i];
    s += cat(i ? ", " : " ", shape_str(a.shape), a.view.apply ? "." + a.view.name : "");
    if (a.values.kind == Values::Kind::ids || a.values.kind == Values::Kind::given_ids) s += " ids";
  }
  return v.note.empty() ? s : s + ": " + v.note;
}

namespace {
Tensor make_leaf(const Arg& a, uint64_t seed, DType dtype) {
  const Values& v = a.values;
  const bool integer = v.kind == Values::Kind::ids || v.kind == Values::Kind::given_ids;
  if (numel(a.shape) == 0) return empty(a.shape, {.dtype = integer ? DType::i32 : dtype});  // no values to make
  Generator gen(seed);
  switch (v.kind) {
    case Values::Kind::normal:
      return randn(a.shape, gen, {.dtype = dtype});
    case Values::Kind::uniform: {
      Tensor t = empty(a.shape, {.dtype = dtype});
      uniform_(t, gen, v.lo, v.hi);
      return t;
    }
    case Values::Kind::given:
      TALLY_CHECK(int64_t(v.given.size()) == numel(a.shape), "op table: ", v.given.size(), " values for ",
                  shape_str(a.shape));
      return from_vector<double>(v.given, a.shape, {.dtype = dtype});
    case Values::Kind::ids: {
      std::vector<int32_t> out;
      for (double u : rand(a.shape, gen, {.dtype = DType::f64}).to_vector<double>()) {
        const double w = v.spread == Spread::skewed ? u * u : u;
        out.push_back(int32_t(w * double(v.classes)) % int32_t(v.classes));
      }
      return from_vector<int32_t>(out, a.shape);
    }
    case Values::Kind::given_ids: {
      TALLY_CHECK(int64_t(v.given.size()) == numel(a.shape), "op table: ", v.given.size(), " ids for ",
                  shape_str(a.shape));
      std::vector<int32_t> out(v.given.begin(), v.given.end());
      return from_vector<int32_t>(out, a.shape);
    }
  }
  fail("op table: unknown kind of values");
}
}  // namespace

std::vector<size_t> frozen_inputs(const Variant& v) {
  std::vector<size_t> out;
  for (size_t i = 0; i < v.args.size(); ++i)
    if (v.args[i].grad == Grad::frozen) out.push_back(i);
  return out;
}

Inputs make_leaves(const Variant& v, size_t index, DType dtype) {
  Inputs out;
  for (size_t i = 0; i < v.args.size(); ++i) out.push_back(make_leaf(v.args[i], 100 * index + i + 1, dtype));
  return out;
}

Inputs views_of(const Variant& v, const Inputs& leaves) {
  Inputs seen;
  for (size_t i = 0; i < leaves.size(); ++i)
    seen.push_back(v.args[i].view.apply ? v.args[i].view.apply(leaves[i]) : leaves[i]);
  return seen;
}

Tensor run(const OpCase& c, const Variant& v, const Inputs& leaves) {
  return (v.forward ? v.forward : c.forward)(views_of(v, leaves));
}

void for_each_variant(Check which, const std::function<void(const OpCase&, const Variant&, size_t)>& check) {
  for (const OpCase& c : op_cases()) {
    SUBCASE(c.op.c_str()) {
      for (size_t i = 0; i < c.variants.size(); ++i) {
        const Variant& v = c.variants[i];
        if (!has(checks_of(c, v), which)) continue;
        const std::string what = describe(c, v);
        INFO(what);
        try {
          check(c, v, i);
        } catch (const std::exception& e) {
          FAIL_CHECK(what, " threw: ", e.what());
        }
      }
    }
  }
}

namespace {

// ---- elementwise ----

const std::vector<double> k23 = {1, 2, 3, 4, 5, 6};  // a (2, 3) with given values

// The shapes every binary op runs on; `b` makes the second operand (a safe divisor for div).
std::vector<Variant> binary_variants(const Values& b) {
  const std::pair<Shape, Shape> shapes[] = {
      // small, for finite differences
      {{3, 4}, {4}}, {{3, 1}, {2, 1, 4}}, {{3, 4}, {3, 1}}, {{2, 3}, {3}},
      // awkward sizes and 0-d operands for the CUDA kernels
      {{1}, {1}}, {{769}, {769}}, {{17, 33}, {33}}, {{17, 33}, {17, 1}}, {{3, 1, 5}, {1, 4, 1}}, {{257}, {}},
      {{}, {257}}, {{2, 3, 4, 5}, {3, 1, 5}}, {{4099}, {1}},
      // around bf16's 8-wide packs
      {{5, 37}, {5, 37}}, {{5, 37}, {37}}, {{4, 1, 9}, {1, 6, 9}}, {{33}, {1}}, {{1}, {19}}};
  std::vector<Variant> v;
  for (const auto& [sa, sb] : shapes) v.push_back({.args = {{.shape = sa}, {.shape = sb, .values = b}}});
  v.push_back({.args = {{.shape = {4, 3}, .view = transposed(0, 1)}, {.shape = {3, 4}, .values = b}}});
  v.push_back({.args = {{.shape = {33, 17}, .view = transposed(0, 1)}, {.shape = {17, 33}, .values = b}}});
  v.push_back({.args = {{.shape = {1031}, .view = sliced(0, 1, 1030)},
                        {.shape = {1031}, .values = b, .view = sliced(0, 2, 1031)}},
               .note = "offsets of one and two elements: misaligned for vector loads"});
  return v;
}

// Given values first, then the shared shapes.
std::vector<Variant> with(std::vector<Variant> first, std::vector<Variant> rest) {
  first.insert(first.end(), std::make_move_iterator(rest.begin()), std::make_move_iterator(rest.end()));
  return first;
}

// The variants of an elementwise unary op; `x` makes its input (positive for log, sqrt, ...).
std::vector<Variant> unary_variants(const Values& x) {
  std::vector<Variant> v;
  v.push_back({.args = {{.shape = {3}, .values = given({0.5, 1.0, 2.0})}}});
  for (int64_t n : {7, 1, 3, 17, 257, 4099, 8, 1001}) v.push_back({.args = {{.shape = {n}, .values = x}}});
  v.push_back({.args = {{.shape = {4, 5}, .values = x}}});
  v.push_back(
      {.args = {{.shape = {4, 5}, .values = x, .view = transposed(0, 1)}}, .note = "made contiguous by the op"});
  v.push_back({.args = {{.shape = {17, 33}, .values = x, .view = transposed(0, 1)}}});
  return v;
}

OpCase unary(std::string op, OpFn forward, std::function<double(double)> f, const Values& x,
             std::vector<Variant> extra = {}) {
  return {.op = std::move(op),
          .forward = std::move(forward),
          .variants = with(std::move(extra), unary_variants(x)),
          .expect = {.reference = elementwise(std::move(f))},
          .tol = {.f32 = 2e-6}};
}

double gelu_ref(double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }

void add_elementwise(std::vector<OpCase>& t) {
  const Values divisor = uniform(0.5, 2.0);
  t.push_back({.op = "add",
               .forward = [](const Inputs& x) { return add(x[0], x[1]); },
               .variants = with(
                   {{.args = {{.shape = {2, 3}, .values = given(k23)}, {.shape = {3}, .values = given({10, 20, 30})}},
                     .expect = {.values = {11, 22, 33, 14, 25, 36}}},
                    {.args = {{.shape = {2, 3}, .values = given(k23), .view = transposed(0, 1)},
                              {.shape = {2, 1}, .values = given({2, 4}), .view = transposed(0, 1)}},
                     .note = "strided operands",
                     .expect = {.values = {3, 8, 4, 9, 5, 10}}}},
                   binary_variants(normal()))});
  t.push_back(
      {.op = "sub",
       .forward = [](const Inputs& x) { return sub(x[0], x[1]); },
       .variants = with({{.args = {{.shape = {2, 3}, .values = given(k23)}, {.shape = {2, 1}, .values = given({2, 4})}},
                          .expect = {.values = {-1, 0, 1, 0, 1, 2}}}},
                        binary_variants(normal()))});
  const View expand_rows{"unsqueeze(0).expand(2, 3)", [](const Tensor& b) { return b.unsqueeze(0).expand({2, 3}); }};
  t.push_back(
      {.op = "mul",
       .forward = [](const Inputs& x) { return mul(x[0], x[1]); },
       .variants =
           with({{.args = {{.shape = {2, 3}, .values = given(k23)}, {.shape = {2, 1}, .values = given({2, 4})}},
                  .expect = {.values = {2, 4, 6, 16, 20, 24}}},
                 {.args = {{.shape = {3}, .values = given({10, 20, 30}), .view = expand_rows},
                           {.shape = {2, 3}, .values = given(k23)}},
                  .expect = {.values = {10, 40, 90, 40, 100, 180}}}},
                with(binary_variants(normal()),
                     {{.args = {{.shape = {2, 3}}, {.shape = {3}, .grad = Grad::frozen}}, .note = "b frozen"},
                      {.args = {{.shape = {2, 3}, .grad = Grad::frozen}, {.shape = {2, 3}}}, .note = "a frozen"}}))});
  t.push_back({.op = "div",
               .forward = [](const Inputs& x) { return div(x[0], x[1]); },
               .variants = with(
                   {{.args = {{.shape = {2, 3}, .values = given(k23)}, {.shape = {3}, .values = given({10, 20, 30})}},
                     .expect = {.values = {0.1, 0.1, 0.1, 0.4, 0.25, 0.2}}}},
                   with(binary_variants(divisor),
                        {{.args = {{.shape = {2, 3}}, {.shape = {3}, .values = divisor, .grad = Grad::frozen}},
                          .note = "b frozen"},
                         {.args = {{.shape = {2, 3}, .grad = Grad::frozen}, {.shape = {2, 3}, .values = divisor}},
                          .note = "a frozen"}}))});

  const Values positive = uniform(0.25, 3.0);
  t.push_back(unary("neg", [](const Inputs& x) { return neg(x[0]); }, [](double v) { return -v; }, normal()));
  t.push_back(unary("add_scalar", [](const Inputs& x) { return add_scalar(x[0], 0.75); },
                    [](double v) { return v + 0.75; }, normal()));
  t.push_back(unary("mul_scalar", [](const Inputs& x) { return mul_scalar(x[0], -1.25); },
                    [](double v) { return v * -1.25; }, normal()));
  t.push_back(unary("rsub_scalar", [](const Inputs& x) { return rsub_scalar(x[0], 2.0); },
                    [](double v) { return 2.0 - v; }, normal()));
  t.push_back(unary("rdiv_scalar", [](const Inputs& x) { return rdiv_scalar(x[0], 3.0); },
                    [](double v) { return 3.0 / v; }, positive));
  t.push_back(unary("pow_scalar", [](const Inputs& x) { return pow_scalar(x[0], 1.7); },
                    [](double v) { return std::pow(v, 1.7); }, positive,
                    {{.args = {{.shape = {3}, .values = given({0.5, 1.0, 2.0})}},
                      .note = "exponent 3",
                      .forward = [](const Inputs& x) { return pow_scalar(x[0], 3.0); },
                      .expect = {.values = {0.125, 1.0, 8.0}}}}));
  t.push_back(unary("exp", [](const Inputs& x) { return exp(x[0]); }, [](double v) { return std::exp(v); }, normal()));
  t.push_back(unary("log", [](const Inputs& x) { return log(x[0]); }, [](double v) { return std::log(v); }, positive));
  t.push_back(unary("sqrt", [](const Inputs& x) { return sqrt(x[0]); }, [](double v) { return std::sqrt(v); },
                    positive));
  t.push_back(unary("rsqrt", [](const Inputs& x) { return rsqrt(x[0]); }, [](double v) { return 1 / std::sqrt(v); },
                    positive));
  t.push_back(unary("tanh", [](const Inputs& x) { return tanh(x[0]); }, [](double v) { return std::tanh(v); },
                    uniform(-3, 3)));
  // GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  t.push_back(unary("gelu", [](const Inputs& x) { return gelu(x[0]); }, gelu_ref, uniform(-4, 4),
                    {{.args = {{.shape = {1}, .values = given({-3.0})}}}}));

  // In place, outside autograd: y + alpha x in a copy of y.
  t.push_back({.op = "add_",
               .forward =
                   [](const Inputs& x) {
                     Tensor y = x[0].detach().clone();
                     add_(y, x[1], -0.3);
                     return y;
                   },
               .variants = {{.args = {{.shape = {1}}, {.shape = {1}}}},
                            {.args = {{.shape = {5}}, {.shape = {5}}}},
                            {.args = {{.shape = {1027}}, {.shape = {1027}}}},
                            {.args = {{.shape = {1001}}, {.shape = {1001}}}}},
               .expect = {.reference =
                              [](const Inputs& x) {
                                std::vector<double> y = x[0].to_vector<double>(), s = x[1].to_vector<double>();
                                for (size_t i = 0; i < y.size(); ++i) y[i] += -0.3 * s[i];
                                return from_vector<double>(y, x[0].shape());
                              }},
               .backward = Backward::none,
               .checks = kDevicesOnly});
}

// ---- reductions ----

OpFn sum_over(std::vector<int64_t> dims, KeepDim keep = KeepDim::no) {
  return [dims, keep](const Inputs& x) { return sum(x[0], dims, keep); };
}
OpFn mean_over(std::vector<int64_t> dims, KeepDim keep = KeepDim::no) {
  return [dims, keep](const Inputs& x) { return mean(x[0], dims, keep); };
}
OpFn max_over(int64_t dim, KeepDim keep = KeepDim::no) {
  return [dim, keep](const Inputs& x) { return max(x[0], dim, keep); };
}
std::string dims_note(const std::vector<int64_t>& dims, KeepDim keep) {
  std::string s = "dims {";
  for (size_t i = 0; i < dims.size(); ++i) s += cat(i ? ", " : "", dims[i]);
  return s + (keep == KeepDim::yes ? "} keep" : "}");
}

void add_reductions(std::vector<OpCase>& t) {
  std::vector<Variant> sums = {
      {.args = {{.shape = {2, 3}, .values = given(k23)}}, .note = "all", .expect = {.values = {21}}},
      {.args = {{.shape = {2, 3}, .values = given(k23)}},
       .note = "dims {0}",
       .forward = sum_over({0}),
       .expect = {.values = {5, 7, 9}}},
      {.args = {{.shape = {2, 3}, .values = given(k23)}},
       .note = "dims {1}",
       .forward = sum_over({1}),
       .expect = {.values = {6, 15}}},
      {.args = {{.shape = {2, 3}, .values = given(k23)}},
       .note = "dims {1} keep",
       .forward = sum_over({1}, KeepDim::yes),
       .expect = {.values = {6, 15}, .shape = Shape{2, 1}}},
      {.args = {{.shape = {2, 3}, .values = given(k23)}},
       .note = "dims {0, 1}",
       .forward = sum_over({0, 1}),
       .expect = {.values = {21}}},
      {.args = {{.shape = {2, 3}, .values = given(k23), .view = transposed(0, 1)}},
       .note = "dims {1}",
       .forward = sum_over({1}),
       .expect = {.values = {5, 7, 9}}},
      {.args = {{.shape = {3, 4, 5}}},
       .note = "dims {0, 2} equal two sums",
       .forward = sum_over({0, 2}),
       .expect = {.reference = [](const Inputs& x) { return sum(sum(x[0], {2}), {0}); }, .atol = 1e-12, .rtol = 1e-12}},
      {.args = {{.shape = {3, 4, 5}}},
       .note = "dims {-1} is dims {2}",
       .forward = sum_over({-1}),
       .expect = {.reference = [](const Inputs& x) { return sum(x[0], {2}); }, .atol = 0, .rtol = 0}},
      {.args = {{.shape = {3, 4}}}, .note = "dims {1}", .forward = sum_over({1})},
      {.args = {{.shape = {2, 3, 4}}}, .note = "dims {0, 2} keep", .forward = sum_over({0, 2}, KeepDim::yes)},
      {.args = {{.shape = {2, 3, 4}, .view = permuted({2, 0, 1})}}, .note = "dims {0}", .forward = sum_over({0})},
      {.args = {{.shape = {1, 1}}}, .note = "one element"},
      {.args = {{.shape = {300007}}}, .note = "a long vector, in chunks", .checks = kDevicesOnly},
      {.args = {{.shape = {5000, 37}}},
       .note = "columns over 5000 rows, in chunks",
       .forward = sum_over({0}),
       .checks = kDevicesOnly},
      {.args = {{.shape = {6, 5, 43}}}, .note = "dims {2}", .forward = sum_over({2})},
      {.args = {{.shape = {6, 5, 43}}}, .note = "dims {0, 1} keep", .forward = sum_over({0, 1}, KeepDim::yes)}};
  for (std::vector<int64_t> dims : std::vector<std::vector<int64_t>>{{0}, {1}, {2}, {0, 2}, {0, 1, 2}})
    for (KeepDim keep : {KeepDim::no, KeepDim::yes})
      sums.push_back(
          {.args = {{.shape = {5, 17, 33}}}, .note = dims_note(dims, keep), .forward = sum_over(dims, keep)});
  t.push_back({.op = "sum", .forward = [](const Inputs& x) { return sum(x[0]); }, .variants = std::move(sums)});

  t.push_back(
      {.op = "mean",
       .forward = [](const Inputs& x) { return mean(x[0]); },
       .variants = {{.args = {{.shape = {2, 3}, .values = given(k23)}},
                     .note = "dims {0}",
                     .forward = mean_over({0}),
                     .expect = {.values = {2.5, 3.5, 4.5}}},
                    {.args = {{.shape = {2, 3}, .values = given(k23)}}, .note = "all", .expect = {.values = {3.5}}},
                    {.args = {{.shape = {3, 4}}}, .note = "dims {-1}", .forward = mean_over({-1})},
                    {.args = {{.shape = {3, 4}}}, .note = "all"},
                    {.args = {{.shape = {5, 17, 33}}}, .note = "all"},
                    {.args = {{.shape = {6, 5, 43}}}, .note = "all"}}});

  const std::vector<double> m23 = {1, 7, 3, 9, 2, 4};
  std::vector<Variant> maxes = {
      {.args = {{.shape = {2, 3}, .values = given(m23)}}, .note = "dim 1", .expect = {.values = {7, 9}}},
      {.args = {{.shape = {2, 3}, .values = given(m23)}},
       .note = "dim 0",
       .forward = max_over(0),
       .expect = {.values = {9, 7, 4}}},
      {.args = {{.shape = {3, 5}}}, .note = "dim 1"},
      {.args = {{.shape = {4, 3}}}, .note = "dim 0 keep", .forward = max_over(0, KeepDim::yes)},
      // Ties: the first maximum wins on every backend (the gradient goes there); not differentiable at a tie.
      {.args = {{.shape = {2, 4}, .values = given({1, 3, 3, 2, 3, 0, -1, -1})}},
       .note = "ties, dim 1 keep",
       .forward = max_over(1, KeepDim::yes),
       .expect = {.values = {3, 3}, .shape = Shape{2, 1}},
       .checks = kDevicesOnly},
      {.args = {{.shape = {3, 5000}}}, .note = "long rows, dim 1"},
      {.args = {{.shape = {6, 5, 43}}}, .note = "dim 1"},
      {.args = {{.shape = {6, 5, 43}}}, .note = "dim 2", .forward = max_over(2)}};
  for (int64_t d : {0, 1, 2})
    maxes.push_back({.args = {{.shape = {7, 257, 3}}}, .note = cat("dim ", d), .forward = max_over(d)});
  t.push_back({.op = "max", .forward = max_over(1), .variants = std::move(maxes)});
}

// ---- matrix products ----

Shape swap_last(Shape s) {
  std::swap(s[s.size() - 1], s[s.size() - 2]);
  return s;
}
// a @ b where either may be passed as the transposed view of its (contiguous) transpose.
enum class Layout { plain, transposed };
Variant product(const Shape& a, Layout la, const Shape& b, Layout lb, Check checks = Check::all) {
  auto arg = [](const Shape& s, Layout l) {
    return l == Layout::plain ? Arg{.shape = s} : Arg{.shape = swap_last(s), .view = transposed(-1, -2)};
  };
  return {.args = {arg(a, la), arg(b, lb)}, .checks = checks};
}

void add_products(std::vector<OpCase>& t) {
  const Layout P = Layout::plain, T = Layout::transposed;
  const std::vector<double> b32 = {1, 0, 0, 1, 1, 1};  // (3, 2)
  std::vector<Variant> v = {
      {.args = {{.shape = {2, 3}, .values = given(k23)}, {.shape = {3, 2}, .values = given(b32)}},
       .expect = {.values = {4, 5, 10, 11}}},
      {.args = {{.shape = {3, 2}, .values = given({1, 4, 2, 5, 3, 6}), .view = transposed(0, 1)},
                {.shape = {3, 2}, .values = given(b32)}},
       .note = "a as a transposed view",
       .expect = {.values = {4, 5, 10, 11}}},
      {.args = {{.shape = {3, 2}, .values = given(b32), .view = transposed(0, 1)},
                {.shape = {2, 3}, .values = given(k23), .view = transposed(0, 1)}},
       .expect = {.values = {4, 10, 5, 11}}},
      {.args = {{.shape = {2, 2, 3}, .values = given({1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12})},
                {.shape = {3, 2}, .values = given(b32)}},
       .note = "batched",
       .expect = {.values = {4, 5, 10, 11, 8, 10, 20, 22}, .shape = Shape{2, 2, 2}}},
      // Finite differences: batches, a shared 2-D operand, broadcast batch dims, transposed views.
      product({3, 4}, P, {4, 5}, P),
      product({2, 3, 4}, P, {4, 2}, P),
      product({3, 4}, P, {2, 4, 2}, P),
      product({2, 1, 3, 4}, P, {3, 4, 2}, P),
      {.args = {{.shape = {2, 4, 3}, .view = transposed(-1, -2)}, {.shape = {5, 4}, .view = transposed(0, 1)}}},
      // The devices: awkward sizes, every combination of transposed operands.
      product({1, 1}, P, {1, 1}, P),
      product({17, 33}, P, {33, 5}, P),
      product({17, 33}, T, {33, 5}, P),
      product({17, 33}, P, {33, 5}, T),
      product({17, 33}, T, {33, 5}, T),
      product({3, 17, 9}, P, {3, 9, 4}, P),
      product({3, 17, 9}, P, {9, 4}, T),
      product({2, 1, 5, 7}, P, {3, 7, 2}, P),
      product({1, 769}, P, {769, 3}, P),
      product({257, 64}, T, {64, 257}, P, kDevicesOnly),
      // bf16
      product({7, 13}, P, {13, 5}, P),
      product({7, 13}, T, {13, 5}, P),
      product({3, 7, 13}, P, {3, 13, 5}, T),
      product({2, 3, 4, 9}, P, {9, 6}, P),
      // One operand frozen: only the other's gradient product runs.
      {.args = {{.shape = {3, 4}}, {.shape = {4, 5}, .grad = Grad::frozen}}, .note = "b frozen"},
      {.args = {{.shape = {2, 3, 4}, .grad = Grad::frozen}, {.shape = {4, 5}}}, .note = "a frozen"},
      // K = 0: the product is zeros (nothing to accumulate; the output must still be written); no inputs to perturb.
      {.args = {{.shape = {17, 0}}, {.shape = {0, 5}}},
       .note = "K = 0",
       .expect = {.values = std::vector<double>(85, 0.0)},
       .checks = kDevicesOnly}};
  t.push_back({.op = "matmul",
               .forward = [](const Inputs& x) { return matmul(x[0], x[1]); },
               .variants = std::move(v),
               .tol = {.f32 = 2e-5}});

  // Without a third input, linear has no bias.
  std::vector<Variant> lin = {
      {.args = {{.shape = {2, 2}, .values = given({1, 2, 3, 4})},
                {.shape = {3, 2}, .values = given({1, 1, 0, 2, -1, 0})},
                {.shape = {3}, .values = given({0.5, 0, -1})}},
       .expect = {.values = {3.5, 4, -2, 7.5, 8, -4}}},
      {.args = {{.shape = {2, 2}, .values = given({1, 2, 3, 4})},
                {.shape = {3, 2}, .values = given({1, 1, 0, 2, -1, 0})}},
       .note = "no bias",
       .expect = {.values = {3, 4, -1, 7, 8, -3}}},
      {.args = {{.shape = {2, 3, 4}}, {.shape = {5, 4}}, {.shape = {5}}}},
      {.args = {{.shape = {4, 3}, .view = transposed(0, 1)}, {.shape = {2, 4}}}, .note = "no bias"},
      {.args = {{.shape = {2, 5, 64}}, {.shape = {12, 64}}, {.shape = {12}}}}};
  for (int64_t n : {1, 3, 257}) {
    const Check checks = n > 100 ? kDevicesOnly : Check::all;
    lin.push_back({.args = {{.shape = {n, 33}}, {.shape = {17, 33}}, {.shape = {17}}}, .checks = checks});
    lin.push_back({.args = {{.shape = {n, 33}}, {.shape = {17, 33}}}, .note = "no bias", .checks = checks});
  }
  for (int64_t n : {1, 9}) {
    lin.push_back({.args = {{.shape = {n, 3, 24}}, {.shape = {17, 24}}, {.shape = {17}}}});
    lin.push_back({.args = {{.shape = {n, 3, 24}}, {.shape = {17, 24}}}, .note = "no bias"});
  }
  // Frozen operands: a weight not trained (the bias alone gets a gradient), an input that is data.
  for (Variant& frozen : std::vector<Variant>{
           {.args = {{.shape = {2, 3, 4}}, {.shape = {5, 4}, .grad = Grad::frozen}, {.shape = {5}}},
 .note = "weight frozen"},
           {.args = {{.shape = {3, 4}, .grad = Grad::frozen}, {.shape = {5, 4}, .grad = Grad::frozen}, {.shape = {5}}},
           .note = "only the bias trained"},
           {.args = {{.shape = {3, 4}, .grad = Grad::frozen}, {.shape = {5, 4}}, {.shape = {5}}}, .note = "x frozen"},
           {.args = {{.shape = {3, 4}}, {.shape = {5, 4}, .grad = Grad::frozen}}, .note = "no bias, weight frozen"}})
    lin.push_back(std::move(frozen));
  t.push_back({.op = "linear",
               .forward = [](const Inputs& x) { return linear(x[0], x[1], x.size() > 2 ? x[2] : Tensor()); },
               .variants = std::move(lin),
               .tol = {.f32 = 2e-5}});

  // linear_gelu: GELU of linear's values; OUT a multiple of 8 and not (cuBLASLt's GELU epilogue wants rows of 8k).
  std::vector<double> gelu_of_linear = {3.5, 4, -2, 7.5, 8, -4};
  for (double& e : gelu_of_linear) e = gelu_ref(e);
  std::vector<Variant> lg = {{.args = {{.shape = {2, 2}, .values = given({1, 2, 3, 4})},
                                       {.shape = {3, 2}, .values = given({1, 1, 0, 2, -1, 0})},
                                       {.shape = {3}, .values = given({0.5, 0, -1})}},
                              .expect = {.values = gelu_of_linear}},
                             {.args = {{.shape = {2, 3, 4}}, {.shape = {5, 4}}}, .note = "no bias"},
                             {.args = {{.shape = {4, 3}, .view = transposed(0, 1)}, {.shape = {8, 4}}, {.shape = {8}}}},
                             {.args = {{.shape = {2, 5, 16}}, {.shape = {24, 16}}, {.shape = {24}}}}};
  for (int64_t n : {1, 257}) {
    const Check checks = n > 100 ? kDevicesOnly : Check::all;
    lg.push_back({.args = {{.shape = {n, 33}}, {.shape = {17, 33}}, {.shape = {17}}}, .checks = checks});
    lg.push_back({.args = {{.shape = {n, 40}}, {.shape = {64, 40}}, {.shape = {64}}}, .checks = checks});
  }
  for (Variant& frozen :
       std::vector<Variant>{{.args = {{.shape = {3, 16}}, {.shape = {8, 16}, .grad = Grad::frozen}, {.shape = {8}}},
       .note = "weight frozen"},
                            {.args = {{.shape = {3, 16}, .grad = Grad::frozen}, {.shape = {8, 16}}, {.shape = {8}}},
                            .note = "x frozen"}})
    lg.push_back(std::move(frozen));
  t.push_back({.op = "linear_gelu",
               .forward = [](const Inputs& x) { return linear_gelu(x[0], x[1], x.size() > 2 ? x[2] : Tensor()); },
               .variants = std::move(lg),
               .tol = {.f32 = 2e-5}});
}

// ---- softmax, layer norm ----

std::vector<Variant> softmax_variants() {
  std::vector<Variant> v = {{.args = {{.shape = {3, 5}, .values = uniform(-2, 2)}}},
                            {.args = {{.shape = {4, 3}, .values = uniform(-2, 2), .view = transposed(0, 1)}}},
                            {.args = {{.shape = {33, 17}, .view = transposed(0, 1)}}}};
  for (Shape s : std::vector<Shape>{{1, 1}, {3, 33}, {4, 3, 17}, {7, 300}, {3, 1}, {2, 3, 40}})
    v.push_back({.args = {{.shape = s}}});
  // Long rows: the rounding of a loss summed over 10^4 log-probabilities swamps a finite difference.
  for (Shape s : std::vector<Shape>{{17, 769}, {2, 5000}})
    v.push_back({.args = {{.shape = s}}, .checks = kDevicesOnly});
  return v;
}

void add_normalisation(std::vector<OpCase>& t) {
  const std::vector<double> x = {1, 2, 3, 0, 0, 0};
  const double z = std::exp(1) + std::exp(2) + std::exp(3);
  t.push_back({.op = "softmax",
               .forward = [](const Inputs& in) { return softmax(in[0]); },
               .variants = with(
                   {{.args = {{.shape = {2, 3}, .values = given(x)}},
                     .expect = {.values = {std::exp(1) / z, std::exp(2) / z, std::exp(3) / z, 1. / 3, 1. / 3, 1. / 3}}},
                    {.args = {{.shape = {1, 2}, .values = given({1000, 1000})}},
                     .note = "large values do not overflow",
                     .expect = {.values = {0.5, 0.5}}}},
                   softmax_variants())});
  t.push_back({.op = "log_softmax",
               .forward = [](const Inputs& in) { return log_softmax(in[0]); },
               .variants = with({{.args = {{.shape = {2, 3}, .values = given(x)}},
                                  .expect = {.values = {1 - std::log(z), 2 - std::log(z), 3 - std::log(z),
                                                        -std::log(3.), -std::log(3.), -std::log(3.)}}}},
                                softmax_variants())});

  const double m = 2.5, var = 1.25, rs = 1 / std::sqrt(var + 1e-5);
  std::vector<Variant> ln = {
      {.args = {{.shape = {2, 4}, .values = given({1, 2, 3, 4, -1, 0, 1, 2})},
                {.shape = {4}, .values = given({1, 1, 2, 1})},
                {.shape = {4}, .values = given({0, 0, 0, 1})}},
       .expect = {.values = {(1 - m) * rs, (2 - m) * rs, 2 * (3 - m) * rs, (4 - m) * rs + 1, (-1 - 0.5) * rs,
                             (0 - 0.5) * rs, 2 * (1 - 0.5) * rs, (2 - 0.5) * rs + 1},
                  .atol = 1e-9,
                  .rtol = 1e-9}},
      {.args = {{.shape = {2, 3, 6}}, {.shape = {6}}, {.shape = {6}}}},
      {.args = {{.shape = {3, 5}, .view = transposed(0, 1)}, {.shape = {3}}, {.shape = {3}}}},
      {.args = {{.shape = {6, 67}}, {.shape = {67}, .values = uniform(0.5, 1.5)}, {.shape = {67}}}},
      {.args = {{.shape = {2, 3, 8}}, {.shape = {8}, .values = uniform(0.5, 1.5)}, {.shape = {8}}}}};
  // CUDA's backward: several columns per thread and a last partial tile (257, 769), blocks taking several tiles
  // (9000 rows: 282 tiles over 256 blocks), rows too wide for the fused sums (2100 columns: the column sums instead).
  for (Shape s : std::vector<Shape>{{1, 1}, {1, 3}, {3, 17}, {257, 769}, {2, 1500, 33}, {9000, 5}, {5, 2100}}) {
    const int64_t C = s.back();
    ln.push_back({.args = {{.shape = s}, {.shape = {C}}, {.shape = {C}}},
                  .checks = numel(s) > 10000 ? kDevicesOnly : Check::all});
  }
  for (Variant& frozen : std::vector<Variant>{
           {.args = {{.shape = {3, 8}, .grad = Grad::frozen},
                     {.shape = {8}, .values = uniform(0.5, 1.5)},
                     {.shape = {8}}},
 .note = "x frozen: the weight's and bias's gradients only"},
           {.args = {{.shape = {3, 8}}, {.shape = {8}, .grad = Grad::frozen}, {.shape = {8}, .grad = Grad::frozen}},
           .note = "weight and bias frozen"}})
    ln.push_back(std::move(frozen));
  t.push_back({.op = "layer_norm",
               .forward = [](const Inputs& in) { return layer_norm(in[0], in[1], in[2]); },
               .variants = std::move(ln),
               .tol = {.f32 = 2e-5, .bf16_grad = 2e-2}});

  // Both outputs side by side, against add then layer_norm: the same arithmetic on the same values, so equal bit for
  // bit (f64 here; every device and dtype in check_add_layer_norm_as_composed).
  std::vector<Variant> aln = {
      {.args = {{.shape = {2, 3, 6}}, {.shape = {2, 3, 6}}, {.shape = {6}}, {.shape = {6}}}},
      {.args = {{.shape = {6, 67}}, {.shape = {6, 67}}, {.shape = {67}, .values = uniform(0.5, 1.5)}, {.shape = {67}}}},
      {.args = {{.shape = {3, 5}, .view = transposed(0, 1)}, {.shape = {5, 3}}, {.shape = {3}}, {.shape = {3}}},
       .note = "a strided input"},
      {.args = {{.shape = {5, 3}}, {.shape = {3, 5}, .view = transposed(0, 1)}, {.shape = {3}}, {.shape = {3}}},
       .note = "a strided residual"}};
  for (Shape s : std::vector<Shape>{{1, 1}, {3, 17}, {257, 769}, {2, 1500, 33}}) {
    const int64_t C = s.back();
    aln.push_back({.args = {{.shape = s}, {.shape = s}, {.shape = {C}}, {.shape = {C}}},
                   .checks = numel(s) > 10000 ? kDevicesOnly : Check::all});
  }
  t.push_back({.op = "add_layer_norm",
               .forward =
                   [](const Inputs& in) {
                     const AddLayerNorm o = add_layer_norm(in[0], in[1], in[2], in[3]);
                     return cat({o.sum, o.normed}, -1);
                   },
               .variants = std::move(aln),
               .expect = {.reference =
                              [](const Inputs& in) {
                                Tensor sum = add(in[0], in[1]);
                                return cat({sum, layer_norm(sum, in[2], in[3])}, -1);
                              },
                          .atol = 0,
                          .rtol = 0},
               .tol = {.f32 = 2e-5, .bf16_grad = 2e-2}});
}

// ---- embedding, cross-entropy ----

// -mean over rows of log_softmax(logits[:, :classes])[target], from log_softmax and a loop.
OpFn composed_cross_entropy(int64_t classes = 0) {
  return [classes](const Inputs& x) {
    Tensor logits = classes ? x[0].slice(1, 0, classes) : x[0];
    const int64_t V = logits.size(1);
    std::vector<double> ls = log_softmax(logits).to_vector<double>();
    std::vector<int32_t> t = x[1].to_vector<int32_t>();
    double loss = 0;
    for (size_t r = 0; r < t.size(); ++r) loss -= ls[r * size_t(V) + size_t(t[r])];
    return from_vector<double>({loss / double(t.size())}, {});
  };
}

void add_lookups(std::vector<OpCase>& t) {
  std::vector<Variant> emb = {
      {.args = {{.shape = {2, 2}, .values = given_ids({2, 0, 2, 1})},
                {.shape = {3, 2}, .values = given({0, 1, 10, 11, 20, 21})}},
       .expect = {.values = {20, 21, 0, 1, 20, 21, 10, 11}, .shape = Shape{2, 2, 2}}},
      {.args = {{.shape = {2, 2}, .values = given_ids({2, 0, 2, 1})}, {.shape = {3, 4}}}, .note = "repeated ids"},
      {.args = {{.shape = {13}, .values = given_ids({3, 0, 49, 3, 7, 7, 7, 12, 3, 48, 1, 0, 25})},
                {.shape = {50, 24}}}}};
  struct Sizes {
    int64_t N, V, C;
  };
  for (Sizes s : {Sizes{1, 1, 1}, Sizes{17, 5, 3}, Sizes{257, 50, 33}, Sizes{4096, 1000, 64}, Sizes{3000, 7, 768},
                  Sizes{2500, 70000, 8}})  // CUDA sorts ids by 8-bit digits: 1, 2 and 3 passes, several tiles
    emb.push_back({.args = {{.shape = {s.N}, .values = ids(s.V, Spread::skewed)}, {.shape = {s.V, s.C}}},
                   .checks = s.N * s.C > 10000 ? kDevicesOnly : Check::all});
  // Forward is a gather and backward a deterministic scatter-add: bit-identical on both devices.
  t.push_back({.op = "embedding",
               .forward = [](const Inputs& x) { return embedding(x[0], x[1]); },
               .variants = std::move(emb),
               .tol = {.f64 = 0, .f32 = 0}});

  const double z = std::exp(1) + std::exp(2) + std::exp(3);
  std::vector<Variant> ce = {
      {.args = {{.shape = {2, 3}, .values = given({1, 2, 3, 1, 1, 1})}, {.shape = {2}, .values = given_ids({2, 0})}},
       .expect = {.values = {((std::log(z) - 3) + std::log(3.0)) / 2},
                  .reference = composed_cross_entropy(),
                  .atol = 1e-12,
                  .rtol = 1e-12}},
      {.args = {{.shape = {2, 5}, .values = uniform(-3, 3)}, {.shape = {2}, .values = given_ids({2, 0})}}},
      {.args = {{.shape = {2, 6}, .view = sliced(1, 0, 4)}, {.shape = {2}, .values = given_ids({2, 0})}},
       .note = "the first V columns of wider (padded-vocabulary) logits, read in place"},
      {.args = {{.shape = {3, 6}, .values = uniform(-2, 2)}, {.shape = {3}, .values = given_ids({2, 0, 3})}},
       .note = "classes 4 of 6 equal slicing",
       .forward = [](const Inputs& x) { return cross_entropy(x[0], x[1], {.classes = 4}); },
       .expect = {.reference = [](const Inputs& x) { return cross_entropy(x[0].slice(1, 0, 4), x[1]); },
                  .atol = 0,
                  .rtol = 1e-14}},
      {.args = {{.shape = {9, 320}}, {.shape = {9}, .values = given_ids({0, 299, 5, 17, 17, 250, 3, 100, 42})}},
       .note = "classes 300 of 320",
       .forward = [](const Inputs& x) { return cross_entropy(x[0], x[1], {.classes = 300}); },
       .expect = {.reference = composed_cross_entropy(300), .atol = 1e-12, .rtol = 1e-12}},
      {.args = {{.shape = {9, 320}, .view = sliced(1, 0, 300)},
                {.shape = {9}, .values = given_ids({0, 299, 5, 17, 17, 250, 3, 100, 42})}}}};
  for (auto [N, V] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1, 3}, {17, 769}, {64, 5003}}) {
    const Check checks = N * V > 20000 ? kDevicesOnly : Check::all;
    ce.push_back({.args = {{.shape = {N, V}}, {.shape = {N}, .values = ids(V)}}, .checks = checks});
    ce.push_back({.args = {{.shape = {N, V + 13}, .view = sliced(1, 0, V)}, {.shape = {N}, .values = ids(V)}},
                  .note = "rows with a stride beyond V",
                  .checks = checks});
  }
  t.push_back({.op = "cross_entropy",
               .forward = [](const Inputs& x) { return cross_entropy(x[0], x[1]); },
               .variants = std::move(ce),
               .expect = {.reference = composed_cross_entropy(), .atol = 1e-12, .rtol = 1e-12},
               .bf16_output = DType::f32});  // per-row losses and their mean in f32

  // x (N, C), weight (V, C), targets (N): chunks of `rows` rows (0: one), the first `classes` rows of weight.
  const auto chunked = [](int64_t rows, int64_t classes) -> OpFn {
    return [rows, classes](const Inputs& x) {
      return linear_cross_entropy(x[0], x[1], x[2], {.classes = classes, .chunk_rows = rows});
    };
  };
  const auto unfused = [](int64_t classes) -> OpFn {
    return [classes](const Inputs& x) {
      return cross_entropy(linear(x[0], x[1], Tensor()), x[2], {.classes = classes});
    };
  };
  struct Chunking {
    int64_t N, C, V, classes, rows;
    const char* note;
  };
  std::vector<Variant> lce;
  for (Chunking k : {Chunking{5, 4, 7, 0, 2, "chunks of 2, 2, 1 rows"}, Chunking{6, 3, 9, 7, 3, "classes 7 of 9"},
                     Chunking{4, 5, 6, 0, 0, "one chunk"}, Chunking{3, 2, 5, 0, 8, "a chunk larger than N"},
                     Chunking{1, 1, 1, 0, 1, "one row, one class"},
                     Chunking{300, 64, 1000, 977, 128, "padded vocabulary, chunks of 128"},
                     Chunking{1030, 48, 2051, 2000, 1024, "chunks of 1024 + 6 rows"}})
    lce.push_back({.args = {{.shape = {k.N, k.C}}, {.shape = {k.V, k.C}},
                            {.shape = {k.N}, .values = ids(k.classes ? k.classes : k.V)}},
                   .note = k.note,
                   .forward = chunked(k.rows, k.classes),
                   .expect = {.reference = unfused(k.classes), .atol = 1e-12, .rtol = 1e-12},
                   .checks = k.N * k.V > 20000 ? kDevicesOnly : Check::all});
  lce.push_back({.args = {{.shape = {4, 6}, .view = transposed(0, 1)}, {.shape = {5, 4}},
                          {.shape = {6}, .values = ids(5)}},
                 .note = "a transposed x, chunks of 4 rows",
                 .forward = chunked(4, 0),
                 .expect = {.reference = unfused(0), .atol = 1e-12, .rtol = 1e-12}});
  // One gradient asked for: x's alone (a frozen head), the weight's alone (x is data).
  for (size_t frozen : {1, 0}) {
    Variant one{.args = {{.shape = {5, 4}}, {.shape = {7, 4}}, {.shape = {5}, .values = ids(7)}},
                .note = frozen == 1 ? "weight frozen, chunks of 2 rows" : "x frozen, chunks of 2 rows",
                .forward = chunked(2, 0),
                .expect = {.reference = unfused(0), .atol = 1e-12, .rtol = 1e-12}};
    one.args[frozen].grad = Grad::frozen;
    lce.push_back(std::move(one));
  }
  t.push_back({.op = "linear_cross_entropy",
               .variants = std::move(lce),
               // bf16: normal inputs with C = 48 or 64 give logits of standard deviation 7-8, which bf16 holds to
               // within 1/256 of their size, so the probabilities in dx = dlogits @ w are off by a few percent of
               // the largest (the emulator measured 1.6-1.7% for dx; the head's gradient, summed over chunks in bf16,
               // stayed under 1%)
               .tol = {.bf16_grad = 2e-2},
               .bf16_output = DType::f32});
}

// ---- attention ----

// softmax(q k^T / sqrt(HS) + causal mask) v, composed from basic ops.
Tensor composed_attention(const Tensor& q, const Tensor& k, const Tensor& v, Causal causal) {
  const int64_t Tq = q.size(2), Tk = k.size(2), HS = q.size(3);
  Tensor s = matmul(q, k.transpose(-1, -2)) * (1.0 / std::sqrt(double(HS)));
  if (causal == Causal::yes) {
    std::vector<double> mask(size_t(Tq * Tk));
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t j = 0; j < Tk; ++j) mask[size_t(i * Tk + j)] = j <= i + (Tk - Tq) ? 0.0 : -1e30;
    s = s + from_vector<double>(mask, {Tq, Tk}, {.dtype = q.dtype()});
  }
  return matmul(softmax(s), v);
}

const Expect kComposedTolerance{.atol = 1e-12, .rtol = 1e-10};

// q (B, NH, Tq, HS), k and v (B, NH, Tk, HS); `layout` views each of them (a strided layout in memory).
Variant attention(const Shape& q, const Shape& kv, Causal causal, Check checks = Check::all, View layout = {}) {
  Expect e = kComposedTolerance;
  e.reference = [causal](const Inputs& x) { return composed_attention(x[0], x[1], x[2], causal); };
  return {.args = {{.shape = q, .view = layout}, {.shape = kv, .view = layout}, {.shape = kv, .view = layout}},
          .note = causal == Causal::yes ? "causal" : "not causal",
          .forward = [causal](const Inputs& x) { return scaled_dot_product_attention(x[0], x[1], x[2], causal); },
          .expect = std::move(e),
          .checks = checks};
}

// GPT-2's fused qkv (B, T, 3C) with NH heads; the reference splits the heads and calls scaled_dot_product_attention.
Variant self_attention(int64_t B, int64_t T, int64_t C, int64_t NH, Check checks = Check::all) {
  Expect e = kComposedTolerance;
  e.reference = [B, T, C, NH](const Inputs& x) {
    const int64_t HS = C / NH;
    auto heads = [&](const Tensor& t) { return t.reshape({B, T, NH, HS}).permute({0, 2, 1, 3}); };
    Tensor q = heads(x[0].slice(2, 0, C)), k = heads(x[0].slice(2, C, 2 * C)), v = heads(x[0].slice(2, 2 * C, 3 * C));
    return scaled_dot_product_attention(q, k, v, Causal::yes).permute({0, 2, 1, 3}).reshape({B, T, C});
  };
  return {.args = {{.shape = {B, T, 3 * C}}},
          .note = cat(NH, " heads"),
          .forward = [NH](const Inputs& x) { return causal_self_attention(x[0], NH); },
          .expect = std::move(e),
          .checks = checks};
}

void add_attention(std::vector<OpCase>& t) {
  const Causal Y = Causal::yes, N = Causal::no;
  auto bhtd = [](int64_t B, int64_t NH, int64_t T, int64_t HS) { return Shape{B, NH, T, HS}; };
  t.push_back(
      {.op = "scaled_dot_product_attention",
       .forward = [](const Inputs& x) { return scaled_dot_product_attention(x[0], x[1], x[2]); },
       .variants =
           {attention(bhtd(2, 3, 5, 4), bhtd(2, 3, 5, 4), Y), attention(bhtd(2, 3, 5, 4), bhtd(2, 3, 5, 4), N),
            attention(bhtd(2, 3, 2, 4), bhtd(2, 3, 5, 4), Y),  // fewer queries than keys (a KV cache)
            attention(bhtd(1, 2, 4, 3), bhtd(1, 2, 4, 3), Y), attention(bhtd(2, 1, 3, 2), bhtd(2, 1, 5, 2), N),
            attention(bhtd(1, 2, 1, 3), bhtd(1, 2, 1, 3), Y),  // T = 1
            attention(bhtd(1, 1, 1, 1), bhtd(1, 1, 1, 1), Y), attention(bhtd(2, 3, 17, 8), bhtd(2, 3, 17, 8), Y),
            attention(bhtd(1, 2, 33, 64), bhtd(1, 2, 33, 64), Y, kDevicesOnly),
            attention(bhtd(2, 2, 17, 8), bhtd(2, 2, 17, 8), N), attention(bhtd(1, 3, 5, 16), bhtd(1, 3, 17, 16), Y),
            attention(bhtd(1, 1, 5, 16), bhtd(1, 1, 17, 16), N), attention(bhtd(3, 1, 1, 4), bhtd(3, 1, 9, 4), Y),
            // (B, T, NH, HS) in memory, seen as (B, NH, T, HS)
            attention({2, 17, 3, 8}, {2, 17, 3, 8}, Y, Check::all, transposed(1, 2)),
            attention(bhtd(2, 2, 5, 8), bhtd(2, 2, 9, 8), Y), attention(bhtd(1, 3, 7, 4), bhtd(1, 3, 7, 4), N),
            attention(bhtd(2, 1, 1, 8), bhtd(2, 1, 1, 8), Y),
            attention(bhtd(1, 1, 50, 4), bhtd(1, 1, 50, 4), Y)},  // Tk = 50 > 32 threads: rows in two chunks
       .tol = {.f32 = 5e-5, .bf16_grad = 2e-2}});
  t.push_back({.op = "causal_self_attention",
               .forward = [](const Inputs& x) { return causal_self_attention(x[0], 2); },
               .variants = {self_attention(2, 5, 6, 2), self_attention(2, 4, 4, 2), self_attention(1, 1, 2, 1),
                            self_attention(1, 1, 8, 2), self_attention(2, 17, 24, 3),
                            self_attention(2, 64, 64, 4, kDevicesOnly), self_attention(1, 33, 36, 1),
                            self_attention(2, 17, 16, 2), self_attention(1, 40, 24, 3), self_attention(3, 1, 8, 2)},
               .tol = {.f32 = 5e-5, .bf16_grad = 2e-2}});
}

// ---- regularisation ----

// A fresh generator per call: every evaluation (CPU, CUDA, each finite difference) draws the same mask.
OpFn dropout_with(double p, uint64_t seed) {
  return [p, seed](const Inputs& x) {
    Generator gen(seed);
    return dropout(x[0], p, gen);
  };
}

void add_dropout(std::vector<OpCase>& t) {
  t.push_back({.op = "dropout",
               .forward = dropout_with(0.1, 5),
               .variants = {{.args = {{.shape = {50}}}, .note = "p 0.5", .forward = dropout_with(0.5, 77)},
                            {.args = {{.shape = {1}}}, .note = "p 0.1"},
                            {.args = {{.shape = {17}}}, .note = "p 0.1"},
                            {.args = {{.shape = {100003}}}, .note = "p 0.1", .checks = kDevicesOnly},
                            {.args = {{.shape = {1000}}}, .note = "p 0.3", .forward = dropout_with(0.3, 9)}},
               .tol = {.f64 = 0, .f32 = 0}});  // the same mask from the same stream on both devices
}

// ---- shape: cat, split and the views of Tensor (their backward runs on the device) ----

OpCase one_variant(std::string op, OpFn forward, std::vector<Arg> args) {
  return {.op = std::move(op), .forward = std::move(forward), .variants = {{.args = std::move(args)}}};
}

void add_shape(std::vector<OpCase>& t) {
  t.push_back({.op = "cat",
               .forward = [](const Inputs& x) { return cat({x[0], x[1] * 2.0}, 1); },
               .variants = {{.args = {{.shape = {2, 3}}, {.shape = {2, 2}}}},
                            {.args = {{.shape = {3, 4}}, {.shape = {3, 9}}}}}});
  t.push_back(one_variant("split", [](const Inputs& x) { return split(x[0], 2, 1)[1] * 3.0; }, {{.shape = {2, 5}}}));
  t.push_back(one_variant("reshape", [](const Inputs& x) { return x[0].reshape({4, 3}); }, {{.shape = {3, 4}}}));
  t.push_back(
      one_variant("transpose", [](const Inputs& x) { return x[0].transpose(0, 1) * 2.0; }, {{.shape = {3, 4}}}));
  t.push_back(
      one_variant("permute", [](const Inputs& x) { return x[0].permute({1, 2, 0}) * 2.0; }, {{.shape = {2, 3, 4}}}));
  t.push_back(one_variant("slice", [](const Inputs& x) { return x[0].slice(1, 1, 3) * 2.0; }, {{.shape = {3, 4}}}));
  t.push_back(one_variant("select", [](const Inputs& x) { return x[0].select(0, 1) * 2.0; }, {{.shape = {3, 4}}}));
  t.push_back(one_variant("expand", [](const Inputs& x) { return x[0].expand({3, 2, 4}) * 2.0; }, {{.shape = {2, 1}}}));
  t.push_back(one_variant("unsqueeze-squeeze",
                          [](const Inputs& x) { return x[0].unsqueeze(1).squeeze(1).contiguous(); }, {{.shape = {3}}}));
  t.push_back(one_variant("unsqueeze", [](const Inputs& x) { return x[0].unsqueeze(1) * 2.0; },
                          {{.shape = {4, 3}, .view = transposed(0, 1)}}));
  t.push_back(one_variant("squeeze", [](const Inputs& x) { return x[0].squeeze(1) * 2.0; }, {{.shape = {3, 1, 4}}}));
  // A view that cannot be reshaped in place: reshape copies (its backward reshapes the gradient back).
  t.push_back(one_variant("reshape of a strided view",
                          [](const Inputs& x) {
                            return x[0].reshape({2, 6}) * 2.0;
                          },
                          {{.shape = {4, 3}, .view = transposed(0, 1)}}));
  t.push_back(one_variant("clone", [](const Inputs& x) { return x[0].clone() * 2.0; }, {{.shape = {3, 4}}}));
  t.push_back(one_variant("contiguous", [](const Inputs& x) { return x[0].contiguous() * 2.0; },
                          {{.shape = {4, 3}, .view = transposed(0, 1)}}));
  // To the CPU and back: on a GPU the gradient crosses both ways.
  t.push_back(one_variant("to(device)",
                          [](const Inputs& x) { return (x[0] * 2.0).to(Device::cpu()).to(x[0].device()) * 3.0; },
                          {{.shape = {3, 4}}}));
  // Through f32 and back: values and steps chosen exact in f32, so the finite differences are exact too.
  t.push_back(
      {.op = "to(dtype)",
       .forward = [](const Inputs& x) { return x[0].to(DType::f32).to(x[0].dtype()) * 2.0; },
       .variants = {{.args = {{.shape = {4}, .values = given({0.5, -1, 2, 4})}}, .expect = {.values = {1, -2, 4, 8}}}},
       .gradcheck = {.eps = 0.25}});
}

std::vector<OpCase> build() {
  std::vector<OpCase> t;
  add_elementwise(t);
  add_reductions(t);
  add_products(t);
  add_normalisation(t);
  add_lookups(t);
  add_attention(t);
  add_dropout(t);
  add_shape(t);
  return t;
}

}  // namespace

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> table = build();
  return table;
}

void check_add_layer_norm_as_composed(Device device, DType dtype) {
  INFO("add_layer_norm against add then layer_norm on ", device.str(), " in ", dtype_name(dtype));
  const Shape shape{3, 5, 67};
  const int64_t C = shape.back();
  Generator gen(2026);
  auto made = [&](const Shape& s, double scale, double shift) {
    Tensor t = randn(s, gen, {.dtype = DType::f64}) * scale + shift;
    return t.to(dtype).to(device);
  };
  const Inputs values = {made(shape, 1, 0), made(shape, 1, 0.5), made({C}, 0.25, 1), made({C}, 1, 0)};
  // Upstream gradients for the sum (its other readers) and for the norm.
  const Tensor g_sum = made(shape, 1, 0), g_normed = made(shape, 1, 0);
  struct Outcome {
    Tensor sum, normed;
    Inputs grads;
  };
  auto run = [&](const std::function<AddLayerNorm(const Inputs&)>& op) {
    Inputs leaves;
    for (const Tensor& v : values) {
      Tensor leaf = v.clone();
      leaf.set_requires_grad(true);
      leaves.push_back(leaf);
    }
    const AddLayerNorm out = op(leaves);
    add(out.sum * g_sum, out.normed * g_normed).backward(ones(shape, {.dtype = dtype, .device = device}));
    Outcome o{.sum = out.sum.detach(), .normed = out.normed.detach(), .grads = {}};
    for (const Tensor& leaf : leaves) o.grads.push_back(leaf.grad());
    return o;
  };
  const Outcome fused = run([](const Inputs& in) { return add_layer_norm(in[0], in[1], in[2], in[3]); });
  const Outcome composed = run([](const Inputs& in) {
    Tensor sum = add(in[0], in[1]);
    return AddLayerNorm{.sum = sum, .normed = layer_norm(sum, in[2], in[3])};
  });
  auto equal = [](const Tensor& got, const Tensor& want, const char* what) {
    INFO(what);
    REQUIRE(got.defined());
    REQUIRE(got.dtype() == want.dtype());
    const std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
    REQUIRE(g.size() == w.size());
    size_t differ = 0;
    for (size_t i = 0; i < g.size(); ++i) differ += g[i] != w[i];
    CHECK(differ == 0);
  };
  equal(fused.sum, composed.sum, "sum");
  equal(fused.normed, composed.normed, "normed");
  const char* names[] = {"gradient of x", "gradient of the residual", "gradient of the weight", "gradient of the bias"};
  for (size_t i = 0; i < 4; ++i) equal(fused.grads[i], composed.grads[i], names[i]);
}

}  // namespace tally::test
