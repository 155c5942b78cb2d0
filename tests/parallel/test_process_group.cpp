// ProcessGroup on 1-4 ranks: the host collectives every layer uses instead of raw MPI, agreement on failures (a
// failure on one rank becomes the same CollectiveError everywhere), turns, and sub-groups.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "core/error.hpp"
#include "parallel/process_group.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::parallel;

namespace {
const ProcessGroup& world() { return opendit::test::world_group(); }
}  // namespace

TEST(ProcessGroup, BroadcastReduceGather) {
  const int me = world().rank(), p = world().size();
  EXPECT_EQ(world().broadcast(me == 0 ? std::string("from rank 0") : std::string("ignored")), "from rank 0");
  EXPECT_EQ(world().broadcast(me == p - 1 ? std::string("last") : std::string(), p - 1), "last");
  EXPECT_EQ(world().broadcast(std::string()), "");
  const auto v = world().broadcast(std::vector<std::int64_t>{me, 7}, 0);
  EXPECT_EQ(v, (std::vector<std::int64_t>{0, 7}));
  EXPECT_EQ(world().all_reduce(std::int64_t(me + 1), ReduceOp::Sum), p * (p + 1) / 2);
  EXPECT_EQ(world().all_reduce(std::int64_t(me), ReduceOp::Max), p - 1);
  EXPECT_EQ(world().all_reduce(std::int64_t(me), ReduceOp::Min), 0);
  EXPECT_DOUBLE_EQ(world().all_reduce(double(me), ReduceOp::Avg), (p - 1) / 2.0);
  EXPECT_THROW(world().all_reduce(std::int64_t(1), ReduceOp::Avg), Error);
  const auto sums = world().all_reduce(std::vector<double>{1.0, double(me)}, ReduceOp::Sum);
  EXPECT_DOUBLE_EQ(sums[0], p);
  EXPECT_DOUBLE_EQ(sums[1], p * (p - 1) / 2.0);
  const auto all = world().all_gather({me, 10 * me});
  ASSERT_EQ(int(all.size()), 2 * p);
  for (int r = 0; r < p; ++r) EXPECT_EQ(all[2 * r + 1], 10 * r);
  // Gather: any count per rank, root only.
  const auto got = world().gather(std::vector<std::int64_t>(size_t(me), me), 0);
  const auto texts = world().gather("rank " + std::to_string(me), 0);
  if (me == 0) {
    ASSERT_EQ(int(got.size()), p);
    for (int r = 0; r < p; ++r) EXPECT_EQ(got[r], std::vector<std::int64_t>(size_t(r), r));
    ASSERT_EQ(int(texts.size()), p);
    EXPECT_EQ(texts.back(), "rank " + std::to_string(p - 1));
  } else {
    EXPECT_TRUE(got.empty());
    EXPECT_TRUE(texts.empty());
  }
}

TEST(ProcessGroup, AgreeTurnsOneRanksFailureIntoTheSameCollectiveErrorEverywhere) {
  const int me = world().rank(), p = world().size();
  EXPECT_NO_THROW(world().agree([] {}));
  // The last rank fails (on a world of one: rank 0); every rank throws its message.
  try {
    world().agree([&] {
      if (me == p - 1) throw std::runtime_error("disk full on rank " + std::to_string(me));
    });
    ADD_FAILURE() << "no error";
  } catch (const CollectiveError& e) {
    EXPECT_EQ(std::string(e.what()), "disk full on rank " + std::to_string(p - 1));
  }
  // Several ranks fail: the lowest one's message wins.
  try {
    world().agree([&] { throw Error("from " + std::to_string(me)); });
    ADD_FAILURE() << "no error";
  } catch (const CollectiveError& e) {
    EXPECT_EQ(std::string(e.what()), "from 0");
  }
}

TEST(ProcessGroup, InTurnRunsRankAfterRankAndStopsAllOnAFailure) {
  const int me = world().rank(), p = world().size();
  // Each rank, in its turn, appends its rank to a value the next turn reads (through a broadcast of the turn's
  // rank): the order is observable.
  std::string order;
  for (int r = 0; r < p; ++r) order = world().broadcast(me == r ? order + std::to_string(r) : order, r);
  int turns = 0;
  world().in_turn([&] { ++turns; });
  EXPECT_EQ(turns, 1);
  EXPECT_EQ(order.size(), size_t(p));
  EXPECT_THROW(world().in_turn([&] {
    if (me == p - 1) throw Error("the last turn fails");
  }),
               CollectiveError);
}

TEST(ProcessGroup, SplitAndSelf) {
  const int me = world().rank(), p = world().size();
  const ProcessGroup half = world().split(me % 2, me);
  EXPECT_EQ(half.size(), (p + 1 - me % 2) / 2);
  EXPECT_EQ(half.rank(), me / 2);
  EXPECT_EQ(half.all_reduce(std::int64_t(1), ReduceOp::Sum), half.size());
  const ProcessGroup self = ProcessGroup::self();
  EXPECT_EQ(self.size(), 1);
  EXPECT_EQ(self.rank(), 0);
  EXPECT_EQ(self.broadcast(std::string("mine")), "mine");
  const ProcessGroup node = world().node_local();
  EXPECT_EQ(node.size(), p);  // one machine
  const ProcessGroup copy = half;  // copies are the same group
  EXPECT_EQ(copy.all_reduce(std::int64_t(me), ReduceOp::Sum), half.all_reduce(std::int64_t(me), ReduceOp::Sum));
  EXPECT_FALSE(mpi_library_version().empty());
}
