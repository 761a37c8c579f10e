// The Optimizer base: parameter groups, zero_grad/step, named state tensors in the memory ledger
// (Category::optimizer_state, owner "<param name>:<state name>"), lazy or eager state allocation, state
// save/load as a name -> Tensor map (dtypes kept), measured and predicted state bytes, the per-tensor
// internals a step reports on request, and mixed precision (bf16 parameters updated through f32 master weights).
// The algorithms live in came.h, adamw.h, adafactor.h, sgd.h, sm3.h, lamb.h.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/dist/communicator.h"
#include "core/kernels/dispatch.h"  // TALLY_KERNEL: how each algorithm runs its kernels
#include "core/tensor.h"
#include "optim/kernels/optim_kernels.h"

namespace tally::optim {

// ---- state descriptions (shared by allocation, measurement and prediction) ----

// What a state tensor is indexed by: what a shard of the parameter keeps of it (ZeRO-1, see Optimizer::shard).
enum class StateIndex : uint8_t {
  elements,   // one value per element of the parameter (a moment): cut with the parameter
  rows,       // a row statistic of a factored tensor (the shape without the column dim): cut with the rows
  columns,    // a column statistic (the shape without the row dim): whole on every rank when the rows are cut
  dim0,       // one value per index of dim 0, a maximum over the other dims (SM3's accumulator_0): the tensor is cut
              // along dim 0, and this statistic with it
  other_dim,  // one value per index of a later dim, a maximum over the others (SM3's accumulator_k, k >= 1): whole on
              // every rank when dim 0 is cut, completed over the ranks (Communicator::all_reduce_max)
};

// One state tensor of one parameter.
struct StateSpec {
  std::string name = {};  // "exp_avg_sq_row"
  Shape shape = {};
  DType dtype = DType::f32;
  double initial = 0.0;  // the value it starts from
  StateIndex index = StateIndex::elements;
  int64_t bytes() const { return tally::numel(shape) * int64_t(dtype_size(dtype)); }
};

// The state of one parameter tensor: every state tensor with its shape, dtype and bytes (as requested from
// the allocator; a CPU block holds cpu_held_bytes(bytes)).
struct TensorState {
  std::string param = {};
  Shape param_shape = {};
  std::vector<StateSpec> states = {};
  int64_t bytes() const;
};
int64_t total_bytes(const std::vector<TensorState>& tensors);

// A parameter known by name and shape only (for predictions without tensors).
struct NamedShape {
  std::string name = {};
  Shape shape = {};
  DType dtype = DType::f32;  // bf16: the state also holds the f32 master weights (see with_master)
};
// The part of a parameter an optimizer updates: the tensor less its padding rows (Tensor::padding_rows), a view
// of the same storage; the tensor itself when it has none.
Tensor updated_part(const Tensor& param);
// A parameter as the optimizers see it: its name, the shape of updated_part(), its dtype.
NamedShape named_shape(const Tensor& param);

// Mixed precision: a bf16 parameter's state ends with "master", the f32 master weights the algorithm updates
// (Category::optimizer_state, owner "<param>:master", initialised from the parameter, exactly). `specs` unchanged
// for an f32 parameter.
std::vector<StateSpec> with_master(std::vector<StateSpec> specs, const Shape& shape, DType param_dtype);
// The Philox key of a bf16 parameter's stochastic rounding (kernels::round_to_bf16): from the optimizer's rounding
// seed and the parameter's name; the counter is the parameter's step count x round_to_bf16_blocks(numel), plus the
// block where a ZeRO-1 part starts (every element draws the same bits on any number of ranks).
uint64_t bf16_rounding_key(uint64_t seed, const std::string& name);

// ---- factoring (CAME, Adafactor) ----

enum class Factoring : uint8_t {
  last_two_dims,     // came-pytorch / transformers: every tensor of 2+ dims, over its last two dims
  two_largest_dims,  // optax: the two largest dims, only when the smaller of them is >= min_dim_to_factor
};

// Why a tensor's second moment is (not) factored: what factored_dims decided, by which rule.
enum class FactoringReason : uint8_t {
  never,             // the algorithm keeps no factored state (AdamW, SGD): a default FactoredDims
  last_two_dims,     // factored over its last two dims (Factoring::last_two_dims)
  two_largest_dims,  // factored over its two largest dims (Factoring::two_largest_dims)
  under_two_dims,    // not factored: a vector or a scalar
  below_min_dim,     // not factored (Factoring::two_largest_dims): the smaller of its two largest dims is too small
};

struct FactoredDims {
  bool factored = false;
  int a = -1, b = -1;  // the factored dims, a < b: the row statistic drops b, the column statistic drops a
  kernels::FactoredLayout layout;
  FactoringReason reason = FactoringReason::never;
  int64_t min_dim_to_factor = 0;  // the minimum the rule applied (Factoring::two_largest_dims)
};
FactoredDims factored_dims(const Shape& shape, Factoring rule, int64_t min_dim_to_factor);
Shape drop_dim(const Shape& shape, int dim);
// The decision in words, for a tensor of `shape`: "factored: last two dims 768x3072", "factored: last two dims
// 4096x14336 (8 such matrices)", "factored: dims 0 and 2 (4096x11008), the two largest", "not factored: 1-D",
// "not factored: its two largest dims are 64x50, and 50 < 128", "dense (this optimizer does not factor)".
std::string describe_factoring(const Shape& shape, const FactoredDims& f);

// The state of one parameter tensor as an algorithm lays it out: its state tensors (the algorithm's own, without
// the master weights of a bf16 parameter) and, for the factored optimizers, which dims are factored.
struct StateLayout {
  std::vector<StateSpec> specs = {};
  FactoredDims factoring = {};  // .factored false: a dense state
  // The step takes a sum over the whole tensor (an RMS clip, a norm), which a tensor split over ranks completes over
  // them (a collective per tensor and step).
  bool sums_over_tensor = false;
};

// ---- ZeRO-1: a parameter's state cut over the ranks of a data-parallel group ----

// Which rank of how many a shard is. {0, 1}: the whole tensor.
struct ShardOf {
  int rank = 0;
  int world = 1;
};

// How one parameter (its updated part) is cut over the ranks: rank k keeps state for, and updates, elements
// [offsets[k], offsets[k+1]), contiguous. A tensor whose state is factored is cut into whole rows of its factored
// view: along the row dim `a` when the dims before it are all 1 (the row statistics stay with their rows; the column
// statistics, the row means and the update's RMS are sums over every rank), else along dim 0 (whole slabs: only the
// RMS crosses ranks). A tensor with per-dim statistics (StateIndex::dim0, other_dim: SM3's) is cut along dim 0.
// Any other tensor is cut into balanced ranges of its elements. Every part starts on a multiple of 8 elements
// (kernels::kBf16RoundingBlock: the ranges are balanced in units of 8 elements, or of as many indices of the cut dim
// as make a multiple of 8), so that a bf16 parameter's stochastic rounding draws each element's bits as the whole
// tensor's does. Cuts may be uneven, and a rank may hold nothing of a small tensor.
struct ShardCut {
  int dim = -1;                  // the dim cut into ranges, or -1: the flattened elements
  std::vector<int64_t> bounds;   // world + 1 boundaries along `dim` (over the elements when dim == -1)
  std::vector<int64_t> offsets;  // world + 1 element offsets of each rank's part
  bool columns_shared = false;   // the factored row dim is cut: column statistics are summed over every rank's rows
  int64_t part_numel(int rank) const { return offsets[size_t(rank) + 1] - offsets[size_t(rank)]; }
  // A cut over the flattened elements (no state kept on every rank) that gives them all to one rank: the others
  // hold nothing of the tensor or its state, and its step needs no sum over the ranks.
  bool whole_on_one_rank() const;
};
ShardCut shard_cut(const Shape& whole, const StateLayout& layout, int world);
// A vector (a bias, a LayerNorm weight) of at most this many elements may stay whole: see shard_cuts.
inline constexpr int64_t kWholeTensorMax = int64_t(1) << 16;

// Every tensor's cut over `world` ranks (tensor i called names[i], of shape wholes[i], laid out as layouts[i]):
// shard_cut's, except that a vector or a scalar whose step sums over it (StateLayout::sums_over_tensor: CAME's and
// Adafactor's RMS clip, LAMB's norms), of at most kWholeTensorMax elements, goes whole to one rank: its state is
// still kept by one rank only, and its step makes no collective (split, every rank would join a sum over the ranks
// for it, each step). Those go largest first (then by name, so that the order given does not matter), each to the
// rank holding the fewest of their elements so far (ties: the lowest). Larger tensors stay split (whole, they would
// leave the ranks' state uneven), and so do those whose step sums nothing (AdamW's, SGD's: nothing to save).
std::vector<ShardCut> shard_cuts(const std::vector<std::string>& names, const std::vector<Shape>& wholes,
                                 const std::vector<StateLayout>& layouts, int world);
// The shape of rank `rank`'s part of a tensor of shape `whole`.
Shape part_shape(const Shape& whole, const ShardCut& cut, int rank);
// The state of rank `rank`'s part: each state cut as its StateIndex says, the factored layout of the part.
StateLayout part_layout(const StateLayout& whole_layout, const Shape& whole, const ShardCut& cut, int rank);

// ---- options of the base ----

enum class ZeroGrad : uint8_t {
  set_to_none,  // free each gradient (torch's default); the next backward allocates it again
  fill_zeros,   // keep the buffers and zero them (memory stays allocated between steps)
};

// What a step reports about itself (internals()). `off` costs nothing: the kernels run their plain variants.
enum class Inspect : uint8_t {
  off,
  summary,          // update RMS before/after clipping, clipping fired, first-moment RMS, confidence summaries
  factored_error,   // summary + the relative error of the factored second moment against the exact EMA of g^2
                    // (allocates one extra full-size f32 buffer per factored tensor, owner
                    // "<param>:inspect.exact_exp_avg_sq", Category::other, while this level is on)
};

struct StepOptions {
  // Gradients are multiplied by this as the kernels read them (global-norm clipping fused into the step, see
  // clip.h): the gradient buffers themselves are left unchanged.
  double grad_scale = 1.0;
};

// ---- internals ----

struct Summary {
  double min = std::numeric_limits<double>::quiet_NaN();
  double mean = std::numeric_limits<double>::quiet_NaN();
  double max = std::numeric_limits<double>::quiet_NaN();
};

// What one tensor's last inspected step did. RMS values are over all elements of the tensor; NaN means "not
// applicable to this optimizer / tensor".
struct TensorInternals {
  std::string param = {};
  int64_t step = 0;  // the tensor's step count when recorded; 0 = no inspected step yet
  // The update direction before the learning rate: CAME/Adafactor u = g / sqrt(v_hat) (what the RMS clip
  // sees), AdamW m_hat / (sqrt(v_hat) + eps), SGD the (momentum) direction.
  double update_rms = std::numeric_limits<double>::quiet_NaN();
  double clipped_update_rms = std::numeric_limits<double>::quiet_NaN();  // after the RMS clip (CAME, Adafactor)
  bool clipped = false;                                                   // the clip scaled the update down
  double exp_avg_rms = std::numeric_limits<double>::quiet_NaN();         // the new first moment
  double applied_rms = std::numeric_limits<double>::quiet_NaN();         // the change lr*update (no weight decay)
  // CAME, factored tensors: the confidence factors rsqrt(R / mean(R)) (rows) and rsqrt(C) (columns), and
  // their product, the per-element scale applied to the first moment.
  bool has_confidence = false;
  Summary confidence_row = {}, confidence_col = {}, confidence_scale = {};
  // Inspect::factored_error on a factored tensor: ||V_factored - V_exact||_F / ||V_exact||_F, where V_exact
  // is the exact EMA of g^2+eps1 kept since step `exact_since_step` (it starts from zero then, so the figure
  // is meaningful when that was step 1).
  double factored_rel_error = std::numeric_limits<double>::quiet_NaN();
  int64_t exact_since_step = 0;
};

// ---- save / load ----

struct OptimizerState {
  std::string kind = {};                       // "came", "adamw", "adafactor", "sgd", "sm3", "lamb"
  int64_t steps = 0;                           // step() calls
  std::map<std::string, int64_t> param_steps;  // per parameter name: steps that updated it
  std::map<std::string, Tensor> tensors;       // "<param>:<state>" -> state tensor (its own dtype)
};

// ---- the base ----

// Mixed precision: a bf16 parameter (its gradient bf16 too) is updated through f32 master weights kept as its
// last state tensor, "master". Each step widens the bf16 gradient into an f32 buffer (step workspace, owner
// "<kind>:workspace"), runs the algorithm's f32 kernels on the master exactly as for an f32 parameter, and writes
// the bf16 parameter from the master with stochastic rounding (kernels round_to_bf16): unbiased, so updates
// smaller than bf16's resolution still move the parameter on average, while the master keeps them exactly.
// The random bits are Philox with a key from the rounding seed and the parameter's name, and a counter from its
// step count: a resumed run rounds exactly as an uninterrupted one. An algorithm may fuse the widening and the
// rounding into its kernel (fuses_mixed_precision: CAME's small dense tensors on CUDA), with the same bits.
class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  const std::string& kind() const { return kind_; }

  // ---- groups and learning rate ----
  int num_groups() const { return int(group_params_.size()); }
  const std::vector<Tensor>& group_params(int group) const;
  double lr(int group = 0) const;
  void set_lr(double lr);             // every group
  void set_lr(int group, double lr);  // one group
  // Every group's lr = the lr it was constructed with * factor (schedules with groups of different lrs).
  void set_lr_factor(double factor);

  // ---- stepping ----
  void zero_grad(ZeroGrad mode = ZeroGrad::set_to_none);
  // Updates every parameter whose gradient is defined (others are skipped and keep their step count).
  // Allocates state on a parameter's first update unless init_state() already did.
  void step(const StepOptions& options = {});
  // Allocates every parameter's state (and the step workspace) now, as the first step would: memory can
  // then be measured before step 1. Idempotent.
  void init_state();
  int64_t steps() const { return steps_; }
  // Seed of the stochastic rounding of bf16 parameters (see above); a fixed default.
  void set_rounding_seed(uint64_t seed) { rounding_seed_ = seed; }
  uint64_t rounding_seed() const { return rounding_seed_; }
  int64_t param_step(const std::string& param) const;  // throws for an unknown name

  // ---- memory ----
  // Measured from the state tensors that exist (a parameter not yet updated lists no states).
  std::vector<TensorState> state_bytes() const;
  int64_t total_state_bytes() const { return total_bytes(state_bytes()); }
  // Predicted from this optimizer's parameter shapes and configuration; allocates nothing.
  std::vector<TensorState> predict_state_bytes() const;
  // Step workspace currently held (Category::workspace, owner "<kind>:workspace"), all devices.
  int64_t workspace_bytes() const;
  // Inspection buffers currently held (Inspect::factored_error).
  int64_t inspect_bytes() const;

  // ---- inspection ----
  void set_inspect(Inspect level);
  Inspect inspect() const { return inspect_; }
  // One entry per parameter, in parameter order.
  std::vector<TensorInternals> internals() const;

  // ---- ZeRO-1 ----
  // From now on this optimizer keeps state for, and updates, only rank comm.rank()'s part of each parameter
  // (shard_cuts); the sums a step needs over a whole tensor (the RMS clip, column statistics, row means, inspection
  // statistics) are completed over the ranks through `comm`, which must outlive the optimizer. Before any state
  // exists. The caller gives whole gradients (this rank's part is read) and all-gathers the updated parameters.
  void shard(dist::Communicator& comm);
  ShardOf shard_of() const { return comm_ ? ShardOf{comm_->rank(), comm_->world()} : ShardOf{}; }
  // How parameter `param` is cut over the ranks (one part when not sharded).
  const ShardCut& shard_cut(const std::string& param) const;
  // What one step() hands to the collectives (dist::Communicator::traffic counts it) when sharded: the sums the
  // kernels complete over the ranks (cross_rank_traffic of every slot) and, while inspecting, each slot's statistics.
  // Nothing when not sharded.
  dist::Traffic traffic_per_step() const;
  // The state of parameter `param` whole, as the algorithm lays it out (its own state tensors, without the master
  // weights of a bf16 parameter, and which dims are factored): what its state is, or will be, allocated from.
  StateLayout whole_layout(const std::string& param) const;

  // ---- state access, save and load ----
  // The state tensor `state` of parameter `param` (this rank's part when sharded); undefined when not allocated.
  Tensor state(const std::string& param, const std::string& state) const;
  // Every parameter's whole state. Sharded, the parts are gathered from every rank (a collective: every rank calls
  // it), so a checkpoint holds the same tensors at any world size.
  OptimizerState state_dict() const;
  // Copies a saved state (whole tensors) into this optimizer's own (allocating them where needed), each rank its
  // part. Throws when the kind, a parameter name, a state's shape or its dtype differs: dtypes are never converted
  // silently.
  void load_state_dict(const OptimizerState& saved);

 protected:
  // Per parameter.
  struct Slot {
    Tensor param;  // what the algorithm updates: this rank's part (shard_cuts) of `whole`
    Tensor whole;  // updated_part(leaf): the parameter less its padding rows
    Tensor leaf;   // the parameter itself, whose .grad backward fills
    ShardCut cut;  // `whole` over the ranks
    int64_t whole_rows = 0;  // the factored view's n of `whole` (the row means' count when rows are cut)
    std::string name;
    int group = 0;
    int64_t step = 0;
    bool allocated = false;
    std::vector<StateSpec> specs;  // fixed when the state is allocated
    std::vector<Tensor> tensors;   // one per spec
    bool factored = false;          // CAME/Adafactor: factored second moment
    kernels::FactoredLayout layout;  // of `param` (this rank's rows when sharded)
    Tensor exact;                  // Inspect::factored_error buffer
    int64_t exact_since = 0;
    TensorInternals internals;
    Tensor master;                 // bf16 parameters: the f32 master weights (also the last of `tensors`)

    // The state tensor called `name` ("exp_avg_sq_row"); throws naming the parameter when it has none.
    const Tensor& state(std::string_view state_name) const;
    float* f32(std::string_view state_name) const { return state(state_name).data<float>(); }
    bool has(std::string_view state_name) const;
    size_t index_of(std::string_view state_name) const;  // its place in specs/tensors
  };

  explicit Optimizer(std::string kind);
  // Registers a group. Each parameter must be f32 or bf16 (mixed precision), contiguous, require grad and carry a
  // unique non-empty name.
  void add_group(const std::vector<Tensor>& params, double lr);

  // ---- what each algorithm provides ----
  virtual double group_lr(int group) const = 0;
  virtual void store_group_lr(int group, double lr) = 0;
  // The state of this slot's whole parameter (its shape, its group's configuration); the base cuts it to the
  // rank's part.
  virtual StateLayout state_layout(const Slot& slot) const = 0;
  // Workspace bytes one step of this slot needs on its device.
  virtual int64_t workspace_for(const Slot& slot) const;
  // Sharded: the collectives one step of this slot makes to complete its sums over the ranks (none by default),
  // and those its inspection makes (the statistics' sum; an override adds what its record_internals gathers).
  virtual dist::Traffic cross_rank_traffic(const Slot& /*slot*/) const { return {}; }
  virtual dist::Traffic inspection_traffic(const Slot& slot) const;
  // Those of a CAME or Adafactor step (its kernels' kernels::Sharding): when the factored rows are cut,
  // `column_rounds` rounds of the column sums with the row sums per group, the first of which also carries the column
  // sums of the squared update (the RMS clip's); otherwise the update's squared sum alone, one double.
  static dist::Traffic factored_sums(const Slot& slot, int column_rounds);
  // Runs the kernel(s). `stats` is a kernels::kStatCount array on the slot's device, or null.
  virtual void update(Slot& slot, const Tensor& grad, const StepOptions& options, void* workspace, double* stats) = 0;
  // Fills slot.internals from the step's stats (host copy).
  virtual void record_internals(Slot& slot, const double* stats);
  // What CAME's and Adafactor's record_internals share: whether their RMS clip (at clip_threshold) scaled the
  // update down, the update RMS after it, and (factored, an exact EMA kept) the factored estimate's relative error.
  static void record_clip_internals(Slot& slot, const double* stats, double clip_threshold);
  // Runs what update() deferred to be launched together (CAME's and Adafactor's tensors on CUDA); called once after
  // every slot's update() in a step.
  virtual void finish_updates() {}
  // The step workspace held on device d now (at least the largest workspace_for() of the slots stepped there), for
  // deferred launches that share it.
  struct HeldWorkspace {
    void* data = nullptr;
    int64_t bytes = 0;
  };
  HeldWorkspace held_workspace(Device d) const;
  // Mixed precision fused into the kernel: true when update() of this bf16 slot takes the bf16 gradient itself and
  // writes the bf16 parameter from the master (kernel_gradient()), so step() neither widens the gradient nor rounds
  // afterwards. Asked with the optimizer's current inspection level, before the step and when sizing workspace.
  // OptimizerWith answers for an optimizer whose kernels take FusedBf16 (Derived::kFusedBf16).
  virtual bool fuses_mixed_precision(const Slot& /*slot*/) const { return false; }
  // The gradient as update() passes it to a kernel: an f32 gradient in `f32`; a bf16 one (step() passes it only when
  // fuses_mixed_precision) in `bf16`, with this slot's bf16 parameter and the Philox key and counter round_to_bf16
  // would use for its current step (Slot::step already incremented).
  struct KernelGradient {
    const float* f32 = nullptr;
    kernels::FusedBf16 bf16 = {};
    bool fused() const { return bf16.grad != nullptr; }
  };
  KernelGradient kernel_gradient(Slot& slot, const Tensor& grad) const;
  // Whether update() may defer this slot's CUDA step to finish_updates(), to be launched with others (CAME's and
  // Adafactor's *_steps kernels): on CUDA, the tensor whole on this rank (a part's sums wait for the other ranks), no
  // statistics asked (`stats` null: they are read right after update()), a bf16 parameter only when its rounding is fused (step() writes
  // an unfused one from the master right after update()), and a dense tensor of at most dense_max elements (a
  // factored one any size; not with the inspection's exact second moment).
  bool launches_later(const Slot& slot, const KernelGradient& g, const double* stats, int64_t dense_max) const;

  // The f32 values the kernels update: the parameter itself, or its master weights when it is bf16.
  static float* param_f32(Slot& s) { return s.master.defined() ? s.master.data<float>() : s.param.data<float>(); }
  static const Slot* find(const std::vector<Slot>& slots, const std::string& name);
  void ensure_state(Slot& slot);
  // Sharded: the communicator that completes cross-rank sums (null when the tensors are whole here).
  dist::Communicator* comm() const { return comm_ && comm_->world() > 1 ? comm_ : nullptr; }
  // What a kernel needs to complete this slot's sums over the ranks (no sum when the tensor is whole here).
  kernels::Sharding sharding(const Slot& slot) const;
  // Where this rank's part of the slot's parameter starts in the whole (its element offset; 0 when not sharded).
  int64_t part_first(const Slot& slot) const { return slot.cut.offsets[size_t(shard_of().rank)]; }
  // State `state` of the slot whole: this rank's part, or, sharded, every rank's parts gathered (a collective).
  Tensor gathered(const Slot& slot, size_t state) const;
  // The collective gathered() makes (none when the state is whole here).
  dist::Traffic gather_traffic(const Slot& slot, size_t state) const;
  // The slot's state specs for the whole parameter (what a checkpoint holds), master weights included.
  std::vector<StateSpec> whole_specs(const Slot& slot) const;

  std::vector<Slot> slots_;

 private:
  // One slot's part of step(): checks, state, workspace, update() (which may defer its launch), inspection.
  void step_slot(Slot& slot, const StepOptions& options);
  void* workspace(Device d, int64_t bytes);
  void allocate_exact(Slot& slot);
  // state_layout cut to this rank's part, plus the master weights of a bf16 parameter.
  StateLayout full_layout(const Slot& slot) const;
  // The f32 buffer a bf16 gradient is widened into (one per device, sized for the largest bf16 parameter).
  Tensor& widened_grad_buffer(Device d, int64_t numel);
  // param = stochastic_round(master) after a step of a bf16 parameter.
  void write_bf16_param(Slot& slot);
  // Sharded, of a state not whole on every rank: its elements on each rank (gathered's parts); else empty.
  std::vector<int64_t> part_numels(const Slot& slot, size_t state) const;

  std::string kind_;
  std::vector<std::vector<Tensor>> group_params_;
  std::vector<double> initial_lr_;
  int64_t steps_ = 0;
  Inspect inspect_ = Inspect::off;
  std::map<std::string, Tensor> workspaces_;  // by device string
  std::map<std::string, Tensor> stats_;       // by device string, kStatCount f64
  std::map<std::string, Tensor> widened_;     // by device string: f32 gradient buffers of bf16 parameters
  uint64_t rounding_seed_ = 0x6D69786564ull;
  dist::Communicator* comm_ = nullptr;  // shard(): the ranks this optimizer's state is cut over
  // Doubles added over comm_'s ranks (the kernels' CrossRankSum): on the host (MPI) for the CPU kernels, in device
  // memory (NCCL, on tally's stream) for the CUDA kernels.
  struct RankSum final : kernels::CrossRankSum {
    RankSum(Device d) : device(d) {}
    dist::Communicator* comm = nullptr;
    Device device;
    void operator()(double* data, int64_t n) const override { comm->all_reduce_sum(data, n, device); }
  };
  RankSum host_sum_{Device::cpu()}, cuda_sum_{Device::cuda()};
};

// ---- steps launched together ----

// The kernel arguments of the steps update() deferred (Optimizer::launches_later), launched together on `device` by
// finish_updates(): factored ones sharing the step workspace, small dense ones a block each.
template <class FactoredArgs, class DenseArgs>
struct DeferredSteps {
  std::vector<FactoredArgs> factored;
  std::vector<DenseArgs> dense;
  Device device = Device::cpu();

  bool empty() const { return factored.empty() && dense.empty(); }
  // These steps, to take one on device d: those deferred on another device are launched first (launch(), the
  // optimizer's finish_updates()).
  template <class Launch>
  DeferredSteps& on(Device d, Launch launch) {
    if (!empty() && device != d) launch();
    device = d;
    return *this;
  }
  // The steps deferred so far, leaving none here.
  DeferredSteps take() {
    DeferredSteps out{std::move(factored), std::move(dense), device};
    factored.clear();
    dense.clear();
    return out;
  }
};

// ---- parameter groups ----

template <class Config>
struct ParamGroup {
  std::vector<Tensor> params;
  Config config;
};

// Which tensors receive weight decay.
enum class DecayRule : uint8_t {
  matrices,  // tensors of 2+ dims (weights, embeddings); not biases or layer-norm gains (nanoGPT's convention)
  all,
  none,
};

// Splits params into a group with config.weight_decay and one with weight_decay = 0 by `rule` (empty groups
// are left out; order within a group is the given order).
template <class Config>
std::vector<ParamGroup<Config>> decay_groups(const std::vector<Tensor>& params, const Config& config,
                                             DecayRule rule = DecayRule::matrices) {
  ParamGroup<Config> decay{{}, config}, no_decay{{}, config};
  no_decay.config.weight_decay = 0.0;
  for (const Tensor& p : params) {
    const bool d = rule == DecayRule::all || (rule == DecayRule::matrices && p.dim() >= 2);
    (d ? decay : no_decay).params.push_back(p);
  }
  std::vector<ParamGroup<Config>> out;
  if (!decay.params.empty()) out.push_back(std::move(decay));
  if (!no_decay.params.empty()) out.push_back(std::move(no_decay));
  return out;
}

// ---- the common part of every algorithm ----

// An algorithm with one Config per group (a struct with at least `double lr`): construction from parameters or
// groups, each group's Config checked by `validate(config, group)` (a free function beside the Config, found by
// argument-dependent lookup), the lr hooks, config access, and the state predicted from shapes alone. The
// algorithm itself (Derived) provides
//   static constexpr const char* kKind;                                   // "came"
//   static std::vector<StateSpec> state_specs(const Shape&, const Config&);  // its own state, by name
//   static FactoredDims factoring(const Shape&, const Config&);             // only the factored optimizers
//   void update(Slot&, const Tensor& grad, const StepOptions&, void* workspace, double* stats) override;
// and may override record_internals (and finish_updates).
template <class Derived, class Config>
class OptimizerWith : public Optimizer {
 public:
  OptimizerWith(const std::vector<Tensor>& params, const Config& config)
      : OptimizerWith(std::vector<ParamGroup<Config>>{{params, config}}) {}
  explicit OptimizerWith(const std::vector<ParamGroup<Config>>& groups) : Optimizer(Derived::kKind) {
    for (size_t g = 0; g < groups.size(); ++g) {
      validate(groups[g].config, int(g));
      configs_.push_back(groups[g].config);
      add_group(groups[g].params, groups[g].config.lr);
    }
  }

  // Hyperparameters may change between steps; structural options (factoring, state dtypes) are read when a
  // tensor's state is allocated.
  const Config& config(int group = 0) const { return configs_[checked(group)]; }
  Config& config(int group = 0) { return configs_[checked(group)]; }

  // Whether the optimizer's CUDA kernels take FusedBf16; an optimizer whose kernels do says so with its own
  // kFusedBf16 = true.
  static constexpr bool kFusedBf16 = false;
  // Whether a step sums over each whole tensor (StateLayout::sums_over_tensor); an optimizer that does says so.
  static constexpr bool kSumsOverTensor = false;

  static StateLayout layout(const Shape& shape, const Config& config) {
    StateLayout l{.specs = Derived::state_specs(shape, config), .sums_over_tensor = Derived::kSumsOverTensor};
    if constexpr (requires { Derived::factoring(shape, config); }) l.factoring = Derived::factoring(shape, config);
    return l;
  }
  // Closed-form state bytes from shapes alone (nothing allocated); master weights for bf16 parameters.
  // Sharded (ZeRO-1): rank shard.rank's part of each parameter.
  static std::vector<TensorState> predict_state_bytes(const std::vector<NamedShape>& params, const Config& config,
                                                      ShardOf shard = {}) {
    std::vector<std::string> names;
    std::vector<Shape> shapes;
    std::vector<StateLayout> wholes;
    for (const NamedShape& p : params) {
      names.push_back(p.name);
      shapes.push_back(p.shape);
      wholes.push_back(layout(p.shape, config));
    }
    const std::vector<ShardCut> cuts = shard_cuts(names, shapes, wholes, shard.world);
    std::vector<TensorState> out;
    for (size_t i = 0; i < params.size(); ++i) {
      const NamedShape& p = params[i];
      const Shape part = part_shape(p.shape, cuts[i], shard.rank);
      out.push_back({.param = p.name,
                     .param_shape = part,
                     .states = with_master(part_layout(wholes[i], p.shape, cuts[i], shard.rank).specs, part, p.dtype)});
    }
    return out;
  }
  using Optimizer::predict_state_bytes;

 protected:
  const Config& config_of(const Slot& s) const { return configs_[size_t(s.group)]; }
  // An optimizer whose CUDA kernels take FusedBf16 (Derived::kFusedBf16) fuses a bf16 parameter's gradient widening
  // and rounding into its step on CUDA when no statistics are asked for (they are read right after a step, from the
  // f32 path).
  bool fuses_mixed_precision(const Slot& s) const override {
    return Derived::kFusedBf16 && s.master.defined() && s.param.device().backend() == DeviceKind::cuda &&
           inspect() == Inspect::off;
  }

 private:
  size_t checked(int group) const {
    TALLY_CHECK(group >= 0 && group < num_groups(), "[", kind(), "] no group ", group, " (", num_groups(), " groups)");
    return size_t(group);
  }
  double group_lr(int group) const final { return configs_[size_t(group)].lr; }
  void store_group_lr(int group, double lr) final { configs_[size_t(group)].lr = lr; }
  StateLayout state_layout(const Slot& slot) const final { return layout(slot.whole.shape(), config_of(slot)); }

  std::vector<Config> configs_;
};

}  // namespace tally::optim
