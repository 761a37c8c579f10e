// cuDNN's fused attention through its graph API (see attention_cudnn.h). One graph per problem (shape, strides,
// direction), built on first use and cached; executed on tally's stream with the caller's planned workspace. Host
// code only: the cuDNN frontend is header-only C++ that builds and runs the graphs; the kernels are cuDNN's.
// Compiled into CUDA builds; without cuDNN (or its frontend headers) the functions refuse every problem.
#ifdef TALLY_HAS_CUDA
#include "core/kernels/cuda/attention_cudnn.h"

#include "core/cuda/env_switch.h"

#ifdef TALLY_HAS_CUDNN
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "core/cuda/runtime.h"
#include "core/error.h"

namespace tally::cuda {
cudaStream_t stream();  // core/cuda/runtime.cu (declared for .cu files in core/cuda/common.cuh)
}  // namespace tally::cuda
#endif

namespace tally::kernels::cuda {

namespace {
thread_local std::string g_refusal;

bool refuse(std::string why) {
  g_refusal = std::move(why);
  return false;
}
}  // namespace

std::string cudnn_attention_last_refusal() { return g_refusal; }

namespace {
tally::cuda::EnvSwitch g_switch{"TALLY_CUDNN_ATTENTION"};
}  // namespace

bool cudnn_attention_enabled() { return g_switch.on() && cudnn_attention_built(); }

void set_cudnn_attention(CudnnAttention m) { m == CudnnAttention::on ? g_switch.turn_on() : g_switch.turn_off(); }

#ifndef TALLY_HAS_CUDNN

bool cudnn_attention_built() { return false; }

bool cudnn_attention_forward(const void*, const void*, const void*, void*, float*, void*, int64_t,
                             const AttentionLayout&) {
  return refuse("this build has no cuDNN attention (cuDNN or its frontend headers were not found)");
}

bool cudnn_attention_backward(const void*, const void*, const void*, const void*, const float*, const void*, void*,
                              void*, void*, void*, int64_t, const AttentionLayout&, const AttentionLayout&) {
  return refuse("this build has no cuDNN attention (cuDNN or its frontend headers were not found)");
}

#else

namespace fe = cudnn_frontend;

namespace {

// Tensor ids of the graphs' operands.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDout, kDq, kDk, kDv };

void check_cudnn(cudnnStatus_t s, const char* what) {
  if (s != CUDNN_STATUS_SUCCESS) fail("[attention/cudnn] ", what, ": ", cudnnGetErrorString(s));
}

// One cuDNN handle per device, bound to tally's stream.
cudnnHandle_t handle() {
  static std::mutex mutex;
  static std::map<int, cudnnHandle_t> handles;
  std::lock_guard lock(mutex);
  const int d = tally::cuda::current_device();
  auto it = handles.find(d);
  if (it == handles.end()) {
    cudnnHandle_t h = nullptr;
    check_cudnn(cudnnCreate(&h), "cudnnCreate");
    check_cudnn(cudnnSetStream(h, tally::cuda::stream()), "cudnnSetStream");
    it = handles.emplace(d, h).first;
  }
  return it->second;
}

// Which graph of a problem: the forward, or the backward that takes the forward's outputs and statistics.
enum class Direction : uint8_t { forward, backward };

// A problem: the device, the shape, every operand's (b, h, t) strides, and the direction.
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, std::array<int64_t, 24>, Direction>;

Key key_of(const AttentionLayout& l, const AttentionLayout& g, Direction direction) {
  std::array<int64_t, 24> s{};
  const int64_t* parts[8] = {l.q_strides, l.k_strides, l.v_strides, l.out_strides,
                             g.q_strides, g.k_strides, g.v_strides, g.out_strides};
  for (int p = 0; p < 8; ++p)
    for (int i = 0; i < 3; ++i) s[size_t(p * 3 + i)] = parts[p][i];
  return {tally::cuda::current_device(), l.B, l.NH, l.Tq, l.HS, s, direction};
}

struct Built {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN does not take the problem (why)
  int64_t workspace = 0;
  std::string why;
};

std::vector<int64_t> dims(const AttentionLayout& l) { return {l.B, l.NH, l.Tq, l.HS}; }
std::vector<int64_t> strides(const int64_t* s) { return {s[0], s[1], s[2], 1}; }

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

std::shared_ptr<fe::graph::Tensor_attributes> operand(fe::graph::Graph& g, const char* name, Uid uid,
                                                      const AttentionLayout& l, const int64_t* s) {
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims(l)).set_stride(strides(s)));
}

// The statistic (B, NH, T, 1) f32, laid out as the fallback's lse (B, NH, T).
std::vector<int64_t> stats_dims(const AttentionLayout& l) { return {l.B, l.NH, l.Tq, 1}; }
std::vector<int64_t> stats_strides(const AttentionLayout& l) { return {l.NH * l.Tq, l.Tq, 1, 1}; }

// Validates the graph and builds its plan; a graph cuDNN cannot run comes back with the reason.
Built finish(std::shared_ptr<fe::graph::Graph> g) {
  Built b;
  cudnnHandle_t h = handle();
  auto step = [&](fe::error_t e, const char* what) {
    if (e.is_good()) return true;
    b.why = std::string(what) + ": " + e.get_message();
    return false;
  };
  if (!step(g->validate(), "validate") || !step(g->build_operation_graph(h), "build_operation_graph") ||
      !step(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans") ||
      !step(g->check_support(), "check_support") || !step(g->build_plans(), "build_plans") ||
      !step(g->get_workspace_size(b.workspace), "get_workspace_size"))
    return b;
  b.graph = std::move(g);
  return b;
}

Built build_forward(const AttentionLayout& l) {
  auto g = new_graph();
  auto Q = operand(*g, "Q", kQ, l, l.q_strides);
  auto K = operand(*g, "K", kK, l, l.k_strides);
  auto V = operand(*g, "V", kV, l, l.v_strides);
  auto options = fe::graph::SDPA_attributes()
                     .set_name("attention")
                     .set_generate_stats(true)
                     .set_attn_scale(float(l.scale))
                     .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                     .set_diagonal_band_right_bound(0);  // causal: key j <= query i
  auto [O, stats] = g->sdpa(Q, K, V, options);
  O->set_output(true).set_dim(dims(l)).set_stride(strides(l.out_strides)).set_uid(kO);
  stats->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim(stats_dims(l)).set_stride(stats_strides(l))
      .set_uid(kStats);
  return finish(std::move(g));
}

Built build_backward(const AttentionLayout& l, const AttentionLayout& gl) {
  auto g = new_graph();
  auto Q = operand(*g, "Q", kQ, l, l.q_strides);
  auto K = operand(*g, "K", kK, l, l.k_strides);
  auto V = operand(*g, "V", kV, l, l.v_strides);
  auto O = operand(*g, "O", kO, l, l.out_strides);
  auto dO = operand(*g, "dO", kDout, l, gl.out_strides);
  auto stats = g->tensor(fe::graph::Tensor_attributes()
                             .set_name("stats")
                             .set_uid(kStats)
                             .set_dim(stats_dims(l))
                             .set_stride(stats_strides(l))
                             .set_data_type(fe::DataType_t::FLOAT));
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("attention_backward")
                     .set_attn_scale(float(l.scale))
                     .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                     .set_diagonal_band_right_bound(0)
                     // dQ summed in a fixed order: a rerun and a resumed run give the same bits, as without cuDNN
                     .set_deterministic_algorithm(true);
  auto [dQ, dK, dV] = g->sdpa_backward(Q, K, V, O, dO, stats, options);
  dQ->set_output(true).set_dim(dims(l)).set_stride(strides(gl.q_strides)).set_uid(kDq);
  dK->set_output(true).set_dim(dims(l)).set_stride(strides(gl.k_strides)).set_uid(kDk);
  dV->set_output(true).set_dim(dims(l)).set_stride(strides(gl.v_strides)).set_uid(kDv);
  return finish(std::move(g));
}

// The cached graph of a problem (built on first use; a refusal is cached too).
// l: the operands' layout; g: the gradients' (the backward's; the forward passes l again).
const Built& graph_for(const AttentionLayout& l, const AttentionLayout& g, Direction direction) {
  static std::mutex mutex;
  static std::map<Key, Built> cache;
  std::lock_guard lock(mutex);
  const Key key = key_of(l, g, direction);
  auto it = cache.find(key);
  if (it == cache.end())
    it = cache.emplace(key, direction == Direction::backward ? build_backward(l, g) : build_forward(l)).first;
  return it->second;
}

// What cuDNN's flash attention takes, before any graph is built.
bool takes(const AttentionLayout& l, std::initializer_list<const void*> pointers) {
  if (!cudnn_attention_enabled()) return refuse("off (TALLY_CUDNN_ATTENTION=1 switches it on)");
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return refuse("an operand is not 16-byte aligned");
  if (!l.causal || l.Tq != l.Tk) return refuse("not causal self-attention (Tq == Tk)");
  if (l.HS % 8 != 0 || l.HS > 128) return refuse("head size not a multiple of 8 up to 128");
  if (l.B * l.NH * l.Tq == 0) return refuse("empty");
  return true;
}

bool run(const Built& b, std::unordered_map<int64_t, void*>& pack, void* workspace, int64_t workspace_bytes) {
  if (!b.graph) return refuse("cuDNN does not take this problem: " + b.why);
  if (b.workspace > workspace_bytes)
    return refuse("cuDNN wants " + std::to_string(b.workspace) + " B of workspace, the plan has " +
                  std::to_string(workspace_bytes));
  fe::error_t e = b.graph->execute(handle(), pack, workspace);  // the handle is bound to tally's stream
  if (!e.is_good()) fail("[attention/cudnn] execute: ", e.get_message());
  g_refusal.clear();
  return true;
}

}  // namespace

bool cudnn_attention_built() { return true; }

bool cudnn_attention_forward(const void* q, const void* k, const void* v, void* out, float* lse, void* workspace,
                             int64_t workspace_bytes, const AttentionLayout& l) {
  if (!takes(l, {q, k, v, out, lse})) return false;
  std::unordered_map<int64_t, void*> pack = {{kQ, const_cast<void*>(q)}, {kK, const_cast<void*>(k)},
                                             {kV, const_cast<void*>(v)}, {kO, out}, {kStats, lse}};
  return run(graph_for(l, l, Direction::forward), pack, workspace, workspace_bytes);
}

bool cudnn_attention_backward(const void* q, const void* k, const void* v, const void* out, const float* lse,
                              const void* dout, void* dq, void* dk, void* dv, void* workspace, int64_t workspace_bytes,
                              const AttentionLayout& l, const AttentionLayout& g) {
  if (!takes(l, {q, k, v, out, lse, dout, dq, dk, dv})) return false;
  std::unordered_map<int64_t, void*> pack = {
      {kQ, const_cast<void*>(q)},         {kK, const_cast<void*>(k)},       {kV, const_cast<void*>(v)},
      {kO, const_cast<void*>(out)},       {kStats, const_cast<float*>(lse)}, {kDout, const_cast<void*>(dout)},
      {kDq, dq},                          {kDk, dk},                         {kDv, dv}};
  return run(graph_for(l, g, Direction::backward), pack, workspace, workspace_bytes);
}

#endif  // TALLY_HAS_CUDNN

}  // namespace tally::kernels::cuda
#endif  // TALLY_HAS_CUDA
