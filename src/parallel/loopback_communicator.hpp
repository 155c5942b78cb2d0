// A Communicator that pretends to be rank 0 of a group of `size` ranks while it is alone: every collective returns
// buffers of the right shape filled from this rank's own input (all_to_all and all_gather copy it, reduce_scatter
// takes the first share, all_reduce and broadcast leave the tensor). The values are not a real group's; the shapes,
// the work around the collectives and the bytes handed in are. `opendit bench sp` times one rank's share of a
// sequence-parallel step on one GPU with it (the cost model of bench/RESULTS.md).
#pragma once
#include "parallel/communicator.hpp"

namespace opendit::parallel {

class LoopbackCommunicator : public Communicator {
 public:
  LoopbackCommunicator(int size, at::Device device) : size_(size), device_(device) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  at::Device device() const override { return device_; }
  std::string backend() const override { return "loopback"; }

  WorkPtr all_reduce_async(const at::Tensor& t, ReduceOp op) override { return done(); }
  WorkPtr reduce_scatter_async(const at::Tensor& out, const at::Tensor& in, ReduceOp op) override {
    out.copy_(in.narrow(0, 0, out.numel()));
    return done();
  }
  WorkPtr all_gather_async(const at::Tensor& out, const at::Tensor& in) override {
    out.view({size_, in.numel()}).copy_(in.view({1, in.numel()}));
    return done();
  }
  WorkPtr all_to_all_async(const at::Tensor& out, const at::Tensor& in) override {
    out.copy_(in);
    return done();
  }
  WorkPtr broadcast_async(const at::Tensor& t, int root) override { return done(); }
  void barrier() override {}

 private:
  struct Done : Work {
    void wait() override {}
  };
  static WorkPtr done() { return std::make_unique<Done>(); }
  int size_;
  at::Device device_;
};

}  // namespace opendit::parallel
