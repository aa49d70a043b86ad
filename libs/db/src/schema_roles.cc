#include "rkl/db/schema_roles.h"

#include <pqxx/pqxx>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "identifiers.h"
#include "rkl/db/statement_timeouts.h"
#include "rkl/db/transaction.h"
#include "spdlog/spdlog.h"

namespace rkl::db {
namespace {

// The grants take a key of their own in the migration lock's class.
using internal::IsLowerIdentifier;
using internal::kAdvisoryLockClass;
constexpr char kGrantsLockKey[] = "rkl_runtime_grants";

// The privileges of one line, upper-case, each checked against what that kind of object may
// be granted. TRUNCATE, REFERENCES and TRIGGER are never among them: the first empties an
// audit table without firing its row triggers, the others reach into the schema.
absl::StatusOr<std::vector<std::string>> ParsePrivileges(const RuntimeGrant& g) {
  static const std::set<std::string> kTable = {"SELECT", "INSERT", "UPDATE", "DELETE"};
  static const std::set<std::string> kSequence = {"USAGE", "SELECT"};
  const std::set<std::string>& allowed =
      g.object == RuntimeGrant::Object::kTable ? kTable : kSequence;
  std::vector<std::string> out;
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(g.privileges.data(), g.privileges.size()), ',')) {
    std::string p = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(part));
    if (!allowed.contains(p)) {
      return absl::InvalidArgumentError(
          absl::StrCat("runtime grant on ", std::string(g.name), ": '", p, "' is not one of ",
                       absl::StrJoin(allowed, ", "), " (a runtime role never gets TRUNCATE, ",
                       "REFERENCES or TRIGGER)"));
    }
    out.push_back(std::move(p));
  }
  return out;
}

// The UPDATE columns of a line, checked; empty when it has none.
absl::StatusOr<std::vector<std::string>> ParseUpdateColumns(const RuntimeGrant& g) {
  std::vector<std::string> out;
  if (g.update_columns.empty()) return out;
  const std::string name(g.name);
  if (g.object != RuntimeGrant::Object::kTable) {
    return absl::InvalidArgumentError(
        absl::StrCat("runtime grant on ", name, ": UPDATE columns are for tables only"));
  }
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(g.update_columns.data(), g.update_columns.size()), ',')) {
    std::string column(absl::StripAsciiWhitespace(part));
    if (!IsLowerIdentifier(column)) {
      return absl::InvalidArgumentError(absl::StrCat("runtime grant on ", name, ": UPDATE column '",
                                                     column, "' is not an identifier"));
    }
    out.push_back(std::move(column));
  }
  return out;
}

struct RoleFacts {
  bool exists = false;
  std::string migrating_role;
  bool superuser = false;
  bool member_of_migrating_role = false;
  std::string owned_object;  // one object of the schema it owns, if any
};

RoleFacts ReadRoleFacts(pqxx::transaction_base& tx, std::string_view role) {
  RoleFacts f;
  pqxx::row who = tx.exec1("SELECT current_user::text");
  f.migrating_role = who[0].as<std::string>();
  pqxx::result r = tx.exec_params(
      "SELECT r.rolsuper, pg_has_role(r.oid, current_user, 'MEMBER') FROM pg_roles r "
      "WHERE r.rolname = $1",
      std::string(role));
  if (r.empty()) return f;
  f.exists = true;
  f.superuser = r[0][0].as<bool>();
  f.member_of_migrating_role = r[0][1].as<bool>();
  pqxx::result owned = tx.exec_params(
      "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
      "JOIN pg_roles o ON o.oid = c.relowner WHERE n.nspname = 'public' AND o.rolname = $1 "
      "ORDER BY c.relname LIMIT 1",
      std::string(role));
  if (!owned.empty()) f.owned_object = owned[0][0].as<std::string>();
  return f;
}

absl::Status CheckRuntimeRole(const RoleFacts& f, std::string_view role) {
  const std::string r(role);
  if (!f.exists) {
    return absl::FailedPreconditionError(
        absl::StrCat("runtime role '", r, "' does not exist (create it: docs/operations.md)"));
  }
  if (f.superuser) {
    return absl::FailedPreconditionError(absl::StrCat(
        "runtime role '", r, "' is a superuser: it could disable the audit's triggers"));
  }
  if (r == f.migrating_role || f.member_of_migrating_role) {
    return absl::FailedPreconditionError(absl::StrCat(
        "runtime role '", r, "' is ", r == f.migrating_role ? "" : "a member of ",
        "the role migrations run as ('", f.migrating_role,
        "'): the service must run as a role that owns nothing (db.dsn and db.owner_dsn name "
        "two different roles)"));
  }
  if (!f.owned_object.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("runtime role '", r, "' owns ", f.owned_object,
                     ": hand its objects to the owner first (REASSIGN OWNED BY ", r, " TO ",
                     f.migrating_role, ", in this database)"));
  }
  return absl::OkStatus();
}

std::string Quote(pqxx::transaction_base& tx, std::string_view name) {
  return tx.quote_name(std::string(name));
}

absl::Status ApplyGrants(ConnectionPool& owner_pool, std::string_view runtime_role,
                         std::span<const RuntimeGrant> grants) {
  return RunInTransaction(owner_pool, [&](pqxx::work& tx) -> absl::Status {
    tx.exec_params("SELECT pg_advisory_xact_lock($1, hashtext($2))", kAdvisoryLockClass,
                   std::string(kGrantsLockKey));
    if (absl::Status s = CheckRuntimeRole(ReadRoleFacts(tx, runtime_role), runtime_role); !s.ok()) {
      return s;
    }
    const std::string role = Quote(tx, runtime_role);
    const std::string database =
        Quote(tx, tx.exec1("SELECT current_database()")[0].as<std::string>());
    // Start from nothing on this schema, so the role ends with exactly the list.
    tx.exec(absl::StrCat("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ", role));
    tx.exec(absl::StrCat("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ", role));
    tx.exec(absl::StrCat("REVOKE CREATE ON SCHEMA public FROM PUBLIC, ", role));
    // Temporary tables are DDL too; the services use none. (Only the database's owner can
    // revoke this; for anyone else PostgreSQL warns and changes nothing.)
    tx.exec(absl::StrCat("REVOKE TEMPORARY ON DATABASE ", database, " FROM PUBLIC, ", role));
    tx.exec(absl::StrCat("GRANT USAGE ON SCHEMA public TO ", role));
    tx.exec(absl::StrCat("GRANT SELECT ON ", Quote(tx, kDefaultSchemaTable), " TO ", role));
    for (const RuntimeGrant& g : grants) {
      absl::StatusOr<std::vector<std::string>> privileges = ParsePrivileges(g);
      if (!privileges.ok()) return privileges.status();
      absl::StatusOr<std::vector<std::string>> columns = ParseUpdateColumns(g);
      if (!columns.ok()) return columns.status();
      const std::string object = absl::StrCat(
          g.object == RuntimeGrant::Object::kTable ? "TABLE " : "SEQUENCE ", Quote(tx, g.name));
      tx.exec(
          absl::StrCat("GRANT ", absl::StrJoin(*privileges, ", "), " ON ", object, " TO ", role));
      if (!columns->empty()) {
        std::vector<std::string> quoted;
        for (const std::string& c : *columns) quoted.push_back(Quote(tx, c));
        tx.exec(absl::StrCat("GRANT UPDATE (", absl::StrJoin(quoted, ", "), ") ON ", object, " TO ",
                             role));
      }
    }
    if (tx.exec_params1("SELECT has_schema_privilege($1, 'public', 'CREATE')",
                        std::string(runtime_role))[0]
            .as<bool>()) {
      return absl::FailedPreconditionError(
          absl::StrCat("runtime role '", std::string(runtime_role),
                       "' may still CREATE in schema public (through another role it belongs "
                       "to): revoke that first"));
    }
    return absl::OkStatus();
  });
}

}  // namespace

absl::Status ValidateRuntimeGrants(std::span<const RuntimeGrant> grants) {
  for (const RuntimeGrant& g : grants) {
    if (!IsLowerIdentifier(g.name)) {
      return absl::InvalidArgumentError(absl::StrCat("runtime grant: '", std::string(g.name),
                                                     "' is not a lower-case identifier"));
    }
    absl::StatusOr<std::vector<std::string>> privileges = ParsePrivileges(g);
    if (!privileges.ok()) return privileges.status();
    absl::StatusOr<std::vector<std::string>> columns = ParseUpdateColumns(g);
    if (!columns.ok()) return columns.status();
    if (!columns->empty() && absl::c_linear_search(*privileges, "UPDATE")) {
      return absl::InvalidArgumentError(
          absl::StrCat("runtime grant on ", std::string(g.name),
                       ": UPDATE of the whole row and of some columns at once; name one"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> MigrateAsOwner(std::string_view owner_dsn, std::string_view runtime_role,
                                   std::span<const Migration> migrations,
                                   std::span<const RuntimeGrant> grants) {
  if (absl::Status s = ValidateRuntimeGrants(grants); !s.ok()) return s;
  ConnectionPool pool(PoolOptions{.dsn = std::string(owner_dsn), .max_size = 1});
  // Refuse a role that could undo what follows before the migrations change anything.
  absl::Status role_ok = RunInReadOnlyTransaction(pool, [&](pqxx::work& tx) {
    return CheckRuntimeRole(ReadRoleFacts(tx, runtime_role), runtime_role);
  });
  if (!role_ok.ok()) return role_ok;
  absl::StatusOr<int> applied = ApplyMigrations(pool, migrations);
  if (!applied.ok()) return applied.status();
  if (absl::Status s = ApplyGrants(pool, runtime_role, grants); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("granting the runtime role: ", s.message()));
  }
  return applied;
}

void DeclareOwnerDsnConfig(ConfigSchema& schema) {
  schema
      .String("db.owner_dsn",
              "libpq DSN of the role that owns the database, used only to apply the schema "
              "migrations and grant db.dsn's role its privileges: by --migrate-only, or at "
              "start-up when set (then closed). Leave it empty for the running service, so it "
              "never holds the owner's password (docs/operations.md)")
      .Default("")
      .Secret();
}

void DeclareDatabaseConfig(ConfigSchema& schema, DatabaseConfigHelp help) {
  schema.String("db.dsn", std::move(help.dsn)).Required().Secret();
  DeclareOwnerDsnConfig(schema);
  DeclareStatementTimeoutConfig(schema);
  schema.Int("db.pool_size", std::move(help.pool_size))
      .Default(std::move(help.pool_size_default))
      .Range(1, help.max_pool_size);
}

absl::StatusOr<SchemaSetupResult> SetUpSchema(ConnectionPool& runtime_pool,
                                              const SchemaSetup& setup,
                                              std::span<const Migration> migrations,
                                              std::span<const RuntimeGrant> grants) {
  if (setup.migrate_only && setup.owner_dsn.empty()) {
    return absl::InvalidArgumentError(
        "--migrate-only needs db.owner_dsn: the DSN of the role that owns the database");
  }
  SchemaSetupResult result;
  struct Facts {
    std::string role;
    bool superuser = false;
    std::string owned_object;
  };
  auto read_facts = [&]() -> absl::StatusOr<Facts> {
    return RunAutocommitRead(runtime_pool, [](pqxx::nontransaction& tx) -> absl::StatusOr<Facts> {
      pqxx::row r = tx.exec1(
          "SELECT current_user::text, rolsuper, (SELECT c.relname::text FROM pg_class c "
          "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND "
          "c.relowner = r.oid ORDER BY c.relname LIMIT 1) FROM pg_roles r "
          "WHERE r.rolname = current_user");
      return Facts{r[0].as<std::string>(), r[1].as<bool>(),
                   r[2].is_null() ? std::string() : r[2].as<std::string>()};
    });
  };
  absl::StatusOr<Facts> facts = read_facts();
  if (!facts.ok()) return facts.status();
  result.runtime_role = facts->role;
  if (!setup.owner_dsn.empty()) {
    absl::StatusOr<int> applied = MigrateAsOwner(setup.owner_dsn, facts->role, migrations, grants);
    if (!applied.ok()) return applied.status();
    result.applied = *applied;
    result.migrated = true;
  }
  if (absl::Status s = CheckMigrationsApplied(runtime_pool, migrations); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(),
                                               " (run this binary with --migrate-only and "
                                               "db.owner_dsn: docs/operations.md)"));
  }
  if (facts->superuser) {
    result.warning = absl::StrCat("the runtime role '", facts->role,
                                  "' is a superuser: it can disable the audit's triggers");
  } else if (!facts->owned_object.empty()) {
    result.warning = absl::StrCat("the runtime role '", facts->role, "' owns ", facts->owned_object,
                                  ": it can alter its tables and disable the audit's triggers; "
                                  "migrate as a separate owner role (docs/operations.md)");
  }
  return result;
}

PoolOptions PoolOptionsFromConfig(const Config& config) {
  return {.dsn = config.GetString("db.dsn"),
          .max_size = static_cast<int>(config.GetInt("db.pool_size")),
          .settings = StatementTimeoutSettings(StatementTimeoutsFromConfig(config))};
}

absl::Status SetUpDaemonSchema(ConnectionPool& runtime_pool, const Config& config,
                               bool migrate_only, std::span<const Migration> migrations,
                               std::span<const RuntimeGrant> grants) {
  return SetUpDaemonSchema(runtime_pool, config.GetString("db.owner_dsn"), migrate_only, migrations,
                           grants);
}

absl::Status SetUpDaemonSchema(ConnectionPool& runtime_pool, const std::string& owner_dsn,
                               bool migrate_only, std::span<const Migration> migrations,
                               std::span<const RuntimeGrant> grants) {
  absl::StatusOr<SchemaSetupResult> result = SetUpSchema(
      runtime_pool, {.owner_dsn = owner_dsn, .migrate_only = migrate_only}, migrations, grants);
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat("database ", runtime_pool.redacted_dsn(),
                                     ": schema: ", result.status().message()));
  }
  if (result->migrated) {
    spdlog::info(
        "database {}: {} migration(s) applied as the owner; runtime role '{}' granted its "
        "privileges",
        runtime_pool.redacted_dsn(), result->applied, result->runtime_role);
  }
  if (!result->warning.empty()) {
    spdlog::warn("database {}: {}", runtime_pool.redacted_dsn(), result->warning);
  }
  return absl::OkStatus();
}

}  // namespace rkl::db
