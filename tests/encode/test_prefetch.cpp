// OrderedPrefetch: results in index order whatever order the workers finish in, at most `ahead` items beyond the
// consumer, an item's exception rethrown at that item, and no hang when the consumer stops early.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <stdexcept>
#include <string>

#include "encode/prefetch.hpp"

using opendit::encode::OrderedPrefetch;

TEST(Prefetch, InOrderAndBounded) {
  std::atomic<int> running{0}, most{0};
  std::atomic<int64_t> started{0};
  std::atomic<int64_t> consumed{0};
  std::atomic<int64_t> furthest{0};
  OrderedPrefetch<int64_t> p(200, 4, 6, [&](int64_t i) {
    const int now = ++running;
    most = std::max(most.load(), now);
    ++started;
    int64_t f = furthest.load();
    while (i > f && !furthest.compare_exchange_weak(f, i)) {
    }
    std::this_thread::sleep_for(std::chrono::microseconds((i * 7919) % 500));  // finish out of order
    --running;
    return i * i;
  });
  for (int64_t i = 0; i < 200; ++i) {
    const auto v = p.next();
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(*v, i * i);
    // Never more than `ahead` items claimed beyond the one being handed over.
    EXPECT_LE(furthest.load(), i + 6);
    consumed = i + 1;
  }
  EXPECT_FALSE(p.next().has_value());
  EXPECT_LE(most.load(), 4);
  EXPECT_EQ(started.load(), 200);
}

TEST(Prefetch, ErrorsArriveAtTheirItem) {
  OrderedPrefetch<std::string> p(5, 2, 3, [](int64_t i) {
    if (i == 2) throw std::runtime_error("item 2 is broken");
    return std::to_string(i);
  });
  EXPECT_EQ(*p.next(), "0");
  EXPECT_EQ(*p.next(), "1");
  try {
    p.next();
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "item 2 is broken");
  }
  EXPECT_EQ(*p.next(), "3");  // the rest go on
  EXPECT_EQ(*p.next(), "4");
  EXPECT_FALSE(p.next().has_value());
}

TEST(Prefetch, StoppingEarlyAndEdgeCases) {
  std::atomic<int64_t> started{0};
  {
    OrderedPrefetch<int> p(1000000, 3, 4, [&](int64_t) {
      ++started;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return 1;
    });
    EXPECT_EQ(*p.next(), 1);
  }  // destroyed with most of the work never started: no hang
  EXPECT_LT(started.load(), 20);
  OrderedPrefetch<int> empty(0, 2, 1, [](int64_t) { return 0; });
  EXPECT_FALSE(empty.next().has_value());
  EXPECT_THROW(OrderedPrefetch<int>(3, 0, 1, [](int64_t) { return 0; }), opendit::Error);
}
