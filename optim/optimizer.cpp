// The Optimizer base (see optimizer.h): groups, lazy/eager state in the ledger, step loop, workspace,
// inspection plumbing, save/load, byte measurement and prediction, the factoring rule, and the master weights of
// bf16 parameters.
#include "optim/optimizer.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <set>

#include "core/autograd/node.h"
#include "core/fnv.h"
#include "core/ledger.h"
#include "optim/kernels/cuda_workspace.h"

namespace tally::optim {

int64_t TensorState::bytes() const {
  int64_t b = 0;
  for (const StateSpec& s : states) b += s.bytes();
  return b;
}

int64_t total_bytes(const std::vector<TensorState>& tensors) {
  int64_t b = 0;
  for (const TensorState& t : tensors) b += t.bytes();
  return b;
}

std::vector<StateSpec> with_master(std::vector<StateSpec> specs, const Shape& shape, DType param_dtype) {
  if (param_dtype == DType::bf16) specs.push_back({.name = "master", .shape = shape, .dtype = DType::f32});
  return specs;
}

uint64_t bf16_rounding_key(uint64_t seed, const std::string& name) {  // FNV-1a of the name, then splitmix64
  Fnv1a64 f;
  for (unsigned char c : name) f.add_byte(c);
  uint64_t z = f.h ^ seed;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

Tensor updated_part(const Tensor& param) {
  const int64_t pad = param.padding_rows();
  if (pad == 0) return param;
  Shape shape = param.shape();
  shape[0] -= pad;
  return make_view(param, shape, param.strides(), param.offset());  // a prefix of rows: contiguous when param is
}

NamedShape named_shape(const Tensor& param) {
  return {.name = param.name(), .shape = updated_part(param).shape(), .dtype = param.dtype()};
}

Shape drop_dim(const Shape& shape, int dim) {
  Shape s = shape;
  s.erase(s.begin() + dim);
  return s;
}

FactoredDims factored_dims(const Shape& shape, Factoring rule, int64_t min_dim_to_factor) {
  FactoredDims f;
  const int nd = int(shape.size());
  if (rule == Factoring::two_largest_dims) f.min_dim_to_factor = min_dim_to_factor;
  if (nd < 2) {
    f.reason = FactoringReason::under_two_dims;
    return f;
  }
  if (rule == Factoring::last_two_dims) {
    f.a = nd - 2;
    f.b = nd - 1;
    f.reason = FactoringReason::last_two_dims;
  } else {
    // numpy's argsort of the shape (stable: among equal sizes the later dim sorts last), last two entries.
    std::vector<int> order(static_cast<size_t>(nd));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return shape[size_t(x)] < shape[size_t(y)]; });
    const int second = order[size_t(nd - 2)], first = order[size_t(nd - 1)];
    f.a = std::min(first, second);
    f.b = std::max(first, second);
    if (shape[size_t(second)] < min_dim_to_factor) {
      f.reason = FactoringReason::below_min_dim;  // a and b say which dims were measured
      return f;
    }
    f.reason = FactoringReason::two_largest_dims;
  }
  f.factored = true;
  auto prod = [&](int from, int to) {
    int64_t p = 1;
    for (int d = from; d < to; ++d) p *= shape[size_t(d)];
    return p;
  };
  f.layout = {.P = prod(0, f.a), .n = shape[size_t(f.a)], .Q = prod(f.a + 1, f.b), .m = shape[size_t(f.b)],
              .S = prod(f.b + 1, nd)};
  return f;
}

std::string describe_factoring(const Shape& shape, const FactoredDims& f) {
  auto dims = [&] { return cat(shape[size_t(f.a)], "x", shape[size_t(f.b)]); };
  // How many (a, b) matrices the tensor holds: the product of its other dims.
  auto copies = [&] {
    int64_t n = 1;
    for (size_t d = 0; d < shape.size(); ++d)
      if (int(d) != f.a && int(d) != f.b) n *= shape[d];
    return shape.size() > 2 ? cat(" (", n, " such matrices)") : std::string();
  };
  switch (f.reason) {
    case FactoringReason::never: return "dense (this optimizer does not factor)";
    case FactoringReason::last_two_dims: return cat("factored: last two dims ", dims(), copies());
    case FactoringReason::two_largest_dims:
      return f.a == int(shape.size()) - 2 && f.b == int(shape.size()) - 1
                 ? cat("factored: last two dims ", dims(), ", the two largest", copies())
                 : cat("factored: dims ", f.a, " and ", f.b, " (", dims(), "), the two largest", copies());
    case FactoringReason::under_two_dims: return cat("not factored: ", shape.size(), "-D");
    case FactoringReason::below_min_dim:
      return cat("not factored: its two largest dims are ", dims(), ", and ",
                 std::min(shape[size_t(f.a)], shape[size_t(f.b)]), " < ", f.min_dim_to_factor);
  }
  return "?";
}

namespace {

// n items over `world` ranks in units of `unit` items (the last unit may be short), the first ranks one unit more:
// world + 1 boundaries, every one a multiple of `unit` but the last, n.
std::vector<int64_t> balanced(int64_t n, int world, int64_t unit) {
  const int64_t units = (n + unit - 1) / unit;
  std::vector<int64_t> b(size_t(world) + 1, 0);
  for (int k = 0; k < world; ++k)
    b[size_t(k) + 1] = std::min(n, b[size_t(k)] + unit * (units / world + (k < units % world ? 1 : 0)));
  return b;
}

// The indices of a dim with `inner` elements each that make a part start on a block of round_to_bf16 (8 elements):
// 1 when inner is a multiple of 8 (every matrix row of GPT-2), else up to 8.
int64_t aligned_unit(int64_t inner) {
  return kernels::kBf16RoundingBlock / std::gcd(inner, kernels::kBf16RoundingBlock);
}

int64_t prod(const Shape& s, size_t from, size_t to) {
  int64_t p = 1;
  for (size_t d = from; d < to; ++d) p *= s[d];
  return p;
}

// Whether every rank keeps the whole of a state indexed `index` when the tensor is cut as `cut`: the column
// statistics of cut rows, and SM3's accumulators of the dims after dim 0 (the ranks complete them together).
bool whole_on_every_rank(StateIndex index, const ShardCut& cut) {
  return (index == StateIndex::columns && cut.columns_shared) || index == StateIndex::other_dim;
}

}  // namespace

ShardCut shard_cut(const Shape& whole, const StateLayout& layout, int world) {
  TALLY_CHECK(world >= 1, "[zero] world must be >= 1, got ", world);
  ShardCut cut;
  int64_t inner = 1;  // elements per index along the cut dim
  if (layout.factoring.factored) {
    const size_t a = size_t(layout.factoring.a);
    cut.dim = prod(whole, 0, a) == 1 ? int(a) : 0;
    cut.columns_shared = cut.dim == int(a);
    inner = prod(whole, size_t(cut.dim) + 1, whole.size());
    cut.bounds = balanced(whole[size_t(cut.dim)], world, aligned_unit(inner));
  } else if (std::any_of(layout.specs.begin(), layout.specs.end(),
                         [](const StateSpec& s) { return s.index == StateIndex::dim0; })) {
    cut.dim = 0;
    inner = prod(whole, 1, whole.size());
    cut.bounds = balanced(whole[0], world, aligned_unit(inner));
  } else {
    cut.bounds = balanced(numel(whole), world, kernels::kBf16RoundingBlock);
  }
  cut.offsets = cut.bounds;
  for (int64_t& o : cut.offsets) o *= inner;
  return cut;
}

bool ShardCut::whole_on_one_rank() const {
  if (dim >= 0) return false;
  for (size_t k = 0; k + 1 < offsets.size(); ++k)
    if (offsets[k + 1] - offsets[k] == offsets.back()) return true;
  return false;
}

std::vector<ShardCut> shard_cuts(const std::vector<std::string>& names, const std::vector<Shape>& wholes,
                                 const std::vector<StateLayout>& layouts, int world) {
  TALLY_CHECK(names.size() == wholes.size() && wholes.size() == layouts.size(), "[zero] ", names.size(), " names, ",
              wholes.size(), " shapes and ", layouts.size(), " layouts");
  std::vector<ShardCut> cuts;
  std::vector<size_t> unsplit;  // the small vectors kept whole
  for (size_t i = 0; i < wholes.size(); ++i) {
    cuts.push_back(shard_cut(wholes[i], layouts[i], world));
    const bool small_vector = wholes[i].size() <= 1 && numel(wholes[i]) <= kWholeTensorMax;
    if (world > 1 && small_vector && layouts[i].sums_over_tensor && cuts.back().dim < 0) unsplit.push_back(i);
  }
  std::sort(unsplit.begin(), unsplit.end(), [&](size_t a, size_t b) {
    const int64_t na = numel(wholes[a]), nb = numel(wholes[b]);
    return na != nb ? na > nb : names[a] < names[b];
  });
  std::vector<int64_t> held(static_cast<size_t>(world), 0);  // their elements each rank holds so far
  for (const size_t i : unsplit) {
    const int64_t n = numel(wholes[i]);
    const int owner = int(std::min_element(held.begin(), held.end()) - held.begin());
    held[size_t(owner)] += n;
    ShardCut& cut = cuts[i];
    for (int k = 0; k <= world; ++k) cut.bounds[size_t(k)] = k <= owner ? 0 : n;
    cut.offsets = cut.bounds;
  }
  return cuts;
}

Shape part_shape(const Shape& whole, const ShardCut& cut, int rank) {
  const int64_t part = cut.bounds[size_t(rank) + 1] - cut.bounds[size_t(rank)];
  if (cut.dim < 0) return {part};
  Shape s = whole;
  s[size_t(cut.dim)] = part;
  return s;
}

StateLayout part_layout(const StateLayout& whole_layout, const Shape& whole, const ShardCut& cut, int rank) {
  if (cut.bounds.size() == 2) return whole_layout;  // one rank: the whole tensor
  const int64_t part = cut.bounds[size_t(rank) + 1] - cut.bounds[size_t(rank)];
  StateLayout l = whole_layout;
  for (StateSpec& s : l.specs) {
    if (cut.dim < 0) {
      TALLY_ASSERT(s.index == StateIndex::elements && s.shape == whole);
      s.shape = {part};
    } else if (!whole_on_every_rank(s.index, cut)) {
      s.shape[size_t(cut.dim)] = part;  // rows and columns keep the dims before the factored ones in place
    }
  }
  if (l.factoring.factored) {
    kernels::FactoredLayout& f = l.factoring.layout;
    if (cut.columns_shared) f.n = part;
    else f.P = part * prod(whole, 1, size_t(l.factoring.a));
  }
  return l;
}

Optimizer::Optimizer(std::string kind) : kind_(std::move(kind)) {}
Optimizer::~Optimizer() = default;

void Optimizer::add_group(const std::vector<Tensor>& params, double lr) {
  const std::string op = "[" + kind_ + "]";
  const int g = int(group_params_.size());
  TALLY_CHECK(std::isfinite(lr) && lr >= 0.0, op, " group ", g, ": learning rate must be finite and >= 0, got ", lr);
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    TALLY_CHECK(p.defined(), op, " group ", g, " parameter ", i, " is an undefined tensor");
    TALLY_CHECK(!p.name().empty(), op, " group ", g, " parameter ", i, " ", p.str(),
                " has no name: name parameters with set_name() (state is recorded under \"<name>:<state>\")");
    TALLY_CHECK(p.requires_grad(), op, " parameter '", p.name(), "' ", p.str(), " does not require grad");
    TALLY_CHECK(p.is_leaf(), op, " parameter '", p.name(), "' is not a leaf tensor");
    TALLY_CHECK(p.dtype() == DType::f32 || p.dtype() == DType::bf16, op, " parameter '", p.name(), "' is ", p.str(),
                ": optimizers update f32 parameters, or bf16 ones through f32 master weights");
    TALLY_CHECK(p.is_contiguous(), op, " parameter '", p.name(), "' ", p.str(), " is not contiguous");
    TALLY_CHECK(find(slots_, p.name()) == nullptr, op, " two parameters are named '", p.name(),
                "': names key the optimizer state and must be unique");
    Slot s;
    s.whole = updated_part(p);
    s.param = s.whole;
    s.leaf = p;
    s.cut = ShardCut{.bounds = {0, s.whole.numel()}, .offsets = {0, s.whole.numel()}};
    s.name = p.name();
    s.group = g;
    s.internals.param = p.name();
    slots_.push_back(std::move(s));
  }
  group_params_.push_back(params);
  initial_lr_.push_back(lr);
}

const Optimizer::Slot* Optimizer::find(const std::vector<Slot>& slots, const std::string& name) {
  for (const Slot& s : slots)
    if (s.name == name) return &s;
  return nullptr;
}

const std::vector<Tensor>& Optimizer::group_params(int group) const {
  TALLY_CHECK(group >= 0 && group < num_groups(), "[", kind_, "] no group ", group, " (", num_groups(), " groups)");
  return group_params_[size_t(group)];
}

double Optimizer::lr(int group) const {
  TALLY_CHECK(group >= 0 && group < num_groups(), "[", kind_, "] no group ", group, " (", num_groups(), " groups)");
  return group_lr(group);
}

void Optimizer::set_lr(double lr) {
  for (int g = 0; g < num_groups(); ++g) set_lr(g, lr);
}

void Optimizer::set_lr(int group, double lr) {
  TALLY_CHECK(group >= 0 && group < num_groups(), "[", kind_, "] no group ", group, " (", num_groups(), " groups)");
  TALLY_CHECK(std::isfinite(lr) && lr >= 0.0, "[", kind_, "] learning rate must be finite and >= 0, got ", lr);
  store_group_lr(group, lr);
}

void Optimizer::set_lr_factor(double factor) {
  for (int g = 0; g < num_groups(); ++g) set_lr(g, initial_lr_[size_t(g)] * factor);
}

void Optimizer::zero_grad(ZeroGrad mode) {
  for (Slot& s : slots_) {
    if (mode == ZeroGrad::set_to_none) {
      s.leaf.clear_grad();
    } else if (s.leaf.grad().defined()) {
      Tensor g = s.leaf.grad();
      g.zero_();
    }
  }
}

int64_t Optimizer::param_step(const std::string& param) const {
  const Slot* s = find(slots_, param);
  TALLY_CHECK(s != nullptr, "[", kind_, "] no parameter named '", param, "'");
  return s->step;
}

int64_t Optimizer::workspace_for(const Slot& slot) const {
  // CUDA (or a meta device planning for it): a rank's empty part of a sharded tensor too, whose kernels still take
  // part in the cross-rank sums through device buffers of their workspace.
  if (slot.param.device().backend() == DeviceKind::cuda)
    return slot.factored ? kernels::cuda_factored_workspace_bytes(slot.layout) : kernels::cuda_dense_workspace_bytes();
  if (slot.param.numel() == 0) return 0;
  return slot.factored ? TALLY_KERNEL(Device::cpu(), factored_workspace_bytes, slot.layout)
                       : TALLY_KERNEL(Device::cpu(), dense_workspace_bytes, slot.param.numel());
}

StateLayout Optimizer::full_layout(const Slot& slot) const {
  StateLayout l = part_layout(state_layout(slot), slot.whole.shape(), slot.cut, shard_of().rank);
  l.specs = with_master(std::move(l.specs), slot.param.shape(), slot.param.dtype());
  return l;
}

void Optimizer::shard(dist::Communicator& comm) {
  for (const Slot& s : slots_)
    TALLY_CHECK(!s.allocated, "[", kind_, ".shard] '", s.name,
                "' already has state: shard an optimizer before its first step or init_state()");
  comm_ = &comm;
  host_sum_.comm = &comm;
  cuda_sum_.comm = &comm;
  std::vector<std::string> names;
  std::vector<Shape> wholes;
  std::vector<StateLayout> layouts;
  for (const Slot& s : slots_) {
    names.push_back(s.name);
    wholes.push_back(s.whole.shape());
    layouts.push_back(state_layout(s));
  }
  const std::vector<ShardCut> cuts = shard_cuts(names, wholes, layouts, comm.world());
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    const StateLayout& layout = layouts[i];
    s.cut = cuts[i];
    s.whole_rows = layout.factoring.factored ? layout.factoring.layout.n : 0;
    const Shape part = part_shape(s.whole.shape(), s.cut, comm.rank());
    s.param = make_view(s.whole, part, contiguous_strides(part), s.whole.offset() + part_first(s));
  }
}

kernels::Sharding Optimizer::sharding(const Slot& s) const {
  if (!comm() || s.cut.whole_on_one_rank()) return {};  // the tensor is whole here, or nothing of it is
  const RankSum* sum = s.param.device().is_cuda() ? &cuda_sum_ : &host_sum_;
  return {.sum = sum, .numel = s.whole.numel(), .rows = s.whole_rows, .rows_cut = s.cut.columns_shared};
}

dist::Traffic Optimizer::traffic_per_step() const {
  dist::Traffic t;
  if (!comm()) return t;
  for (const Slot& s : slots_) {
    if (!s.cut.whole_on_one_rank()) t += cross_rank_traffic(s);
    if (inspect_ != Inspect::off) t += inspection_traffic(s);
  }
  return t;
}

dist::Traffic Optimizer::inspection_traffic(const Slot& /*slot*/) const {
  return {1, kernels::kStatCount * int64_t(sizeof(double))};  // step_slot's statistics, summed over the ranks
}

dist::Traffic Optimizer::factored_sums(const Slot& s, int column_rounds) {
  const dist::Traffic clip = {1, int64_t(sizeof(double))};
  if (!s.factored || !s.cut.columns_shared) return clip;
  const auto round = [&](kernels::RoundCarries carries) {
    return dist::Traffic{1, kernels::round_doubles(s.layout, carries) * int64_t(sizeof(double))};
  };
  // The first round also carries the update's column sums (the clip's); a later one (CAME's instability) does not.
  return round(kernels::RoundCarries::column_and_update_sums) +
         (column_rounds - 1) * round(kernels::RoundCarries::column_sums);
}

const ShardCut& Optimizer::shard_cut(const std::string& param) const {
  const Slot* s = find(slots_, param);
  TALLY_CHECK(s != nullptr, "[", kind_, ".shard_cut] no parameter named '", param, "'");
  return s->cut;
}

StateLayout Optimizer::whole_layout(const std::string& param) const {
  const Slot* s = find(slots_, param);
  TALLY_CHECK(s != nullptr, "[", kind_, ".whole_layout] no parameter named '", param, "'");
  return state_layout(*s);
}

size_t Optimizer::Slot::index_of(std::string_view state_name) const {
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].name == state_name) return i;
  fail("[optim] parameter '", name, "' has no state '", state_name, "'",
       allocated ? "" : " (its state is not allocated yet)");
}

const Tensor& Optimizer::Slot::state(std::string_view state_name) const { return tensors[index_of(state_name)]; }

bool Optimizer::Slot::has(std::string_view state_name) const {
  for (const StateSpec& s : specs)
    if (s.name == state_name) return true;
  return false;
}

void Optimizer::ensure_state(Slot& slot) {
  if (slot.allocated) return;
  StateLayout layout = full_layout(slot);
  slot.specs = std::move(layout.specs);
  slot.factored = layout.factoring.factored;
  slot.layout = layout.factoring.layout;
  slot.tensors.clear();
  for (const StateSpec& spec : slot.specs) {
    MemoryScope scope(Category::optimizer_state, slot.name + ":" + spec.name);
    Tensor t = zeros(spec.shape, {.dtype = spec.dtype, .device = slot.param.device()});
    if (spec.initial != 0.0) t.fill_(spec.initial);
    t.set_name(slot.name + ":" + spec.name);
    slot.tensors.push_back(std::move(t));
  }
  if (slot.param.dtype() == DType::bf16) {
    slot.master = slot.tensors.back();
    slot.master.copy_(slot.param);  // bf16 -> f32 is exact
  }
  slot.allocated = true;
}

Tensor& Optimizer::widened_grad_buffer(Device d, int64_t numel) {
  Tensor& w = widened_[d.str()];
  if (!w.defined() || w.numel() < numel) {
    w = Tensor();  // release the smaller buffer first
    MemoryScope scope(Category::workspace, kind_ + ":workspace");
    w = empty({numel}, {.dtype = DType::f32, .device = d});
  }
  return w;
}

namespace {

// round_to_bf16's arguments for a bf16 parameter at step `step`: the parameter, its Philox key and its counter. The
// counters are the whole tensor's (`whole_numel` elements, disjoint per step); a part of it (ZeRO 1) that starts at
// its element `first` (a multiple of 8, shard_cut, unless the part is empty and first is the end) takes its own
// elements' blocks, so each element is rounded with the random bits it gets in a whole step, on any number of ranks.
kernels::FusedBf16 bf16_rounding(const Tensor& param, const std::string& name, int64_t step, uint64_t seed,
                                 int64_t whole_numel, int64_t first) {
  TALLY_ASSERT(first % kernels::kBf16RoundingBlock == 0 || first == whole_numel);
  return {.param = param.data<bf16>(),
          .seed = bf16_rounding_key(seed, name),
          .offset = uint64_t(step) * kernels::round_to_bf16_blocks(whole_numel) +
                    uint64_t(first / kernels::kBf16RoundingBlock)};
}

}  // namespace

Optimizer::KernelGradient Optimizer::kernel_gradient(Slot& s, const Tensor& grad) const {
  if (grad.dtype() == DType::f32) return {.f32 = grad.data<float>()};
  TALLY_CHECK(s.master.defined() && grad.dtype() == DType::bf16 && grad.numel() == s.param.numel(), "[", kind_,
              ".step] '", s.name, "': a fused bf16 step needs a bf16 parameter and gradient, got ", s.param.str(), " and ",
              grad.str());
  kernels::FusedBf16 f = bf16_rounding(s.param, s.name, s.step, rounding_seed_, s.whole.numel(), part_first(s));
  f.grad = grad.data<bf16>();
  return {.bf16 = f};
}

void Optimizer::write_bf16_param(Slot& s) {
  const kernels::FusedBf16 r = bf16_rounding(s.param, s.name, s.step, rounding_seed_, s.whole.numel(), part_first(s));
  TALLY_KERNEL(s.param.device(), round_to_bf16, s.master.data<float>(), r.param, s.param.numel(), r.seed, r.offset);
}

void* Optimizer::workspace(Device d, int64_t bytes) {
  if (bytes <= 0) return nullptr;
  Tensor& w = workspaces_[d.str()];
  if (!w.defined() || w.nbytes() < bytes) {
    w = Tensor();  // release the smaller buffer first
    MemoryScope scope(Category::workspace, kind_ + ":workspace");
    w = empty({bytes}, {.dtype = DType::u8, .device = d});
  }
  return w.data_ptr();
}

bool Optimizer::launches_later(const Slot& s, const KernelGradient& g, const double* stats, int64_t dense_max) const {
  if (s.param.device().backend() != DeviceKind::cuda || stats || sharding(s).sum) return false;
  if (s.master.defined() && !g.fused()) return false;
  return s.factored ? !s.exact.defined() : s.param.numel() <= dense_max;
}

Optimizer::HeldWorkspace Optimizer::held_workspace(Device d) const {
  const auto it = workspaces_.find(d.str());
  if (it == workspaces_.end() || !it->second.defined()) return {};
  return {.data = it->second.data_ptr(), .bytes = it->second.nbytes()};
}

void Optimizer::init_state() {
  NoGradGuard no_grad;
  std::map<std::string, std::pair<Device, int64_t>> need, widened;
  for (Slot& s : slots_) {
    ensure_state(s);
    auto& [dev, bytes] = need.try_emplace(s.param.device().str(), s.param.device(), 0).first->second;
    bytes = std::max(bytes, workspace_for(s));
    if (s.master.defined() && !fuses_mixed_precision(s)) {
      auto& [wdev, numel] = widened.try_emplace(s.param.device().str(), s.param.device(), 0).first->second;
      numel = std::max(numel, s.param.numel());
    }
    if (inspect_ == Inspect::factored_error && s.factored && !s.exact.defined()) allocate_exact(s);
  }
  for (auto& [key, need_dev] : need) workspace(need_dev.first, need_dev.second);
  for (auto& [key, need_dev] : widened) widened_grad_buffer(need_dev.first, need_dev.second);
}

void Optimizer::allocate_exact(Slot& s) {
  MemoryScope scope(Category::other, s.name + ":inspect.exact_exp_avg_sq");
  s.exact = zeros(s.param.shape(), {.dtype = DType::f32, .device = s.param.device()});
  s.exact_since = s.step + 1;
}

void Optimizer::set_inspect(Inspect level) {
  inspect_ = level;
  for (Slot& s : slots_) {
    if (level != Inspect::factored_error) {
      s.exact = Tensor();
      s.exact_since = 0;
    }
  }
}

void Optimizer::step(const StepOptions& options) {
  TALLY_CHECK(std::isfinite(options.grad_scale) && options.grad_scale > 0.0, "[", kind_,
              ".step] grad_scale must be finite and > 0, got ", options.grad_scale);
  NoGradGuard no_grad;
  try {
    for (Slot& s : slots_) step_slot(s, options);
  } catch (...) {
    finish_updates();  // the slots before the failure have stepped, deferred launches included
    throw;
  }
  finish_updates();
  steps_ += 1;
}

void Optimizer::step_slot(Slot& s, const StepOptions& options) {
  const Tensor full_grad = s.leaf.grad();
  if (!full_grad.defined()) return;
  TALLY_CHECK(full_grad.shape() == s.leaf.shape() && full_grad.dtype() == s.leaf.dtype() &&
                  full_grad.device() == s.leaf.device(),
              "[", kind_, ".step] gradient of '", s.name, "' is ", full_grad.str(), ", parameter is ", s.leaf.str());
  TALLY_CHECK(full_grad.is_contiguous(), "[", kind_, ".step] gradient of '", s.name, "' ", full_grad.str(),
              " is not contiguous");
  // The part the algorithm sees: this rank's, of the rows that are not padding (a padding row's gradient is not
  // read: it is zero, padding is never used).
  const Tensor grad = s.param.shape() == s.leaf.shape()
                          ? full_grad
                          : make_view(full_grad, s.param.shape(), contiguous_strides(s.param.shape()),
                                      full_grad.offset() + part_first(s));
  ensure_state(s);
  const Device dev = s.param.device();
  // On the meta device (a plan) an inspected step makes its buffers, which the plan counts, and no numbers.
  const bool inspecting = inspect_ != Inspect::off;
  if (inspecting && inspect_ == Inspect::factored_error && s.factored && !s.exact.defined()) allocate_exact(s);
  double* stats = nullptr;
  if (inspecting) {
    Tensor& st = stats_[dev.str()];
    if (!st.defined()) {
      MemoryScope scope(Category::workspace, kind_ + ":workspace");
      st = empty({kernels::kStatCount}, {.dtype = DType::f64, .device = dev});
    }
    st.zero_();
    stats = st.data<double>();
  }
  void* ws = workspace(dev, workspace_for(s));
  s.step += 1;
  // Mixed precision (unless the kernel fuses it): the f32 kernels on the master, then the bf16 parameter from it.
  if (s.master.defined() && !fuses_mixed_precision(s)) {
    Tensor wide = widened_grad_buffer(dev, s.param.numel()).slice(0, 0, s.param.numel()).view(s.param.shape());
    wide.copy_(grad);
    update(s, wide, options, ws, stats);
    write_bf16_param(s);
  } else {
    update(s, grad, options, ws, stats);
  }
  if (inspecting) {
    std::vector<double> host(kernels::kStatCount, 0.0);
    if (!dev.is_meta()) host = stats_[dev.str()].to_vector<double>();
    if (comm() && !dev.is_meta()) comm()->all_reduce_sum(host.data(), int64_t(host.size()));  // over the whole tensor
    s.internals = TensorInternals{};
    s.internals.param = s.name;
    s.internals.step = s.step;
    record_internals(s, host.data());
  }
}

void Optimizer::record_internals(Slot& s, const double* stats) {
  const double n = double(s.whole.numel());
  TensorInternals& in = s.internals;
  in.update_rms = std::sqrt(stats[kernels::kStatUpdateSq] / n);
  in.applied_rms = std::sqrt(stats[kernels::kStatAppliedSq] / n);
}

void Optimizer::record_clip_internals(Slot& s, const double* stats, double clip_threshold) {
  TensorInternals& in = s.internals;
  const double n = double(s.whole.numel());
  const float rms = float(std::sqrt(stats[kernels::kStatUpdateSq])) / float(std::sqrt(n));
  const float divisor = std::max(1.0f, rms / float(clip_threshold));
  in.clipped = divisor > 1.0f;
  in.clipped_update_rms = in.update_rms / double(divisor);
  if (s.factored && s.exact.defined()) {
    in.factored_rel_error = std::sqrt(stats[kernels::kStatFactorErrSq] / stats[kernels::kStatExactSq]);
    in.exact_since_step = s.exact_since;
  }
}

std::vector<TensorInternals> Optimizer::internals() const {
  std::vector<TensorInternals> out;
  out.reserve(slots_.size());
  for (const Slot& s : slots_) out.push_back(s.internals);
  return out;
}

std::vector<TensorState> Optimizer::state_bytes() const {
  std::vector<TensorState> out;
  for (const Slot& s : slots_) {
    TensorState t{.param = s.name, .param_shape = s.param.shape()};
    for (size_t i = 0; i < s.tensors.size(); ++i)
      t.states.push_back({.name = s.specs[i].name, .shape = s.tensors[i].shape(), .dtype = s.tensors[i].dtype(),
                          .initial = s.specs[i].initial});
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<TensorState> Optimizer::predict_state_bytes() const {
  std::vector<TensorState> out;
  for (const Slot& s : slots_) {
    out.push_back({.param = s.name, .param_shape = s.param.shape(), .states = full_layout(s).specs});
  }
  return out;
}

int64_t Optimizer::workspace_bytes() const {
  int64_t b = 0;
  for (const auto& [dev, t] : workspaces_) b += t.defined() ? t.nbytes() : 0;
  for (const auto& [dev, t] : stats_) b += t.defined() ? t.nbytes() : 0;
  for (const auto& [dev, t] : widened_) b += t.defined() ? t.nbytes() : 0;
  return b;
}

int64_t Optimizer::inspect_bytes() const {
  int64_t b = 0;
  for (const Slot& s : slots_) b += s.exact.defined() ? s.exact.nbytes() : 0;
  return b;
}

Tensor Optimizer::state(const std::string& param, const std::string& state) const {
  const Slot* s = find(slots_, param);
  TALLY_CHECK(s != nullptr, "[", kind_, ".state] no parameter named '", param, "'");
  for (size_t i = 0; i < s->tensors.size(); ++i)
    if (s->specs[i].name == state) return s->tensors[i];
  return Tensor();
}

namespace {

// Where rank `rank`'s part of a state lies in the whole state tensor (its first element): the parts are contiguous
// (a cut dim has only dims of size 1 before it, or is dim 0).
int64_t part_begin(const StateSpec& whole, const ShardCut& cut, int rank) {
  if (cut.dim < 0) return cut.offsets[size_t(rank)];
  if (whole_on_every_rank(whole.index, cut)) return 0;
  return cut.bounds[size_t(rank)] * prod(whole.shape, size_t(cut.dim) + 1, whole.shape.size());
}

}  // namespace

std::vector<StateSpec> Optimizer::whole_specs(const Slot& s) const {
  return with_master(state_layout(s).specs, s.whole.shape(), s.whole.dtype());
}

std::vector<int64_t> Optimizer::part_numels(const Slot& s, size_t i) const {
  std::vector<int64_t> numels;
  if (!comm() || whole_on_every_rank(whole_specs(s)[i].index, s.cut)) return numels;
  for (int r = 0; r < comm()->world(); ++r) {
    const StateLayout part = part_layout(state_layout(s), s.whole.shape(), s.cut, r);
    const std::vector<StateSpec> specs =
        with_master(part.specs, part_shape(s.whole.shape(), s.cut, r), s.whole.dtype());
    numels.push_back(numel(specs[i].shape));
  }
  return numels;
}

dist::Traffic Optimizer::gather_traffic(const Slot& s, size_t i) const {
  const std::vector<int64_t> numels = part_numels(s, i);
  if (numels.empty()) return {};
  const int64_t largest = *std::max_element(numels.begin(), numels.end());
  return {1, largest * int64_t(dtype_size(whole_specs(s)[i].dtype)) * comm()->world()};
}

Tensor Optimizer::gathered(const Slot& s, size_t i) const {
  const Tensor& mine = s.tensors[i];
  const std::vector<int64_t> numels = part_numels(s, i);
  if (numels.empty()) return mine;  // not sharded, or the same on every rank
  const StateSpec whole = whole_specs(s)[i];
  if (mine.device().is_meta()) {
    // A plan: the whole tensor assembled on the host, counted where the host is the planned device (a CUDA run's
    // host memory is not its GPU's); no values.
    if (mine.device().backend() != DeviceKind::cpu) return mine;
    MemoryScope scope(Category::other, s.name + ":" + whole.name + ":gathered");
    return empty(whole.shape, {.dtype = whole.dtype, .device = mine.device()});
  }
  // Every rank's part, padded to the largest, in one all-gather of bytes (a bf16 state travels as its bits).
  const int world = comm()->world();
  const size_t esize = dtype_size(whole.dtype);
  const int64_t segment = *std::max_element(numels.begin(), numels.end()) * int64_t(esize);  // bytes
  std::vector<char> buffer(size_t(segment) * size_t(world));
  const Tensor host = mine.to(Device::cpu());
  if (host.nbytes() > 0)  // a rank may hold none of a small tensor (and memcpy's pointers must not be null)
    std::memcpy(buffer.data() + size_t(segment) * size_t(comm()->rank()), host.data_ptr(), size_t(host.nbytes()));
  comm()->all_gather(buffer.data(), segment, Device::cpu());
  MemoryScope scope(Category::other, s.name + ":" + whole.name + ":gathered");
  Tensor out = empty(whole.shape, {.dtype = whole.dtype, .device = Device::cpu()});
  for (int r = 0; r < world; ++r)
    if (numels[size_t(r)] > 0)
      std::memcpy(static_cast<char*>(out.data_ptr()) + size_t(part_begin(whole, s.cut, r)) * esize,
                  buffer.data() + size_t(segment) * size_t(r), size_t(numels[size_t(r)]) * esize);
  return out;
}

OptimizerState Optimizer::state_dict() const {
  OptimizerState out;
  out.kind = kind_;
  out.steps = steps_;
  for (const Slot& s : slots_) {
    if (!s.allocated) continue;
    out.param_steps[s.name] = s.step;
    for (size_t i = 0; i < s.tensors.size(); ++i) out.tensors[s.name + ":" + s.specs[i].name] = gathered(s, i);
  }
  return out;
}

void Optimizer::load_state_dict(const OptimizerState& saved) {
  const std::string op = "[" + kind_ + ".load_state_dict]";
  TALLY_CHECK(saved.kind == kind_, op, " the saved state is of optimizer '", saved.kind, "', this one is '", kind_,
              "'");
  for (const auto& [name, step] : saved.param_steps)
    TALLY_CHECK(find(slots_, name) != nullptr, op, " the saved state has parameter '", name,
                "' which this optimizer does not hold");
  std::set<std::string> used;
  NoGradGuard no_grad;
  // Validate everything before changing anything.
  for (const Slot& s : slots_) {
    auto it = saved.param_steps.find(s.name);
    if (it == saved.param_steps.end()) continue;
    for (const StateSpec& spec : whole_specs(s)) {
      const std::string key = s.name + ":" + spec.name;
      auto t = saved.tensors.find(key);
      TALLY_CHECK(t != saved.tensors.end() && t->second.defined(), op, " state '", key, "' is missing");
      TALLY_CHECK(t->second.shape() == spec.shape, op, " state '", key, "' has shape ", shape_str(t->second.shape()),
                  ", this optimizer keeps ", shape_str(spec.shape));
      TALLY_CHECK(t->second.dtype() == spec.dtype, op, " state '", key, "' is ", dtype_name(t->second.dtype()),
                  ", this optimizer keeps it as ", dtype_name(spec.dtype),
                  " (configure the optimizer with the dtype the state was saved with; tally never converts state)");
      used.insert(key);
    }
  }
  for (const auto& [key, t] : saved.tensors)
    TALLY_CHECK(used.count(key) == 1, op, " the saved state has tensor '", key,
                "' which this optimizer's configuration does not use");
  for (Slot& s : slots_) {
    auto it = saved.param_steps.find(s.name);
    if (it == saved.param_steps.end()) continue;
    ensure_state(s);
    const std::vector<StateSpec> whole = whole_specs(s);
    for (size_t i = 0; i < s.specs.size(); ++i) {  // this rank's part of each whole saved state
      const Tensor& t = saved.tensors.at(s.name + ":" + s.specs[i].name);
      const Shape& part = s.specs[i].shape;
      s.tensors[i].copy_(make_view(t, part, contiguous_strides(part), t.offset() + part_begin(whole[i], s.cut, shard_of().rank)));
    }
    s.step = it->second;
    if (s.exact.defined()) {
      s.exact.zero_();
      s.exact_since = s.step + 1;
    }
  }
  steps_ = saved.steps;
}

}  // namespace tally::optim
