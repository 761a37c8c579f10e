// Data parallelism for a training step (see data_parallel.h).
#include "train/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "optim/clip.h"

namespace tally::train {

namespace {

// Elements [begin, end) of a contiguous tensor, as a flat view.
Tensor flat(const Tensor& t, int64_t begin, int64_t end) { return make_view(t, {end - begin}, {1}, t.offset() + begin); }

}  // namespace

DataParallel::DataParallel(dist::Communicator& comm, ZeroStage stage, const optim::Optimizer& optimizer,
                           const std::vector<Tensor>& params, DType reduce_dtype, int64_t bucket_bytes)
    : comm_(comm), stage_(stage), params_(params), reduce_dtype_(reduce_dtype) {
  TALLY_CHECK(bucket_bytes >= 4, "[data parallel] bucket_bytes must be at least one float, got ", bucket_bytes);
  TALLY_CHECK(reduce_dtype == DType::f32 || reduce_dtype == DType::bf16,
              "[data parallel] gradients are summed in f32 or bf16, not ", dtype_name(reduce_dtype));
  TALLY_CHECK(!params.empty(), "[data parallel] no parameters");
  const Device device = params.front().device();
  for (const Tensor& p : params)
    TALLY_CHECK(p.device() == device, "[data parallel] parameters on two devices: ", device.str(), " and ",
                p.device().str(), " ('", p.name(), "')");
  if (stage == ZeroStage::zero1)
    TALLY_CHECK(optimizer.shard_of().world == comm.world(), "[data parallel] ZeRO 1 needs the optimizer sharded over ",
                "the same ", comm.world(), " ranks (it is cut over ", optimizer.shard_of().world, ")");
  // Buckets of whole tensors, in parameter order, closed when the next tensor would take one over the cap (a tensor
  // larger than the cap gets a bucket of its own).
  const int world = comm.world();
  const int segments = stage == ZeroStage::zero1 ? world : 1;
  const int64_t cap = bucket_bytes / 4;
  Bucket open{.segments = std::vector<std::vector<Piece>>(size_t(segments))};
  std::vector<int64_t> filled(size_t(segments), 0);
  auto close = [&] {
    if (open.segments[0].empty()) return;
    open.segment = *std::max_element(filled.begin(), filled.end());
    buckets_.push_back(std::move(open));
    open = Bucket{.segments = std::vector<std::vector<Piece>>(size_t(segments))};
    std::fill(filled.begin(), filled.end(), 0);
  };
  auto add = [&](const Tensor& p, const std::vector<int64_t>& offsets) {
    std::vector<int64_t> grown = filled;
    for (int k = 0; k < segments; ++k) grown[size_t(k)] += offsets[size_t(k) + 1] - offsets[size_t(k)];
    if (int64_t(segments) * *std::max_element(grown.begin(), grown.end()) > cap) close();
    for (int k = 0; k < segments; ++k) {
      open.segments[size_t(k)].push_back({.param = p, .begin = offsets[size_t(k)], .end = offsets[size_t(k) + 1]});
      filled[size_t(k)] += offsets[size_t(k) + 1] - offsets[size_t(k)];
    }
  };
  // ZeRO 1: the tensors one rank holds whole (small vectors, optim::shard_cuts) in buckets of their own, after the
  // others: among split tensors each would lengthen one rank's segment, and the collective pads every segment to the
  // longest; together, spread over the ranks, they nearly balance.
  std::vector<std::pair<Tensor, const optim::ShardCut*>> whole_on_one_rank;
  for (const Tensor& p : params) {
    if (stage == ZeroStage::zero0) {
      add(p, {0, optim::updated_part(p).numel()});  // padding rows never travel
      continue;
    }
    const optim::ShardCut& cut = optimizer.shard_cut(p.name());
    if (cut.whole_on_one_rank())
      whole_on_one_rank.emplace_back(p, &cut);
    else
      add(p, cut.offsets);
  }
  close();
  for (const auto& [p, cut] : whole_on_one_rank) add(p, cut->offsets);
  close();
  gather_dtype_ = params.front().dtype();
  for (const Tensor& p : params)
    if (p.dtype() != gather_dtype_) gather_dtype_ = DType::f32;
  const int64_t reduce_size = int64_t(dtype_size(reduce_dtype_)), gather_size = int64_t(dtype_size(gather_dtype_));
  int64_t largest = 0;
  // Per bucket and step: an all-reduce, or a reduce-scatter and an all-gather, of the whole buffer; then the loss,
  // the norm's squares and the stop request, three doubles.
  for (const Bucket& b : buckets_) {
    largest = std::max(largest, b.segment * segments);
    reduce_traffic_ += {1, b.segment * segments * reduce_size};
    if (stage == ZeroStage::zero1) gather_traffic_ += {1, b.segment * segments * gather_size};
  }
  reduce_traffic_ += {1, kLossAndNormBytes};
  const int64_t widest = std::max(reduce_size, stage == ZeroStage::zero1 ? gather_size : 0);
  MemoryScope scope(Category::workspace, "dist:bucket");
  buffer_ = empty({(largest * widest + 3) / 4}, {.dtype = DType::f32, .device = device});
  reduce_buffer_ = bytes_as(buffer_, reduce_dtype_);
  if (stage == ZeroStage::zero1) gather_buffer_ = bytes_as(buffer_, gather_dtype_);  // ZeRO 0 gathers nothing
}

void DataParallel::pack(const Bucket& b, int segment, Source from, int64_t at) const {
  for (const Piece& piece : b.segments[size_t(segment)]) {
    const Tensor src = from == Source::gradients ? piece.param.grad() : piece.param;
    TALLY_CHECK(src.defined(), "[data parallel] '", piece.param.name(), "' has no gradient to average: every ",
                "parameter must take part in every step's loss");
    Tensor dst = flat(buffer_for(from), at, at + piece.end - piece.begin);
    dst.copy_(flat(src, piece.begin, piece.end));
    at += piece.end - piece.begin;
  }
}

void DataParallel::unpack(const Bucket& b, int segment, Source to, int64_t at) const {
  for (const Piece& piece : b.segments[size_t(segment)]) {
    Tensor dst = flat(to == Source::gradients ? piece.param.grad() : piece.param, piece.begin, piece.end);
    dst.copy_(flat(buffer_for(to), at, at + piece.end - piece.begin));
    at += piece.end - piece.begin;
  }
}

void DataParallel::all_reduce(int64_t n) {
  void* base = buffer_.data_ptr();  // null on the meta device, where nothing moves
  if (reduce_dtype_ == DType::bf16) return comm_.all_reduce_sum(static_cast<bf16*>(base), n, buffer_.device());
  comm_.all_reduce_sum(static_cast<float*>(base), n, buffer_.device());
}

void DataParallel::reduce_scatter(int64_t segment) {
  void* base = buffer_.data_ptr();
  if (reduce_dtype_ == DType::bf16)
    return comm_.reduce_scatter_sum(static_cast<bf16*>(base), segment, buffer_.device());
  comm_.reduce_scatter_sum(static_cast<float*>(base), segment, buffer_.device());
}

void DataParallel::reduce_gradients() {
  NoGradGuard no_grad;
  for (const Bucket& b : buckets_) {
    if (stage_ == ZeroStage::zero0) {
      pack(b, 0, Source::gradients, 0);
      all_reduce(b.segment);
      unpack(b, 0, Source::gradients, 0);
      continue;
    }
    for (int r = 0; r < comm_.world(); ++r) pack(b, r, Source::gradients, int64_t(r) * b.segment);
    reduce_scatter(b.segment);
    unpack(b, comm_.rank(), Source::gradients, int64_t(comm_.rank()) * b.segment);
  }
}

void DataParallel::add_grad_squares(Tensor& acc) const {
  if (stage_ == ZeroStage::zero0) return optim::add_sum_of_squares(optim::defined_grads(params_), acc);
  std::vector<Tensor> parts;
  for (const Bucket& b : buckets_)
    for (const Piece& piece : b.segments[size_t(comm_.rank())])
      if (piece.end > piece.begin) parts.push_back(flat(piece.param.grad(), piece.begin, piece.end));
  optim::add_sum_of_squares(parts, acc);
}

DataParallel::LossAndNorm DataParallel::loss_and_norm(double loss, double squares, bool stop) {
  // ZeRO 0: every rank summed the same whole gradient, so its squares are already the global sum.
  double sums[kLossAndNormValues] = {loss, stage_ == ZeroStage::zero1 ? squares : 0.0, stop ? 1.0 : 0.0};
  comm_.all_reduce_sum(sums, kLossAndNormValues);
  return {.loss = sums[0] / double(comm_.world()),
          .norm = std::sqrt(stage_ == ZeroStage::zero1 ? sums[1] : squares),
          .stop = sums[2] > 0};
}

void DataParallel::gather_parameters() {
  if (stage_ == ZeroStage::zero0) return;
  NoGradGuard no_grad;
  const Device d = buffer_.device();
  void* base = buffer_.data_ptr();  // null on the meta device, where nothing moves
  const int64_t size = int64_t(dtype_size(gather_dtype_));
  for (const Bucket& b : buckets_) {
    pack(b, comm_.rank(), Source::parameters, int64_t(comm_.rank()) * b.segment);
    comm_.all_gather(base, b.segment * size, d);
    for (int r = 0; r < comm_.world(); ++r)
      if (r != comm_.rank()) unpack(b, r, Source::parameters, int64_t(r) * b.segment);
  }
}

}  // namespace tally::train
