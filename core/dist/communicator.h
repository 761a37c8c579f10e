// Collectives between the processes of a data-parallel run, over existing engines: MPI between processes (CPU
// buffers), NCCL between GPUs (CUDA buffers; its id exchanged over MPI). One process alone needs neither: its
// communicator copies nothing. Every call is collective: all ranks make it, in the same order, with the same sizes.
// A failure (a rank gone, an engine error) is a tally::Error naming the collective; MPI aborts the whole job when a
// rank dies, so no rank waits forever.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"

namespace tally::dist {

// What a process handed to the collectives: how many calls, and the bytes of their buffers (whole buffers: the
// world() segments of a reduce-scatter or an all-gather).
struct Traffic {
  int64_t collectives = 0;
  int64_t bytes = 0;
  Traffic& operator+=(const Traffic& o) {
    collectives += o.collectives;
    bytes += o.bytes;
    return *this;
  }
  friend Traffic operator+(Traffic a, const Traffic& b) { return a += b; }
  friend Traffic operator-(const Traffic& a, const Traffic& b) {
    return {a.collectives - b.collectives, a.bytes - b.bytes};
  }
  friend Traffic operator*(int64_t k, const Traffic& t) { return {k * t.collectives, k * t.bytes}; }
  bool operator==(const Traffic&) const = default;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }  // among the ranks of this machine: the GPU a rank uses
  int node() const { return node_; }              // this machine: the world rank of its first rank
  virtual std::string engine() const = 0;         // "single process", "mpi", "mpi+nccl"

  // In place: data[i] = sum over ranks of data[i]. f32 on `device` (a CUDA buffer goes through NCCL), f64 on the
  // host. The ranks' contributions are added in an order fixed by the engine for a given world, so a rerun gives
  // the same bits.
  void all_reduce_sum(float* data, int64_t n, Device device);
  void all_reduce_sum(double* data, int64_t n) { all_reduce_sum(data, n, Device::cpu()); }
  // bf16 on `device`, added as NCCL adds bf16: two values widened, added in f32 and rounded to the nearest bf16, so
  // every partial sum is rounded (gradients summed in half the bytes, at that cost). MPI, which has no bf16, runs
  // the same addition as its own reduction.
  void all_reduce_sum(bf16* data, int64_t n, Device device);
  // f64 on `device`: the host's (as above) or a CUDA buffer's (NCCL, on tally's stream: no host wait), for the
  // optimizer kernels' cross-rank sums of a ZeRO-1 step on GPUs.
  void all_reduce_sum(double* data, int64_t n, Device device);
  // In place: data[i] = the largest over ranks of data[i]. f32 on `device` (a CUDA buffer goes through NCCL): SM3's
  // accumulators under ZeRO 1. Exact in any order.
  void all_reduce_max(float* data, int64_t n, Device device);
  // `data` holds world() segments of `segment` elements, f32 or bf16 (added as all_reduce_sum adds bf16). Afterwards
  // segment rank() holds, element by element, the sum over ranks of their segment rank(); the other segments are
  // left undefined.
  void reduce_scatter_sum(float* data, int64_t segment, Device device);
  void reduce_scatter_sum(bf16* data, int64_t segment, Device device);
  // `data` holds world() segments of `segment_bytes` bytes, segment rank() this rank's. Afterwards every segment k
  // holds rank k's. It moves bytes: the elements may be of any dtype (bf16 parameters travel as bf16).
  void all_gather(void* data, int64_t segment_bytes, Device device);
  // Host bytes from `root` to every rank.
  void broadcast(void* data, int64_t bytes, int root);
  void barrier();
  // Ends the whole job at once (every rank), after this rank's error was printed: used when one rank fails.
  [[noreturn]] virtual void abort(int code) = 0;

  // Every rank's value of `x` (host), in rank order.
  std::vector<uint64_t> all_gather_u64(uint64_t x);

  // Every collective called so far, whatever it carried (gradients, parameters, an optimizer's statistics, the
  // loss): counted here, for the log and the benchmarks to set beside the plan (DataParallel's and the optimizer's
  // traffic_per_step). Counted as handed: on the meta device too, where nothing moves.
  Traffic traffic() const { return traffic_; }

 protected:
  Communicator(int rank, int world, int local_rank, int node = 0)
      : rank_(rank), world_(world), local_rank_(local_rank), node_(node) {}
  // What each engine provides: the collectives above, uncounted.
  virtual void do_all_reduce_sum(float* data, int64_t n, Device device) = 0;
  virtual void do_all_reduce_sum(double* data, int64_t n, Device device) = 0;
  virtual void do_all_reduce_sum(bf16* data, int64_t n, Device device) = 0;
  virtual void do_all_reduce_max(float* data, int64_t n, Device device) = 0;
  virtual void do_reduce_scatter_sum(float* data, int64_t segment, Device device) = 0;
  virtual void do_reduce_scatter_sum(bf16* data, int64_t segment, Device device) = 0;
  virtual void do_all_gather(void* data, int64_t segment_bytes, Device device) = 0;
  virtual void do_broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void do_barrier() = 0;

 private:
  void count(int64_t bytes) { traffic_ += {1, bytes}; }
  int rank_, world_, local_rank_, node_;
  Traffic traffic_;
};

// Whether this process was started by an MPI launcher (mpirun, srun): OMPI_COMM_WORLD_SIZE, PMI_SIZE or
// PMIX_RANK in the environment.
bool launched_by_mpi();
// This process's rank as the launcher's environment gives it (OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK), read
// without starting MPI: 0 when not launched by one (or when none of them holds a rank).
int launcher_rank();

// The CPU threads this rank computes with when none were asked for: the CPUs it may run on (its affinity mask, which
// OpenMP's default thread count counts) shared out among the ranks of its machine that may run on any of them (the
// first ranks one more when they do not divide). mpirun binds a rank to a core (OpenMPI, 2 ranks or fewer), to a
// socket (more ranks) or to nothing (--bind-to none, --oversubscribe): without this, each rank bound to a socket or to
// nothing would start one thread per CPU of the socket or of the machine. 0 when the affinity cannot be read. A
// collective (one all-gather of each rank's machine and mask).
int shared_cpu_threads(Communicator& comm);

// What shared_cpu_threads gathers of each rank: its machine and the CPUs it may run on.
struct RankCpus {
  static constexpr int kWords = 1024 / 64;  // CPU_SETSIZE bits
  int64_t node = 0;                         // Communicator::node()
  int64_t readable = 0;                     // 0: the affinity mask could not be read (the rank is left out)
  uint64_t mask[kWords] = {};               // bit c: CPU c
};
// shared_cpu_threads's share for rank `rank` of `all` (one entry per rank): its CPUs divided among the ranks of its
// machine whose masks overlap its own (itself included), the lower ranks first to take one more; at least 1; 0 when
// its own mask is unreadable or empty.
int cpu_share(std::span<const RankCpus> all, int rank);

// The communicator of this process, made on first use: MPI when launched by one (a build without MPI then refuses
// with a clear error), else the single-process one. MPI is finalised at exit.
Communicator& process_group();

// How long a rank waits for its GPU while an NCCL communicator is open before it gives up: a rank that has stopped
// leaves the others' collectives unfinished, and NCCL's kernels would wait for it forever. The value of
// TALLY_NCCL_TIMEOUT_S (`value`; nullptr or empty: unset), in seconds: default kNcclTimeoutSeconds, 0 for no limit;
// anything else than a number >= 0 is refused with an error naming the variable.
inline constexpr double kNcclTimeoutSeconds = 600;
double nccl_timeout_seconds(const char* value);

// A communicator of one rank that moves nothing (a single process, or the meta device's plan of a rank of
// `world`: the same buffers are allocated, nothing is sent).
std::unique_ptr<Communicator> single_process(int rank = 0, int world = 1);

}  // namespace tally::dist
