// db::Listener on a real PostgreSQL: it hears what other connections commit and nothing
// they roll back, tells its subscribers to read again when it listens again after losing
// its connection, and stops. Every wait is for an observable event (rkl/testing/wait.h).
#include <gtest/gtest.h>

#include <optional>
#include <pqxx/nontransaction>
#include <pqxx/transaction>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "rkl/db/listener.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/wait.h"

namespace rkl::db {
namespace {

constexpr char kChannel[] = "rkl_test_listener";

// What one subscriber heard.
class Heard {
 public:
  Listener::Callbacks Callbacks() {
    return {.notified =
                [this](const std::string& payload) {
                  absl::MutexLock lock(&mu_);
                  payloads_.push_back(payload);
                },
            .reset =
                [this] {
                  absl::MutexLock lock(&mu_);
                  ++resets_;
                }};
  }
  std::vector<std::string> payloads() {
    absl::MutexLock lock(&mu_);
    return payloads_;
  }
  bool HasHeard(const std::string& payload) {
    for (const std::string& p : payloads()) {
      if (p == payload) return true;
    }
    return false;
  }
  int resets() {
    absl::MutexLock lock(&mu_);
    return resets_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> payloads_;
  int resets_ = 0;
};

class ListenerTest : public rkl::testing::PgFixture {
 protected:
  void SetUp() override {
    PgFixture::SetUp();
    Sql("CREATE TABLE items (id text PRIMARY KEY)");
  }

  // An insert that notifies its id in the same statement (as KMS's TK writes do), on a
  // connection of its own; committed or rolled back.
  void Insert(const std::string& id, bool commit) {
    pqxx::connection conn(database().dsn());
    pqxx::work tx(conn);
    tx.exec_params(
        "WITH i AS (INSERT INTO items (id) VALUES ($1) RETURNING id) "
        "SELECT pg_notify('rkl_test_listener', id) FROM i",
        id);
    if (commit) tx.commit();  // else rolled back when tx goes
  }

  ListenerOptions Options() {
    return {.dsn = database().runtime_dsn(),
            .channel = kChannel,
            .initial_backoff = absl::Milliseconds(10),
            .max_backoff = absl::Milliseconds(100)};
  }
};

TEST_F(ListenerTest, DeliversACommittedNotificationAndNotARolledBackOne) {
  Listener listener(Options());
  Heard heard;
  Listener::Subscription subscription = listener.Subscribe(heard.Callbacks());
  listener.Start();
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return heard.resets() == 1; }));
  EXPECT_TRUE(listener.listening());

  Insert("rolled-back", false);
  Insert("committed", true);
  // Notifications arrive in commit order: once the later one is here, the rolled-back one
  // would have come before it.
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return heard.HasHeard("committed"); }));
  EXPECT_EQ(heard.payloads(), std::vector<std::string>{"committed"});
  EXPECT_EQ(heard.resets(), 1);
}

TEST_F(ListenerTest, EverySubscriberHearsUntilItsSubscriptionIsDropped) {
  Listener listener(Options());
  Heard first, second;
  Listener::Subscription a = listener.Subscribe(first.Callbacks());
  std::optional<Listener::Subscription> b = listener.Subscribe(second.Callbacks());
  listener.Start();
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return listener.listening(); }));
  Insert("one", true);
  ASSERT_TRUE(
      rkl::testing::WaitUntil([&] { return first.HasHeard("one") && second.HasHeard("one"); }));
  b.reset();
  Insert("two", true);
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return first.HasHeard("two"); }));
  EXPECT_EQ(second.payloads(), std::vector<std::string>{"one"});
}

TEST_F(ListenerTest, ALostConnectionIsReplacedAndEverySubscriberToldToReadAgain) {
  Listener listener(Options());
  Heard heard;
  Listener::Subscription subscription = listener.Subscribe(heard.Callbacks());
  listener.Start();
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return heard.resets() == 1; }));

  // The server ends the listener's backend (a restart, a failover would).
  const std::string name = Sql("SELECT current_database()")[0][0].as<std::string>();
  pqxx::connection admin(database().admin_dsn());
  pqxx::result ended = pqxx::nontransaction(admin).exec_params(
      "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
      "WHERE datname = $1 AND query LIKE 'LISTEN %'",
      name);
  ASSERT_EQ(ended.size(), 1u);

  // It listens again and says so: whatever was committed meanwhile is read again.
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return heard.resets() == 2; }));
  EXPECT_EQ(listener.listens(), 2u);
  Insert("after", true);
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return heard.HasHeard("after"); }));
}

TEST_F(ListenerTest, StopEndsTheListenerAndNoCallbackRunsAfterIt) {
  Listener listener(Options());
  Heard heard;
  Listener::Subscription subscription = listener.Subscribe(heard.Callbacks());
  listener.Start();
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return listener.listening(); }));
  listener.Stop();
  EXPECT_FALSE(listener.listening());
  listener.Stop();  // idempotent
  Insert("late", true);
  EXPECT_TRUE(heard.payloads().empty());
}

TEST_F(ListenerTest, AnUnreachableDatabaseIsRetriedUntilStopped) {
  ListenerOptions options = Options();
  options.dsn = "host=127.0.0.1 port=1 dbname=none connect_timeout=2 password=secret";
  Listener listener(options);
  Heard heard;
  Listener::Subscription subscription = listener.Subscribe(heard.Callbacks());
  listener.Start();
  listener.Stop();  // returns though it never connected
  EXPECT_EQ(listener.listens(), 0u);
  EXPECT_EQ(heard.resets(), 0);
}

}  // namespace
}  // namespace rkl::db
