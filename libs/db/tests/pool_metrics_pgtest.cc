// ConnectionPool::stats() and the rkl_db_* metrics RegisterPoolMetrics publishes from them.
#include <gtest/gtest.h>

#include <pqxx/nontransaction>
#include <thread>

#include "absl/strings/str_cat.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/pool_metrics.h"
#include "rkl/metrics/metrics.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/wait.h"

namespace rkl::db {
namespace {

using PoolMetricsTest = rkl::testing::PgFixture;

double Value(const metrics::Metrics& m, const std::string& name,
             std::map<std::string, std::string> labels) {
  std::optional<double> v = metrics::SampleValue(m.Collect(), name, labels);
  EXPECT_TRUE(v.has_value()) << metrics::SeriesKey(name, labels);
  return v.value_or(-1);
}

TEST_F(PoolMetricsTest, StatsFollowAcquisitionsAndReturns) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 3});
  PoolStats stats = pool.stats();
  EXPECT_EQ(stats.max_size, 3);
  EXPECT_EQ(stats.in_use, 0);
  EXPECT_EQ(stats.idle, 0);
  EXPECT_EQ(stats.acquisitions, 0u);
  {
    absl::StatusOr<ConnectionPool::Lease> a = pool.Borrow();
    absl::StatusOr<ConnectionPool::Lease> b = pool.Borrow();
    ASSERT_TRUE(a.ok() && b.ok());
    stats = pool.stats();
    EXPECT_EQ(stats.in_use, 2);
    EXPECT_EQ(stats.idle, 0);
    EXPECT_EQ(stats.acquisitions, 2u);
    { ConnectionPool::Lease returned = *std::move(b); }
    stats = pool.stats();
    EXPECT_EQ(stats.in_use, 1);
    EXPECT_EQ(stats.idle, 1);
  }
  absl::StatusOr<ConnectionPool::Lease> again = pool.Borrow();  // an idle one, reused
  ASSERT_TRUE(again.ok());
  stats = pool.stats();
  EXPECT_EQ(stats.acquisitions, 3u);
  EXPECT_EQ(stats.in_use, 1);
  EXPECT_EQ(stats.idle, 1);
  // None of this waited or failed.
  EXPECT_EQ(stats.waits, 0u);
  EXPECT_EQ(stats.wait_seconds, 0);
  EXPECT_EQ(stats.errors, 0u);
}

TEST_F(PoolMetricsTest, ABorrowThatWaitsForAReleaseCountsOneWait) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  absl::StatusOr<ConnectionPool::Lease> held = pool.Borrow();
  ASSERT_TRUE(held.ok()) << held.status();
  // Released only once the borrower below is known to be waiting for it.
  std::thread releaser([&pool, lease = *std::move(held)]() mutable {
    EXPECT_TRUE(rkl::testing::WaitUntil([&] { return pool.waiting_borrowers() == 1; }));
    ConnectionPool::Lease dropped = std::move(lease);
  });
  absl::StatusOr<ConnectionPool::Lease> waited = pool.Borrow(rkl::testing::kEventDeadline);
  releaser.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  PoolStats stats = pool.stats();
  EXPECT_EQ(stats.waits, 1u);
  EXPECT_GT(stats.wait_seconds, 0);
  EXPECT_EQ(stats.acquisitions, 2u);
  EXPECT_EQ(stats.in_use, 1);
}

TEST_F(PoolMetricsTest, AnExhaustedBorrowWithoutTimeLeftIsNeitherAWaitNorAnAcquisition) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  absl::StatusOr<ConnectionPool::Lease> held = pool.Borrow();
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(pool.Borrow(absl::ZeroDuration()).status().code(), absl::StatusCode::kUnavailable);
  PoolStats stats = pool.stats();
  EXPECT_EQ(stats.acquisitions, 1u);
  EXPECT_EQ(stats.waits, 0u);
  EXPECT_EQ(stats.errors, 0u);  // exhaustion is no connection error
}

TEST_F(PoolMetricsTest, BrokenAndFailedConnectionsAreErrors) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 2});
  {
    absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
    ASSERT_TRUE(lease.ok()) << lease.status();
    lease->MarkBroken();
  }
  EXPECT_EQ(pool.stats().errors, 1u);
  EXPECT_EQ(pool.stats().in_use, 0);

  // The server ends an idle connection: the next borrow finds it dead and replaces it.
  int pid = 0;
  {
    absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
    ASSERT_TRUE(lease.ok()) << lease.status();
    pid = pqxx::nontransaction(lease->connection()).exec1("SELECT pg_backend_pid()")[0].as<int>();
  }
  {
    pqxx::connection admin(database().admin_dsn());
    pqxx::nontransaction(admin).exec_params("SELECT pg_terminate_backend($1, 5000)", pid);
  }
  ASSERT_TRUE(pool.Borrow().ok());
  EXPECT_EQ(pool.stats().errors, 2u);
  EXPECT_EQ(pool.stats().acquisitions, 3u);

  // A database that does not exist: the connection cannot be opened.
  ConnectionPool nowhere(
      PoolOptions{.dsn = absl::StrCat(database().dsn(), " dbname=rkl_no_such_database")});
  EXPECT_EQ(nowhere.Borrow().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(nowhere.stats().errors, 1u);
  EXPECT_EQ(nowhere.stats().acquisitions, 0u);
  EXPECT_EQ(nowhere.stats().in_use, 0);
}

TEST_F(PoolMetricsTest, MetricsArePublishedPerPoolAtScrapeTime) {
  metrics::Metrics m;
  ConnectionPool main_pool(PoolOptions{.dsn = database().dsn(), .max_size = 2});
  ConnectionPool audit_pool(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  RegisterPoolMetrics(m, main_pool, "main");
  RegisterPoolMetrics(m, audit_pool, "audit");
  const std::map<std::string, std::string> kMain{{"pool", "main"}};
  const std::map<std::string, std::string> kAudit{{"pool", "audit"}};
  EXPECT_EQ(Value(m, "rkl_db_pool_size", kMain), 2);
  EXPECT_EQ(Value(m, "rkl_db_pool_size", kAudit), 1);
  EXPECT_EQ(Value(m, "rkl_db_pool_acquisitions_total", kMain), 0);

  absl::StatusOr<ConnectionPool::Lease> held = main_pool.Borrow();
  ASSERT_TRUE(held.ok()) << held.status();
  { ASSERT_TRUE(main_pool.Borrow().ok()); }  // borrowed and returned: one idle
  EXPECT_EQ(Value(m, "rkl_db_pool_connections", {{"pool", "main"}, {"state", "in_use"}}), 1);
  EXPECT_EQ(Value(m, "rkl_db_pool_connections", {{"pool", "main"}, {"state", "idle"}}), 1);
  EXPECT_EQ(Value(m, "rkl_db_pool_connections", {{"pool", "audit"}, {"state", "in_use"}}), 0);
  EXPECT_EQ(Value(m, "rkl_db_pool_acquisitions_total", kMain), 2);
  // A counter keeps its value between scrapes and grows only by what happened since.
  EXPECT_EQ(Value(m, "rkl_db_pool_acquisitions_total", kMain), 2);
  held->MarkBroken();
  { ConnectionPool::Lease dropped = *std::move(held); }
  EXPECT_EQ(Value(m, "rkl_db_errors_total", kMain), 1);
  EXPECT_EQ(Value(m, "rkl_db_errors_total", kAudit), 0);
  EXPECT_EQ(Value(m, "rkl_db_pool_waits_total", kMain), 0);
  EXPECT_EQ(Value(m, "rkl_db_pool_wait_seconds_total", kMain), 0);

  // The waits of the audit pool, in its own series.
  absl::StatusOr<ConnectionPool::Lease> audit_held = audit_pool.Borrow();
  ASSERT_TRUE(audit_held.ok()) << audit_held.status();
  std::thread releaser([&audit_pool, lease = *std::move(audit_held)]() mutable {
    EXPECT_TRUE(rkl::testing::WaitUntil([&] { return audit_pool.waiting_borrowers() == 1; }));
    ConnectionPool::Lease dropped = std::move(lease);
  });
  ASSERT_TRUE(audit_pool.Borrow(rkl::testing::kEventDeadline).ok());
  releaser.join();
  EXPECT_EQ(Value(m, "rkl_db_pool_waits_total", kAudit), 1);
  EXPECT_GT(Value(m, "rkl_db_pool_wait_seconds_total", kAudit), 0);
  EXPECT_EQ(Value(m, "rkl_db_pool_waits_total", kMain), 0);
}

}  // namespace
}  // namespace rkl::db
