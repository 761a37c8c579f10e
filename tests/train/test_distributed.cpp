// Data parallelism. tests/cli/distributed.sh runs this suite under `mpirun -np 2` (and 3); in the plain unit run the
// world is one process and the same cases check the single-rank path, and ranks taking turns as threads of one
// process check worlds of 2 and 3 as well. Checked: the collectives (uneven sizes), and for every optimizer in the
// registry that a ZeRO-1 step equals the whole step after 50 steps, parameters and every state tensor
// (tests/train/zero1_equivalence.h), and that bf16 parameters are rounded with the whole step's random bits;
// checkpoints of a sharded optimizer hold whole tensors and load at any world size.
#include <doctest/doctest.h>

#include <sched.h>

#include <algorithm>
#include <cmath>

#include "core/autograd/node.h"
#include "core/dist/communicator.h"
#include "optim/came.h"
#include "optim/lamb.h"
#include "train/data_parallel.h"
#include "tests/train/turn_ranks.h"
#include "tests/train/zero1_equivalence.h"

using namespace tally;

namespace {

dist::Communicator& ranks() { return dist::process_group(); }

// `got`, a bf16 sum over W ranks of value(r, i), as the engines make it: at 1 rank the value; at 2 one addition in
// f32 rounded to the nearest bf16 (the same in either order); at more the engine picks the order, so it is checked
// against the exact sum within W - 1 roundings (each at most half a bf16 step, 2^-8 of the partial sum, which is at
// most the sum of the magnitudes).
template <class Value>
void check_bf16_sum(float got, int W, int64_t i, Value value) {
  if (W <= 2) {
    const bf16 sum = W == 1 ? value(0, i) : float_to_bf16(bf16_to_float(value(0, i)) + bf16_to_float(value(1, i)));
    CHECK(got == bf16_to_float(sum));
    return;
  }
  double exact = 0, size = 0;
  for (int r = 0; r < W; ++r) {
    exact += bf16_to_float(value(r, i));
    size += std::abs(bf16_to_float(value(r, i)));
  }
  CHECK(std::abs(double(got) - exact) <= double(W - 1) * std::ldexp(size, -8));
}

void check_collectives(dist::Communicator& c) {
  const int W = c.world(), R = c.rank();
  MESSAGE("world ", W, " (", c.engine(), ")");
  std::vector<double> d = {double(R + 1), 0.5};
  c.all_reduce_sum(d.data(), 2);
  CHECK(d[0] == double(W * (W + 1) / 2));
  CHECK(d[1] == 0.5 * W);
  c.all_reduce_sum(d.data(), 2, Device::cpu());  // the optimizer kernels' form (a device named)
  CHECK(d[0] == double(W * W * (W + 1) / 2));
  std::vector<char> b(5, R == W - 1 ? 'x' : 'y');
  c.broadcast(b.data(), 5, W - 1);
  CHECK(std::string(b.begin(), b.end()) == "xxxxx");
  std::vector<float> f(7);
  for (size_t i = 0; i < f.size(); ++i) f[i] = float(R * 10 + int(i));
  c.all_reduce_sum(f.data(), 7, Device::cpu());
  for (size_t i = 0; i < f.size(); ++i) CHECK(f[i] == float(10 * W * (W - 1) / 2 + W * int(i)));
  // Maxima: element i's largest is rank (i % W)'s, the others' are negative.
  std::vector<float> mx(7);
  for (size_t i = 0; i < mx.size(); ++i) mx[i] = int(i) % W == R ? float(i) + 0.5f : -float(R) - float(i);
  c.all_reduce_max(mx.data(), 7, Device::cpu());
  for (size_t i = 0; i < mx.size(); ++i) CHECK(mx[i] == float(i) + 0.5f);
  const int64_t seg = 3;
  std::vector<float> rs(size_t(seg * W));
  for (size_t i = 0; i < rs.size(); ++i) rs[i] = float(i) + float(R);
  c.reduce_scatter_sum(rs.data(), seg, Device::cpu());
  for (int64_t k = 0; k < seg; ++k) CHECK(rs[size_t(R * seg + k)] == float(W * (R * seg + k) + W * (W - 1) / 2));
  std::vector<float> ag(size_t(seg * W), -1.0f);
  for (int64_t k = 0; k < seg; ++k) ag[size_t(R * seg + k)] = float(R * 100 + k);
  c.all_gather(ag.data(), seg * 4, Device::cpu());
  for (int r = 0; r < W; ++r)
    for (int64_t k = 0; k < seg; ++k) CHECK(ag[size_t(r * seg + k)] == float(r * 100 + k));
  // Bytes of any dtype: segments of 3 bf16 values (6 bytes, not a multiple of a float), bits unchanged.
  std::vector<uint16_t> half(size_t(seg * W), 0xFFFF);
  for (int64_t k = 0; k < seg; ++k) half[size_t(R * seg + k)] = uint16_t(0x7F80 + R * 16 + k);
  c.all_gather(half.data(), seg * 2, Device::cpu());
  for (int r = 0; r < W; ++r)
    for (int64_t k = 0; k < seg; ++k) CHECK(half[size_t(r * seg + k)] == uint16_t(0x7F80 + r * 16 + k));
  const std::vector<uint64_t> ids = c.all_gather_u64(0xFEDCBA9876543210ull + uint64_t(R));
  REQUIRE(ids.size() == size_t(W));
  for (int r = 0; r < W; ++r) CHECK(ids[size_t(r)] == 0xFEDCBA9876543210ull + uint64_t(r));
  // bf16 sums, all-reduced and reduce-scattered (segments of 3).
  const auto value = [](int r, int64_t i) {
    return float_to_bf16(1.0f + 0.0078125f * float(r + 1) + 0.013f * float(i));
  };
  std::vector<bf16> h(size_t(seg * W));
  for (size_t i = 0; i < h.size(); ++i) h[i] = value(R, int64_t(i));
  std::vector<bf16> hs = h;
  c.all_reduce_sum(h.data(), int64_t(h.size()), Device::cpu());
  c.reduce_scatter_sum(hs.data(), seg, Device::cpu());
  for (int64_t i = 0; i < seg * W; ++i) {
    INFO("element ", i);
    check_bf16_sum(bf16_to_float(h[size_t(i)]), W, i, value);
    if (i / seg == R) check_bf16_sum(bf16_to_float(hs[size_t(i)]), W, i, value);
  }
}

// Gradients summed in bf16 (--reduce-dtype bf16), ZeRO 0 and 1, f32 and bf16 parameters: each rank's summed
// gradient (ZeRO 1: its parts) is the engine's bf16 sum of the ranks' gradients rounded to bf16, and the collectives
// were handed half the bytes of the f32 sum.
void check_bf16_gradient_sums(dist::Communicator& c) {
  const int W = c.world(), R = c.rank();
  const std::vector<Shape> shapes = {{37, 20}, {50}, {2}};
  std::vector<std::vector<std::vector<float>>> grads(shapes.size());  // [tensor][rank]
  for (size_t p = 0; p < shapes.size(); ++p)
    for (int r = 0; r < W; ++r)
      grads[p].push_back(test::normal_values(numel(shapes[p]), 500 + 10 * p + size_t(r), 0.5));
  for (const train::ZeroStage stage : {train::ZeroStage::zero0, train::ZeroStage::zero1})
    for (const DType dtype : {DType::f32, DType::bf16}) {
      INFO("ZeRO ", stage == train::ZeroStage::zero1 ? 1 : 0, ", ", dtype_name(dtype), " parameters, world ", W);
      std::vector<Tensor> params;
      for (size_t p = 0; p < shapes.size(); ++p) {
        params.push_back(from_vector(test::normal_values(numel(shapes[p]), 80 + p), shapes[p], {.dtype = dtype}));
        params.back().set_requires_grad(true);
        params.back().set_name(cat("g", p));
      }
      auto opt = optim::make_optimizer("adamw", params, {{"lr", 1e-2}});
      if (stage == train::ZeroStage::zero1) opt->shard(c);
      train::DataParallel in_bf16(c, stage, *opt, params, DType::bf16, 256),
          in_f32(c, stage, *opt, params, DType::f32, 256);
      const auto set_grads = [&] {
        for (size_t p = 0; p < shapes.size(); ++p)
          params[p].set_grad(from_vector(grads[p][size_t(R)], shapes[p], {.dtype = dtype}));
      };
      set_grads();
      dist::Traffic before = c.traffic();
      in_bf16.reduce_gradients();
      const dist::Traffic bf16_sums = c.traffic() - before;
      for (size_t p = 0; p < shapes.size(); ++p) {
        int64_t first = 0, last = params[p].numel();
        if (stage == train::ZeroStage::zero1) {
          const optim::ShardCut& cut = opt->shard_cut(params[p].name());
          first = cut.offsets[size_t(R)], last = cut.offsets[size_t(R) + 1];
        }
        const std::vector<float> got = params[p].grad().to_vector<float>();
        const auto value = [&](int r, int64_t i) { return float_to_bf16(grads[p][size_t(r)][size_t(i)]); };
        for (int64_t i = first; i < last; ++i) {
          INFO("tensor ", p, " element ", i);
          check_bf16_sum(got[size_t(i)], W, i, value);
        }
      }
      set_grads();
      before = c.traffic();
      in_f32.reduce_gradients();
      const dist::Traffic f32_sums = c.traffic() - before;
      CHECK(2 * bf16_sums.bytes == f32_sums.bytes);
      CHECK(bf16_sums.collectives == f32_sums.collectives);
    }
}

}  // namespace

TEST_SUITE("distributed") {

TEST_CASE("distributed: collectives sum, take maxima, scatter and gather, whatever the sizes") {
  check_collectives(ranks());
  for (const int world : {2, 3}) {  // and ranks taking turns in this process (the check below runs on them)
    test::TurnRanks group(world);
    group.run(check_collectives);
  }
}

TEST_CASE("distributed: ranks that may run on the same CPUs share them out, ranks of other machines do not") {
  // Threads of this process have its CPUs: every rank taking turns here has the same mask.
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
  const int cpus = CPU_COUNT(&set);
  for (int world : {2, 3}) {
    std::vector<int> threads(static_cast<size_t>(world));
    test::TurnRanks group(world);
    group.run([&](dist::Communicator& c) { threads[size_t(c.rank())] = dist::shared_cpu_threads(c); });
    int total = 0;
    for (int r = 0; r < world; ++r) {
      INFO("world ", world, " rank ", r, " of ", cpus, " CPUs");
      CHECK(threads[size_t(r)] == std::max(1, cpus / world + (r < cpus % world ? 1 : 0)));
      total += threads[size_t(r)];
    }
    CHECK(total == std::max(cpus, world));  // every CPU used, none twice (one thread each when there are fewer)
  }
  // Two machines (the same mask, other nodes): each rank has its machine's CPUs to itself.
  std::vector<int> alone(2);
  test::TurnRanks two_machines(2, {0, 1});
  two_machines.run([&](dist::Communicator& c) { alone[size_t(c.rank())] = dist::shared_cpu_threads(c); });
  CHECK(alone == std::vector<int>{cpus, cpus});
  // One process: its CPUs.
  CHECK(dist::shared_cpu_threads(*dist::single_process()) == cpus);
}

TEST_CASE("distributed: a rank's share counts the ranks whose CPUs overlap its own, on its machine") {
  // Ranks' CPUs as [first, last] ranges on machines `node`; every mask readable unless said.
  struct Rank {
    int first, last;
    int64_t node = 0;
    int64_t readable = 1;
  };
  auto shares = [](const std::vector<Rank>& ranks) {
    std::vector<dist::RankCpus> all(ranks.size());
    for (size_t r = 0; r < ranks.size(); ++r) {
      all[r].node = ranks[r].node;
      all[r].readable = ranks[r].readable;
      for (int c = ranks[r].first; c <= ranks[r].last; ++c) all[r].mask[c / 64] |= uint64_t(1) << (c % 64);
    }
    std::vector<int> out;
    for (int r = 0; r < int(ranks.size()); ++r) out.push_back(dist::cpu_share(all, r));
    return out;
  };
  // Bound to disjoint cores (mpirun's --bind-to core): each its own.
  CHECK(shares({{0, 3}, {4, 7}, {8, 8}}) == std::vector<int>{4, 4, 1});
  // Partly overlapping: 0-3 meets 2-5 only, 2-5 meets both, 4-7 meets 2-5 only. A rank's share never counts a rank
  // that cannot run on its CPUs; where every pair does not overlap, fewer threads than CPUs (none run twice).
  CHECK(shares({{0, 3}, {2, 5}, {4, 7}}) == std::vector<int>{2, 1, 2});
  // One mask inside another: each halves its own CPUs.
  CHECK(shares({{0, 7}, {2, 3}}) == std::vector<int>{4, 1});
  // CPUs that do not divide: the lower rank takes the odd one.
  CHECK(shares({{0, 6}, {0, 6}}) == std::vector<int>{4, 3});
  // More ranks than CPUs: one thread each.
  CHECK(shares({{0, 1}, {0, 1}, {0, 1}}) == std::vector<int>{1, 1, 1});
  // The same CPUs on two machines: not shared; an unreadable mask: 0 (OpenMP's default), and not counted by others.
  CHECK(shares({{0, 7}, {0, 7, 1}, {0, 7}}) == std::vector<int>{4, 8, 4});
  CHECK(shares({{0, 7}, {0, 7, 0, 0}}) == std::vector<int>{8, 0});
  // CPUs past 64 (a mask of several words).
  CHECK(shares({{60, 131}, {128, 135}}) == std::vector<int>{36, 4});
}

TEST_CASE("distributed: a ZeRO-1 step equals the whole step for every optimizer (50 steps, every state tensor)") {
  test::check_zero1_equals_whole(ranks(), Device::cpu(), 50);
}

TEST_CASE("distributed: ZeRO 1 rounds a bf16 parameter with the whole step's random bits and gathers it as bf16") {
  test::check_zero1_bf16_rounding(ranks(), Device::cpu(), 4);
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run([](dist::Communicator& c) { test::check_zero1_bf16_rounding(c, Device::cpu(), 4); });
  }
}

TEST_CASE("distributed: gradients summed in bf16 are the engine's bf16 sums, in half the bytes") {
  check_bf16_gradient_sums(ranks());
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run(check_bf16_gradient_sums);
  }
}

TEST_CASE("distributed: a vector whose step sums over it goes whole to one rank, and makes no collective") {
  // Largest first, each to the rank holding the fewest such elements so far: 100 -> 0, 50 -> 1, 40 -> 1, then the
  // two of 10 by name, in whatever order they are given: "a" -> 1 (100 and 90 held), "b" -> 0 (100 each: the lowest).
  // A vector over kWholeTensorMax, a factored matrix and a small matrix of elementwise state (LAMB's) are cut as
  // shard_cut says.
  const int64_t big = optim::kWholeTensorMax + 12;
  const std::vector<std::string> names = {"v", "w", "x", "b", "a", "y", "z", "m"};
  const std::vector<Shape> shapes = {{100}, {50}, {40}, {10}, {10}, {big}, {40, 24}, {40, 24}};
  std::vector<optim::StateLayout> layouts;
  for (size_t i = 0; i + 1 < shapes.size(); ++i)
    layouts.push_back(optim::Came::layout(shapes[i], optim::CameConfig{.lr = 1e-3}));
  layouts.push_back(optim::Lamb::layout(shapes.back(), optim::LambConfig{.lr = 1e-3}));
  const std::vector<optim::ShardCut> cuts = optim::shard_cuts(names, shapes, layouts, 2);
  const std::vector<int> owners = {0, 1, 1, 0, 1};
  for (size_t i = 0; i < owners.size(); ++i) {
    INFO("tensor ", i);
    CHECK(cuts[i].whole_on_one_rank());
    CHECK(cuts[i].part_numel(owners[i]) == numel(shapes[i]));
  }
  CHECK_FALSE(cuts[5].whole_on_one_rank());
  CHECK((cuts[5].part_numel(0) > 0 && cuts[5].part_numel(1) > 0));
  CHECK(cuts[5].offsets[1] % 8 == 0);        // parts start on round_to_bf16's blocks
  CHECK_FALSE(cuts[6].whole_on_one_rank());  // rows cut, the column statistics completed over the ranks
  CHECK(cuts[6].columns_shared);
  CHECK((cuts[7].dim < 0 && cuts[7].part_numel(0) == 480 && cuts[7].part_numel(1) == 480));

  // CAME over the small vectors at 2 and 3 ranks: the owner steps each whole, bit for bit as one process does, and
  // no rank hands anything to the collectives (cut into ranges, each vector's RMS would cost one per step).
  const std::vector<Shape> vectors(shapes.begin(), shapes.begin() + 5);
  const auto make = [&](std::vector<Tensor>& params) {
    for (size_t i = 0; i < vectors.size(); ++i) {
      params.push_back(from_vector(test::normal_values(numel(vectors[i]), 30 + i), vectors[i]));
      params.back().set_requires_grad(true);
      params.back().set_name(cat("v", i));
    }
    return optim::make_optimizer("came", params, {{"lr", 1e-2}});
  };
  const auto gradient = [&](size_t i, int step) {
    return from_vector(test::normal_values(numel(vectors[i]), 100 * uint64_t(step) + i, 0.5), vectors[i]);
  };
  std::vector<Tensor> whole_params;
  auto whole = make(whole_params);
  for (int step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < vectors.size(); ++i) whole_params[i].set_grad(gradient(i, step));
    whole->step();
  }
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run([&](dist::Communicator& c) {
      std::vector<Tensor> params;
      auto sharded = make(params);
      sharded->shard(c);
      const dist::Traffic before = c.traffic();
      for (int step = 1; step <= 3; ++step) {
        for (size_t i = 0; i < vectors.size(); ++i) params[i].set_grad(gradient(i, step));
        sharded->step();
      }
      CHECK(c.traffic() - before == dist::Traffic{});
      CHECK(sharded->traffic_per_step() == dist::Traffic{});
      for (size_t i = 0; i < vectors.size(); ++i) {
        const optim::ShardCut& cut = sharded->shard_cut(params[i].name());
        INFO("world ", world, " rank ", c.rank(), " vector ", i);
        CHECK(cut.whole_on_one_rank());
        CHECK(test::rank_elements(params[i], cut, c.rank()) == test::rank_elements(whole_params[i], cut, c.rank()));
      }
    });
  }
}

TEST_CASE("distributed: a matrix whose rows are cut costs CAME two collectives a step and Adafactor one") {
  // The first round (the column sums and row-group sums of the second moment) also carries the column sums of the
  // squared update over each rank's rows, from which every rank has the whole tensor's sum of u^2 (the RMS clip):
  // CAME's instability takes the second round. At 3 ranks one rank holds no row of the (2, 24) matrix and still
  // joins both rounds with zeros. The parameters after 3 steps are the whole step's within float rounding (the sums
  // are added in another order).
  const std::vector<Shape> shapes = {{40, 24}, {2, 24}};
  const auto make = [&](const char* name, std::vector<Tensor>& params) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      params.push_back(from_vector(test::normal_values(numel(shapes[i]), 50 + i), shapes[i]));
      params.back().set_requires_grad(true);
      params.back().set_name(cat("m", i));
    }
    return optim::make_optimizer(name, params, {{"lr", 1e-2}});
  };
  const auto gradient = [&](size_t i, int step) {
    return from_vector(test::normal_values(numel(shapes[i]), 200 * uint64_t(step) + i), shapes[i]);
  };
  struct Case {
    const char* name;
    int rounds;  // per matrix and step
  };
  for (const Case& each : {Case{"came", 2}, Case{"adafactor", 1}}) {
    const char* name = each.name;  // not a structured binding: the lambdas below capture it (clang 14)
    const int rounds = each.rounds;
    std::vector<Tensor> whole_params;
    auto whole = make(name, whole_params);
    for (int step = 1; step <= 3; ++step) {
      for (size_t i = 0; i < shapes.size(); ++i) whole_params[i].set_grad(gradient(i, step));
      whole->step();
    }
    for (const int world : {2, 3}) {
      test::TurnRanks group(world);
      group.run([&](dist::Communicator& c) {
        INFO(name, " world ", world, " rank ", c.rank());
        std::vector<Tensor> params;
        auto sharded = make(name, params);
        sharded->shard(c);
        // Per matrix: `rounds` collectives of (cols + groups) doubles, and the update's column sums (cols) in the
        // first.
        const int64_t cols = 24, groups = 1;
        const dist::Traffic expected{int64_t(shapes.size()) * rounds,
                                     int64_t(shapes.size()) * (rounds * (cols + groups) + cols) * 8};
        for (int step = 1; step <= 3; ++step) {
          for (size_t i = 0; i < shapes.size(); ++i) params[i].set_grad(gradient(i, step));
          const dist::Traffic before = c.traffic();
          sharded->step();
          CHECK(c.traffic() - before == expected);
        }
        CHECK(sharded->traffic_per_step() == expected);  // the prediction (of slots made by the first step)
        if (world == 3) {                                // the (2, 24) matrix: a rank without a row
          const optim::ShardCut& small = sharded->shard_cut("m1");
          CHECK(small.part_numel(0) * small.part_numel(1) * small.part_numel(2) == 0);
        }
        for (size_t i = 0; i < shapes.size(); ++i) {
          const optim::ShardCut& cut = sharded->shard_cut(params[i].name());
          CHECK(cut.columns_shared);
          const std::vector<float> got = test::rank_elements(params[i], cut, c.rank());
          const std::vector<float> want = test::rank_elements(whole_params[i], cut, c.rank());
          REQUIRE(got.size() == want.size());
          for (size_t k = 0; k < got.size(); ++k) CHECK(got[k] == doctest::Approx(want[k]).epsilon(1e-5));
        }
      });
    }
  }
}

TEST_CASE("distributed: the loss, the norm and one rank's stop request are every rank's after the step's sum") {
  // A signal reaches one rank (or ranks at different steps): the request travels with the loss, so every rank stops
  // after the same step, instead of one stopping while the others wait for it in the next step's collectives.
  for (const int world : {2, 3}) {
    for (const train::ZeroStage stage : {train::ZeroStage::zero0, train::ZeroStage::zero1}) {
      test::TurnRanks group(world);
      group.run([&](dist::Communicator& c) {
        std::vector<Tensor> params = {from_vector(test::normal_values(12, 7), {3, 4})};
        params[0].set_requires_grad(true);
        params[0].set_name("w");
        auto opt = optim::make_optimizer("adamw", params, {{"lr", 1e-3}});
        if (stage == train::ZeroStage::zero1) opt->shard(c);
        train::DataParallel dp(c, stage, *opt, params);
        const dist::Traffic before = c.traffic();
        INFO("world ", world, " rank ", c.rank(), " ZeRO ", int(stage));
        for (int asking = -1; asking < world; ++asking) {  // -1: no rank asks
          // Rank r's loss r + 1 and squares 4 (ZeRO 1: its part's; ZeRO 0: the whole gradient's, every rank's alike).
          const train::DataParallel::LossAndNorm r = dp.loss_and_norm(double(c.rank() + 1), 4.0, c.rank() == asking);
          CHECK(r.loss == doctest::Approx(double(world + 1) / 2));
          CHECK(r.norm == doctest::Approx(stage == train::ZeroStage::zero1 ? std::sqrt(4.0 * world) : 2.0));
          CHECK(r.stop == (asking >= 0));
        }
        CHECK(c.traffic() - before == dist::Traffic{world + 1, (world + 1) * train::DataParallel::kLossAndNormBytes});
      });
    }
  }
}

TEST_CASE("distributed: the same at 2 and 3 ranks taking turns in one process (no mpirun)") {
  // The ranks as threads of this process, one running at a time (tests/train/turn_ranks.h): the same check, so that
  // the plain unit run covers world sizes above one too.
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run([](dist::Communicator& c) { test::check_zero1_equals_whole(c, Device::cpu(), 50); });
  }
}

}  // TEST_SUITE
