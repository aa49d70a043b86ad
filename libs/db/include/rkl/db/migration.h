#pragma once
// Schema migrations: ordered SQL scripts compiled into the binary and applied at start-up.
//
// Each service keeps services/<svc>/migrations/NNN_name.sql; rkl_embed_migrations() (see
// libs/db/cmake/embed_migrations.cmake) turns them into a function returning
// std::span<const Migration>, so a binary carries its own schema and nothing is installed.
//
// ApplyMigrations guarantees:
//  - replicas starting together do not race: every step runs under one PostgreSQL
//    advisory lock (transaction-scoped, so it survives neither a lost connection nor a
//    transaction-pooling proxy in a half-held state), and re-reads what is applied under
//    that lock;
//  - each migration runs in its own transaction together with the row recording it
//    (version, name, SHA-256 of the SQL, applied_at): it is applied entirely or not at all;
//  - it refuses, with FAILED_PRECONDITION naming the version, to run when the list is not
//    strictly increasing, when an applied migration's checksum differs from the binary's,
//    or when the database and the binary disagree about history (a gap or a missing file);
//    versions newer than the binary's last are tolerated, so an older replica can start
//    during a rolling upgrade.
// Migration SQL must not contain transaction control (BEGIN/COMMIT) or statements that
// cannot run in a transaction (CREATE INDEX CONCURRENTLY). It is trusted, fixed text: the
// one place rkl executes SQL that is not parameterised.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/db/connection_pool.h"

namespace rkl::db {

struct Migration {
  int64_t version;        // NNN from the file name; > 0, strictly increasing
  std::string_view name;  // the file name's rest, without .sql
  std::string_view sql;   // the file's bytes
};

inline constexpr std::string_view kDefaultSchemaTable = "rkl_schema_migrations";

// FAILED_PRECONDITION (naming the version) unless versions are > 0 and strictly increasing.
absl::Status ValidateMigrations(std::span<const Migration> migrations);

// Lower-case hex SHA-256 of the SQL text, as stored in the record table (and as printed by
// `sha256sum NNN_name.sql`).
std::string MigrationChecksum(std::string_view sql);

// Applies the migrations not yet recorded in `schema_table` (created if missing;
// "table" or "schema.table", lower-case identifiers) and returns how many it applied.
absl::StatusOr<int> ApplyMigrations(ConnectionPool& pool, std::span<const Migration> migrations,
                                    std::string_view schema_table = kDefaultSchemaTable);
// Same, over a private one-connection pool, for start-up code that has no pool yet.
absl::StatusOr<int> ApplyMigrations(std::string_view dsn, std::span<const Migration> migrations,
                                    std::string_view schema_table = kDefaultSchemaTable);

// For a role that may not migrate (a service's runtime role, docs/operations.md): OK when
// every migration of the binary is recorded in `schema_table` with its checksum (newer ones
// recorded by a newer binary are tolerated, as above). Otherwise FAILED_PRECONDITION naming
// the first migration missing or changed, or saying that the database has no schema yet.
// Changes nothing and takes no lock; needs only SELECT on `schema_table`.
absl::Status CheckMigrationsApplied(ConnectionPool& pool, std::span<const Migration> migrations,
                                    std::string_view schema_table = kDefaultSchemaTable);

}  // namespace rkl::db
