// CUDA emulation: NCCL's collectives for one machine (see include/nccl.h). One rank copies within its buffers; several
// ranks are an mpirun's processes and call MPI (built in only with TALLY_HAS_MPI).
#include <nccl.h>

#include <climits>
#include <cstring>
#include <random>
#include <string>

#ifdef TALLY_HAS_MPI
#include <mpi.h>
#endif

struct ncclComm {
  int rank = 0, nranks = 1;
};

namespace {

thread_local std::string last_error;

ncclResult_t refuse(ncclResult_t r, const std::string& why) {
  last_error = why;
  return r;
}

size_t element_bytes(ncclDataType_t t) { return t == ncclFloat64 ? 8 : 4; }

bool valid(ncclComm_t comm, size_t count, ncclDataType_t type, ncclRedOp_t op, cudaStream_t stream, const char* what) {
  tally_emu::check_stream(stream, what);
  if (count > size_t(INT_MAX)) return refuse(ncclInvalidArgument, std::string(what) + ": count beyond MPI's int"), false;
  if (!comm) return refuse(ncclInvalidArgument, std::string(what) + ": null communicator"), false;
  if (type != ncclFloat32 && type != ncclFloat64) return refuse(ncclInvalidArgument, std::string(what) + ": data type"), false;
  if (op != ncclSum) return refuse(ncclInvalidArgument, std::string(what) + ": reduction"), false;
  return true;
}

#ifdef TALLY_HAS_MPI
MPI_Datatype mpi_type(ncclDataType_t t) { return t == ncclFloat64 ? MPI_DOUBLE : MPI_FLOAT; }
ncclResult_t mpi_result(int code, const char* what) {
  return code == MPI_SUCCESS ? ncclSuccess : refuse(ncclSystemError, std::string(what) + ": MPI error " + std::to_string(code));
}
#endif

}  // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return refuse(ncclInvalidArgument, "ncclGetUniqueId: null id");
  std::random_device rd;
  for (char& c : id->internal) c = char(rd());
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId, int rank) {
  if (!comm || nranks < 1 || rank < 0 || rank >= nranks)
    return refuse(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " of " + std::to_string(nranks));
  if (nranks > 1) {
#ifdef TALLY_HAS_MPI
    int initialized = 0, size = 0, mine = -1;
    MPI_Initialized(&initialized);
    if (initialized) MPI_Comm_size(MPI_COMM_WORLD, &size), MPI_Comm_rank(MPI_COMM_WORLD, &mine);
    if (size != nranks || mine != rank)
      return refuse(ncclInvalidArgument, "ncclCommInitRank: the emulator's ranks are MPI_COMM_WORLD's (size " +
                                             std::to_string(size) + ")");
#else
    return refuse(ncclInvalidArgument, "ncclCommInitRank: several ranks need the emulator built with MPI");
#endif
  }
  *comm = new ncclComm{rank, nranks};
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
  }
  return "unknown result";
}

const char* ncclGetLastError(ncclComm_t) { return last_error.c_str(); }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm, count, type, op, stream, "ncclAllReduce")) return ncclInvalidArgument;
  if (comm->nranks == 1) {
    if (send != recv) std::memmove(recv, send, count * element_bytes(type));
    return ncclSuccess;
  }
#ifdef TALLY_HAS_MPI
  return mpi_result(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, int(count), mpi_type(type), MPI_SUM,
                                  MPI_COMM_WORLD),
                    "ncclAllReduce");
#else
  return ncclInternalError;
#endif
}

// recv holds recv_count elements: the sum over ranks of segment `rank` of send (nranks segments).
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recv_count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm, recv_count, type, op, stream, "ncclReduceScatter")) return ncclInvalidArgument;
  const size_t bytes = recv_count * element_bytes(type);
  const char* own = static_cast<const char*>(send) + size_t(comm->rank) * bytes;
  if (comm->nranks == 1) {
    if (own != recv) std::memmove(recv, own, bytes);
    return ncclSuccess;
  }
#ifdef TALLY_HAS_MPI
  if (own == recv) {  // NCCL's in-place form (recv is this rank's segment of send); MPI's leaves the sum at the start
    const int code = MPI_Reduce_scatter_block(MPI_IN_PLACE, const_cast<void*>(send), int(recv_count), mpi_type(type),
                                              MPI_SUM, MPI_COMM_WORLD);
    if (code == MPI_SUCCESS) std::memmove(recv, send, bytes);
    return mpi_result(code, "ncclReduceScatter");
  }
  return mpi_result(MPI_Reduce_scatter_block(send, recv, int(recv_count), mpi_type(type), MPI_SUM, MPI_COMM_WORLD),
                    "ncclReduceScatter");
#else
  return ncclInternalError;
#endif
}

// recv holds nranks segments of send_count elements: segment k is rank k's send.
ncclResult_t ncclAllGather(const void* send, void* recv, size_t send_count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
  if (!valid(comm, send_count, type, ncclSum, stream, "ncclAllGather")) return ncclInvalidArgument;
  const size_t bytes = send_count * element_bytes(type);
  char* own = static_cast<char*>(recv) + size_t(comm->rank) * bytes;
  if (comm->nranks == 1) {
    if (own != send) std::memmove(own, send, bytes);
    return ncclSuccess;
  }
#ifdef TALLY_HAS_MPI
  return mpi_result(MPI_Allgather(own == send ? MPI_IN_PLACE : send, int(send_count), mpi_type(type), recv,
                                  int(send_count), mpi_type(type), MPI_COMM_WORLD),
                    "ncclAllGather");
#else
  return ncclInternalError;
#endif
}
