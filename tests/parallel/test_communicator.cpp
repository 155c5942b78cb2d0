// MpiCommunicator on 1-4 ranks: every collective and dtype against values each rank can compute on its own.
// Values are small integers, exact in every dtype (bfloat16 holds integers up to 256 exactly), so sums compare
// exactly; only Avg, which divides, compares within the dtype's rounding.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "core/error.hpp"
#include "parallel/mpi_communicator.hpp"

using namespace opendit;
using namespace opendit::parallel;

namespace {

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kLong, at::kInt};

// f(rank, i) laid out over i = 0..n-1, in float64 (the expected values are built in float64 too).
template <typename F>
at::Tensor make(int64_t n, F f) {
  at::Tensor t = at::empty({n}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) t[i] = double(f(i));
  return t;
}

void expect_equal(const at::Tensor& got, const at::Tensor& expected_f64) {
  ASSERT_EQ(got.numel(), expected_f64.numel());
  EXPECT_TRUE(at::equal(got.to(at::kDouble), expected_f64)) << "got\n" << got << "\nexpected\n" << expected_f64;
}

class CommTest : public ::testing::Test {
 protected:
  ProcessGroup world = ProcessGroup::world();
  MpiCommunicator comm{world};
  int me = comm.rank(), p = comm.size();
};

}  // namespace

TEST_F(CommTest, RankAndSizeMatchTheMpiCommunicator) {
  EXPECT_EQ(comm.rank(), world.rank());
  EXPECT_EQ(comm.size(), world.size());
  EXPECT_EQ(comm.backend(), "mpi");
  EXPECT_EQ(make_communicator(world, at::kCPU)->backend(), "mpi");
#ifndef OPENDIT_WITH_CUDA
  EXPECT_THROW(make_communicator(world, at::Device(at::kCUDA, 0)), Error);  // a build without NCCL says so
#endif
}

TEST_F(CommTest, AllReduceSumAndMaxEveryDtype) {
  const int64_t n = 37;  // not a multiple of anything
  for (at::ScalarType dt : kDtypes) {
    SCOPED_TRACE(c10::toString(dt));
    at::Tensor t = make(n, [&](int64_t i) { return (me + 1) + i % 7; }).to(dt);
    comm.all_reduce(t, ReduceOp::Sum);
    expect_equal(t, make(n, [&](int64_t i) { return p * (p + 1) / 2 + p * (i % 7); }));

    t = make(n, [&](int64_t i) { return (i % 2 ? me : -me) + i % 5; }).to(dt);
    comm.all_reduce(t, ReduceOp::Max);
    expect_equal(t, make(n, [&](int64_t i) { return (i % 2 ? p - 1 : 0) + i % 5; }));
  }
}

TEST_F(CommTest, AllReduceAvgFloatingDtypes) {
  for (at::ScalarType dt : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dt));
    at::Tensor t = make(11, [&](int64_t i) { return me + i; }).to(dt);
    comm.all_reduce(t, ReduceOp::Avg);
    at::Tensor expected = make(11, [&](int64_t i) { return (p - 1) / 2.0 + i; });
    // Half types reduce in float32 and round once: at most half an ulp of the result (2^-8 relative for bf16).
    const double tol = dt == at::kBFloat16 ? 4e-3 : dt == at::kHalf ? 5e-4 : 1e-7;
    EXPECT_TRUE(at::allclose(t.to(at::kDouble), expected, tol, 0)) << t;
  }
  at::Tensor ints = at::ones({3}, at::kLong);
  EXPECT_THROW(comm.all_reduce(ints, ReduceOp::Avg), std::invalid_argument);
}

TEST_F(CommTest, ReduceScatterGivesEachRankItsSliceOfTheSum) {
  for (at::ScalarType dt : kDtypes) {
    for (int64_t n : {1, 5}) {
      SCOPED_TRACE(std::string(c10::toString(dt)) + " n=" + std::to_string(n));
      at::Tensor in = make(p * n, [&](int64_t j) { return (me + 1) + j % 5; }).to(dt);
      at::Tensor out = at::full({n}, -1, dt);
      comm.reduce_scatter(out, in, ReduceOp::Sum);
      expect_equal(out, make(n, [&](int64_t i) { return p * (p + 1) / 2 + p * ((me * n + i) % 5); }));

      comm.reduce_scatter(out, in, ReduceOp::Max);
      expect_equal(out, make(n, [&](int64_t i) { return p + (me * n + i) % 5; }));
    }
  }
}

TEST_F(CommTest, ReduceScatterAvgAndInPlace) {
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    const int64_t n = 3;
    at::Tensor in = make(p * n, [&](int64_t j) { return 2 * me + j; }).to(dt);
    at::Tensor expected = make(n, [&](int64_t i) { return (p - 1) + me * n + i; });
    at::Tensor out = at::empty({n}, dt);
    comm.reduce_scatter(out, in, ReduceOp::Avg);
    expect_equal(out, expected);
    // The output may be this rank's own slice of the input.
    at::Tensor own = in.narrow(0, me * n, n);
    comm.reduce_scatter(own, in, ReduceOp::Avg);
    expect_equal(own, expected);
  }
}

TEST_F(CommTest, AllGatherConcatenatesInRankOrder) {
  for (at::ScalarType dt : kDtypes) {
    for (int64_t n : {0, 1, 7}) {
      SCOPED_TRACE(std::string(c10::toString(dt)) + " n=" + std::to_string(n));
      at::Tensor in = make(n, [&](int64_t i) { return me * 10 + i; }).to(dt);
      at::Tensor out = at::full({p * n}, -1, dt);
      comm.all_gather(out, in);
      expect_equal(out, make(p * n, [&](int64_t j) { return (j / n) * 10 + j % n; }));
    }
  }
}

TEST_F(CommTest, AllGatherInPlaceFromOwnSlice) {
  const int64_t n = 4;
  at::Tensor out = at::full({p * n}, -1.0f);
  at::Tensor own = out.narrow(0, me * n, n);
  own.copy_(make(n, [&](int64_t i) { return me * 10 + i; }));
  comm.all_gather(out, own);
  expect_equal(out, make(p * n, [&](int64_t j) { return (j / n) * 10 + j % n; }));
}

TEST_F(CommTest, AllToAllSendsChunkRToRankR) {
  // in[dst*n + i] on rank src = src*16 + dst*4 + i; after the exchange, out[src*n + i] on rank dst holds it.
  const int64_t n = 3;
  for (at::ScalarType dt : kDtypes) {
    SCOPED_TRACE(c10::toString(dt));
    at::Tensor in = make(p * n, [&](int64_t j) { return me * 16 + (j / n) * 4 + j % n; }).to(dt);
    at::Tensor out = at::full({p * n}, -1, dt);
    comm.all_to_all(out, in);
    expect_equal(out, make(p * n, [&](int64_t j) { return (j / n) * 16 + me * 4 + j % n; }));
  }
}

TEST_F(CommTest, BroadcastFromEveryRoot) {
  for (at::ScalarType dt : kDtypes) {
    for (int root = 0; root < p; ++root) {
      SCOPED_TRACE(std::string(c10::toString(dt)) + " root=" + std::to_string(root));
      at::Tensor t = make(9, [&](int64_t i) { return me * 3 + i; }).to(dt);
      comm.broadcast(t, root);
      expect_equal(t, make(9, [&](int64_t i) { return root * 3 + i; }));
    }
  }
}

TEST_F(CommTest, AsyncHandlesCompleteInAnyOrder) {
  at::Tensor a = at::full({1000}, double(me + 1));
  at::Tensor b = at::full({5}, int64_t(me), at::kLong);
  at::Tensor g_in = at::full({3}, float(me)), g_out = at::empty({3 * p});
  at::Tensor h = at::full({6}, float(me), at::kBFloat16);  // goes through a float32 buffer until wait()
  WorkPtr wa = comm.all_reduce_async(a, ReduceOp::Sum);
  WorkPtr wb = comm.all_reduce_async(b, ReduceOp::Max);
  WorkPtr wg = comm.all_gather_async(g_out, g_in);
  WorkPtr wh = comm.all_reduce_async(h, ReduceOp::Sum);
  wh->wait();
  wg->wait();
  wb->wait();
  wa->wait();
  wa->wait();  // a second wait is harmless
  EXPECT_TRUE(at::equal(a, at::full({1000}, p * (p + 1) / 2.0)));
  EXPECT_TRUE(at::equal(b, at::full({5}, int64_t(p - 1), at::kLong)));
  EXPECT_TRUE(at::equal(g_out, at::arange(p, at::kFloat).repeat_interleave(3)));
  EXPECT_TRUE(at::equal(h, at::full({6}, p * (p - 1) / 2.0, at::kBFloat16)));
}

TEST_F(CommTest, DroppedWorkStillCompletes) {
  at::Tensor t = at::ones({17});
  comm.all_reduce_async(t, ReduceOp::Sum);  // the handle's destructor waits
  EXPECT_TRUE(at::equal(t, at::full({17}, float(p))));
  comm.barrier();
}

TEST_F(CommTest, BadArgumentsThrowBeforeCommunicating) {
  at::Tensor f = at::zeros({4});
  EXPECT_THROW(comm.all_reduce(at::zeros({4}, at::kBool)), std::invalid_argument);
  EXPECT_THROW(comm.all_reduce(at::zeros({4, 4}).t()), std::invalid_argument);  // not contiguous
  EXPECT_THROW(comm.all_gather(at::zeros({4 * p + 1}), f), std::invalid_argument);
  EXPECT_THROW(comm.reduce_scatter(f, at::zeros({4 * p + 1})), std::invalid_argument);
  EXPECT_THROW(comm.all_gather(at::zeros({4 * p}, at::kDouble), f), std::invalid_argument);
  EXPECT_THROW(comm.broadcast(f, p), std::invalid_argument);
  if (p > 1) EXPECT_THROW(comm.all_to_all(at::zeros({p + 1}), at::zeros({p + 1})), std::invalid_argument);
}

TEST_F(CommTest, SubgroupsCommunicateIndependently) {
  // Even and odd ranks form two groups; each sums only its own members.
  const ProcessGroup half = world.split(me % 2, me);
  {
    MpiCommunicator sub(half);
    at::Tensor t = at::full({2}, double(me));
    sub.all_reduce(t, ReduceOp::Sum);
    double expected = 0;
    for (int r = me % 2; r < p; r += 2) expected += r;
    EXPECT_TRUE(at::equal(t, at::full({2}, expected)));
  }
}
