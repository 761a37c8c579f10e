// CUDA emulation (see cuda_runtime.h here): the few NCCL entry points tally uses (core/dist/nccl.cu), for one
// machine. A communicator of one rank needs nothing else; one of several ranks is the processes of an mpirun on
// this machine, each with its emulated GPU, and its collectives are MPI's on the emulated device buffers (host
// memory): the ranks' values are summed (or their largest taken) in MPI's order, not NCCL's ring; bf16 values as NCCL
// adds them (widened, added in f32, rounded to the nearest bf16). The MPI world must be the communicator's ranks (tally
// exchanges the unique id over the whole of it). Each call checks its arguments and that it runs on tally's stream.
// Faults, to see what a rank does when a collective cannot finish: CUDA_EMU_NCCL_FAULT=<kind>:<rank>:<n> makes rank
// <rank>'s collectives after its first <n> do nothing and leaves its stream busy for ever (cudaStreamQuery: not
// ready), as a GPU waiting on a peer that has stopped; <kind> "stall" has NCCL see nothing, "error" has
// ncclCommGetAsyncError report ncclRemoteError. ncclCommAbort ends the stall.
#pragma once
#include <cstddef>

#include "cuda_runtime.h"

#define NCCL_UNIQUE_ID_BYTES 128
struct ncclUniqueId {
  char internal[NCCL_UNIQUE_ID_BYTES];
};
using ncclComm_t = struct ncclComm*;
enum ncclResult_t {
  ncclSuccess = 0,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclRemoteError = 6,
  ncclInProgress = 7
};
enum ncclDataType_t { ncclUint8 = 1, ncclFloat32 = 7, ncclFloat = 7, ncclFloat64 = 8, ncclBfloat16 = 9 };
enum ncclRedOp_t { ncclSum = 0, ncclMax = 2 };

ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error);
const char* ncclGetErrorString(ncclResult_t r);
const char* ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recv_count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void* send, void* recv, size_t send_count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream);
