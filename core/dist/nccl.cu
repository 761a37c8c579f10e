// NCCL collectives on CUDA buffers (see nccl.h). Every call is checked; an error names the collective and NCCL's
// reason.
#ifdef TALLY_HAS_NCCL
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "core/cuda/common.cuh"
#include "core/cuda/runtime.h"
#include "core/dist/communicator.h"
#include "core/dist/nccl.h"
#include "core/error.h"

namespace tally::dist::nccl {

static_assert(kUniqueIdBytes == NCCL_UNIQUE_ID_BYTES);

namespace {

// The watch over the host's waits for the GPU while a communicator is open (see WaitWatch in core/cuda/runtime.h).
// A wait is given up on NCCL's asynchronous error (a peer unreachable, a network failure: the collective will never
// end) or when it has lasted longer than TALLY_NCCL_TIMEOUT_S (a rank that stopped without an error NCCL can see);
// the communicator is then aborted, which ends its kernels, and the wait throws. The watch is asked once a
// millisecond while the host waits, never while it works.
class Watch final : public cuda::WaitWatch {
 public:
  Watch(ncclComm_t comm, double timeout_seconds) : comm_(comm), timeout_(timeout_seconds) {}

  std::string verdict(double waited_seconds) override {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &async);
    if (r != ncclSuccess) return cat("ncclCommGetAsyncError failed: ", ncclGetErrorString(r));
    if (async != ncclSuccess && async != ncclInProgress)
      return cat("NCCL reported ", ncclGetErrorString(async), " (", ncclGetLastError(comm_),
                 "): a collective between the ranks cannot finish");
    if (timeout_ > 0 && waited_seconds > timeout_)
      return cat("no end after ", waited_seconds, " s (TALLY_NCCL_TIMEOUT_S=", timeout_,
                 "): another rank has stopped or is stuck, and this rank's collectives cannot finish without it");
    return {};
  }

  void cancel() override {
    aborted = true;
    (void)ncclCommAbort(comm_);
  }

  bool aborted = false;

 private:
  ncclComm_t comm_;
  double timeout_;
};

}  // namespace

struct Comm {
  ncclComm_t comm = nullptr;
  std::unique_ptr<Watch> watch;
};

namespace {

void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) fail("[nccl] ", what, ": ", ncclGetErrorString(r), " (", ncclGetLastError(nullptr), ")");
}

// The communicator of a collective: refused once a wait gave up on it (aborted, it is gone).
ncclComm_t live(Comm* c, const char* what) {
  TALLY_CHECK(!c->watch->aborted, "[nccl] ", what, ": the communicator was aborted when a wait for the GPU gave up");
  return c->comm;
}

}  // namespace

void unique_id(char (&id)[kUniqueIdBytes]) {
  ncclUniqueId u;
  check(ncclGetUniqueId(&u), "ncclGetUniqueId");
  std::memcpy(id, u.internal, kUniqueIdBytes);
}

Comm* init(int rank, int world, const char (&id)[kUniqueIdBytes]) {
  const double timeout = nccl_timeout_seconds(std::getenv("TALLY_NCCL_TIMEOUT_S"));  // refused before NCCL starts
  ncclUniqueId u;
  std::memcpy(u.internal, id, kUniqueIdBytes);
  auto c = std::make_unique<Comm>();
  check(ncclCommInitRank(&c->comm, world, u, rank), "ncclCommInitRank");
  c->watch = std::make_unique<Watch>(c->comm, timeout);
  cuda::set_wait_watch(c->watch.get());
  return c.release();
}

void destroy(Comm* c) {
  if (!c) return;
  if (cuda::wait_watch() == c->watch.get()) cuda::set_wait_watch(nullptr);
  if (!c->watch->aborted) (void)ncclCommDestroy(c->comm);
  delete c;
}

void all_reduce_sum(Comm* c, float* data, int64_t n) {
  check(ncclAllReduce(data, data, size_t(n), ncclFloat32, ncclSum, live(c, "ncclAllReduce"), cuda::stream()),
        "ncclAllReduce");
}

void all_reduce_sum(Comm* c, double* data, int64_t n) {
  check(ncclAllReduce(data, data, size_t(n), ncclFloat64, ncclSum, live(c, "ncclAllReduce"), cuda::stream()),
        "ncclAllReduce (f64)");
}

void all_reduce_sum(Comm* c, bf16* data, int64_t n) {
  check(ncclAllReduce(data, data, size_t(n), ncclBfloat16, ncclSum, live(c, "ncclAllReduce"), cuda::stream()),
        "ncclAllReduce (bf16)");
}

void all_reduce_max(Comm* c, float* data, int64_t n) {
  check(ncclAllReduce(data, data, size_t(n), ncclFloat32, ncclMax, live(c, "ncclAllReduce"), cuda::stream()),
        "ncclAllReduce (max)");
}

void reduce_scatter_sum(Comm* c, float* data, int64_t segment, int rank) {
  // In place: the result lands in this rank's own segment of the send buffer.
  check(ncclReduceScatter(data, data + int64_t(rank) * segment, size_t(segment), ncclFloat32, ncclSum,
                          live(c, "ncclReduceScatter"), cuda::stream()),
        "ncclReduceScatter");
}

void reduce_scatter_sum(Comm* c, bf16* data, int64_t segment, int rank) {
  check(ncclReduceScatter(data, data + int64_t(rank) * segment, size_t(segment), ncclBfloat16, ncclSum,
                          live(c, "ncclReduceScatter"), cuda::stream()),
        "ncclReduceScatter (bf16)");
}

void all_gather(Comm* c, void* data, int64_t segment_bytes, int rank) {
  char* bytes = static_cast<char*>(data);
  check(ncclAllGather(bytes + int64_t(rank) * segment_bytes, bytes, size_t(segment_bytes), ncclUint8,
                      live(c, "ncclAllGather"), cuda::stream()),
        "ncclAllGather");
}

}  // namespace tally::dist::nccl
#endif
