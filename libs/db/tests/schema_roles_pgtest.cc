// The owner/runtime role split against real PostgreSQL: the migration step grants the
// runtime role exactly its list; that role then cannot change the schema, disable a trigger,
// truncate anything, or update or delete an append-only table; a role that could undo the
// grants is refused before anything changes; and a daemon without the owner's DSN starts
// only on a schema its binary knows.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "rkl/db/schema_roles.h"
#include "rkl/db/test_migrations/migrations.h"
#include "rkl/testing/service_database.h"

namespace rkl::db {
namespace {

using ::testing::HasSubstr;

// The test migrations plus an append-only journal shaped like a service's audit table.
constexpr char kJournalSql[] = R"sql(
CREATE TABLE journal (seq bigserial PRIMARY KEY, what text NOT NULL);
CREATE FUNCTION journal_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'journal is append-only';
END;
$$;
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal
  FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change();
)sql";

std::vector<Migration> AllMigrations() {
  std::span<const Migration> m = test_migrations::Migrations();
  std::vector<Migration> out(m.begin(), m.end());
  out.push_back({.version = 20, .name = "journal", .sql = kJournalSql});
  return out;
}

constexpr RuntimeGrant kGrants[] = {
    TableGrant("widgets", "SELECT, INSERT", "weight"),
    TableGrant("parts", "SELECT, INSERT, DELETE"),
    SequenceGrant("parts_id_seq", "USAGE"),
    TableGrant("counters", "SELECT, UPDATE"),
    TableGrant("journal", "SELECT, INSERT"),
    SequenceGrant("journal_seq_seq", "USAGE"),
};

class SchemaRolesTest : public rkl::testing::PgFixture {
 protected:
  absl::StatusOr<int> Migrate() {
    return MigrateAsOwner(database().owner_dsn(), database().runtime_role(), AllMigrations(),
                          kGrants);
  }

  // Runs one statement as the runtime role; the error text if PostgreSQL refused it.
  std::string AsRuntime(const std::string& statement) {
    try {
      pqxx::connection conn(database().runtime_dsn());
      pqxx::work tx(conn);
      tx.exec(statement);
      tx.commit();
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  }

  // Everything in the journal and the widgets, as the superuser sees it.
  std::string Snapshot() {
    return Sql("SELECT coalesce((SELECT string_agg(seq || ':' || what, ',' ORDER BY seq) FROM "
               "journal), '') || '|' || coalesce((SELECT string_agg(id || ':' || label, ',' "
               "ORDER BY id) FROM widgets), '')")[0][0]
        .as<std::string>();
  }
};

TEST_F(SchemaRolesTest, RuntimeRoleRunsItsDmlAndNothingElse) {
  ASSERT_TRUE(Migrate().ok());
  // What the list grants works.
  EXPECT_EQ(AsRuntime("INSERT INTO widgets VALUES (1, 'a', 1)"), "");
  EXPECT_EQ(AsRuntime("UPDATE widgets SET weight = 2 WHERE id = 1"), "");
  EXPECT_EQ(AsRuntime("INSERT INTO parts (widget_id) VALUES (1)"), "");
  EXPECT_EQ(AsRuntime("DELETE FROM parts"), "");
  EXPECT_EQ(AsRuntime("INSERT INTO journal (what) VALUES ('first'), ('second')"), "");
  EXPECT_EQ(AsRuntime("SELECT count(*) FROM journal"), "");
  EXPECT_EQ(AsRuntime("SELECT version FROM rkl_schema_migrations"), "");
  const std::string before = Snapshot();

  // The append-only journal: no UPDATE, DELETE or TRUNCATE, and its trigger stays on.
  for (const char* attack :
       {"UPDATE journal SET what = 'edited'", "DELETE FROM journal WHERE seq = 2",
        "TRUNCATE journal", "ALTER TABLE journal DISABLE TRIGGER USER",
        "ALTER TABLE journal DISABLE TRIGGER journal_append_only",
        "DROP TRIGGER journal_append_only ON journal", "DROP TABLE journal",
        "ALTER TABLE journal OWNER TO CURRENT_USER"}) {
    EXPECT_THAT(AsRuntime(attack),
                ::testing::AnyOf(HasSubstr("permission denied"), HasSubstr("must be owner")))
        << attack;
  }
  // No DDL and no TRUNCATE anywhere, and nothing beyond the list.
  for (const char* attack :
       {"UPDATE widgets SET label = 'relabelled'", "TRUNCATE widgets", "TRUNCATE parts",
        "TRUNCATE counters", "TRUNCATE rkl_schema_migrations", "DELETE FROM widgets",
        "INSERT INTO counters VALUES "
        "('x', 1)",
        "DELETE FROM rkl_schema_migrations", "CREATE TABLE intruder (x int)",
        "CREATE TEMP TABLE intruder (x int)", "ALTER TABLE widgets ADD COLUMN x int",
        "CREATE INDEX ON widgets (weight)", "ALTER TABLE widgets RENAME TO gadgets",
        "SELECT setval('parts_id_seq', 1)"}) {
    EXPECT_THAT(AsRuntime(attack),
                ::testing::AnyOf(HasSubstr("permission denied"), HasSubstr("must be owner")))
        << attack;
  }
  EXPECT_EQ(Snapshot(), before);
  EXPECT_FALSE(Sql("SELECT to_regclass('intruder') IS NOT NULL")[0][0].as<bool>());
  EXPECT_EQ(Sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'journal_append_only' AND "
                "tgenabled = 'O'")[0][0]
                .as<int>(),
            1);
}

TEST_F(SchemaRolesTest, RunningTheStepAgainTakesBackWhatWasGrantedByHand) {
  ASSERT_TRUE(Migrate().ok());
  Sql("GRANT DELETE, TRUNCATE ON journal TO " + database().runtime_role());
  auto again = Migrate();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 0);
  EXPECT_THAT(AsRuntime("TRUNCATE journal"), HasSubstr("permission denied"));
  EXPECT_THAT(AsRuntime("DELETE FROM journal"), HasSubstr("permission denied"));
}

TEST_F(SchemaRolesTest, RefusesARuntimeRoleThatCouldUndoTheGrantsBeforeMigrating) {
  auto same =
      MigrateAsOwner(database().owner_dsn(), database().owner_role(), AllMigrations(), kGrants);
  EXPECT_EQ(same.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(same.status().message(), HasSubstr("the role migrations run as"));

  Sql("GRANT " + database().owner_role() + " TO " + database().runtime_role());
  auto member = Migrate();
  EXPECT_EQ(member.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(member.status().message(), HasSubstr("a member of the role migrations run as"));
  Sql("REVOKE " + database().owner_role() + " FROM " + database().runtime_role());

  Sql("ALTER ROLE " + database().runtime_role() + " SUPERUSER");
  auto super = Migrate();
  EXPECT_EQ(super.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(super.status().message(), HasSubstr("is a superuser"));
  Sql("ALTER ROLE " + database().runtime_role() + " NOSUPERUSER");

  auto missing = MigrateAsOwner(database().owner_dsn(), "no_such_role", AllMigrations(), kGrants);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.status().message(), HasSubstr("'no_such_role' does not exist"));

  // None of them migrated anything.
  EXPECT_TRUE(Sql("SELECT to_regclass('rkl_schema_migrations') IS NULL")[0][0].as<bool>());

  // A runtime role that owns a table (the layout before the split) is refused too.
  Sql("CREATE TABLE legacy (x int)");
  Sql("ALTER TABLE legacy OWNER TO " + database().runtime_role());
  auto owner_of_table = Migrate();
  EXPECT_EQ(owner_of_table.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(owner_of_table.status().message(), HasSubstr("owns legacy"));
  EXPECT_THAT(owner_of_table.status().message(), HasSubstr("REASSIGN OWNED BY"));
}

TEST_F(SchemaRolesTest, GrantListsNeverCarryTruncateOrSchemaPrivileges) {
  for (const RuntimeGrant& bad :
       {TableGrant("journal", "SELECT, TRUNCATE"), TableGrant("journal", "TRIGGER"),
        TableGrant("journal", "REFERENCES"), TableGrant("journal", "ALL"),
        SequenceGrant("journal_seq_seq", "UPDATE"), TableGrant("Journal", "SELECT"),
        TableGrant("journal; DROP TABLE widgets", "SELECT"),
        TableGrant("journal", "SELECT, UPDATE", "what"), TableGrant("journal", "SELECT", "wh at"),
        RuntimeGrant{RuntimeGrant::Object::kSequence, "journal_seq_seq", "USAGE", "last_value"}}) {
    EXPECT_EQ(ValidateRuntimeGrants({&bad, 1}).code(), absl::StatusCode::kInvalidArgument)
        << bad.name << " " << bad.privileges;
    auto refused = MigrateAsOwner(database().owner_dsn(), database().runtime_role(),
                                  AllMigrations(), std::span<const RuntimeGrant>(&bad, 1));
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(Sql("SELECT to_regclass('rkl_schema_migrations') IS NULL")[0][0].as<bool>());
  EXPECT_TRUE(ValidateRuntimeGrants(kGrants).ok());
}

TEST_F(SchemaRolesTest, ADaemonWithoutTheOwnersDsnStartsOnlyOnACurrentSchema) {
  ConnectionPool runtime({.dsn = database().runtime_dsn(), .max_size = 2});
  auto unmigrated = SetUpSchema(runtime, {}, AllMigrations(), kGrants);
  EXPECT_EQ(unmigrated.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(unmigrated.status().message(), HasSubstr("no schema yet"));
  EXPECT_THAT(unmigrated.status().message(), HasSubstr("--migrate-only"));

  auto no_owner =
      SetUpSchema(runtime, {.owner_dsn = "", .migrate_only = true}, AllMigrations(), kGrants);
  EXPECT_EQ(no_owner.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_owner.status().message(), HasSubstr("db.owner_dsn"));

  // The migration step, as `--migrate-only` runs it.
  auto step = SetUpSchema(runtime, {.owner_dsn = database().owner_dsn(), .migrate_only = true},
                          AllMigrations(), kGrants);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->migrated);
  EXPECT_EQ(step->applied, 4);
  EXPECT_EQ(step->runtime_role, database().runtime_role());
  EXPECT_EQ(step->warning, "");

  auto serve = SetUpSchema(runtime, {}, AllMigrations(), kGrants);
  ASSERT_TRUE(serve.ok()) << serve.status();
  EXPECT_FALSE(serve->migrated);
  EXPECT_EQ(serve->warning, "");

  // A newer binary (one more migration) does not start until the step has run again.
  std::vector<Migration> newer = AllMigrations();
  newer.push_back({.version = 21, .name = "more", .sql = "CREATE TABLE more (x int)"});
  auto behind = SetUpSchema(runtime, {}, newer, kGrants);
  EXPECT_EQ(behind.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(behind.status().message(), HasSubstr("migration 21 (more) is not applied"));
  EXPECT_TRUE(Sql("SELECT to_regclass('more') IS NULL")[0][0].as<bool>());
}

TEST_F(SchemaRolesTest, ARuntimeRoleThatOwnsTheSchemaIsReported) {
  // The single-role layout: the service runs as the owner. It starts, with a warning.
  ASSERT_TRUE(ApplyMigrations(database().owner_dsn(), AllMigrations()).ok());
  ConnectionPool as_owner({.dsn = database().owner_dsn(), .max_size = 1});
  auto setup = SetUpSchema(as_owner, {}, AllMigrations(), kGrants);
  ASSERT_TRUE(setup.ok()) << setup.status();
  EXPECT_THAT(setup->warning, HasSubstr("owns"));
  EXPECT_THAT(setup->warning, HasSubstr("disable the audit's triggers"));
}

}  // namespace
}  // namespace rkl::db
