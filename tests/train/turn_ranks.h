// The ranks of a data-parallel group as threads of one process that run one at a time, in turns: a rank runs until
// it reaches a collective, then the next rank runs; the last to arrive completes the collective (every rank's
// buffers, in rank order) and rank 0 goes on. One thread at a time touches the library's global state (the ledger,
// the allocators, the CUDA stream), so nothing needs a lock, and a rerun gives the same bits. Collectives on CUDA
// buffers go through host copies. What it is for: ZeRO 1 over several ranks on one GPU (NCCL wants one GPU per
// rank), and over several ranks without mpirun. Not a transport: tally's runs use MPI and NCCL (core/dist).
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/dist/communicator.h"
#include "core/error.h"
#ifdef TALLY_HAS_CUDA
#include "core/cuda/runtime.h"
#endif

namespace tally::test {

class TurnRanks {
 public:
  explicit TurnRanks(int world) : world_(world), pending_(size_t(world)), nodes_(size_t(world), 0) {}
  // Ranks on machines of their own: rank r's Communicator::node() is nodes[r] (default: all on machine 0).
  TurnRanks(int world, std::vector<int> nodes) : world_(world), pending_(size_t(world)), nodes_(std::move(nodes)) {
    TALLY_CHECK(int(nodes_.size()) == world, "[turn ranks] ", nodes_.size(), " machines given for ", world, " ranks");
  }

  // body(comm) on every rank, each on its own thread; rethrows the first rank's exception after all have ended.
  void run(const std::function<void(dist::Communicator&)>& body) {
    turn_ = 0;
    failed_ = false;
    std::vector<std::exception_ptr> errors(static_cast<size_t>(world_));
    std::vector<std::thread> threads;
    for (int r = 0; r < world_; ++r)
      threads.emplace_back([&, r] {
        Rank comm(*this, r);
        try {
          wait_turn(r);
          body(comm);
          pass_turn(r);
        } catch (const Stopped&) {
        } catch (...) {
          errors[size_t(r)] = std::current_exception();
          stop();
        }
      });
    for (std::thread& t : threads) t.join();
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

 private:
  struct Stopped {};  // another rank failed: this one unwinds
  enum class Op {
    sum_f32,
    sum_f64,
    sum_bf16,
    max_f32,
    reduce_scatter_f32,
    reduce_scatter_bf16,
    all_gather,
    broadcast,
    barrier
  };
  struct Pending {
    Op op = Op::barrier;
    void* data = nullptr;
    int64_t n = 0;  // elements (sums), elements per segment (reduce_scatter), bytes (all_gather's segment, broadcast)
    Device device = Device::cpu();
    int root = 0;
  };

  class Rank final : public dist::Communicator {
   public:
    Rank(TurnRanks& group, int rank)
        : Communicator(rank, group.world_, 0, group.nodes_.at(size_t(rank))), group_(group) {}
    std::string engine() const override { return "ranks taking turns (test)"; }
    [[noreturn]] void abort(int code) override { fail("[turn ranks] rank ", rank(), " aborted with code ", code); }

   protected:
    void do_all_reduce_sum(float* data, int64_t n, Device device) override {
      group_.collective(rank(), {Op::sum_f32, data, n, device});
    }
    void do_all_reduce_sum(double* data, int64_t n, Device device) override {
      group_.collective(rank(), {Op::sum_f64, data, n, device});
    }
    void do_all_reduce_sum(bf16* data, int64_t n, Device device) override {
      group_.collective(rank(), {Op::sum_bf16, data, n, device});
    }
    void do_all_reduce_max(float* data, int64_t n, Device device) override {
      group_.collective(rank(), {Op::max_f32, data, n, device});
    }
    void do_reduce_scatter_sum(float* data, int64_t segment, Device device) override {
      group_.collective(rank(), {Op::reduce_scatter_f32, data, segment, device});
    }
    void do_reduce_scatter_sum(bf16* data, int64_t segment, Device device) override {
      group_.collective(rank(), {Op::reduce_scatter_bf16, data, segment, device});
    }
    void do_all_gather(void* data, int64_t segment_bytes, Device device) override {
      group_.collective(rank(), {Op::all_gather, data, segment_bytes, device});
    }
    void do_broadcast(void* data, int64_t bytes, int root) override {
      group_.collective(rank(), {Op::broadcast, data, bytes, Device::cpu(), root});
    }
    void do_barrier() override { group_.collective(rank(), {}); }

   private:
    TurnRanks& group_;
  };

  void wait_turn(int r) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return turn_ == r || failed_; });
    if (failed_) throw Stopped{};
  }
  void pass_turn(int r) {
    std::lock_guard lock(mutex_);
    turn_ = r + 1;
    changed_.notify_all();
  }
  void stop() {
    std::lock_guard lock(mutex_);
    failed_ = true;
    changed_.notify_all();
  }

  void collective(int r, const Pending& p) {
    int64_t generation = 0;
    {
      std::unique_lock lock(mutex_);
      if (failed_) throw Stopped{};
      generation = completed_;
      pending_[size_t(r)] = p;
      if (r + 1 < world_) {
        turn_ = r + 1;
        changed_.notify_all();
      }
    }
    if (r + 1 == world_) {
      complete();  // still this rank's turn: no other thread runs
      std::lock_guard lock(mutex_);
      ++completed_;
      turn_ = 0;
      changed_.notify_all();
    }
    wait_turn(r);
    // The turn came back from a rank that ended instead of joining: the ranks' programs differ.
    TALLY_CHECK(completed_ > generation, "[turn ranks] rank ", r, "'s collective was not joined by every rank");
  }

  // Every rank's buffer as host bytes, and back.
  static std::vector<char> fetch(const Pending& p, int64_t bytes) {
    std::vector<char> h(static_cast<size_t>(bytes));
    if (bytes == 0) return h;
#ifdef TALLY_HAS_CUDA
    if (p.device.is_cuda()) {
      cuda::memcpy_device_to_host(h.data(), p.data, bytes);
      return h;
    }
#endif
    TALLY_CHECK(!p.device.is_cuda(), "[turn ranks] a CUDA buffer in a build without CUDA");
    std::memcpy(h.data(), p.data, size_t(bytes));
    return h;
  }
  static void put(const Pending& p, const std::vector<char>& h) {
    if (h.empty()) return;
#ifdef TALLY_HAS_CUDA
    if (p.device.is_cuda()) {
      cuda::memcpy_host_to_device(p.data, h.data(), int64_t(h.size()));
      return;
    }
#endif
    std::memcpy(p.data, h.data(), h.size());
  }

  // Element by element over the ranks, in rank order: add(acc, x) -> acc.
  template <class T, class Add>
  void reduce(int64_t n, Add add) {
    std::vector<std::vector<char>> host;
    for (const Pending& p : pending_) host.push_back(fetch(p, n * int64_t(sizeof(T))));
    std::vector<char> total(size_t(n) * sizeof(T));
    for (int64_t i = 0; i < n; ++i) {
      T acc = reinterpret_cast<const T*>(host[0].data())[i];
      for (size_t r = 1; r < host.size(); ++r) acc = add(acc, reinterpret_cast<const T*>(host[r].data())[i]);
      reinterpret_cast<T*>(total.data())[i] = acc;
    }
    for (const Pending& p : pending_) put(p, total);
  }

  // Segment r of rank r := its segments r added over the ranks, in rank order.
  template <class T, class Add>
  void reduce_scatter(int64_t n, Add add) {
    const int64_t W = world_;
    std::vector<std::vector<char>> host;
    for (const Pending& p : pending_) host.push_back(fetch(p, int64_t(sizeof(T)) * n * W));
    for (int64_t r = 0; r < W; ++r) {
      std::vector<char> mine = host[size_t(r)];
      T* out = reinterpret_cast<T*>(mine.data()) + r * n;
      for (int64_t i = 0; i < n; ++i) {
        T acc = reinterpret_cast<const T*>(host[0].data())[r * n + i];
        for (size_t k = 1; k < host.size(); ++k) acc = add(acc, reinterpret_cast<const T*>(host[k].data())[r * n + i]);
        out[i] = acc;
      }
      put(pending_[size_t(r)], mine);
    }
  }

  void complete() {
    const Pending& first = pending_[0];
    for (const Pending& p : pending_)
      TALLY_CHECK(p.op == first.op && p.n == first.n && p.root == first.root,
                  "[turn ranks] the ranks made different collectives (or sizes) at the same point");
    const int64_t n = first.n, W = world_;
    switch (first.op) {
      case Op::sum_f32: return reduce<float>(n, [](float a, float b) { return a + b; });
      case Op::sum_f64: return reduce<double>(n, [](double a, double b) { return a + b; });
      case Op::sum_bf16:
        return reduce<bf16>(n, bf16_add);
      case Op::max_f32: return reduce<float>(n, [](float a, float b) { return std::max(a, b); });
      case Op::reduce_scatter_f32:
        return reduce_scatter<float>(n, [](float a, float b) { return a + b; });
      case Op::reduce_scatter_bf16:
        return reduce_scatter<bf16>(n, bf16_add);
      case Op::all_gather: {  // every segment k = rank k's segment k
        std::vector<char> all(size_t(n * W));
        for (int64_t r = 0; r < W; ++r) {
          const std::vector<char> h = fetch(pending_[size_t(r)], n * W);
          std::memcpy(all.data() + n * r, h.data() + n * r, size_t(n));
        }
        for (const Pending& p : pending_) put(p, all);
        return;
      }
      case Op::broadcast: {
        const std::vector<char> h = fetch(pending_[size_t(first.root)], n);
        for (const Pending& p : pending_) put(p, h);
        return;
      }
      case Op::barrier: return;
    }
  }

  const int world_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int turn_ = 0;
  bool failed_ = false;
  int64_t completed_ = 0;  // collectives completed so far
  std::vector<Pending> pending_;
  std::vector<int> nodes_;  // each rank's machine (Communicator::node)
};

}  // namespace tally::test
