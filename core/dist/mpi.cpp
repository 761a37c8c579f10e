// The MPI engine (see communicator.h): OpenMPI between processes for host buffers, NCCL for CUDA buffers when built
// with it. MPI errors are returned, not fatal, and become tally::Error naming the collective; MPI is initialised
// with funnelled threads (OpenMP loops never call it) and finalised at exit.
#ifdef TALLY_HAS_MPI
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <type_traits>

#include "core/dist/communicator.h"
#include "core/error.h"

#ifdef TALLY_HAS_NCCL
#include "core/dist/nccl.h"
#endif

namespace tally::dist {

namespace {

void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, text, &len);
  fail("[mpi] ", what, " failed: ", std::string(text, size_t(len)));
}

// MPI counts are ints: larger buffers go in pieces.
constexpr int64_t kMaxCount = int64_t(1) << 30;

// MPI has no bf16: its sum as NCCL computes it, elementwise over 16-bit words (inout[i] = in[i] + inout[i]).
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const bf16*>(in);
  auto* b = static_cast<bf16*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = bf16_add(a[i], b[i]);
}

class Mpi final : public Communicator {
 public:
  static std::unique_ptr<Communicator> make() {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    int rank = 0, world = 1, local = 0;
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &world), "MPI_Comm_size");
    MPI_Comm node;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
    check(MPI_Comm_rank(node, &local), "MPI_Comm_rank");
    int first = rank;  // the machine's first rank (its ranks are ordered by world rank): names the machine
    check(MPI_Bcast(&first, 1, MPI_INT, 0, node), "MPI_Bcast");
    MPI_Comm_free(&node);
    auto mpi = std::unique_ptr<Mpi>(new Mpi(rank, world, local, first));
    check(MPI_Op_create(bf16_sum, 1, &mpi->bf16_sum_), "MPI_Op_create");
    return mpi;
  }

  ~Mpi() override {
#ifdef TALLY_HAS_NCCL
    nccl::destroy(nccl_);
#endif
    if (bf16_sum_ != MPI_OP_NULL) MPI_Op_free(&bf16_sum_);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }

  std::string engine() const override {
#ifdef TALLY_HAS_NCCL
    return "mpi+nccl";
#else
    return "mpi";
#endif
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);  // MPI_Abort does not return; in case an implementation does
  }

 protected:
  void do_all_reduce_sum(float* data, int64_t n, Device device) override {
    all_reduce(data, n, device, MPI_FLOAT, MPI_SUM);
  }
  void do_all_reduce_sum(double* data, int64_t n, Device device) override {
    all_reduce(data, n, device, MPI_DOUBLE, MPI_SUM);
  }
  void do_all_reduce_sum(bf16* data, int64_t n, Device device) override {
    all_reduce(data, n, device, MPI_UINT16_T, bf16_sum_);
  }
  void do_all_reduce_max(float* data, int64_t n, Device device) override {
    all_reduce(data, n, device, MPI_FLOAT, MPI_MAX);
  }

  void do_reduce_scatter_sum(float* data, int64_t segment, Device device) override {
    reduce_scatter(data, segment, device, MPI_FLOAT, MPI_SUM);
  }
  void do_reduce_scatter_sum(bf16* data, int64_t segment, Device device) override {
    reduce_scatter(data, segment, device, MPI_UINT16_T, bf16_sum_);
  }

  void do_all_gather(void* data, int64_t segment_bytes, Device device) override {
    if (device.is_meta() || segment_bytes == 0) return;
    if (device.is_cuda()) {
#ifdef TALLY_HAS_NCCL
      nccl::all_gather(nccl_comm(), data, segment_bytes, rank());
      return;
#else
      fail("[mpi] all_gather of a CUDA buffer needs NCCL: this build has none");
#endif
    }
    TALLY_CHECK(segment_bytes <= INT_MAX, "[mpi] all_gather: a segment of ", segment_bytes,
                " bytes is over MPI's limit");
    check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, int(segment_bytes), MPI_BYTE, MPI_COMM_WORLD),
          "MPI_Allgather");
  }

  void do_broadcast(void* data, int64_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    for (int64_t at = 0; at < bytes; at += kMaxCount)
      check(MPI_Bcast(p + at, int(std::min(kMaxCount, bytes - at)), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
  }

  void do_barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

 private:
  // Segment rank() of `data` (world() segments of T, f32 or bf16) := the sum over ranks of their segment rank():
  // MPI's on the host (`type`, `op`), NCCL's on a CUDA buffer.
  template <class T>
  void reduce_scatter(T* data, int64_t segment, Device device, MPI_Datatype type, MPI_Op op) {
    if (device.is_meta() || segment == 0) return;
    if (device.is_cuda()) {
#ifdef TALLY_HAS_NCCL
      nccl::reduce_scatter_sum(nccl_comm(), data, segment, rank());
      return;
#else
      fail("[mpi] reduce_scatter_sum of a CUDA buffer needs NCCL: this build has none");
#endif
    }
    TALLY_CHECK(segment <= INT_MAX, "[mpi] reduce_scatter_sum: a segment of ", segment,
                " elements is over MPI's limit");
    // In place, MPI leaves the result at the start of the buffer: move it to this rank's segment.
    check(MPI_Reduce_scatter_block(MPI_IN_PLACE, data, int(segment), type, op, MPI_COMM_WORLD),
          "MPI_Reduce_scatter_block");
    if (rank() > 0) std::memmove(data + int64_t(rank()) * segment, data, size_t(segment) * sizeof(T));
  }

  // In place over the ranks: f32 with `op` MPI_SUM or MPI_MAX, f64 with MPI_SUM, or bf16 with bf16_sum_ (`type`
  // T's MPI type). MPI's on the host, NCCL's on a CUDA buffer.
  template <class T>
  void all_reduce(T* data, int64_t n, Device device, MPI_Datatype type, MPI_Op op) {
    if (device.is_meta() || n == 0) return;
    if (device.is_cuda()) {
#ifdef TALLY_HAS_NCCL
      if constexpr (std::is_same_v<T, float>)
        if (op == MPI_MAX) return nccl::all_reduce_max(nccl_comm(), data, n);
      nccl::all_reduce_sum(nccl_comm(), data, n);
      return;
#else
      fail("[mpi] all_reduce_", op == MPI_MAX ? "max" : "sum", " of a CUDA buffer needs NCCL: this build has none");
#endif
    }
    for (int64_t at = 0; at < n; at += kMaxCount)
      check(MPI_Allreduce(MPI_IN_PLACE, data + at, int(std::min(kMaxCount, n - at)), type, op, MPI_COMM_WORLD),
            "MPI_Allreduce");
  }

  Mpi(int rank, int world, int local, int node) : Communicator(rank, world, local, node) {}
  MPI_Op bf16_sum_ = MPI_OP_NULL;

#ifdef TALLY_HAS_NCCL
  // Made on the first CUDA collective (every rank reaches it together): rank 0's id, broadcast over MPI (once, not
  // counted in traffic(): it belongs to no step).
  nccl::Comm* nccl_comm() {
    if (!nccl_) {
      char id[nccl::kUniqueIdBytes] = {};
      if (rank() == 0) nccl::unique_id(id);
      do_broadcast(id, sizeof id, 0);
      nccl_ = nccl::init(rank(), world(), id);
    }
    return nccl_;
  }
  nccl::Comm* nccl_ = nullptr;
#endif
};

}  // namespace

std::unique_ptr<Communicator> make_mpi() { return Mpi::make(); }

}  // namespace tally::dist
#endif
