// The CUDA backend against the CPU backend: every op of the table (tests/core/op_cases.h) forward and backward on
// the same inputs (awkward sizes, T=1, non-contiguous views), in f64 (tight) and f32 (loose, strict FP32 cuBLAS);
// then what the table does not cover: copies, casts and fills, the gemm kernel itself, TF32, attention in several
// chunks, the random streams bit-identical, determinism, the caching allocator's accounting, error paths. Every
// case is skipped, visibly, without a GPU; there, scripts/cuda_emulate.sh runs these same cases against the CPU
// emulation of CUDA in tools/cuda_emu (logic only, no timing).
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/ledger.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/core/op_cases.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/cuda_allocator.h"
#include "core/cuda/runtime.h"
#include "core/kernels/kernels.h"
#endif
#ifdef TALLY_CUDA_EMULATED
#include <cuda_runtime.h>  // the emulator's (tools/cuda_emu): tally_emu::set_stream_stalled
#endif

namespace {

using namespace tally;
using test::Backward;
using test::Check;
using test::Inputs;
using test::OpCase;
using test::OpFn;
using test::Variant;

const bool kNoGpu = !cuda_available();

Device gpu() { return Device::cuda(0); }

// Full FP32 in cuBLAS for the scope of a test (TF32 would dominate the float error).
struct StrictFp32 {
#ifdef TALLY_HAS_CUDA
  cuda::Fp32MatmulScope scope{cuda::Fp32Matmul::strict};
#endif
};

// max |got - want| / max |want|: a scale-aware maximum error. A value that is not finite on either side fails (the
// reference's too: a NaN there would otherwise hide a NaN here), unless both hold the same infinity.
void check_close(const Tensor& got_t, const Tensor& want_t, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(got_t.defined());
  REQUIRE(want_t.defined());
  REQUIRE(got_t.shape() == want_t.shape());
  std::vector<double> got = got_t.to_vector<double>(), want = want_t.to_vector<double>();
  double max_err = 0.0, max_ref = 0.0;
  int64_t not_finite = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) {
      if (!(std::isinf(want[i]) && got[i] == want[i])) ++not_finite;
      continue;
    }
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
    max_ref = std::max(max_ref, std::fabs(want[i]));
  }
  const double err = max_err / std::max(max_ref, 1e-300);
  INFO("relative max error ", err, " (max |err| ", max_err, ", max |ref| ", max_ref, "), tolerance ", tol, "; ",
       not_finite, " element(s) not finite on one side or both");
  CHECK(not_finite == 0);
  CHECK(err <= tol);
}

// Bitwise equality (as doubles: every dtype converts to double exactly, sign of zero included), every NaN alike.
void check_equal(const Tensor& got_t, const Tensor& want_t, const std::string& what) {
  INFO(what);
  REQUIRE(got_t.shape() == want_t.shape());
  std::vector<double> got = got_t.to_vector<double>(), want = want_t.to_vector<double>();
  int64_t diff = 0, first = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    // Compared as bits: -0.0 == 0.0 as numbers, and a cast or fill that lost the sign would pass.
    bool same = std::bit_cast<uint64_t>(got[i]) == std::bit_cast<uint64_t>(want[i]) ||
                (std::isnan(got[i]) && std::isnan(want[i]));
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

// Runs `f` on the CPU leaves and on their GPU copies; compares the outputs and, for a random upstream gradient,
// the gradients of every floating input but the `frozen` ones, within `tol` (0: bit for bit).
void compare_devices(const std::string& what, const OpFn& f, const Inputs& leaves, double tol,
                     Backward backward = Backward::yes, const std::vector<size_t>& frozen = {}) {
  Inputs ci, gi;
  for (size_t i = 0; i < leaves.size(); ++i) {
    Tensor c = leaves[i].detach().clone();
    Tensor g = c.to(gpu());
    if (backward == Backward::yes && is_floating(c.dtype()) &&
        std::find(frozen.begin(), frozen.end(), i) == frozen.end()) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    ci.push_back(c);
    gi.push_back(g);
  }
  Tensor oc = f(ci), og = f(gi);
  REQUIRE(og.device() == gpu());
  check_close(og, oc, tol, what + ": forward");
  if (backward == Backward::none) return;
  Tensor up = randn_cpu(oc.shape(), oc.dtype(), 4242);
  oc.backward(up);
  og.backward(up.to(gpu()));
  for (size_t i = 0; i < ci.size(); ++i) {
    if (!ci[i].requires_grad()) {
      CHECK_MESSAGE(!gi[i].grad().defined(), what, ": input ", i, " requires no gradient but received one");
      continue;
    }
    REQUIRE(gi[i].grad().defined());
    REQUIRE(gi[i].grad().device() == gpu());
    check_close(gi[i].grad(), ci[i].grad(), tol, what + ": gradient of input " + std::to_string(i));
  }
}

const DType kFloatTypes[] = {DType::f64, DType::f32};

}  // namespace

TEST_SUITE("cuda") {

// ---------------------------------------------------------------------------------------------------------------
// the op table
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda op table: every op forward and backward against the CPU, in f64 and f32" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  test::for_each_variant(Check::cuda, [](const OpCase& c, const Variant& v, size_t i) {
    for (DType t : kFloatTypes)
      compare_devices(
          dtype_name(t), [&](const Inputs& in) { return run(c, v, in); }, make_leaves(v, i, t),
          t == DType::f64 ? c.tol.f64 : c.tol.f32, c.backward, frozen_inputs(v));
  });
}

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

#ifdef TALLY_HAS_CUDA
// A watch over the host's waits (set by NCCL while a communicator is open): the stream is kept busy (on a GPU, a
// queue of products far longer than the host's next step; in the emulator, whose launches finish at once, a stream
// marked stalled), and a wait then polls, asks the watch, and either ends with the work or gives up with the
// watch's reason after cancelling.
struct TestWatch final : cuda::WaitWatch {
  int asks = 0, cancels = 0;
  int give_up_at = -1;  // the first ask that gives up (-1: none)
  int done_at = -1;     // emulator: the ask after which the stalled stream's work ends
  std::string verdict(double waited_seconds) override {
    CHECK(waited_seconds >= 0.0);
    ++asks;
#ifdef TALLY_CUDA_EMULATED
    if (asks == done_at) tally_emu::set_stream_stalled(false);
#endif
    return give_up_at > 0 && asks >= give_up_at ? "the test's watch gives up" : "";
  }
  void cancel() override {
    ++cancels;
#ifdef TALLY_CUDA_EMULATED
    tally_emu::set_stream_stalled(false);  // as NCCL's abort ends its kernels
#endif
  }
};

// Queues work that keeps the stream busy: `a` was uploaded before any watch was set, so queueing waits for nothing.
void keep_stream_busy([[maybe_unused]] const Tensor& a) {
#ifdef TALLY_CUDA_EMULATED
  tally_emu::set_stream_stalled(true);
#else
  [[maybe_unused]] StrictFp32 strict;
  for (int i = 0; i < 40; ++i) (void)matmul(a, a);  // ~100 ms of FP32 products queued behind one another
#endif
}

// Unsets the test's watch however the test ends.
struct WatchScope {
  explicit WatchScope(cuda::WaitWatch* w) { cuda::set_wait_watch(w); }
  ~WatchScope() { cuda::set_wait_watch(nullptr); }
  WatchScope(const WatchScope&) = delete;
  WatchScope& operator=(const WatchScope&) = delete;
};

TEST_CASE("cuda runtime: a watched wait polls, and gives up with the watch's reason after cancelling" *
          doctest::skip(kNoGpu)) {
  REQUIRE(cuda::wait_watch() == nullptr);
  Tensor x = from_vector(std::vector<float>{1, 2, 3}, {3}, {.device = gpu()});
#ifdef TALLY_CUDA_EMULATED
  const Tensor a;  // the emulator's stream is stalled instead
#else
  const Tensor a = randn_cpu({4096, 4096}, DType::f32, 5).to(gpu());
#endif
  {
    TestWatch keeps_waiting;
    keeps_waiting.done_at = 3;
    WatchScope scope(&keeps_waiting);
    keep_stream_busy(a);
    const int64_t waits = cuda::host_waits();
    cuda::synchronize();  // ends with the work
    CHECK(cuda::host_waits() == waits + 1);
    CHECK(keeps_waiting.asks >= 1);
    CHECK(keeps_waiting.cancels == 0);
  }
  {
    TestWatch gives_up;
    gives_up.give_up_at = 1;
    WatchScope scope(&gives_up);
    keep_stream_busy(a);
    CHECK_THROWS_WITH_AS(cuda::synchronize(),
                         doctest::Contains("[synchronize] gave up waiting for the GPU: the test's watch gives up"),
                         Error);
    CHECK(gives_up.cancels == 1);
    keep_stream_busy(a);
    CHECK_THROWS_WITH_AS((void)x.to_vector<float>(), doctest::Contains("[memcpy_device_to_host] gave up waiting"),
                         Error);
    CHECK(gives_up.cancels == 2);
    // The debugging mode's wait after each kernel, and the caching allocator's release of its blocks (an
    // out-of-memory retry's), wait the same way.
    keep_stream_busy(a);
    {
      struct SyncAfterEachKernel {
        SyncAfterEachKernel() { cuda::set_launch_sync(cuda::LaunchSync::after_each_kernel); }
        ~SyncAfterEachKernel() { cuda::set_launch_sync(cuda::LaunchSync::async); }
      } sync_mode;
      CHECK_THROWS_WITH_AS((void)add(x, x), doctest::Contains("gave up waiting for the GPU: the test's watch gives up"),
                           Error);
    }
    CHECK(gives_up.cancels == 3);
    if (cuda::cuda_allocator_mode() != cuda::CudaAllocatorMode::direct) {
      {
        MemoryScope owner(Category::other, "test.cuda.watch");
        Tensor spare = empty({1 << 20}, {.dtype = DType::u8, .device = gpu()});  // cached when dropped
      }
      keep_stream_busy(a);
      CHECK_THROWS_WITH_AS(allocator(gpu()).release_cached(),
                           doctest::Contains("[cuda_allocator] gave up waiting for the GPU"), Error);
      CHECK(gives_up.cancels == 4);
    }
  }
  REQUIRE(cuda::wait_watch() == nullptr);  // blocking waits again
  keep_stream_busy(a);
#ifdef TALLY_CUDA_EMULATED
  tally_emu::set_stream_stalled(false);  // a blocking wait on a stalled stream would never return
#endif
  CHECK(x.to_vector<float>() == std::vector<float>{1, 2, 3});
}
#endif

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

TEST_CASE("cuda copy: uploads queued back to back through the pinned ring each land intact" * doctest::skip(kNoGpu)) {
  // Small host-to-device copies return before the device has read them (a ring of four pinned buffers): queue more
  // than the ring holds behind a long kernel, overwrite each host source at once, then read every copy back. A
  // buffer reused before its copy ran would show another upload's values. The last one is beyond the ring's 8 MiB
  // and waits, as before.
#ifdef TALLY_CUDA_EMULATED
  constexpr int64_t side = 64;  // the emulator runs each call to its end anyway, with a naive product
#else
  constexpr int64_t side = 2048;
#endif
  Tensor big = randn_cpu({side, side}, DType::f32, 3).to(gpu());
  std::vector<Tensor> landed;
  std::vector<std::vector<float>> want;
  for (int i = 0; i < 11; ++i) {
    (void)matmul(big, big);  // keeps the device busy while the host queues
    const int64_t n = i == 10 ? (int64_t(3) << 20) : 1000 + 37 * i;
    std::vector<float> host(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) host[size_t(k)] = float(i * 100000 + k % 100000);
    landed.push_back(from_vector(host, {n}, {.device = gpu()}));
    want.push_back(host);
    std::fill(host.begin(), host.end(), -1.0f);  // the source is free as soon as the call returns
  }
  for (size_t i = 0; i < landed.size(); ++i) CHECK_MESSAGE(landed[i].to_vector<float>() == want[i], "upload ", i);
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
// the gemm kernel, TF32
// ---------------------------------------------------------------------------------------------------------------

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
// attention in chunks
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda attention in several chunks (B*NH*T*T beyond one score buffer)" * doctest::skip(kNoGpu)) {
  [[maybe_unused]] StrictFp32 strict;
  // 80 heads of 1024 x 1024 scores: 80M elements; one score buffer holds 32 pairs, so backward runs in 3
  // chunks (32, 32, 16) and forward, which uses both buffers, in 2 (64, 16).
  Tensor qkv = randn_cpu({1, 1024, 3 * 80 * 4}, DType::f32, 131);
  compare_devices("causal_self_attention B=1 T=1024 NH=80 HS=4",
                  [](const Inputs& in) { return causal_self_attention(in[0], 80); }, {qkv}, 1e-4);
}

// ---------------------------------------------------------------------------------------------------------------
// random streams
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
// ---------------------------------------------------------------------------------------------------------------
// determinism
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("cuda add_layer_norm equals add then layer_norm bit for bit, gradients included (f64, f32, bf16)" *
          doctest::skip(kNoGpu)) {
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) test::check_add_layer_norm_as_composed(gpu(), dtype);
}

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

  // The LayerNorm's weight and bias gradients with no input gradient (its sums alone), against the CPU's.
  Tensor xc = x.to(Device::cpu()), wc = w.to(Device::cpu()).detach().clone(), bc = b.to(Device::cpu()).detach().clone();
  wc.set_requires_grad(true);
  bc.set_requires_grad(true);
  layer_norm(xc, wc, bc).backward(xc);
  const std::vector<float> dw = first[0].to_vector<float>(), dw_cpu = wc.grad().to_vector<float>();
  const std::vector<float> db = first[1].to_vector<float>(), db_cpu = bc.grad().to_vector<float>();
  for (size_t c = 0; c < dw.size(); ++c) {
    CHECK_MESSAGE(std::abs(dw[c] - dw_cpu[c]) <= 1e-4 * (1.0 + std::abs(dw_cpu[c])), "dweight ", c);
    CHECK_MESSAGE(std::abs(db[c] - db_cpu[c]) <= 1e-4 * (1.0 + std::abs(db_cpu[c])), "dbias ", c);
  }
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
