// NCCL collectives on CUDA buffers (see nccl.h). Every call is checked; an error names the collective and NCCL's
// reason.
#ifdef TALLY_HAS_NCCL
#include <nccl.h>

#include <cstring>

#include "core/cuda/common.cuh"
#include "core/dist/nccl.h"
#include "core/error.h"

namespace tally::dist::nccl {

static_assert(kUniqueIdBytes == NCCL_UNIQUE_ID_BYTES);

struct Comm {
  ncclComm_t comm = nullptr;
};

namespace {

void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) fail("[nccl] ", what, ": ", ncclGetErrorString(r), " (", ncclGetLastError(nullptr), ")");
}

}  // namespace

void unique_id(char (&id)[kUniqueIdBytes]) {
  ncclUniqueId u;
  check(ncclGetUniqueId(&u), "ncclGetUniqueId");
  std::memcpy(id, u.internal, kUniqueIdBytes);
}

Comm* init(int rank, int world, const char (&id)[kUniqueIdBytes]) {
  ncclUniqueId u;
  std::memcpy(u.internal, id, kUniqueIdBytes);
  auto* c = new Comm;
  const ncclResult_t r = ncclCommInitRank(&c->comm, world, u, rank);
  if (r != ncclSuccess) {
    delete c;
    check(r, "ncclCommInitRank");
  }
  return c;
}

void destroy(Comm* c) {
  if (!c) return;
  (void)ncclCommDestroy(c->comm);
  delete c;
}

void all_reduce_sum(Comm* c, float* data, int64_t n) {
  check(ncclAllReduce(data, data, size_t(n), ncclFloat32, ncclSum, c->comm, cuda::stream()), "ncclAllReduce");
}

void all_reduce_sum(Comm* c, double* data, int64_t n) {
  check(ncclAllReduce(data, data, size_t(n), ncclFloat64, ncclSum, c->comm, cuda::stream()), "ncclAllReduce (f64)");
}

void reduce_scatter_sum(Comm* c, float* data, int64_t segment, int rank) {
  // In place: the result lands in this rank's own segment of the send buffer.
  check(ncclReduceScatter(data, data + int64_t(rank) * segment, size_t(segment), ncclFloat32, ncclSum, c->comm,
                          cuda::stream()),
        "ncclReduceScatter");
}

void all_gather(Comm* c, float* data, int64_t segment, int rank) {
  check(ncclAllGather(data + int64_t(rank) * segment, data, size_t(segment), ncclFloat32, c->comm, cuda::stream()),
        "ncclAllGather");
}

}  // namespace tally::dist::nccl
#endif
