// The single-process communicator, the launcher check and the process group (see communicator.h). The MPI and
// NCCL engines are in mpi.cpp.
#include "core/dist/communicator.h"

#include <sched.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/parse.h"

namespace tally::dist {

namespace {

// One rank moves nothing: every collective is already complete. On the meta device it stands for rank `rank` of
// `world` (the plan allocates that rank's buffers).
class SingleProcess final : public Communicator {
 public:
  SingleProcess(int rank, int world) : Communicator(rank, world, 0) {}
  std::string engine() const override { return "single process"; }
  [[noreturn]] void abort(int code) override { std::exit(code); }

 protected:
  void do_all_reduce_sum(float*, int64_t, Device) override {}
  void do_all_reduce_sum(double*, int64_t, Device) override {}
  void do_all_reduce_sum(bf16*, int64_t, Device) override {}
  void do_all_reduce_max(float*, int64_t, Device) override {}
  void do_reduce_scatter_sum(float*, int64_t, Device) override {}
  void do_reduce_scatter_sum(bf16*, int64_t, Device) override {}
  void do_all_gather(void*, int64_t, Device) override {}
  void do_broadcast(void*, int64_t, int) override {}
  void do_barrier() override {}
};

}  // namespace

// Each collective counted, then handed to the engine.
void Communicator::all_reduce_sum(float* data, int64_t n, Device device) {
  count(4 * n);
  do_all_reduce_sum(data, n, device);
}

void Communicator::all_reduce_sum(bf16* data, int64_t n, Device device) {
  count(2 * n);
  do_all_reduce_sum(data, n, device);
}

void Communicator::all_reduce_sum(double* data, int64_t n, Device device) {
  count(8 * n);
  do_all_reduce_sum(data, n, device);
}

void Communicator::all_reduce_max(float* data, int64_t n, Device device) {
  count(4 * n);
  do_all_reduce_max(data, n, device);
}

void Communicator::reduce_scatter_sum(float* data, int64_t segment, Device device) {
  count(4 * segment * world());
  do_reduce_scatter_sum(data, segment, device);
}

void Communicator::reduce_scatter_sum(bf16* data, int64_t segment, Device device) {
  count(2 * segment * world());
  do_reduce_scatter_sum(data, segment, device);
}

void Communicator::all_gather(void* data, int64_t segment_bytes, Device device) {
  count(segment_bytes * world());
  do_all_gather(data, segment_bytes, device);
}

void Communicator::broadcast(void* data, int64_t bytes, int root) {
  count(bytes);
  do_broadcast(data, bytes, root);
}

void Communicator::barrier() {
  count(0);
  do_barrier();
}

std::vector<uint64_t> Communicator::all_gather_u64(uint64_t x) {
  // Through a sum of doubles would lose bits: each rank's value travels as four 16-bit pieces, exact in a double.
  std::vector<double> slots(size_t(world()) * 4, 0.0);
  for (int k = 0; k < 4; ++k) slots[size_t(rank()) * 4 + size_t(k)] = double((x >> (16 * k)) & 0xffff);
  all_reduce_sum(slots.data(), int64_t(slots.size()));
  std::vector<uint64_t> out(static_cast<size_t>(world()));
  for (size_t r = 0; r < out.size(); ++r)
    for (int k = 0; k < 4; ++k) out[r] |= uint64_t(slots[r * 4 + size_t(k)]) << (16 * k);
  return out;
}

int cpu_share(std::span<const RankCpus> all, int rank) {
  TALLY_CHECK(rank >= 0 && size_t(rank) < all.size(), "[dist] cpu_share: rank ", rank, " of ", all.size());
  const RankCpus& mine = all[size_t(rank)];
  if (!mine.readable) return 0;
  int own = 0, sharing = 0, before = 0;  // this rank's CPUs; the ranks sharing any of them (itself too), lower ranks
  for (int w = 0; w < RankCpus::kWords; ++w) own += std::popcount(mine.mask[w]);
  if (own == 0) return 0;  // an empty mask (never from sched_getaffinity): OpenMP's default
  for (size_t r = 0; r < all.size(); ++r) {
    const RankCpus& other = all[r];
    if (other.node != mine.node || !other.readable) continue;
    bool overlap = false;
    for (int w = 0; w < RankCpus::kWords; ++w) overlap = overlap || (other.mask[w] & mine.mask[w]) != 0;
    if (!overlap) continue;
    ++sharing;
    if (int(r) < rank) ++before;
  }
  return std::max(1, own / sharing + (before < own % sharing ? 1 : 0));
}

int shared_cpu_threads(Communicator& comm) {
  static_assert(RankCpus::kWords * 64 == CPU_SETSIZE);
  std::vector<RankCpus> all(static_cast<size_t>(comm.world()));
  RankCpus& mine = all[size_t(comm.rank())];
  mine.node = comm.node();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    mine.readable = 1;
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) mine.mask[c / 64] |= uint64_t(1) << (c % 64);
  }
  comm.all_gather(all.data(), int64_t(sizeof(RankCpus)), Device::cpu());
  return cpu_share(all, comm.rank());
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (const char* e = std::getenv(v); e && *e) return true;
  return false;
}

int launcher_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* e = std::getenv(v); e && *e)
      if (const std::optional<int64_t> r = parse_int64(e); r && *r >= 0 && *r <= INT32_MAX) return int(*r);
  return 0;
}

double nccl_timeout_seconds(const char* value) {
  if (!value || !*value) return kNcclTimeoutSeconds;
  const std::optional<double> s = parse_finite_double(value);
  TALLY_CHECK(s && *s >= 0.0, "[nccl] TALLY_NCCL_TIMEOUT_S must be a number of seconds >= 0 (0: no limit), got '",
              value, "'");
  return *s;
}

std::unique_ptr<Communicator> single_process(int rank, int world) {
  TALLY_CHECK(world >= 1 && rank >= 0 && rank < world, "[dist] rank ", rank, " of world ", world, " does not exist");
  return std::make_unique<SingleProcess>(rank, world);
}

#ifdef TALLY_HAS_MPI
std::unique_ptr<Communicator> make_mpi();  // mpi.cpp
#endif

Communicator& process_group() {
  static std::unique_ptr<Communicator> group = []() -> std::unique_ptr<Communicator> {
    if (!launched_by_mpi()) return single_process();
#ifdef TALLY_HAS_MPI
    return make_mpi();
#else
    fail("this process was started by an MPI launcher, but tally was built without MPI: install libopenmpi-dev "
         "(scripts/install-deps.sh does) and rebuild, or run a single process without mpirun");
#endif
  }();
  return *group;
}

}  // namespace tally::dist
