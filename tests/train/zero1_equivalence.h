// The check that a ZeRO-1 step - each rank stepping its part of every parameter from the summed gradients, the
// parts then gathered - equals the whole step, for every optimizer in the registry, parameters and every state
// tensor; and that a sharded optimizer's checkpoint holds whole tensors and loads at this world. Run by every rank of
// a group: MPI processes (tests/train/test_distributed.cpp), ranks taking turns in one process on the CPU or on one
// GPU (tests/train/turn_ranks.h).
#pragma once
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <ostream>

#include "core/dist/communicator.h"
#include "optim/registry.h"
#include "tests/optim/optim_test_util.h"
#include "train/data_parallel.h"

namespace tally::dist {
// For doctest's messages: "{collectives, bytes}".
inline std::ostream& operator<<(std::ostream& os, const Traffic& t) {
  return os << "{" << t.collectives << " collectives, " << t.bytes << " bytes}";
}
}  // namespace tally::dist

namespace tally::test {

// Parameters whose parts are cut every way: a matrix (factored by CAME/Adafactor: rows cut), a 3-D tensor (factored
// over its last two dims with a leading dim: slabs cut; SM3's three accumulators), a vector, tensors smaller than the world (a rank of 3 holds
// nothing of them), and a matrix with padding rows (as GPT-2's wte), last.
inline std::vector<Tensor> zero1_params(const std::string& prefix, Device device) {
  const std::vector<Shape> shapes = {{37, 20}, {3, 8, 6}, {50}, {2, 5}, {2}, {12, 6}};
  std::vector<Tensor> out;
  for (size_t i = 0; i < shapes.size(); ++i)
    out.push_back(make_param(cat(prefix, i), normal_values(numel(shapes[i]), 40 + i), shapes[i], device));
  out.back().set_padding_rows(2);
  return out;
}

// Step k's gradient of parameter i times `scale`, the same on every rank (zero in padding rows, as a model leaves
// them).
inline Tensor zero1_gradient(const Tensor& p, size_t i, int step, double scale = 1.0) {
  std::vector<float> g = normal_values(p.numel(), 1000 * uint64_t(step) + i, 0.5 * scale);
  if (p.padding_rows() > 0)
    for (int64_t k = (p.size(0) - p.padding_rows()) * (p.numel() / p.size(0)); k < p.numel(); ++k) g[size_t(k)] = 0;
  return make_grad(g, p.shape(), p.device());
}

// Rank `rank`'s elements of a tensor cut as `cut`, as floats (exact for bf16, which widens exactly).
inline std::vector<float> rank_elements(const Tensor& t, const optim::ShardCut& cut, int rank) {
  const std::vector<float> v = t.to_vector<float>();
  return {v.begin() + cut.offsets[size_t(rank)], v.begin() + cut.offsets[size_t(rank) + 1]};
}

// An inspected sharded step reports what the whole step reports: each tensor's sums are this rank's part added over
// the ranks (the clip's sum of u^2 included, however the step completed it), and the confidence factors come from
// the gathered vectors. Within float rounding of sums formed in another order.
inline void check_internals_equal(const std::vector<optim::TensorInternals>& sharded,
                                  const std::vector<optim::TensorInternals>& whole) {
  REQUIRE(sharded.size() == whole.size());
  REQUIRE(!whole.empty());
  auto same = [](double a, double b) {
    return (std::isnan(a) && std::isnan(b)) || std::abs(a - b) <= 1e-5 * std::max(std::abs(b), 1e-6);
  };
  for (size_t i = 0; i < whole.size(); ++i) {
    const optim::TensorInternals &a = sharded[i], &b = whole[i];
    INFO("internals of ", b.param);
    REQUIRE(std::isfinite(b.update_rms));  // an inspected step: the whole step's figures are there to compare
    CHECK(a.param == b.param);
    CHECK(a.step == b.step);
    CHECK(same(a.update_rms, b.update_rms));
    CHECK(same(a.clipped_update_rms, b.clipped_update_rms));
    CHECK(a.clipped == b.clipped);
    CHECK(same(a.exp_avg_rms, b.exp_avg_rms));
    CHECK(same(a.applied_rms, b.applied_rms));
    CHECK(a.has_confidence == b.has_confidence);
    for (const auto& [x, y] :
         {std::pair{a.confidence_row, b.confidence_row}, std::pair{a.confidence_col, b.confidence_col},
          std::pair{a.confidence_scale, b.confidence_scale}}) {
      CHECK(same(x.min, y.min));
      CHECK(same(x.mean, y.mean));
      CHECK(same(x.max, y.max));
    }
  }
}

// The sharded step differs from the whole one only in how sums over a tensor are formed (each rank's part, then
// over ranks, in double): parameters and state agree to float rounding, accumulated over `steps` steps of updates
// about lr in size. (SM3 takes maxima, exact in any order: tests/optim/sm3_lamb.cpp checks its bits.)
inline void check_zero1_equals_whole(dist::Communicator& c, Device device, int steps) {
  for (const optim::OptimizerEntry& e : optim::optimizers()) {
    INFO("optimizer ", e.name, ", world ", c.world(), ", rank ", c.rank(), ", ", device.str());
    const optim::Settings settings{{"lr", 1e-2}, {"weight-decay", 0.1}};
    std::vector<Tensor> whole_params = zero1_params("w", device), part_params = zero1_params("w", device);
    auto whole = optim::make_optimizer(e.name, whole_params, settings);
    auto sharded = optim::make_optimizer(e.name, part_params, settings);
    sharded->shard(c);
    train::DataParallel dp(c, train::ZeroStage::zero1, *sharded, part_params, DType::f32, 1024);  // small buckets
    for (int step = 1; step <= steps; ++step) {
      for (size_t i = 0; i < whole_params.size(); ++i) {
        whole_params[i].set_grad(zero1_gradient(whole_params[i], i, step));
        // Each rank contributes g / world (a training step scales its loss so): the reduce-scatter sums them to g.
        part_params[i].set_grad(zero1_gradient(part_params[i], i, step, 1.0 / c.world()));
      }
      // Step 2 inspects: each tensor's statistics are summed over the ranks too.
      const optim::Inspect inspect = step == 2 ? optim::Inspect::summary : optim::Inspect::off;
      whole->set_inspect(inspect);
      whole->step();
      INFO("step ", step);
      sharded->set_inspect(inspect);
      const dist::Traffic t0 = c.traffic();
      dp.reduce_gradients();
      dp.loss_and_norm(0.0, 0.0, false);  // a training step's other collective
      const dist::Traffic t1 = c.traffic();
      sharded->step();
      const dist::Traffic t2 = c.traffic();
      dp.gather_parameters();
      // What each part of the step handed to the collectives, as predicted (the plan's and the log's figures): the
      // optimizer's own sums over the ranks included, call for call and byte for byte.
      CHECK(t1 - t0 == dp.reduce_traffic());
      CHECK(t2 - t1 == sharded->traffic_per_step());
      CHECK(c.traffic() - t2 == dp.gather_traffic());
      if (inspect != optim::Inspect::off) check_internals_equal(sharded->internals(), whole->internals());
    }
    for (size_t i = 0; i < whole_params.size(); ++i) {
      INFO("parameter ", i);
      const std::vector<double> ref = whole_params[i].to_vector<double>();
      double scale = 0;
      for (double v : ref) scale = std::max(scale, std::abs(v));
      const Mismatch m = compare(part_params[i].to_vector<float>(), whole_params[i].to_vector<float>(), 1e-5,
                                 1e-6 * scale);
      CHECK_MESSAGE(m.ok(), "max |a-b| ", m.max_abs, " at ", m.index);
    }
    const optim::OptimizerState a = whole->state_dict(), b = sharded->state_dict();  // gathered: whole tensors
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (const auto& entry : a.tensors) {
      const std::string key = entry.first;  // not a structured binding: doctest's INFO captures it (clang)
      const Tensor& t = entry.second;
      INFO("state ", key);
      REQUIRE(b.tensors.count(key) == 1);
      const Tensor& u = b.tensors.at(key);
      REQUIRE(u.shape() == t.shape());
      const std::vector<float> ref = t.to(DType::f32).to_vector<float>();
      double scale = 0;
      for (float v : ref) scale = std::max(scale, double(std::abs(v)));
      const Mismatch m = compare(u.to(DType::f32).to_vector<float>(), ref, 1e-4, 1e-6 * scale);
      CHECK_MESSAGE(m.ok(), "max |a-b| ", m.max_abs, " max rel ", m.max_rel, " at ", m.index);
    }
    // The whole state loads into a sharded optimizer at this world (each rank takes its part), and gathers back.
    auto again = optim::make_optimizer(e.name, zero1_params("w", device), settings);
    again->shard(c);
    again->load_state_dict(a);
    const optim::OptimizerState back = again->state_dict();
    for (const auto& entry : a.tensors) {
      const std::string key = entry.first;
      CHECK(back.tensors.at(key).to(DType::f32).to_vector<float>() == entry.second.to(DType::f32).to_vector<float>());
    }
  }
}

// bf16 parameters over f32 master weights, sharded: each rank rounds its part's elements with the random bits the
// whole step gives them (every part starts on one of round_to_bf16's 8-element blocks and draws from that block's
// counter). The optimizers whose step sums over no whole tensor (AdamW, SGD and SM3; the registry's
// sums_over_tensor) step each element with the same arithmetic at any cut, so this rank's part of the bf16
// parameter and of the master equal the whole step's bit for bit, for cuts whose balanced share would not be a
// multiple of 8 ({50} at 3 ranks: 24, 16 and 10 elements; {37, 20}: rows in pairs). The full gradient is given to
// every rank, as the reduce-scatter leaves it. Then the parts are gathered, as bf16 (a third of the bytes a step's
// reduce-scatter and gather hand over, which carry 4 and 2 bytes an element), and every rank's whole parameters
// equal the whole step's. On CUDA the rounding runs inside the optimizer kernels, on the CPU after them.
inline void check_zero1_bf16_rounding(dist::Communicator& c, Device device, int steps) {
  const std::vector<Shape> shapes = {{37, 20}, {3, 8, 6}, {50}, {2, 5}, {2}};
  const auto bf16_params = [&] {
    std::vector<Tensor> out;
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor p =
          from_vector(normal_values(numel(shapes[i]), 80 + i), shapes[i], {.dtype = DType::bf16, .device = device});
      p.set_requires_grad(true);
      p.set_name(cat("h", i));
      out.push_back(p);
    }
    return out;
  };
  for (const optim::OptimizerEntry& entry : optim::optimizers()) {
    if (entry.sums_over_tensor) continue;
    const std::string& name = entry.name;
    INFO("optimizer ", name, ", world ", c.world(), ", rank ", c.rank(), ", ", device.str());
    std::vector<Tensor> whole_params = bf16_params(), part_params = bf16_params();
    auto whole = optim::make_optimizer(name, whole_params, {{"lr", 1e-2}});
    auto sharded = optim::make_optimizer(name, part_params, {{"lr", 1e-2}});
    sharded->shard(c);
    train::DataParallel dp(c, train::ZeroStage::zero1, *sharded, part_params, DType::f32, 256);  // small buckets
    for (int step = 1; step <= steps; ++step) {
      for (size_t i = 0; i < shapes.size(); ++i) {
        const std::vector<float> g = normal_values(numel(shapes[i]), 1000 * uint64_t(step) + i, 0.5);
        whole_params[i].set_grad(from_vector(g, shapes[i], {.dtype = DType::bf16, .device = device}));
        part_params[i].set_grad(from_vector(g, shapes[i], {.dtype = DType::bf16, .device = device}));
      }
      whole->step();
      const dist::Traffic before_step = c.traffic();
      sharded->step();
      CHECK(c.traffic() - before_step == sharded->traffic_per_step());  // SM3's maxima
      const dist::Traffic before = c.traffic();
      dp.gather_parameters();
      CHECK(c.traffic() - before == dp.gather_traffic());
      // bf16 parameters gathered as bf16: half the bytes of the f32 sums (less the loss and norm's collective).
      CHECK(2 * dp.gather_traffic().bytes == dp.reduce_traffic().bytes - train::DataParallel::kLossAndNormBytes);
    }
    for (size_t i = 0; i < shapes.size(); ++i) {
      const std::string param = part_params[i].name();
      const optim::ShardCut& cut = sharded->shard_cut(param);
      const int64_t first = cut.offsets[size_t(c.rank())], last = cut.offsets[size_t(c.rank()) + 1];
      CHECK((first % 8 == 0 || first == last));
      INFO("parameter ", param, " elements [", first, ", ", last, ")");
      CHECK(rank_elements(part_params[i], cut, c.rank()) == rank_elements(whole_params[i], cut, c.rank()));
      CHECK(sharded->state(param, "master").to_vector<float>() ==
            rank_elements(whole->state(param, "master"), cut, c.rank()));
      CHECK(part_params[i].to_vector<float>() == whole_params[i].to_vector<float>());  // gathered: every rank's part
    }
  }
}

}  // namespace tally::test
