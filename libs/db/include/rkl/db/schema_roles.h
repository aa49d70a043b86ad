#pragma once
// The two database roles of a service: the owner that migrates, the runtime role it runs as
// (docs/operations.md, "Database roles").
//
//  - The owner owns the database and everything the migrations create. Only the migration
//    step uses it: `rkl-<svc> --migrate-only` with db.owner_dsn, run by whoever deploys, so
//    the running service never holds the owner's password (or, for development, a daemon
//    started with db.owner_dsn migrates first and closes that connection before serving).
//  - The runtime role owns nothing, so it can neither ALTER, DROP nor disable a trigger of any
//    table. It holds exactly the privileges of the service's RuntimeGrant list, which the
//    migration step grants: DML on the working tables (UPDATE limited to some columns where
//    the rest of a row must never change), SELECT and INSERT on an audit table, never
//    TRUNCATE, REFERENCES or TRIGGER.
//
// Guarantees of MigrateAsOwner (the migration step):
//  - it refuses, before changing anything, a runtime role that does not exist, is the role
//    migrating, is a member of it, is a superuser, or owns an object of the schema (each
//    could undo the grants or the audit's triggers): FAILED_PRECONDITION naming the role and
//    the rule; and a grant list with a privilege outside the ones above or a malformed
//    name: INVALID_ARGUMENT;
//  - it applies the migrations (ApplyMigrations), then, in one transaction, makes the runtime
//    role's privileges on the schema's tables and sequences exactly the list given plus
//    SELECT on the migration record: whatever else it held there is revoked, so running the
//    step again converges a role someone granted more to by hand;
//  - steps running at once from several replicas are serialised (advisory locks).
// Nothing here prints a DSN's password. Stateless; safe from any thread.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/config.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/migration.h"

namespace rkl::db {

// One privilege line of a service's runtime role.
struct RuntimeGrant {
  enum class Object { kTable, kSequence };
  Object object;
  std::string_view name;        // lower-case identifier in schema public
  std::string_view privileges;  // comma-separated: SELECT, INSERT, UPDATE, DELETE | USAGE, SELECT
  // Tables only: UPDATE of these columns alone (comma-separated), for a row whose other
  // columns must never change once written. `privileges` then does not name UPDATE.
  std::string_view update_columns = "";
};
constexpr RuntimeGrant TableGrant(std::string_view name, std::string_view privileges,
                                  std::string_view update_columns = "") {
  return {RuntimeGrant::Object::kTable, name, privileges, update_columns};
}
constexpr RuntimeGrant SequenceGrant(std::string_view name, std::string_view privileges) {
  return {RuntimeGrant::Object::kSequence, name, privileges};
}

// A service's own grants followed by those of a shared part (e.g. the audit tables of
// libs/audit), as one list at compile time.
template <size_t N, size_t M>
constexpr std::array<RuntimeGrant, N + M> JoinGrants(const RuntimeGrant (&own)[N],
                                                     const RuntimeGrant (&shared)[M]) {
  std::array<RuntimeGrant, N + M> all{};
  for (size_t i = 0; i < N; ++i) all[i] = own[i];
  for (size_t i = 0; i < M; ++i) all[N + i] = shared[i];
  return all;
}

// INVALID_ARGUMENT naming the object unless every line is well-formed and allowed.
absl::Status ValidateRuntimeGrants(std::span<const RuntimeGrant> grants);

// The migration step: see the guarantees above. Returns how many migrations it applied.
absl::StatusOr<int> MigrateAsOwner(std::string_view owner_dsn, std::string_view runtime_role,
                                   std::span<const Migration> migrations,
                                   std::span<const RuntimeGrant> grants);

// Declares db.owner_dsn (secret, optional) on a daemon's schema.
void DeclareOwnerDsnConfig(ConfigSchema& schema);

// What a daemon does with its database before serving.
struct SchemaSetup {
  // DSN of the owner role; empty when this process must not migrate.
  std::string owner_dsn{};
  // Apply the migrations and stop: `--migrate-only`. Needs owner_dsn.
  bool migrate_only = false;
};
struct SchemaSetupResult {
  int applied = 0;        // migrations this process applied
  bool migrated = false;  // whether it ran the migration step at all
  std::string runtime_role{};
  // Empty, or why the runtime role is stronger than it should be (a superuser, or it owns
  // a table): the daemon logs it as a warning.
  std::string warning{};
};
// The start-up step of every daemon, over its runtime pool:
//  - with owner_dsn: MigrateAsOwner for the pool's own role (current_user), over a
//    connection of its own that is closed before this returns;
//  - in every case: CheckMigrationsApplied as the runtime role, so a daemon whose schema is
//    behind its binary does not start (FAILED_PRECONDITION saying to run --migrate-only).
// migrate_only without owner_dsn is INVALID_ARGUMENT naming db.owner_dsn.
absl::StatusOr<SchemaSetupResult> SetUpSchema(ConnectionPool& runtime_pool,
                                              const SchemaSetup& setup,
                                              std::span<const Migration> migrations,
                                              std::span<const RuntimeGrant> grants);

// A daemon's runtime pool options from its configuration: db.dsn, db.pool_size and the
// statement timeouts (DeclareStatementTimeoutConfig).
PoolOptions PoolOptionsFromConfig(const Config& config);

// What a daemon says of its own database's keys (DeclareDatabaseConfig).
struct DatabaseConfigHelp {
  std::string dsn;        // which database db.dsn names
  std::string pool_size;  // what bounds db.pool_size
  std::string pool_size_default;
  int64_t max_pool_size = 256;
};
// Declares a daemon's database keys: db.dsn (required, secret), db.owner_dsn
// (DeclareOwnerDsnConfig), the statement timeouts (DeclareStatementTimeoutConfig) and
// db.pool_size (1 to help.max_pool_size), as PoolOptionsFromConfig and SetUpDaemonSchema
// read them.
void DeclareDatabaseConfig(ConfigSchema& schema, DatabaseConfigHelp help);

// SetUpSchema with db.owner_dsn, as every daemon runs it at start-up, and the log lines of
// what it did: the migrations applied and the runtime role granted, and the warning if the
// runtime role is stronger than it should be. An error says which database (DSN without
// password) and why.
absl::Status SetUpDaemonSchema(ConnectionPool& runtime_pool, const Config& config,
                               bool migrate_only, std::span<const Migration> migrations,
                               std::span<const RuntimeGrant> grants);
// The same with the owner's DSN given (the HSM's options carry it; "" = no owner DSN).
absl::Status SetUpDaemonSchema(ConnectionPool& runtime_pool, const std::string& owner_dsn,
                               bool migrate_only, std::span<const Migration> migrations,
                               std::span<const RuntimeGrant> grants);

}  // namespace rkl::db
