// CAME: configuration checks, state layout (the package's names, shapes and order), kernel dispatch, and the
// internals a step reports (clip, first moment, confidence factors). The arithmetic is in optim/kernels/.
#include "optim/came.h"

#include <algorithm>
#include <cmath>

#include "optim/validate.h"

namespace tally::optim {

void validate(const CameConfig& c, int group) {
  const char* op = "[came]";
  check_required_lr(op, group, c.lr);
  const Interval betas_in[] = {kUnitClosed, kUnitOpen, kUnitOpen};
  check_betas(op, group, c.betas, betas_in,
              " (at 1, beta2's and beta3's moving averages stay 0 and the update divides by them)");
  check_eps(op, group, "eps[0] (eps1)", c.eps[0]);
  check_eps(op, group, "eps[1] (eps2)", c.eps[1]);
  check_positive(op, group, "clip_threshold", c.clip_threshold);
  check_weight_decay(op, group, c.weight_decay);
  TALLY_CHECK(c.exp_avg_dtype == DType::f32 || c.exp_avg_dtype == DType::bf16, op, " group ", group,
              ": exp_avg_dtype must be f32 or bf16, got ", dtype_name(c.exp_avg_dtype));
  TALLY_CHECK(c.min_dim_to_factor >= 1, op, " group ", group, ": min_dim_to_factor must be >= 1");
}

FactoredDims Came::factoring(const Shape& shape, const CameConfig& c) {
  return factored_dims(shape, c.factoring, c.min_dim_to_factor);
}

std::vector<StateSpec> Came::state_specs(const Shape& shape, const CameConfig& c) {
  const FactoredDims f = factoring(shape, c);
  std::vector<StateSpec> s;
  s.push_back({.name = "exp_avg", .shape = shape, .dtype = c.exp_avg_dtype});
  if (f.factored) {
    const double conf = c.confidence_init == ConfidenceInit::ones ? 1.0 : 0.0;
    s.push_back({.name = "exp_avg_sq_row", .shape = drop_dim(shape, f.b), .index = StateIndex::rows});
    s.push_back({.name = "exp_avg_sq_col", .shape = drop_dim(shape, f.a), .index = StateIndex::columns});
    s.push_back({.name = "exp_avg_res_row", .shape = drop_dim(shape, f.b), .initial = conf, .index = StateIndex::rows});
    s.push_back(
        {.name = "exp_avg_res_col", .shape = drop_dim(shape, f.a), .initial = conf, .index = StateIndex::columns});
  } else {
    s.push_back({.name = "exp_avg_sq", .shape = shape});
  }
  return s;
}

void Came::update(Slot& s, const Tensor& grad, const StepOptions& o, void* workspace, double* stats) {
  const CameConfig& c = config_of(s);
  const Device dev = s.param.device();
  const Tensor& m = s.state("exp_avg");
  const KernelGradient g = kernel_gradient(s, grad);
  if (s.factored) {
    kernels::CameFactoredArgs a{
        .layout = s.layout,
        .param = param_f32(s),
        .grad = g.f32,
        .exp_avg = m.data_ptr(),
        .exp_avg_dtype = m.dtype(),
        .exp_avg_sq_row = s.f32("exp_avg_sq_row"),
        .exp_avg_sq_col = s.f32("exp_avg_sq_col"),
        .exp_avg_res_row = s.f32("exp_avg_res_row"),
        .exp_avg_res_col = s.f32("exp_avg_res_col"),
        .lr = c.lr,
        .beta1 = c.betas[0],
        .beta2 = c.betas[1],
        .beta3 = c.betas[2],
        .eps1 = c.eps[0],
        .eps2 = c.eps[1],
        .clip_threshold = c.clip_threshold,
        .weight_decay = c.weight_decay,
        .grad_scale = o.grad_scale,
        .workspace = workspace,
        .exact_exp_avg_sq = s.exact.defined() ? s.exact.data<float>() : nullptr,
        .stats = stats,
        .shard = sharding(s),
        .bf16_param = g.bf16,
    };
    if (launches_later(s, g, stats, kernels::kDenseBatchMax)) {
      deferred_.on(dev, [this] { finish_updates(); }).factored.push_back(a);
      return;
    }
    TALLY_KERNEL(dev, came_factored_step, a);
  } else {
    kernels::CameDenseArgs a{
        .n = s.param.numel(),
        .param = param_f32(s),
        .grad = g.f32,
        .exp_avg = m.data_ptr(),
        .exp_avg_dtype = m.dtype(),
        .exp_avg_sq = s.f32("exp_avg_sq"),
        .lr = c.lr,
        .beta1 = c.betas[0],
        .beta2 = c.betas[1],
        .eps1 = c.eps[0],
        .clip_threshold = c.clip_threshold,
        .weight_decay = c.weight_decay,
        .grad_scale = o.grad_scale,
        .workspace = workspace,
        .stats = stats,
        .shard = sharding(s),
        .bf16_param = g.bf16,
    };
    if (launches_later(s, g, stats, kernels::kDenseBatchMax)) {
      deferred_.on(dev, [this] { finish_updates(); }).dense.push_back(a);
      return;
    }
    TALLY_KERNEL(dev, came_dense_step, a);
  }
}

// On CUDA, tensors are launched together after the other slots: a small dense one (a bias, a layer-norm vector) is
// a few microseconds of work behind three launches (came_dense_steps: one block each), and a factored one's nine
// launches are as many host round trips for a GPU that finishes a 768x768 matrix's pass in about as long
// (came_factored_steps: nine launches per batch).
void Came::finish_updates() {
  const Deferred d = deferred_.take();
  if (!d.factored.empty()) {
    // The workspace is the one held for every slot's own step: batches take what fits of it.
    const HeldWorkspace w = held_workspace(d.device);
    TALLY_KERNEL(d.device, came_factored_steps, d.factored.data(), int64_t(d.factored.size()), w.data, w.bytes);
  }
  if (!d.dense.empty()) TALLY_KERNEL(d.device, came_dense_steps, d.dense.data(), int64_t(d.dense.size()));
}

namespace {

// min/mean/max of rsqrt(x / mean over i of x) (rows) or rsqrt(x) (columns), as the kernels compute them.
struct Factors {
  std::vector<float> row, col;
};
Factors confidence_factors(const kernels::FactoredLayout& l, const std::vector<float>& R, const std::vector<float>& C) {
  Factors f;
  f.row.resize(R.size());
  f.col.resize(C.size());
  const int64_t QS = l.Q * l.S;
  for (int64_t g = 0; g < l.groups(); ++g) {
    const int64_t p = g / QS, qs = g % QS;
    double acc = 0;
    for (int64_t i = 0; i < l.n; ++i) acc += R[size_t((p * l.n + i) * QS + qs)];
    const float mean = float(acc / double(l.n));
    for (int64_t i = 0; i < l.n; ++i) {
      const size_t x = size_t((p * l.n + i) * QS + qs);
      f.row[x] = 1.0f / std::sqrt(R[x] / mean);
    }
  }
  for (size_t x = 0; x < C.size(); ++x) f.col[x] = 1.0f / std::sqrt(C[x]);
  return f;
}

Summary summarize(const std::vector<float>& v) {
  Summary s;
  if (v.empty()) return s;
  double lo = v[0], hi = v[0], acc = 0;
  for (float x : v) {
    lo = std::min(lo, double(x));
    hi = std::max(hi, double(x));
    acc += x;
  }
  s.min = lo;
  s.max = hi;
  s.mean = acc / double(v.size());
  return s;
}

}  // namespace

dist::Traffic Came::inspection_traffic(const Slot& s) const {
  dist::Traffic t = Optimizer::inspection_traffic(s);
  if (!s.factored) return t;
  const std::vector<StateSpec> specs = whole_specs(s);  // in the order of the slot's state (allocated or not)
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].name == "exp_avg_res_row" || specs[i].name == "exp_avg_res_col") t += gather_traffic(s, i);
  return t;
}

void Came::record_internals(Slot& s, const double* stats) {
  Optimizer::record_internals(s, stats);
  const CameConfig& c = config_of(s);
  TensorInternals& in = s.internals;
  record_clip_internals(s, stats, c.clip_threshold);
  in.exp_avg_rms = std::sqrt(stats[kernels::kStatExpAvgSq] / double(s.whole.numel()));
  if (!s.factored) return;
  // The confidence factors, from the small R and C vectors of the whole tensor (copied to the host when on a device;
  // sharded, every rank's rows gathered).
  const kernels::FactoredLayout l = layout(s.whole.shape(), c).factoring.layout;
  const Tensor R = gathered(s, s.index_of("exp_avg_res_row")), C = gathered(s, s.index_of("exp_avg_res_col"));
  if (R.device().is_meta()) return;  // a plan: the gathered vectors are made, there is nothing to read
  const Factors f = confidence_factors(l, R.to_vector<float>(), C.to_vector<float>());
  in.has_confidence = true;
  in.confidence_row = summarize(f.row);
  in.confidence_col = summarize(f.col);
  // The scale of element (p, i, q, j, s) is row(p, i, q, s) * col(p, q, j, s): per (p, q, s) slice its extremes
  // are products of the extremes and its mean the product of the means (all factors are positive).
  Summary sc;
  double mean_acc = 0;
  const int64_t QS = l.Q * l.S;
  for (int64_t g = 0; g < l.groups(); ++g) {
    const int64_t p = g / QS, q = (g % QS) / l.S, ss = g % l.S;
    double rlo = INFINITY, rhi = -INFINITY, racc = 0, clo = INFINITY, chi = -INFINITY, cacc = 0;
    for (int64_t i = 0; i < l.n; ++i) {
      const double v = f.row[size_t(((p * l.n + i) * l.Q + q) * l.S + ss)];
      rlo = std::min(rlo, v), rhi = std::max(rhi, v), racc += v;
    }
    for (int64_t j = 0; j < l.m; ++j) {
      const double v = f.col[size_t(((p * l.Q + q) * l.m + j) * l.S + ss)];
      clo = std::min(clo, v), chi = std::max(chi, v), cacc += v;
    }
    const double lo = rlo * clo, hi = rhi * chi;
    sc.min = g == 0 ? lo : std::min(sc.min, lo);
    sc.max = g == 0 ? hi : std::max(sc.max, hi);
    mean_acc += (racc / double(l.n)) * (cacc / double(l.m));
  }
  sc.mean = mean_acc / double(l.groups());
  in.confidence_scale = sc;
}

}  // namespace tally::optim
