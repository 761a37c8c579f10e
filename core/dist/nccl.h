// NCCL between the GPUs of a data-parallel run (one GPU per rank), for the MPI engine of mpi.cpp: collectives on
// CUDA buffers, in place, on the library's CUDA stream (ordered with the kernels around them, no host wait).
// Compiled when CUDA and NCCL are; the MPI engine makes the communicator on first use of a CUDA buffer, with the
// unique id rank 0 draws broadcast over MPI. While a communicator is open it watches the host's waits for the GPU
// (nccl.cu): a wait that NCCL reports failed, or that lasts longer than TALLY_NCCL_TIMEOUT_S (600 s unless set), aborts
// the communicator and throws, so that a rank whose peer has stopped exits with an error instead of hanging.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace tally::dist::nccl {

constexpr int kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
struct Comm;

void unique_id(char (&id)[kUniqueIdBytes]);
Comm* init(int rank, int world, const char (&id)[kUniqueIdBytes]);
void destroy(Comm* comm);
void all_reduce_sum(Comm* comm, float* data, int64_t n);
void all_reduce_sum(Comm* comm, double* data, int64_t n);
void all_reduce_sum(Comm* comm, bf16* data, int64_t n);  // NCCL's bf16 sum: each partial sum rounded to bf16
void all_reduce_max(Comm* comm, float* data, int64_t n);
void reduce_scatter_sum(Comm* comm, float* data, int64_t segment, int rank);
void reduce_scatter_sum(Comm* comm, bf16* data, int64_t segment, int rank);
void all_gather(Comm* comm, void* data, int64_t segment_bytes, int rank);  // moves bytes (any dtype)

}  // namespace tally::dist::nccl
