// CUDA emulation: NCCL's collectives for one machine (see include/nccl.h). One rank copies within its buffers; several
// ranks are an mpirun's processes and call MPI (built in only with TALLY_HAS_MPI).
#include <nccl.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#ifdef TALLY_HAS_MPI
#include <mpi.h>
#endif

#include "core/dtype.h"

struct ncclComm {
  int rank = 0, nranks = 1;
  int collectives = 0;       // made so far
  int fault_after = -1;      // an injected fault's <n> (CUDA_EMU_NCCL_FAULT), -1: none on this rank
  bool fault_error = false;  // the fault's kind: "error" (reported) or "stall" (silent)
  bool faulted = false;      // the fault has begun
};

namespace {

thread_local std::string last_error;

ncclResult_t refuse(ncclResult_t r, const std::string& why) {
  last_error = why;
  return r;
}

size_t element_bytes(ncclDataType_t t) { return t == ncclFloat64 ? 8 : t == ncclUint8 ? 1 : t == ncclBfloat16 ? 2 : 4; }

bool valid(ncclComm_t comm, size_t count, ncclDataType_t type, ncclRedOp_t op, cudaStream_t stream, const char* what) {
  tally_emu::check_stream(stream, what);
  if (count > size_t(INT_MAX)) return refuse(ncclInvalidArgument, std::string(what) + ": count beyond MPI's int"), false;
  if (!comm) return refuse(ncclInvalidArgument, std::string(what) + ": null communicator"), false;
  if (type != ncclFloat32 && type != ncclFloat64 && type != ncclUint8 && type != ncclBfloat16)
    return refuse(ncclInvalidArgument, std::string(what) + ": data type"), false;
  if (type == ncclBfloat16 && op != ncclSum)
    return refuse(ncclInvalidArgument, std::string(what) + ": bf16 sums only"), false;
  if (op != ncclSum && op != ncclMax) return refuse(ncclInvalidArgument, std::string(what) + ": reduction"), false;
  return true;
}

// CUDA_EMU_NCCL_FAULT=<kind>:<rank>:<n> (see nccl.h), for `comm`'s rank.
void read_fault(ncclComm& comm) {
  const char* e = std::getenv("CUDA_EMU_NCCL_FAULT");
  if (!e || !*e) return;
  char kind[16] = {};
  int rank = -1, after = -1;
  if (std::sscanf(e, "%15[a-z]:%d:%d", kind, &rank, &after) != 3 || after < 0 ||
      (std::strcmp(kind, "stall") != 0 && std::strcmp(kind, "error") != 0)) {
    std::fprintf(stderr, "cuda_emu: CUDA_EMU_NCCL_FAULT must be stall:<rank>:<n> or error:<rank>:<n>, got '%s'\n", e);
    std::abort();
  }
  if (rank != comm.rank) return;
  comm.fault_after = after;
  comm.fault_error = std::strcmp(kind, "error") == 0;
}

// Whether this collective is lost to the injected fault: its data stays as it was and the stream stays busy.
bool lost(ncclComm& comm) {
  if (comm.faulted) return true;
  if (comm.fault_after < 0 || comm.collectives++ < comm.fault_after) return false;
  comm.faulted = true;
  tally_emu::set_stream_stalled(true);
  std::fprintf(stderr, "cuda_emu: rank %d: injected NCCL fault (%s): collectives no longer finish\n", comm.rank,
               comm.fault_error ? "error" : "stall");
  return true;
}

#ifdef TALLY_HAS_MPI
MPI_Datatype mpi_type(ncclDataType_t t) {
  return t == ncclFloat64 ? MPI_DOUBLE : t == ncclUint8 ? MPI_BYTE : t == ncclBfloat16 ? MPI_UINT16_T : MPI_FLOAT;
}
// MPI has no bf16: its sum as NCCL's (inout[i] = in[i] + inout[i]).
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const tally::bf16*>(in);
  auto* b = static_cast<tally::bf16*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = tally::bf16_add(a[i], b[i]);
}
MPI_Op mpi_op(ncclDataType_t t, ncclRedOp_t op) {
  if (t == ncclBfloat16) {
    static MPI_Op sum = [] {
      MPI_Op o = MPI_OP_NULL;
      MPI_Op_create(bf16_sum, 1, &o);
      return o;
    }();
    return sum;
  }
  return op == ncclMax ? MPI_MAX : MPI_SUM;
}
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
  *comm = new ncclComm{.rank = rank, .nranks = nranks};
  read_fault(**comm);
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm && comm->faulted) tally_emu::set_stream_stalled(false);  // the aborted collectives' kernels end
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (!comm || !async_error) return refuse(ncclInvalidArgument, "ncclCommGetAsyncError: null argument");
  *async_error = comm->faulted && comm->fault_error ? ncclRemoteError : ncclSuccess;
  if (*async_error != ncclSuccess) last_error = "emulated: a remote rank stopped (CUDA_EMU_NCCL_FAULT)";
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result";
}

const char* ncclGetLastError(ncclComm_t) { return last_error.c_str(); }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm, count, type, op, stream, "ncclAllReduce")) return ncclInvalidArgument;
  if (type == ncclUint8) return refuse(ncclInvalidArgument, "ncclAllReduce: the emulator reduces floats only");
  if (lost(*comm)) return ncclSuccess;
  if (comm->nranks == 1) {
    if (send != recv) std::memmove(recv, send, count * element_bytes(type));
    return ncclSuccess;
  }
#ifdef TALLY_HAS_MPI
  return mpi_result(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, int(count), mpi_type(type),
                                  mpi_op(type, op), MPI_COMM_WORLD),
                    "ncclAllReduce");
#else
  return ncclInternalError;
#endif
}

// recv holds recv_count elements: the sum over ranks of segment `rank` of send (nranks segments).
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recv_count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm, recv_count, type, op, stream, "ncclReduceScatter")) return ncclInvalidArgument;
  if (type == ncclUint8) return refuse(ncclInvalidArgument, "ncclReduceScatter: the emulator reduces floats only");
  if (op != ncclSum) return refuse(ncclInvalidArgument, "ncclReduceScatter: the emulator sums only");
  if (lost(*comm)) return ncclSuccess;
  const size_t bytes = recv_count * element_bytes(type);
  const char* own = static_cast<const char*>(send) + size_t(comm->rank) * bytes;
  if (comm->nranks == 1) {
    if (own != recv) std::memmove(recv, own, bytes);
    return ncclSuccess;
  }
#ifdef TALLY_HAS_MPI
  if (own == recv) {  // NCCL's in-place form (recv is this rank's segment of send); MPI's leaves the sum at the start
    const int code = MPI_Reduce_scatter_block(MPI_IN_PLACE, const_cast<void*>(send), int(recv_count), mpi_type(type),
                                              mpi_op(type, ncclSum), MPI_COMM_WORLD);
    if (code == MPI_SUCCESS) std::memmove(recv, send, bytes);
    return mpi_result(code, "ncclReduceScatter");
  }
  return mpi_result(
      MPI_Reduce_scatter_block(send, recv, int(recv_count), mpi_type(type), mpi_op(type, ncclSum), MPI_COMM_WORLD),
      "ncclReduceScatter");
#else
  return ncclInternalError;
#endif
}

// recv holds nranks segments of send_count elements: segment k is rank k's send.
ncclResult_t ncclAllGather(const void* send, void* recv, size_t send_count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
  if (!valid(comm, send_count, type, ncclSum, stream, "ncclAllGather")) return ncclInvalidArgument;
  if (lost(*comm)) return ncclSuccess;
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
