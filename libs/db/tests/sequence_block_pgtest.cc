#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <thread>
#include <vector>

#include "rkl/db/connection_pool.h"
#include "rkl/db/sequence_block.h"
#include "rkl/db/transaction.h"
#include "rkl/testing/service_database.h"

namespace rkl::db {
namespace {

using ::testing::ElementsAre;

class SequenceBlockTest : public rkl::testing::PgFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    Sql("CREATE SEQUENCE ids AS bigint START 1");
    pool_.emplace(PoolOptions{.dsn = database().dsn(), .max_size = 4});
  }

  uint64_t NextIn(SequenceBlock& ids) {
    absl::StatusOr<uint64_t> v = RunInTransaction(
        *pool_, [&](pqxx::work& tx) -> absl::StatusOr<uint64_t> { return ids.Next(tx); });
    EXPECT_TRUE(v.ok()) << v.status();
    return v.value_or(0);
  }

  std::optional<ConnectionPool> pool_;
};

TEST_F(SequenceBlockTest, HandsOutABlockPerFetchInOrder) {
  SequenceBlock ids("ids", 4);
  std::vector<uint64_t> got;
  for (int i = 0; i < 6; ++i) got.push_back(NextIn(ids));
  EXPECT_THAT(got, ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_EQ(ids.fetches(), 2u);
  // The sequence itself moved past both blocks: a plain nextval() cannot collide.
  EXPECT_EQ(Sql("SELECT nextval('ids')")[0][0].as<uint64_t>(), 9u);
}

TEST_F(SequenceBlockTest, TakeReturnsConsecutiveValuesAndFetchesEnough) {
  SequenceBlock ids("ids", 4);
  EXPECT_EQ(NextIn(ids), 1u);
  absl::StatusOr<std::vector<uint64_t>> group = RunInTransaction(
      *pool_,
      [&](pqxx::work& tx) -> absl::StatusOr<std::vector<uint64_t>> { return ids.Take(tx, 10); });
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_THAT(*group, ElementsAre(2, 3, 4, 5, 6, 7, 8, 9, 10, 11));
  EXPECT_EQ(ids.fetches(), 2u);
}

TEST_F(SequenceBlockTest, ValuesFetchedInARolledBackTransactionAreNotReused) {
  SequenceBlock ids("ids", 4);
  absl::Status s = RunInTransaction(*pool_, [&](pqxx::work& tx) {
    ids.Next(tx);
    return absl::AbortedError("rolled back");
  });
  ASSERT_EQ(s.code(), absl::StatusCode::kAborted);
  // nextval() is not transactional: another SequenceBlock (another replica) still starts
  // after the block, and this one continues where it stopped.
  SequenceBlock other("ids", 4);
  EXPECT_EQ(NextIn(other), 5u);
  EXPECT_EQ(NextIn(ids), 2u);
}

TEST_F(SequenceBlockTest, ThreadsAndReplicasNeverShareAValue) {
  SequenceBlock a("ids", 8), b("ids", 3);
  constexpr int kThreads = 4, kEach = 50;
  std::vector<std::vector<uint64_t>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      SequenceBlock& ids = t % 2 == 0 ? a : b;
      for (int i = 0; i < kEach; ++i) got[t].push_back(NextIn(ids));
    });
  }
  for (auto& t : threads) t.join();
  std::set<uint64_t> all;
  for (const auto& v : got) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(all.count(0), 0u);
}

}  // namespace
}  // namespace rkl::db
