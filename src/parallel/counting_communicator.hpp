// A Communicator that counts what passes through another: calls and bytes per kind of collective. The trainer and
// the sampler report the counts per step; the sequence-parallel tests check them against each mode's formula.
// Bytes are those of the buffer each rank hands in (all_to_all and all_reduce: the tensor; all_gather: the rank's
// piece; reduce_scatter: the whole input; broadcast: the tensor), counted when the collective is issued.
#pragma once
#include <array>
#include <memory>
#include <string>

#include "parallel/communicator.hpp"

namespace opendit::parallel {

enum class Collective { AllReduce, ReduceScatter, AllGather, AllToAll, Broadcast };
constexpr int kCollectives = 5;
const char* collective_name(Collective c);  // "all_reduce", ...

struct CollectiveCount {
  int64_t calls = 0, bytes = 0;
};
using CollectiveCounts = std::array<CollectiveCount, kCollectives>;

class CountingCommunicator : public Communicator {
 public:
  explicit CountingCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}

  const CollectiveCounts& counts() const { return counts_; }
  const CollectiveCount& count(Collective c) const { return counts_[size_t(c)]; }
  void reset() { counts_ = {}; }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  at::Device device() const override { return inner_->device(); }
  std::string backend() const override { return inner_->backend(); }
  WorkPtr all_reduce_async(const at::Tensor& t, ReduceOp op) override {
    add(Collective::AllReduce, t);
    return inner_->all_reduce_async(t, op);
  }
  WorkPtr reduce_scatter_async(const at::Tensor& out, const at::Tensor& in, ReduceOp op) override {
    add(Collective::ReduceScatter, in);
    return inner_->reduce_scatter_async(out, in, op);
  }
  WorkPtr all_gather_async(const at::Tensor& out, const at::Tensor& in) override {
    add(Collective::AllGather, in);
    return inner_->all_gather_async(out, in);
  }
  WorkPtr all_to_all_async(const at::Tensor& out, const at::Tensor& in) override {
    add(Collective::AllToAll, in);
    return inner_->all_to_all_async(out, in);
  }
  WorkPtr broadcast_async(const at::Tensor& t, int root) override {
    add(Collective::Broadcast, t);
    return inner_->broadcast_async(t, root);
  }
  void barrier() override { inner_->barrier(); }

 private:
  void add(Collective c, const at::Tensor& t) {
    counts_[size_t(c)].calls += 1;
    counts_[size_t(c)].bytes += t.defined() ? int64_t(t.nbytes()) : 0;
  }
  std::unique_ptr<Communicator> inner_;
  CollectiveCounts counts_{};
};

// "all_to_all 112 x 3.1 MiB, all_gather 2 x 96 KiB" per `per` (e.g. steps); "none" when nothing was counted.
std::string describe_counts(const CollectiveCounts& c, double per = 1);

}  // namespace opendit::parallel
