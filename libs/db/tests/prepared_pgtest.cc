// db::Exec against real PostgreSQL: a statement is prepared once per connection under a
// name derived from its text, parameters are bound (never in the text), it survives a
// rolled-back transaction, and a name collision fails loudly.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "rkl/db/prepared.h"
#include "rkl/testing/service_database.h"

namespace rkl::db {
namespace {

constexpr char kInsert[] = "INSERT INTO kv (k, v) VALUES ($1, $2)";
constexpr char kSelect[] = "SELECT v FROM kv WHERE k = $1";

class PreparedTest : public rkl::testing::PgFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    Sql("CREATE TABLE kv (k text PRIMARY KEY, v bytea NOT NULL)");
    conn_.emplace(database().dsn());
  }

  // This connection's prepared statements, by name.
  pqxx::result Prepared() {
    pqxx::work tx(*conn_);
    return tx.exec("SELECT name, statement FROM pg_prepared_statements ORDER BY name");
  }

  std::optional<pqxx::connection> conn_;
};

TEST(PreparedNameTest, DependsOnlyOnTheText) {
  EXPECT_EQ(PreparedName(kInsert), PreparedName(std::string(kInsert)));
  EXPECT_NE(PreparedName(kInsert), PreparedName(kSelect));
  EXPECT_THAT(PreparedName(kSelect), ::testing::MatchesRegex("rkl_[0-9a-f]{16}"));
}

TEST_F(PreparedTest, PreparesOncePerConnectionAndBindsParameters) {
  const std::string secret_looking = "value-never-in-statement-text";
  {
    pqxx::work tx(*conn_);
    for (int i = 0; i < 5; ++i) {
      Exec(tx, kInsert, "k" + std::to_string(i),
           pqxx::binarystring(secret_looking.data(), secret_looking.size()));
    }
    tx.commit();
  }
  {
    pqxx::work tx(*conn_);
    pqxx::row r = Exec1(tx, kSelect, "k3");
    EXPECT_EQ(pqxx::binarystring(r[0]).str(), secret_looking);
    EXPECT_TRUE(Exec(tx, kSelect, "missing").empty());
  }
  pqxx::result prepared = Prepared();
  ASSERT_EQ(prepared.size(), 2u);
  for (const auto& row : prepared) {
    const std::string name = row[0].as<std::string>();
    const std::string text = row[1].as<std::string>();
    EXPECT_TRUE(name == PreparedName(kInsert) || name == PreparedName(kSelect)) << name;
    EXPECT_THAT(text, ::testing::Not(::testing::HasSubstr(secret_looking)));
  }
}

TEST_F(PreparedTest, StatementSurvivesARolledBackTransaction) {
  {
    pqxx::work tx(*conn_);
    Exec(tx, kInsert, "a", pqxx::binarystring(std::string("1")));
    // Not committed: rolled back when tx goes out of scope.
  }
  pqxx::work tx(*conn_);
  EXPECT_TRUE(Exec(tx, kSelect, "a").empty());
  Exec(tx, kInsert, "a", pqxx::binarystring(std::string("2")));
  EXPECT_EQ(Exec(tx, kSelect, "a").size(), 1u);
}

TEST_F(PreparedTest, Exec1RefusesAnythingButOneRow) {
  pqxx::work tx(*conn_);
  EXPECT_THROW(Exec1(tx, kSelect, "none"), pqxx::unexpected_rows);
}

TEST_F(PreparedTest, NameReusedForOtherTextFailsLoudly) {
  // A collision of PreparedName would look like this; libpqxx refuses it.
  conn_->prepare(PreparedName(kSelect), "SELECT 1");
  pqxx::work tx(*conn_);
  EXPECT_ANY_THROW(Exec(tx, kSelect, "a"));
}

}  // namespace
}  // namespace rkl::db
