// Data parallelism for a training step over the ranks of a process group. After backward (each rank's loss scaled
// by 1/world, so sums are averages) the gradients are summed over ranks: whole on every rank (ZeRO 0), or
// reduce-scattered so that each rank receives the sum of just the part of each tensor it steps (ZeRO 1; the cut is
// the optimizer's, optim::ShardCut). Then the global gradient norm for clipping, and after a ZeRO-1 step every
// rank's updated part is all-gathered into every rank's parameters. Tensors travel through one communication
// buffer (Category::workspace, owner "dist:bucket") in buckets of at most `bucket_bytes`, so a step makes a few
// collectives, not one per tensor; on the meta device the buffer is planned and nothing moves. Gradients are summed
// in the reduce dtype: f32 (bf16 ones widened: one rounding, after the sum) or bf16 (half the bytes; NCCL's bf16
// sum, each partial sum rounded, as llm.c's gradients are summed); parameters are gathered in their own dtype when
// they all share one (bf16 parameters as bf16: the same bits in half the bytes), else as f32.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dist/communicator.h"
#include "core/tensor.h"
#include "optim/optimizer.h"

namespace tally::train {

enum class ZeroStage : uint8_t {
  zero0,  // plain data parallelism: every rank keeps the whole optimizer state
  zero1,  // each rank keeps the state of its part of every parameter (optim::Optimizer::shard)
};

class DataParallel {
 public:
  static constexpr int64_t kDefaultBucketBytes = int64_t(32) << 20;

  // `optimizer` is sharded over `comm` for ZeRO 1 (by the caller, before this). `comm` must outlive this object.
  // `reduce_dtype`: f32 or bf16, what the gradients are summed in.
  DataParallel(dist::Communicator& comm, ZeroStage stage, const optim::Optimizer& optimizer,
               const std::vector<Tensor>& params, DType reduce_dtype = DType::f32,
               int64_t bucket_bytes = kDefaultBucketBytes);

  int world() const { return comm_.world(); }
  int rank() const { return comm_.rank(); }
  // Sums the gradients over the ranks (ZeRO 1: this rank's parts only are complete afterwards).
  void reduce_gradients();
  // After reduce_gradients, the squares this rank adds to the global gradient norm, added into `acc` (one f64
  // element on the device) and not read back: ZeRO 0 the whole summed gradient's (the same on every rank), ZeRO 1
  // its parts'.
  void add_grad_squares(Tensor& acc) const;
  // From this rank's loss and squares (read back from the device together) and whether it was asked to stop: the
  // mean loss over the ranks, the global gradient norm, and whether any rank was asked to stop, completed in one
  // collective of three numbers.
  struct LossAndNorm {
    double loss = 0, norm = 0;
    bool stop = false;
  };
  LossAndNorm loss_and_norm(double loss, double squares, bool stop);
  // ZeRO 1, after the optimizer step: every rank's updated parts into every rank's parameters. ZeRO 0: nothing.
  void gather_parameters();
  // What a step hands to the collectives (dist::Communicator::traffic counts what was handed), predicted from the
  // buckets: reduce_gradients with loss_and_norm (every step), and gather_parameters (a step that updates).
  dist::Traffic reduce_traffic() const { return reduce_traffic_; }
  dist::Traffic gather_traffic() const { return gather_traffic_; }

  // loss_and_norm's collective: three doubles (loss, squares, stop) every step.
  static constexpr int kLossAndNormValues = 3;
  static constexpr int64_t kLossAndNormBytes = kLossAndNormValues * int64_t(sizeof(double));

 private:
  struct Piece {
    Tensor param;     // the leaf (its .grad at step time)
    int64_t begin, end;  // element range within the parameter for the bucket's segment of one rank
  };
  // One collective: for ZeRO 0 one segment (every tensor whole); for ZeRO 1 one segment per rank, each holding that
  // rank's part of every tensor in the bucket, padded to the longest.
  struct Bucket {
    std::vector<std::vector<Piece>> segments;  // [rank][piece]; ZeRO 0: one segment
    int64_t segment = 0;                       // elements per segment
  };
  enum class Source { gradients, parameters };
  // One segment of a bucket between the tensors and the buffer, starting at element `at` of the buffer (in the
  // gradients' reduce_dtype_ or the parameters' gather_dtype_).
  void pack(const Bucket& b, int segment, Source from, int64_t at) const;
  void unpack(const Bucket& b, int segment, Source to, int64_t at) const;
  const Tensor& buffer_for(Source s) const { return s == Source::gradients ? reduce_buffer_ : gather_buffer_; }
  // The collectives on the buffer's gradients, in reduce_dtype_.
  void all_reduce(int64_t n);
  void reduce_scatter(int64_t segment);

  dist::Communicator& comm_;
  ZeroStage stage_;
  std::vector<Tensor> params_;
  std::vector<Bucket> buckets_;
  Tensor buffer_;  // f32, the largest bucket (in the larger of reduce_dtype_ and gather_dtype_), on the params' device
  DType reduce_dtype_ = DType::f32;  // f32 or bf16
  DType gather_dtype_ = DType::f32;  // the parameters' dtype when they all share one, else f32
  Tensor reduce_buffer_, gather_buffer_;  // buffer_'s bytes as reduce_dtype_ and (ZeRO 1) as gather_dtype_
  dist::Traffic reduce_traffic_, gather_traffic_;
};

}  // namespace tally::train
