#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/statement_timeouts.h"
#include "rkl/db/transaction.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/wait.h"

namespace rkl::db {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

int BackendPid(pqxx::connection& conn) {
  pqxx::nontransaction tx(conn);
  return tx.exec1("SELECT pg_backend_pid()")[0].as<int>();
}

// A loopback port with nothing listening: bound by us, then released.
int ClosedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    return 1;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

class ConnectionPoolTest : public rkl::testing::PgFixture {
 protected:
  // Ends the backend serving `pid` from outside, as a server restart or failover would;
  // pg_terminate_backend waits until it has exited.
  void TerminateBackend(int pid) {
    pqxx::connection admin(database().admin_dsn());
    pqxx::nontransaction(admin).exec_params("SELECT pg_terminate_backend($1, 5000)", pid);
  }

  // The backend pid of a connection borrowed from `pool` and handed back at once (0, with
  // the failure recorded, when the borrow fails).
  static int BorrowAndReturn(ConnectionPool& pool) {
    absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
    EXPECT_TRUE(lease.ok()) << lease.status();
    return lease.ok() ? BackendPid(lease->connection()) : 0;
  }
};

TEST_F(ConnectionPoolTest, OpensLazilyAndReusesReturnedConnections) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 2});
  EXPECT_EQ(pool.open_connections(), 0);
  int first_pid = 0;
  {
    absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
    ASSERT_TRUE(lease.ok()) << lease.status();
    first_pid = BackendPid(lease->connection());
    EXPECT_EQ(pool.open_connections(), 1);
    EXPECT_EQ(pool.idle_connections(), 0);
  }
  EXPECT_EQ(pool.idle_connections(), 1);
  absl::StatusOr<ConnectionPool::Lease> again = pool.Borrow();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(BackendPid(again->connection()), first_pid);
  EXPECT_EQ(pool.open_connections(), 1);
}

TEST_F(ConnectionPoolTest, ExhaustionReturnsUnavailableAfterTimeout) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  absl::StatusOr<ConnectionPool::Lease> held = pool.Borrow();
  ASSERT_TRUE(held.ok()) << held.status();
  const absl::Time start = absl::Now();
  absl::StatusOr<ConnectionPool::Lease> second = pool.Borrow(absl::Milliseconds(150));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("database pool exhausted"));
  // It waited its whole timeout. (How much longer a busy machine took to wake it is not
  // this test's business: that it returned at all shows it does not wait for a release.)
  EXPECT_GE(waited, absl::Milliseconds(150));
  EXPECT_EQ(pool.open_connections(), 1);  // never more than max_size
}

TEST_F(ConnectionPoolTest, WaiterGetsTheConnectionReleasedBeforeItsTimeout) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  absl::StatusOr<ConnectionPool::Lease> held = pool.Borrow();
  ASSERT_TRUE(held.ok()) << held.status();
  // Released only once the borrower below is known to be waiting for it.
  std::thread releaser([&pool, lease = *std::move(held)]() mutable {
    const bool waiting = rkl::testing::WaitUntil([&] { return pool.waiting_borrowers() == 1; });
    ConnectionPool::Lease dropped = std::move(lease);
    EXPECT_TRUE(waiting);
  });
  absl::StatusOr<ConnectionPool::Lease> waited = pool.Borrow(rkl::testing::kEventDeadline);
  releaser.join();
  EXPECT_TRUE(waited.ok()) << waited.status();
  EXPECT_EQ(pool.waiting_borrowers(), 0);
}

TEST_F(ConnectionPoolTest, EveryWaiterIsServedWhenReturnsWakeOneAtATime) {
  // A return wakes one waiter, not all: no waiter may be left asleep while a connection
  // sits idle. Sixteen threads queue behind one held connection; each then takes it for a
  // moment. All must get it within their (generous) timeout.
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  absl::StatusOr<ConnectionPool::Lease> held = pool.Borrow();
  ASSERT_TRUE(held.ok()) << held.status();
  std::atomic<int> served{0}, failures{0};
  std::vector<std::thread> waiters;
  for (int t = 0; t < 16; ++t) {
    waiters.emplace_back([&] {
      absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow(rkl::testing::kEventDeadline);
      if (!lease.ok()) {
        ++failures;
        return;
      }
      absl::SleepFor(absl::Milliseconds(2));
      ++served;
    });
  }
  EXPECT_TRUE(rkl::testing::WaitUntil([&] { return pool.waiting_borrowers() == 16; }));
  { ConnectionPool::Lease dropped = *std::move(held); }
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(served.load(), 16);
}

TEST_F(ConnectionPoolTest, ManyThreadsNeverExceedMaxSize) {
  constexpr int kMax = 3;
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = kMax});
  std::atomic<int> in_use{0}, peak{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow(rkl::testing::kEventDeadline);
        if (!lease.ok()) {
          ++failures;
          continue;
        }
        int now = ++in_use;
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        pqxx::nontransaction tx(lease->connection());
        tx.exec("SELECT 1");
        --in_use;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(peak.load(), kMax);
  EXPECT_LE(pool.open_connections(), kMax);
}

TEST_F(ConnectionPoolTest, LostConnectionIsDroppedAndReplacedOnNextBorrow) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 2});
  int old_pid = 0;
  {
    absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
    ASSERT_TRUE(lease.ok()) << lease.status();
    old_pid = BackendPid(lease->connection());
    TerminateBackend(old_pid);
    EXPECT_ANY_THROW(BackendPid(lease->connection()));
    // Not marked broken by the holder: the pool must notice on its own.
  }
  EXPECT_EQ(pool.open_connections(), 0);
  absl::StatusOr<ConnectionPool::Lease> fresh = pool.Borrow();
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE(BackendPid(fresh->connection()), old_pid);
}

TEST_F(ConnectionPoolTest, IdleConnectionClosedByTheServerIsNotHandedOut) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  const int old_pid = BorrowAndReturn(pool);
  ASSERT_EQ(pool.idle_connections(), 1);
  // The backend goes away while its connection sits idle in the pool (a restart would do
  // the same to all of them).
  TerminateBackend(old_pid);
  absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
  ASSERT_TRUE(lease.ok()) << lease.status();
  // The first statement on the lease works: the dead connection was replaced, not lent.
  int pid = 0;
  ASSERT_NO_THROW(pid = BackendPid(lease->connection()));
  EXPECT_NE(pid, old_pid);
  EXPECT_EQ(pool.open_connections(), 1);
}

TEST_F(ConnectionPoolTest, MarkBrokenClosesInsteadOfReturning) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 2});
  {
    absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
    ASSERT_TRUE(lease.ok()) << lease.status();
    lease->MarkBroken();
  }
  EXPECT_EQ(pool.open_connections(), 0);
  EXPECT_EQ(pool.idle_connections(), 0);
}

TEST_F(ConnectionPoolTest, SessionSettingsAreMadeOnEveryNewConnection) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(),
                                  .max_size = 2,
                                  .settings = {{"plan_cache_mode", "force_generic_plan"},
                                               {"application_name", "rkl-pool-test"}}});
  auto show = [](pqxx::connection& conn, const char* name) {
    pqxx::nontransaction tx(conn);
    return tx.exec_params1("SELECT current_setting($1)", name)[0].as<std::string>();
  };
  absl::StatusOr<ConnectionPool::Lease> a = pool.Borrow();
  absl::StatusOr<ConnectionPool::Lease> b = pool.Borrow();  // a second, new connection
  ASSERT_TRUE(a.ok() && b.ok());
  for (ConnectionPool::Lease* lease : {&*a, &*b}) {
    EXPECT_EQ(show(lease->connection(), "plan_cache_mode"), "force_generic_plan");
    EXPECT_EQ(show(lease->connection(), "application_name"), "rkl-pool-test");
  }
  // Without settings a connection has the server's default.
  ConnectionPool plain(PoolOptions{.dsn = database().dsn(), .max_size = 1});
  absl::StatusOr<ConnectionPool::Lease> c = plain.Borrow();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(show(c->connection(), "plan_cache_mode"), "auto");
}

// Issue 21, finding 6: a service's statements cannot outlive its callers' deadlines.
TEST_F(ConnectionPoolTest, StatementAndLockTimeoutsEndAStatementThatWouldOutliveItsCaller) {
  StatementTimeouts timeouts{.statement = absl::Milliseconds(300), .lock = absl::Milliseconds(100)};
  EXPECT_THAT(
      StatementTimeoutSettings(timeouts),
      ::testing::ElementsAre(std::pair<std::string, std::string>("statement_timeout", "300ms"),
                             std::pair<std::string, std::string>("lock_timeout", "100ms")));
  EXPECT_TRUE(
      StatementTimeoutSettings({.statement = absl::ZeroDuration(), .lock = absl::ZeroDuration()})
          .empty());
  ConnectionPool pool(PoolOptions{
      .dsn = database().dsn(), .max_size = 1, .settings = StatementTimeoutSettings(timeouts)});
  // A statement that would run for a minute is cancelled: DEADLINE_EXCEEDED.
  absl::StatusOr<int> slept =
      RunAutocommitRead(pool, [](pqxx::nontransaction& tx) -> absl::StatusOr<int> {
        tx.exec("SELECT pg_sleep(60)");
        return 1;
      });
  EXPECT_EQ(slept.status().code(), absl::StatusCode::kDeadlineExceeded) << slept.status();
  EXPECT_THAT(slept.status().message(), HasSubstr("57014"));

  // A row another connection holds locked (for as long as it likes) is refused: ABORTED.
  pqxx::connection holder(database().dsn());
  {
    pqxx::nontransaction setup(holder);
    setup.exec("CREATE TABLE timeout_probe (id int PRIMARY KEY, v int)");
    setup.exec("INSERT INTO timeout_probe VALUES (1, 0)");
  }
  pqxx::work lock(holder);
  lock.exec("SELECT v FROM timeout_probe WHERE id = 1 FOR UPDATE");
  absl::Status write = RunAutocommitWrite(pool, [](OneStatement& stmt) {
    stmt.Exec("UPDATE timeout_probe SET v = 1 WHERE id = 1");
    return absl::OkStatus();
  });
  EXPECT_EQ(write.code(), absl::StatusCode::kAborted) << write;
  EXPECT_THAT(write.message(), HasSubstr("55P03"));
  lock.abort();
}

TEST_F(ConnectionPoolTest, ARefusedSessionSettingIsUnavailableNamingIt) {
  ConnectionPool pool(PoolOptions{
      .dsn = database().dsn(), .max_size = 1, .settings = {{"plan_cache_mode", "sometimes"}}});
  absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(lease.status().message(), HasSubstr("plan_cache_mode"));
  EXPECT_EQ(pool.open_connections(), 0);  // nothing half-set-up is kept or lent
}

TEST(ConnectionPoolNoServerTest, ClosedPortIsUnavailableWithoutPassword) {
  constexpr char kPassword[] = "Sup3r-S3cret-Passw0rd";
  const std::string dsn =
      absl::StrCat("host=127.0.0.1 port=", ClosedPort(), " user=rkl password=", kPassword,
                   " dbname=rkl connect_timeout=5");
  ConnectionPool pool(PoolOptions{.dsn = dsn, .max_size = 2});
  absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(lease.status().message(), HasSubstr("cannot connect"));
  EXPECT_THAT(lease.status().message(), Not(HasSubstr(kPassword)));
  EXPECT_THAT(pool.redacted_dsn(), Not(HasSubstr(kPassword)));
  EXPECT_EQ(pool.open_connections(), 0);  // the reserved slot was given back

  absl::Status tx = RunInTransaction(pool, [](pqxx::work&) { return absl::OkStatus(); });
  EXPECT_EQ(tx.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(tx.message(), Not(HasSubstr(kPassword)));
}

TEST_F(ConnectionPoolTest, WrongPasswordIsUnavailableWithoutPassword) {
  constexpr char kPassword[] = "Wrong-Passw0rd-1234";
  ConnectionPool pool(PoolOptions{.dsn = absl::StrCat(database().dsn(), " password=", kPassword)});
  absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(lease.status().message(), Not(HasSubstr(kPassword)));
}

TEST(ConnectionPoolNoServerTest, MalformedDsnIsInvalidArgumentWithoutEcho) {
  ConnectionPool pool(PoolOptions{.dsn = "host=h password='unterminated-secret"});
  absl::StatusOr<ConnectionPool::Lease> lease = pool.Borrow();
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(lease.status().message(), Not(HasSubstr("unterminated-secret")));
}

}  // namespace
}  // namespace rkl::db
