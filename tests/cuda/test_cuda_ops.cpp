// The CUDA backend against the CPU backend: every op forward and backward on fresh random inputs (awkward
// sizes, T=1, non-contiguous views), in f64 (tight) and f32 (loose, strict FP32 cuBLAS); the random streams
// bit-identical; the caching allocator's accounting; error paths. Every case is skipped, visibly, without a GPU.
// Organised by op family, in the order of core/kernels/kernels.inc. Without a GPU, scripts/cuda_emulate.sh runs
// these same cases against the CPU emulation of CUDA in tools/cuda_emu (logic only, no timing).
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/ledger.h"
#include "core/ops.h"
#include "core/random.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/cuda_allocator.h"
#include "core/cuda/runtime.h"
#include "core/kernels/kernels.h"
#endif

namespace {

using namespace tally;

const bool kNoGpu = !cuda_available();

Device gpu() { return Device::cuda(0); }

// Full FP32 in cuBLAS for the scope of a test (TF32 would dominate the float error).
struct StrictFp32 {
#ifdef TALLY_HAS_CUDA
  cuda::Fp32MatmulScope scope{cuda::Fp32Matmul::strict};
#endif
};

struct Tol {
  double f32 = 1e-5;
  double f64 = 1e-10;
};

double tol_for(DType t, Tol tol) { return t == DType::f64 ? tol.f64 : tol.f32; }

// max |got - want| / max |want|: a scale-aware maximum error. NaN anywhere in `got` fails.
void check_close(const Tensor& got_t, const Tensor& want_t, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(got_t.defined());
  REQUIRE(want_t.defined());
  REQUIRE(got_t.shape() == want_t.shape());
  std::vector<double> got = got_t.to_vector<double>(), want = want_t.to_vector<double>();
  double max_err = 0.0, max_ref = 0.0;
  int64_t nans = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && !std::isnan(want[i])) ++nans;
    if (std::isnan(want[i])) continue;
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
    max_ref = std::max(max_ref, std::fabs(want[i]));
  }
  const double err = max_err / std::max(max_ref, 1e-300);
  INFO("relative max error ", err, " (max |err| ", max_err, ", max |ref| ", max_ref, "), tolerance ", tol);
  CHECK(nans == 0);
  CHECK(err <= tol);
}

// Bitwise equality (as doubles: every dtype converts to double exactly).
void check_equal(const Tensor& got_t, const Tensor& want_t, const std::string& what) {
  INFO(what);
  REQUIRE(got_t.shape() == want_t.shape());
  std::vector<double> got = got_t.to_vector<double>(), want = want_t.to_vector<double>();
  int64_t diff = 0, first = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    bool same = got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));
    if (!same) {
      ++diff;
      if (first < 0) first = int64_t(i);
    }
  }
  INFO(diff, " of ", got.size(), " differ; first at ", first,
       first >= 0 ? cat(": ", got[size_t(first)], " vs ", want[size_t(first)]) : std::string());
  CHECK(diff == 0);
}

Tensor randn_cpu(const Shape& shape, DType dtype, uint64_t seed) {
  Generator gen(seed);
  return randn(shape, gen, {.dtype = dtype});
}
Tensor rand_cpu(const Shape& shape, DType dtype, uint64_t seed, double lo, double hi) {
  Generator gen(seed);
  Tensor t = empty(shape, {.dtype = dtype});
  uniform_(t, gen, lo, hi);
  return t;
}

enum class Grads : bool { no = false, yes = true };

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs `f` on CPU leaves and on their GPU copies; compares the outputs and, for a random upstream gradient,
// the gradients of every floating input.
void compare_op(const std::string& name, const OpFn& f, const std::vector<Tensor>& inputs, Tol tol = {},
                Grads grads = Grads::yes) {
  std::vector<Tensor> ci, gi;
  for (const Tensor& t : inputs) {
    Tensor c = t.detach().clone();
    Tensor g = c.to(gpu());
    if (grads == Grads::yes && is_floating(c.dtype())) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    ci.push_back(c);
    gi.push_back(g);
  }
  Tensor oc = f(ci), og = f(gi);
  REQUIRE(og.device() == gpu());
  const double t = tol_for(oc.dtype(), tol);
  check_close(og, oc, t, name + ": forward");
  if (grads == Grads::no) return;
  Tensor up = randn_cpu(oc.shape(), oc.dtype(), 4242);
  oc.backward(up);
  og.backward(up.to(gpu()));
  for (size_t i = 0; i < ci.size(); ++i) {
    if (!ci[i].requires_grad()) continue;
    REQUIRE(gi[i].grad().defined());
    REQUIRE(gi[i].grad().device() == gpu());
    check_close(gi[i].grad(), ci[i].grad(), t, name + ": gradient of input " + std::to_string(i));
  }
}

const DType kFloatTypes[] = {DType::f64, DType::f32};

}  // namespace

TEST_SUITE("cuda") {

// ---------------------------------------------------------------------------------------------------------------
// runtime
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda runtime: device presence and properties" * doctest::skip(kNoGpu)) {
  CHECK(cuda_device_count() >= 1);
#ifdef TALLY_HAS_CUDA
  cuda::DeviceProperties p = cuda::device_properties(0);
  MESSAGE("device 0: ", p.name, ", sm_", p.major, p.minor, ", ", p.multiprocessors, " SMs, ",
          format_bytes_human(p.total_memory));
  CHECK(p.multiprocessors > 0);
  CHECK(p.total_memory > 0);
  int64_t free_b = 0, total_b = 0;
  cuda::memory_info(&free_b, &total_b);
  CHECK(total_b > 0);
  CHECK(free_b <= total_b);
  CHECK_THROWS_WITH_AS(cuda::set_device(cuda_device_count()), doctest::Contains("does not exist"), Error);
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// copy, cast, fill
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda copy: host <-> device round trip is exact" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    for (int64_t n : {1, 3, 17, 257, 100003}) {
      Tensor c = randn_cpu({n}, t, uint64_t(n));
      check_equal(c.to(gpu()).to(Device::cpu()), c, cat("round trip ", dtype_name(t), " n=", n));
    }
  }
}

TEST_CASE("cuda copy: casts between every pair of dtypes match the CPU bit for bit" * doctest::skip(kNoGpu)) {
  const DType all[] = {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64, DType::u16, DType::u8};
  // Values in [0, 200): valid for every dtype, with fractions to exercise rounding and truncation.
  Tensor base = rand_cpu({769}, DType::f64, 11, 0.0, 200.0);
  for (DType s : all) {
    Tensor src_cpu = base.to(s);
    Tensor src_gpu = src_cpu.to(gpu());
    for (DType d : all) {
      Tensor want = src_cpu.to(d);
      Tensor got = src_gpu.to(d);
      CHECK(got.device() == gpu());
      check_equal(got, want, cat("cast ", dtype_name(s), " -> ", dtype_name(d)));
    }
  }
  // bf16 rounding of values with low bits set, NaN and infinities.
  std::vector<float> special = {1.0f + 1.0f / 256, 1.0f + 3.0f / 512, -2.5e-3f, 3.4e38f, INFINITY, -INFINITY, NAN, 0.0f, -0.0f};
  Tensor sc = from_vector<float>(special, {int64_t(special.size())});
  check_equal(sc.to(gpu()).to(DType::bf16), sc.to(DType::bf16), "bf16 rounding of special values");
}

TEST_CASE("cuda copy: strided views made contiguous match the CPU" * doctest::skip(kNoGpu)) {
  Tensor c = randn_cpu({5, 7, 33}, DType::f32, 3);
  Tensor g = c.to(gpu());
  check_equal(g.transpose(0, 2).contiguous(), c.transpose(0, 2).contiguous(), "transpose(0, 2)");
  check_equal(g.permute({1, 2, 0}).contiguous(), c.permute({1, 2, 0}).contiguous(), "permute(1, 2, 0)");
  check_equal(g.slice(2, 3, 30).contiguous(), c.slice(2, 3, 30).contiguous(), "slice");
  check_equal(g.select(1, 4).contiguous(), c.select(1, 4).contiguous(), "select");
  check_equal(g.slice(0, 1, 2).expand({4, 7, 33}).contiguous(), c.slice(0, 1, 2).expand({4, 7, 33}).contiguous(), "expand");
  // A strided destination: copy_ into a transposed view, with a dtype change.
  Tensor dst_g = zeros({33, 7, 5}, {.dtype = DType::f64, .device = gpu()});
  Tensor dst_c = zeros({33, 7, 5}, {.dtype = DType::f64});
  dst_g.transpose(0, 2).copy_(g);
  dst_c.transpose(0, 2).copy_(c);
  check_equal(dst_g, dst_c, "copy_ into a transposed f64 view");
  // Device -> host into a strided destination.
  Tensor host_dst = zeros({33, 7, 5}, {.dtype = DType::f32});
  host_dst.transpose(0, 2).copy_(g);
  check_equal(host_dst, c.transpose(0, 2).contiguous(), "copy_ device -> strided host view");
}

TEST_CASE("cuda fill: zeros, ones and full in every dtype" * doctest::skip(kNoGpu)) {
  const DType all[] = {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64, DType::u16, DType::u8};
  for (DType t : all) {
    for (double v : {0.0, 1.0, 3.75, 200.0}) {
      for (int64_t n : {1, 17, 4099}) {
        check_equal(full({n}, v, {.dtype = t, .device = gpu()}), full({n}, v, {.dtype = t}),
                    cat("full ", dtype_name(t), " value ", v, " n=", n));
      }
    }
  }
  check_equal(full({9}, -0.0, {.device = gpu()}), full({9}, -0.0), "negative zero is not memset");
}

// ---------------------------------------------------------------------------------------------------------------
// elementwise
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda binary ops: broadcasting forward and backward" * doctest::skip(kNoGpu)) {
  struct Case {
    Shape a, b;
  };
  const Case cases[] = {{{1}, {1}},           {{769}, {769}},         {{17, 33}, {33}},      {{17, 33}, {17, 1}},
                        {{3, 1, 5}, {1, 4, 1}}, {{257}, {}},            {{}, {257}},           {{2, 3, 4, 5}, {3, 1, 5}},
                        {{4099}, {1}}};
  for (DType t : kFloatTypes) {
    int seed = 0;
    for (const Case& c : cases) {
      Tensor a = randn_cpu(c.a, t, uint64_t(100 + seed++));
      Tensor b = rand_cpu(c.b, t, uint64_t(200 + seed++), 0.5, 2.0);  // safe divisor
      std::string shapes = cat(dtype_name(t), " ", shape_str(c.a), " op ", shape_str(c.b));
      compare_op("add " + shapes, [](const std::vector<Tensor>& v) { return add(v[0], v[1]); }, {a, b});
      compare_op("sub " + shapes, [](const std::vector<Tensor>& v) { return sub(v[0], v[1]); }, {a, b});
      compare_op("mul " + shapes, [](const std::vector<Tensor>& v) { return mul(v[0], v[1]); }, {a, b});
      compare_op("div " + shapes, [](const std::vector<Tensor>& v) { return div(v[0], v[1]); }, {a, b});
    }
  }
}

TEST_CASE("cuda binary ops: misaligned and non-contiguous operands" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    Tensor a = randn_cpu({1031}, t, 5), b = randn_cpu({1031}, t, 6);
    // Offsets of one element break 16-byte alignment: the scalar path.
    compare_op(cat("add misaligned ", dtype_name(t)),
               [](const std::vector<Tensor>& v) { return add(v[0].slice(0, 1, 1030), v[1].slice(0, 2, 1031)); }, {a, b});
    Tensor m = randn_cpu({33, 17}, t, 7), n = randn_cpu({17, 33}, t, 8);
    compare_op(cat("mul transposed ", dtype_name(t)),
               [](const std::vector<Tensor>& v) { return mul(v[0].transpose(0, 1), v[1]); }, {m, n});
  }
}

TEST_CASE("cuda unary ops forward and backward" * doctest::skip(kNoGpu)) {
  struct Case {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    bool positive;
  };
  const std::vector<Case> cases = {
      {"neg", [](const Tensor& x) { return neg(x); }, false},
      {"exp", [](const Tensor& x) { return exp(x); }, false},
      {"log", [](const Tensor& x) { return log(x); }, true},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, true},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, true},
      {"tanh", [](const Tensor& x) { return tanh(x); }, false},
      {"gelu", [](const Tensor& x) { return gelu(x); }, false},
      {"add_scalar", [](const Tensor& x) { return add_scalar(x, 0.75); }, false},
      {"mul_scalar", [](const Tensor& x) { return mul_scalar(x, -1.25); }, false},
      {"rsub_scalar", [](const Tensor& x) { return rsub_scalar(x, 2.0); }, false},
      {"rdiv_scalar", [](const Tensor& x) { return rdiv_scalar(x, 3.0); }, true},
      {"pow_scalar", [](const Tensor& x) { return pow_scalar(x, 1.7); }, true},
  };
  for (DType t : kFloatTypes) {
    for (int64_t n : {1, 3, 17, 257, 4099}) {
      for (const Case& c : cases) {
        Tensor x = c.positive ? rand_cpu({n}, t, uint64_t(n), 0.25, 3.0) : randn_cpu({n}, t, uint64_t(n));
        compare_op(cat(c.name, " ", dtype_name(t), " n=", n), [&](const std::vector<Tensor>& v) { return c.f(v[0]); }, {x},
                   Tol{.f32 = 2e-6});
      }
    }
    // A non-contiguous input (the op makes it contiguous on the device).
    Tensor x = randn_cpu({17, 33}, t, 9);
    compare_op(cat("gelu transposed ", dtype_name(t)), [](const std::vector<Tensor>& v) { return gelu(v[0].transpose(0, 1)); },
               {x});
  }
}

TEST_CASE("cuda add_ (axpy) in place" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    for (int64_t n : {1, 5, 1027}) {
      Tensor y = randn_cpu({n}, t, 1), x = randn_cpu({n}, t, 2);
      Tensor yc = y.clone(), yg = y.to(gpu());
      add_(yc, x, -0.3);
      add_(yg, x.to(gpu()), -0.3);
      check_close(yg, yc, tol_for(t, {}), cat("add_ ", dtype_name(t), " n=", n));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// reductions
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda sum and mean over dims" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    Tensor x = randn_cpu({5, 17, 33}, t, 21);
    for (std::vector<int64_t> dims : std::vector<std::vector<int64_t>>{{0}, {1}, {2}, {0, 2}, {0, 1, 2}}) {
      for (KeepDim keep : {KeepDim::no, KeepDim::yes}) {
        compare_op(cat("sum dims ", dims.size(), " first ", dims[0], " keep ", int(keep), " ", dtype_name(t)),
                   [&](const std::vector<Tensor>& v) { return sum(v[0], dims, keep); }, {x});
      }
    }
    compare_op(cat("mean all ", dtype_name(t)), [](const std::vector<Tensor>& v) { return mean(v[0]); }, {x});
    // Long rows split in chunks (few rows), and long columns split in chunks (many rows).
    Tensor row = randn_cpu({300007}, t, 22);
    compare_op(cat("sum of a long vector ", dtype_name(t)), [](const std::vector<Tensor>& v) { return sum(v[0]); }, {row});
    Tensor tall = randn_cpu({5000, 37}, t, 23);
    compare_op(cat("column sum over 5000 rows ", dtype_name(t)),
               [](const std::vector<Tensor>& v) { return sum(v[0], {0}, KeepDim::no); }, {tall});
    Tensor one = randn_cpu({1, 1}, t, 24);
    compare_op(cat("sum of one element ", dtype_name(t)), [](const std::vector<Tensor>& v) { return sum(v[0]); }, {one});
  }
}

TEST_CASE("cuda max over a dim (values, first argmax, backward)" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    Tensor x = randn_cpu({7, 257, 3}, t, 31);
    for (int64_t d : {0, 1, 2})
      compare_op(cat("max dim ", d, " ", dtype_name(t)), [&](const std::vector<Tensor>& v) { return max(v[0], d); }, {x});
    // Ties: the first maximum wins, as on the CPU (gradient goes there).
    std::vector<double> tied = {1, 3, 3, 2, 3, 0, -1, -1};
    Tensor tt = from_vector<double>(tied, {2, 4}, {.dtype = t});
    compare_op(cat("max ties ", dtype_name(t)), [](const std::vector<Tensor>& v) { return max(v[0], 1, KeepDim::yes); }, {tt});
    Tensor row = randn_cpu({3, 5000}, t, 32);
    compare_op(cat("max long rows ", dtype_name(t)), [](const std::vector<Tensor>& v) { return max(v[0], 1); }, {row});
  }
}

// ---------------------------------------------------------------------------------------------------------------
// matrix products
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda matmul: shapes, batches, broadcasts and transposed views" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  struct Case {
    Shape a, b;
    bool ta, tb;  // pass the operand as a transposed view of its transpose
  };
  const Case cases[] = {{{1, 1}, {1, 1}, false, false},         {{17, 33}, {33, 5}, false, false},
                        {{17, 33}, {33, 5}, true, false},       {{17, 33}, {33, 5}, false, true},
                        {{17, 33}, {33, 5}, true, true},        {{3, 17, 9}, {3, 9, 4}, false, false},
                        {{3, 17, 9}, {9, 4}, false, true},      {{2, 1, 5, 7}, {3, 7, 2}, false, false},
                        {{1, 769}, {769, 3}, false, false},     {{257, 64}, {64, 257}, true, false}};
  for (DType t : kFloatTypes) {
    int seed = 0;
    for (const Case& c : cases) {
      auto transposed_shape = [](Shape s) {
        std::swap(s[s.size() - 1], s[s.size() - 2]);
        return s;
      };
      Tensor a = randn_cpu(c.ta ? transposed_shape(c.a) : c.a, t, uint64_t(300 + seed++));
      Tensor b = randn_cpu(c.tb ? transposed_shape(c.b) : c.b, t, uint64_t(300 + seed++));
      bool ta = c.ta, tb = c.tb;
      compare_op(cat("matmul ", shape_str(c.a), ta ? "^T" : "", " @ ", shape_str(c.b), tb ? "^T" : "", " ", dtype_name(t)),
                 [ta, tb](const std::vector<Tensor>& v) {
                   return matmul(ta ? v[0].transpose(-1, -2) : v[0], tb ? v[1].transpose(-1, -2) : v[1]);
                 },
                 {a, b}, Tol{.f32 = 2e-5});
    }
    // K = 0: the product is zeros (empty operands: nothing to fill).
    Tensor a0 = empty({17, 0}, {.dtype = t}), b0 = empty({0, 5}, {.dtype = t});
    check_equal(matmul(a0.to(gpu()), b0.to(gpu())), matmul(a0, b0), cat("matmul K=0 ", dtype_name(t)));
  }
}

TEST_CASE("cuda linear forward and backward" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  for (DType t : kFloatTypes) {
    for (int64_t n : {1, 3, 257}) {
      Tensor x = randn_cpu({n, 33}, t, 41), w = randn_cpu({17, 33}, t, 42), b = randn_cpu({17}, t, 43);
      compare_op(cat("linear N=", n, " ", dtype_name(t)),
                 [](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); }, {x, w, b}, Tol{.f32 = 2e-5});
      compare_op(cat("linear no bias N=", n, " ", dtype_name(t)),
                 [](const std::vector<Tensor>& v) { return linear(v[0], v[1], Tensor()); }, {x, w}, Tol{.f32 = 2e-5});
    }
    Tensor x3 = randn_cpu({2, 5, 64}, t, 44), w3 = randn_cpu({12, 64}, t, 45), b3 = randn_cpu({12}, t, 46);
    compare_op(cat("linear 3-d input ", dtype_name(t)),
               [](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); }, {x3, w3, b3}, Tol{.f32 = 2e-5});
  }
}

#ifdef TALLY_HAS_CUDA
TEST_CASE("cuda gemm kernel: batch strides of 0, beta accumulation, K = 0" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  const int64_t M = 17, N = 9, K = 33, batch = 3;
  Tensor A = randn_cpu({M, K}, DType::f64, 51);  // shared across the batch (stride 0)
  Tensor B = randn_cpu({batch, K, N}, DType::f64, 52);
  Tensor C0 = randn_cpu({batch, M, N}, DType::f64, 53);
  auto run = [&](Device d, int64_t k, double beta) {
    Tensor a = A.to(d), b = B.to(d), c = C0.clone().to(d);
    kernels::GemmArgs<double> g;
    g.M = M;
    g.N = N;
    g.K = k;
    g.A = a.data<double>();
    g.lda = K;
    g.batch_stride_a = 0;
    g.B = b.data<double>();
    g.ldb = N;
    g.batch_stride_b = K * N;
    g.C = c.data<double>();
    g.ldc = N;
    g.batch_stride_c = M * N;
    g.batch = batch;
    g.alpha = 0.5;
    g.beta = beta;
    if (d.is_cuda()) kernels::cuda::gemm(g);
    else kernels::cpu::gemm(g);
    return c;
  };
  check_close(run(gpu(), K, 0.75), run(Device::cpu(), K, 0.75), 1e-12, "batched, A shared, beta 0.75");
  check_close(run(gpu(), 0, 0.5), run(Device::cpu(), 0, 0.5), 0.0, "K = 0 scales C by beta");
  check_close(run(gpu(), 0, 0.0), run(Device::cpu(), 0, 0.0), 0.0, "K = 0, beta = 0 zeroes C");
}

TEST_CASE("cuda gemm kernel: invalid leading dimension is a cuBLAS error naming the op" * doctest::skip(kNoGpu)) {
  Tensor a = zeros({4, 8}, {.dtype = DType::f32, .device = gpu()}), b = zeros({8, 4}, {.dtype = DType::f32, .device = gpu()});
  Tensor c = zeros({4, 4}, {.dtype = DType::f32, .device = gpu()});
  kernels::GemmArgs<float> g;
  g.M = 4;
  g.N = 4;
  g.K = 8;
  g.A = a.data<float>();
  g.lda = 2;  // < K: invalid
  g.B = b.data<float>();
  g.ldb = 4;
  g.C = c.data<float>();
  g.ldc = 4;
  CHECK_THROWS_WITH_AS(kernels::cuda::gemm(g), doctest::Contains("cuBLAS error"), Error);
  // The device is still usable afterwards.
  check_equal(add_scalar(c, 1.0), full({4, 4}, 1.0), "work after the error");
}

TEST_CASE("cuda TF32 mode: float products within TF32 accuracy, double unaffected" * doctest::skip(kNoGpu)) {
  cuda::Fp32MatmulScope tf32(cuda::Fp32Matmul::tf32);
  Tensor a = randn_cpu({129, 257}, DType::f32, 61), b = randn_cpu({257, 65}, DType::f32, 62);
  check_close(matmul(a.to(gpu()), b.to(gpu())), matmul(a.to(DType::f64), b.to(DType::f64)), 5e-3, "tf32 matmul");
  Tensor ad = a.to(DType::f64), bd = b.to(DType::f64);
  check_close(matmul(ad.to(gpu()), bd.to(gpu())), matmul(ad, bd), 1e-12, "f64 matmul under the tf32 setting");
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// softmax, layer norm
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda softmax and log_softmax forward and backward" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    for (Shape s : std::vector<Shape>{{1, 1}, {3, 33}, {17, 769}, {2, 5000}, {4, 3, 17}}) {
      Tensor x = randn_cpu(s, t, 71);
      compare_op(cat("softmax ", shape_str(s), " ", dtype_name(t)),
                 [](const std::vector<Tensor>& v) { return softmax(v[0]); }, {x});
      compare_op(cat("log_softmax ", shape_str(s), " ", dtype_name(t)),
                 [](const std::vector<Tensor>& v) { return log_softmax(v[0]); }, {x});
    }
    Tensor x = randn_cpu({33, 17}, t, 72);
    compare_op(cat("softmax of a transposed view ", dtype_name(t)),
               [](const std::vector<Tensor>& v) { return softmax(v[0].transpose(0, 1)); }, {x});
  }
}

TEST_CASE("cuda layer_norm forward and backward" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    for (Shape s : std::vector<Shape>{{1, 1}, {1, 3}, {3, 17}, {257, 769}, {2, 1500, 33}}) {
      const int64_t C = s.back();
      Tensor x = randn_cpu(s, t, 81), w = randn_cpu({C}, t, 82), b = randn_cpu({C}, t, 83);
      compare_op(cat("layer_norm ", shape_str(s), " ", dtype_name(t)),
                 [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); }, {x, w, b}, Tol{.f32 = 2e-5});
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// embedding, cross-entropy
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda embedding forward and backward (bit-identical to the CPU)" * doctest::skip(kNoGpu)) {
  struct Case {
    int64_t N, V, C;
  };
  for (DType t : kFloatTypes) {
    for (Case c : {Case{1, 1, 1}, Case{17, 5, 3}, Case{257, 50, 33}, Case{4096, 1000, 64}, Case{3000, 7, 768}}) {
      Generator gen(91);
      Tensor r = rand({c.N}, gen, {.dtype = DType::f64});
      std::vector<int32_t> ids;
      for (double u : r.to_vector<double>()) ids.push_back(int32_t(u * u * double(c.V)) % int32_t(c.V));  // skewed: repeats
      Tensor idx = from_vector<int32_t>(ids, {c.N});
      Tensor w = randn_cpu({c.V, c.C}, t, 92);
      Tensor wc = w.clone(), wg = w.to(gpu());
      wc.set_requires_grad(true);
      wg.set_requires_grad(true);
      Tensor oc = embedding(idx, wc), og = embedding(idx.to(gpu()), wg);
      std::string what = cat("embedding N=", c.N, " V=", c.V, " C=", c.C, " ", dtype_name(t));
      check_equal(og, oc, what + ": forward");
      Tensor up = randn_cpu(oc.shape(), t, 93);
      oc.backward(up);
      og.backward(up.to(gpu()));
      check_equal(wg.grad(), wc.grad(), what + ": weight gradient");
    }
  }
}

TEST_CASE("cuda cross_entropy forward and backward, padded rows" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    for (auto [N, V] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1, 3}, {17, 769}, {64, 5003}}) {
      Tensor logits = randn_cpu({N, V}, t, 101);
      Generator gen(102);
      std::vector<int32_t> tg;
      for (double u : rand({N}, gen, {.dtype = DType::f64}).to_vector<double>()) tg.push_back(int32_t(u * double(V)) % int32_t(V));
      Tensor targets = from_vector<int32_t>(tg, {N});
      compare_op(cat("cross_entropy N=", N, " V=", V, " ", dtype_name(t)),
                 [](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1]); }, {logits, targets});
      // Rows with a stride beyond V (the first V columns of padded logits).
      Tensor padded = randn_cpu({N, V + 13}, t, 103);
      int64_t v_cols = V;
      compare_op(cat("cross_entropy row-strided N=", N, " V=", V, " ", dtype_name(t)),
                 [v_cols](const std::vector<Tensor>& v) { return cross_entropy(v[0].slice(1, 0, v_cols), v[1]); },
                 {padded, targets});
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// attention
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda scaled_dot_product_attention forward and backward" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  struct Case {
    int64_t B, NH, Tq, Tk, HS;
    Causal causal;
  };
  const Case cases[] = {{1, 1, 1, 1, 1, Causal::yes},   {2, 3, 17, 17, 8, Causal::yes}, {1, 2, 33, 33, 64, Causal::yes},
                        {2, 2, 17, 17, 8, Causal::no},  {1, 3, 5, 17, 16, Causal::yes}, {1, 1, 5, 17, 16, Causal::no},
                        {3, 1, 1, 9, 4, Causal::yes}};
  for (DType t : kFloatTypes) {
    for (const Case& c : cases) {
      Tensor q = randn_cpu({c.B, c.NH, c.Tq, c.HS}, t, 111), k = randn_cpu({c.B, c.NH, c.Tk, c.HS}, t, 112),
             v = randn_cpu({c.B, c.NH, c.Tk, c.HS}, t, 113);
      Causal causal = c.causal;
      compare_op(cat("sdpa B=", c.B, " NH=", c.NH, " Tq=", c.Tq, " Tk=", c.Tk, " HS=", c.HS, " causal=", int(c.causal), " ",
                     dtype_name(t)),
                 [causal](const std::vector<Tensor>& in) { return scaled_dot_product_attention(in[0], in[1], in[2], causal); },
                 {q, k, v}, Tol{.f32 = 5e-5});
    }
    // Strided q, k, v: (B, T, NH, HS) memory viewed as (B, NH, T, HS).
    Tensor q = randn_cpu({2, 17, 3, 8}, t, 114), k = randn_cpu({2, 17, 3, 8}, t, 115), v = randn_cpu({2, 17, 3, 8}, t, 116);
    compare_op(cat("sdpa strided views ", dtype_name(t)),
               [](const std::vector<Tensor>& in) {
                 return scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2));
               },
               {q, k, v}, Tol{.f32 = 5e-5});
  }
}

TEST_CASE("cuda causal_self_attention on the fused qkv (GPT-2 layout)" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  struct Case {
    int64_t B, T, C, NH;
  };
  for (DType t : kFloatTypes) {
    for (Case c : {Case{1, 1, 8, 2}, Case{2, 17, 24, 3}, Case{2, 64, 64, 4}, Case{1, 33, 36, 1}}) {
      Tensor qkv = randn_cpu({c.B, c.T, 3 * c.C}, t, 121);
      int64_t nh = c.NH;
      compare_op(cat("causal_self_attention B=", c.B, " T=", c.T, " C=", c.C, " NH=", c.NH, " ", dtype_name(t)),
                 [nh](const std::vector<Tensor>& in) { return causal_self_attention(in[0], nh); }, {qkv}, Tol{.f32 = 5e-5});
    }
  }
}

TEST_CASE("cuda attention in several chunks (B*NH*T*T beyond one score buffer)" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  // 80 heads of 1024 x 1024 scores: 80M elements; one score buffer holds 32 pairs, so backward runs in 3
  // chunks (32, 32, 16) and forward, which uses both buffers, in 2 (64, 16).
  Tensor qkv = randn_cpu({1, 1024, 3 * 80 * 4}, DType::f32, 131);
  compare_op("causal_self_attention B=1 T=1024 NH=80 HS=4",
             [](const std::vector<Tensor>& in) { return causal_self_attention(in[0], 80); }, {qkv}, Tol{.f32 = 1e-4});
}

// ---------------------------------------------------------------------------------------------------------------
// random streams and dropout
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda random streams are bit-identical to the CPU's" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    for (int64_t n : {1, 17, 1000003}) {
      Generator gc(2024), gg(2024);
      check_equal(randn({n}, gg, {.dtype = t, .device = gpu()}), randn({n}, gc, {.dtype = t}), cat("randn n=", n));
      check_equal(rand({n}, gg, {.dtype = t, .device = gpu()}), rand({n}, gc, {.dtype = t}), cat("rand n=", n));
      Tensor a = empty({n}, {.dtype = t, .device = gpu()}), b = empty({n}, {.dtype = t});
      normal_(a, gg, 0.5, 0.02);
      normal_(b, gc, 0.5, 0.02);
      check_equal(a, b, cat("normal_(0.5, 0.02) n=", n));
      uniform_(a, gg, -3.0, 7.0);
      uniform_(b, gc, -3.0, 7.0);
      check_equal(a, b, cat("uniform_(-3, 7) n=", n));
      CHECK(gc.offset() == gg.offset());
    }
  }
  // The stream is a proper normal: mean ~ 0, variance ~ 1 (1M draws: 5 sigma bounds).
  Generator g(7);
  Tensor z = randn({1000000}, g, {.dtype = DType::f64, .device = gpu()});
  double m = mean(z).item(), var = mean(mul(z, z)).item() - m * m;
  CHECK(std::fabs(m) < 5e-3);
  CHECK(std::fabs(var - 1.0) < 1e-2);
}

TEST_CASE("cuda dropout forward and backward (same mask as the CPU)" * doctest::skip(kNoGpu)) {
  for (DType t : kFloatTypes) {
    for (int64_t n : {1, 17, 100003}) {
      Tensor x = randn_cpu({n}, t, 141);
      Tensor xc = x.clone(), xg = x.to(gpu());
      xc.set_requires_grad(true);
      xg.set_requires_grad(true);
      Generator gc(5), gg(5);
      Tensor yc = dropout(xc, 0.1, gc), yg = dropout(xg, 0.1, gg);
      check_equal(yg, yc, cat("dropout forward n=", n, " ", dtype_name(t)));
      Tensor up = randn_cpu({n}, t, 142);
      yc.backward(up);
      yg.backward(up.to(gpu()));
      check_equal(xg.grad(), xc.grad(), cat("dropout backward n=", n, " ", dtype_name(t)));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// determinism
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda reductions with partial sums are deterministic run to run" * doctest::skip(kNoGpu)) {
  Tensor x = randn_cpu({4000, 769}, DType::f32, 151).to(gpu()), w = randn_cpu({769}, DType::f32, 152).to(gpu()),
         b = randn_cpu({769}, DType::f32, 153).to(gpu());
  auto grads = [&]() {
    Tensor xl = x.detach(), wl = w.detach().clone(), bl = b.detach().clone();
    wl.set_requires_grad(true);
    bl.set_requires_grad(true);
    Tensor y = layer_norm(xl, wl, bl);
    y.backward(x);
    return std::vector<Tensor>{wl.grad(), bl.grad(), sum(x, {0}, KeepDim::no), sum(x)};
  };
  std::vector<Tensor> first = grads(), second = grads();
  for (size_t i = 0; i < first.size(); ++i) check_equal(second[i], first[i], cat("repeat ", i));
}

// ---------------------------------------------------------------------------------------------------------------
// caching allocator
// ---------------------------------------------------------------------------------------------------------------

#ifdef TALLY_HAS_CUDA
TEST_CASE("cuda allocator: exact ledger accounting, rounding, reserved >= held" * doctest::skip(kNoGpu)) {
  Ledger& l = ledger(gpu());
  const std::string owner = "test.cuda.accounting";
  const int64_t sizes[] = {1, 511, 512, 513, 4, 100000, 0};
  std::vector<Tensor> live;
  int64_t requested = 0, held = 0;
  {
    MemoryScope scope(Category::activation, owner);
    for (int64_t s : sizes) {
      live.push_back(empty({s}, {.dtype = DType::u8, .device = gpu()}));
      requested += s;
      held += cuda::cuda_held_bytes(s);
    }
  }
  Usage u = l.owner(owner);
  CHECK(u.live_requested == requested);
  CHECK(u.live_held >= held);  // larger only if a cached block was reused by best fit
  CHECK(u.live_held <= held + held / 8);
  cuda::CachingAllocatorStats st = cuda::caching_allocator_stats(0);
  if (cuda::cuda_allocator_mode() == cuda::CudaAllocatorMode::cached) CHECK(st.reserved_bytes >= l.total().live_held);
  CHECK(st.reserved_bytes == allocator(gpu()).reserved_bytes());
  live.clear();
  CHECK(l.owner(owner).live_requested == 0);
  CHECK(l.owner(owner).live_held == 0);
}

TEST_CASE("cuda allocator: a repeated allocation pattern stops calling cudaMalloc" * doctest::skip(kNoGpu)) {
  if (cuda::cuda_allocator_mode() == cuda::CudaAllocatorMode::direct) {
    MESSAGE("TALLY_CUDA_ALLOCATOR=direct: caching is off, nothing to check");
    return;
  }
  // One "training step": the same sizes every time, some alive together, freed in a different order.
  auto step = [] {
    MemoryScope scope(Category::activation, "test.cuda.loop");
    Tensor a = empty({1000, 769}, {.device = gpu()});
    Tensor b = empty({17}, {.device = gpu()});
    Tensor c = empty({257, 3}, {.dtype = DType::f64, .device = gpu()});
    { Tensor tmp = empty({1000, 769}, {.device = gpu()}); }
    Tensor d = empty({4099}, {.device = gpu()});
    b = Tensor();
    Tensor e = empty({17}, {.device = gpu()});
  };
  step();
  step();
  const cuda::CachingAllocatorStats before = cuda::caching_allocator_stats(0);
  for (int i = 0; i < 5; ++i) step();
  const cuda::CachingAllocatorStats after = cuda::caching_allocator_stats(0);
  CHECK(after.device_mallocs == before.device_mallocs);
  CHECK(after.cache_hits > before.cache_hits);
  CHECK(after.reserved_bytes == before.reserved_bytes);
  CHECK(ledger(gpu()).owner("test.cuda.loop").live_requested == 0);
}

TEST_CASE("cuda allocator: release_cached returns unused blocks to the device" * doctest::skip(kNoGpu)) {
  if (cuda::cuda_allocator_mode() == cuda::CudaAllocatorMode::direct) {
    MESSAGE("TALLY_CUDA_ALLOCATOR=direct: caching is off, nothing to check");
    return;
  }
  {
    MemoryScope scope(Category::other, "test.cuda.release");
    Tensor big = empty({64 << 20}, {.dtype = DType::u8, .device = gpu()});
  }
  Allocator& a = allocator(gpu());
  CHECK(cuda::caching_allocator_stats(0).cached_bytes >= (int64_t(64) << 20));
  a.release_cached();
  const cuda::CachingAllocatorStats st = cuda::caching_allocator_stats(0);
  CHECK(st.cached_bytes == 0);
  CHECK(st.reserved_bytes == ledger(gpu()).total().live_held);
}

TEST_CASE("cuda allocator: an impossible allocation reports out of memory with the ledger" * doctest::skip(kNoGpu)) {
  MemoryScope scope(Category::activation, "test.cuda.absurd");
  const int64_t absurd = int64_t(1) << 50;  // 1 PiB
  try {
    Tensor t = empty({absurd}, {.dtype = DType::u8, .device = gpu()});
    FAIL("a 1 PiB allocation succeeded");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("out of memory on cuda:0") != std::string::npos);
    CHECK(msg.find("test.cuda.absurd") != std::string::npos);
    CHECK(msg.find("activation") != std::string::npos);
    CHECK(msg.find("reserved by tally") != std::string::npos);
    CHECK(msg.find(format_bytes_exact(absurd)) != std::string::npos);
  }
  CHECK(ledger(gpu()).owner("test.cuda.absurd").live_requested == 0);
  // The failure left no error behind: kernels still run.
  check_equal(full({5}, 2.0, {.device = gpu()}), full({5}, 2.0), "work after the out-of-memory error");
}
#endif

}  // TEST_SUITE
