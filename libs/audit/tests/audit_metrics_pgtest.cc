// RegisterAuditChainMetrics against real PostgreSQL: the four gauges follow exactly what the
// test writes into a chain's tables (records pending, then sealed) and the injected clock;
// an empty chain reads all zeros; a failed read keeps the last values and is counted. The
// tables hold only the columns the gauges read (seq, id, at_ms): the statement reads nothing
// else, so it fits every service's chain (the HSM daemon's test checks it on the real one).
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "rkl/audit/audit_metrics.h"
#include "rkl/db/connection_pool.h"
#include "rkl/metrics/metrics.h"
#include "rkl/testing/fake_clock.h"
#include "rkl/testing/service_database.h"

namespace rkl::audit {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE audit (seq bigint PRIMARY KEY CHECK (seq > 0), at_ms bigint NOT NULL);
CREATE TABLE audit_pending (id bigint PRIMARY KEY, at_ms bigint NOT NULL);
)sql";

constexpr int64_t kT0 = testing::FakeClock::kDefaultStartMs;

class AuditMetricsPgTest : public testing::PgFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    Sql(kSchema);
    pool_.emplace(db::PoolOptions{.dsn = database().dsn(), .max_size = 2});
    RegisterAuditChainMetrics(metrics_, *pool_,
                              ChainSpec{.name = "kms",
                                        .chain_table = "audit",
                                        .pending_table = "audit_pending",
                                        .pending_id_sequence = "audit_pending_id_seq"},
                              "kms", clock_);
  }

  // One scrape: every gauge of chain "kms" (nullopt-free: a missing series fails the test).
  std::map<std::string, double> Scrape() {
    const auto families = metrics_.Collect();
    std::map<std::string, double> out;
    for (const char* name :
         {"rkl_audit_chain_records", "rkl_audit_pending_records",
          "rkl_audit_oldest_pending_age_seconds", "rkl_audit_seconds_since_last_seal"}) {
      std::optional<double> v = metrics::SampleValue(families, name, {{"chain", "kms"}});
      EXPECT_TRUE(v.has_value()) << name;
      out[name] = v.value_or(-1);
    }
    return out;
  }
  double RefreshErrors() {
    return metrics::SampleValue(metrics_.Collect(), "rkl_metrics_refresh_errors_total",
                                {{"source", "audit_kms"}})
        .value_or(0);
  }

  testing::FakeClock clock_;
  std::optional<db::ConnectionPool> pool_;
  metrics::Metrics metrics_;
};

TEST_F(AuditMetricsPgTest, EmptyChainReadsZeros) {
  clock_.Advance(absl::Hours(1));
  auto m = Scrape();
  EXPECT_EQ(m["rkl_audit_chain_records"], 0);
  EXPECT_EQ(m["rkl_audit_pending_records"], 0);
  EXPECT_EQ(m["rkl_audit_oldest_pending_age_seconds"], 0);
  EXPECT_EQ(m["rkl_audit_seconds_since_last_seal"], 0);
  EXPECT_EQ(RefreshErrors(), 0);
}

TEST_F(AuditMetricsPgTest, PendingThenSealedRecordsAndTheirAgesByTheClock) {
  // Three records written at T0, T0+1 s, T0+2 s, none chained yet; now T0+5 s.
  Sql("INSERT INTO audit_pending VALUES (11, " + std::to_string(kT0 + 1000) + "), (10, " +
      std::to_string(kT0) + "), (12, " + std::to_string(kT0 + 2000) + ")");
  clock_.Set(kT0 + 5000);
  auto m = Scrape();
  EXPECT_EQ(m["rkl_audit_chain_records"], 0);
  EXPECT_EQ(m["rkl_audit_pending_records"], 3);
  EXPECT_DOUBLE_EQ(m["rkl_audit_oldest_pending_age_seconds"], 5.0);
  EXPECT_EQ(m["rkl_audit_seconds_since_last_seal"], 0);

  // The sealer chains the two oldest (seq 1, 2); the third waits.
  Sql("DELETE FROM audit_pending WHERE id IN (10, 11)");
  Sql("INSERT INTO audit VALUES (1, " + std::to_string(kT0) + "), (2, " +
      std::to_string(kT0 + 1000) + ")");
  m = Scrape();
  EXPECT_EQ(m["rkl_audit_chain_records"], 2);
  EXPECT_EQ(m["rkl_audit_pending_records"], 1);
  EXPECT_DOUBLE_EQ(m["rkl_audit_oldest_pending_age_seconds"], 3.0);
  EXPECT_DOUBLE_EQ(m["rkl_audit_seconds_since_last_seal"], 4.0);

  // Then the last one; 10.5 s later nothing is pending and the chain's head is 13.5 s old.
  Sql("DELETE FROM audit_pending");
  Sql("INSERT INTO audit VALUES (3, " + std::to_string(kT0 + 2000) + ")");
  clock_.Advance(absl::Milliseconds(10500));
  m = Scrape();
  EXPECT_EQ(m["rkl_audit_chain_records"], 3);
  EXPECT_EQ(m["rkl_audit_pending_records"], 0);
  EXPECT_EQ(m["rkl_audit_oldest_pending_age_seconds"], 0);
  EXPECT_DOUBLE_EQ(m["rkl_audit_seconds_since_last_seal"], 13.5);
  EXPECT_EQ(RefreshErrors(), 0);
}

TEST_F(AuditMetricsPgTest, RecordStampedAheadOfTheClockIsNotNegativeAge) {
  Sql("INSERT INTO audit_pending VALUES (1, " + std::to_string(kT0 + 60000) + ")");
  Sql("INSERT INTO audit VALUES (1, " + std::to_string(kT0 + 60000) + ")");
  auto m = Scrape();
  EXPECT_EQ(m["rkl_audit_oldest_pending_age_seconds"], 0);
  EXPECT_EQ(m["rkl_audit_seconds_since_last_seal"], 0);
}

TEST_F(AuditMetricsPgTest, FailedReadKeepsTheLastValuesAndIsCounted) {
  Sql("INSERT INTO audit VALUES (1, " + std::to_string(kT0) + ")");
  Sql("INSERT INTO audit_pending VALUES (5, " + std::to_string(kT0) + ")");
  clock_.Set(kT0 + 2000);
  auto before = Scrape();
  ASSERT_EQ(before["rkl_audit_chain_records"], 1);
  ASSERT_EQ(RefreshErrors(), 0);

  Sql("ALTER TABLE audit_pending RENAME TO audit_pending_gone");
  clock_.Advance(absl::Seconds(30));
  auto during = Scrape();
  EXPECT_EQ(during, before);
  EXPECT_GE(RefreshErrors(), 1);

  Sql("ALTER TABLE audit_pending_gone RENAME TO audit_pending");
  auto after = Scrape();
  EXPECT_DOUBLE_EQ(after["rkl_audit_seconds_since_last_seal"], 32.0);
}

}  // namespace
}  // namespace rkl::audit
