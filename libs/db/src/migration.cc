#include "rkl/db/migration.h"

#include <openssl/evp.h>

#include <map>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "identifiers.h"
#include "rkl/db/errors.h"
#include "rkl/db/transaction.h"

namespace rkl::db {
namespace {

// The migration lock's second key is hashtext(table), so services sharing a database under
// different record tables do not wait on each other.
using internal::IsLowerIdentifier;
using internal::kAdvisoryLockClass;

std::string Describe(const Migration& m) {
  return absl::StrCat(m.version, " (", std::string(m.name), ")");
}

// "table" or "schema.table" → quoted SQL name. Identifiers cannot be bind parameters, so
// they are checked here and spliced in quoted.
absl::StatusOr<std::string> QuotedTableName(std::string_view schema_table) {
  std::vector<std::string> parts =
      absl::StrSplit(absl::string_view(schema_table.data(), schema_table.size()), '.');
  if (parts.size() > 2) parts.clear();
  std::string quoted;
  for (const std::string& part : parts) {
    if (!IsLowerIdentifier(part)) {
      parts.clear();
      break;
    }
    absl::StrAppend(&quoted, quoted.empty() ? "" : ".", "\"", part, "\"");
  }
  if (parts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("migration table name must be 'table' or 'schema.table' in lower-case "
                     "identifiers, got '",
                     std::string(schema_table), "'"));
  }
  return quoted;
}

// The server's first line, minus libpq's "ERROR:  " prefix. Used only for migration SQL,
// which is fixed text without parameters, so there is no value in it to leak.
std::string ServerMessage(const std::exception& e) {
  absl::string_view text = absl::StripAsciiWhitespace(e.what());
  text = text.substr(0, text.find('\n'));
  if (absl::StartsWith(text, "ERROR:")) text = absl::StripLeadingAsciiWhitespace(text.substr(6));
  return std::string(text);
}

struct AppliedRow {
  std::string name;
  std::string checksum;
};

// Takes the lock, creates the record table if missing, and reads it.
std::map<int64_t, AppliedRow> LockAndReadApplied(pqxx::work& tx, const std::string& table,
                                                 std::string_view schema_table) {
  tx.exec_params("SELECT pg_advisory_xact_lock($1, hashtext($2))", kAdvisoryLockClass,
                 std::string(schema_table));
  tx.exec(absl::StrCat("CREATE TABLE IF NOT EXISTS ", table,
                       " (version bigint PRIMARY KEY,"
                       " name text NOT NULL,"
                       " checksum text NOT NULL,"
                       " applied_at timestamptz NOT NULL DEFAULT now())"));
  std::map<int64_t, AppliedRow> applied;
  for (const pqxx::row& row :
       tx.exec(absl::StrCat("SELECT version, name, checksum FROM ", table, " ORDER BY version"))) {
    applied[row[0].as<int64_t>()] = {row[1].as<std::string>(), row[2].as<std::string>()};
  }
  return applied;
}

// Whether the recorded history is one this binary can continue from.
absl::Status CheckHistory(std::span<const Migration> migrations,
                          const std::map<int64_t, AppliedRow>& applied) {
  if (migrations.empty()) return absl::OkStatus();
  const int64_t last_known = migrations.back().version;
  std::map<int64_t, const Migration*> known;
  for (const Migration& m : migrations) known[m.version] = &m;

  for (const auto& [version, row] : applied) {
    auto it = known.find(version);
    if (it == known.end()) {
      // Newer than this binary: a rolling upgrade got there first, which is fine. Older and
      // unknown: a file was deleted or renumbered after it ran.
      if (version < last_known) {
        return absl::FailedPreconditionError(
            absl::StrCat("applied migration ", version, " (", row.name,
                         ") is not among this binary's migrations"));
      }
      continue;
    }
    const std::string checksum = MigrationChecksum(it->second->sql);
    if (row.checksum != checksum) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration ", Describe(*it->second),
                       " was changed after it was applied: recorded "
                       "checksum ",
                       row.checksum, ", binary has ", checksum,
                       ". Add a new migration instead of editing an applied one"));
    }
  }
  if (!applied.empty()) {
    const int64_t newest_applied = applied.rbegin()->first;
    for (const Migration& m : migrations) {
      if (m.version < newest_applied && !applied.contains(m.version)) {
        return absl::FailedPreconditionError(
            absl::StrCat("migration ", Describe(m), " is not applied but later migration ",
                         newest_applied, " is; refusing to apply out of order"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateMigrations(std::span<const Migration> migrations) {
  for (size_t i = 0; i < migrations.size(); ++i) {
    const Migration& m = migrations[i];
    if (m.version <= 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration ", Describe(m), ": version must be positive"));
    }
    if (i == 0) continue;
    const Migration& prev = migrations[i - 1];
    if (m.version == prev.version) {
      return absl::FailedPreconditionError(absl::StrCat("duplicate migration version ", m.version,
                                                        ": ", std::string(prev.name), " and ",
                                                        std::string(m.name)));
    }
    if (m.version < prev.version) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration versions must be strictly increasing: ", Describe(m), " follows ",
                       Describe(prev)));
    }
  }
  return absl::OkStatus();
}

std::string MigrationChecksum(std::string_view sql) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(sql.data(), sql.size(), digest, &size, EVP_sha256(), nullptr) != 1) {
    // Only on a broken OpenSSL; an empty checksum never matches a recorded one.
    return "";
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), static_cast<size_t>(size)));
}

absl::StatusOr<int> ApplyMigrations(ConnectionPool& pool, std::span<const Migration> migrations,
                                    std::string_view schema_table) {
  if (absl::Status s = ValidateMigrations(migrations); !s.ok()) return s;
  absl::StatusOr<std::string> table = QuotedTableName(schema_table);
  if (!table.ok()) return table.status();

  // Check the whole history before changing anything, so a refused start changes nothing.
  absl::Status checked = RunInTransaction(pool, [&](pqxx::work& tx) {
    return CheckHistory(migrations, LockAndReadApplied(tx, *table, schema_table));
  });
  if (!checked.ok()) return checked;

  int applied_count = 0;
  for (const Migration& m : migrations) {
    bool applied_here = false;
    absl::Status status = RunInTransaction(pool, [&](pqxx::work& tx) -> absl::Status {
      applied_here = false;
      // Re-read under the lock: another replica may have applied this one meanwhile.
      std::map<int64_t, AppliedRow> applied = LockAndReadApplied(tx, *table, schema_table);
      if (absl::Status s = CheckHistory(migrations, applied); !s.ok()) return s;
      if (applied.contains(m.version)) return absl::OkStatus();
      try {
        tx.exec(std::string(m.sql));
      } catch (const pqxx::sql_error& e) {
        DbError error = ClassifyException(e);
        if (error.retryable || error.connection_lost) throw;  // RunInTransaction retries
        return absl::Status(error.status.code(), absl::StrCat("migration ", Describe(m),
                                                              " failed: ", error.status.message(),
                                                              ": ", ServerMessage(e)));
      }
      tx.exec_params(
          absl::StrCat("INSERT INTO ", *table, " (version, name, checksum) VALUES ($1, $2, $3)"),
          m.version, std::string(m.name), MigrationChecksum(m.sql));
      applied_here = true;
      return absl::OkStatus();
    });
    if (!status.ok()) {
      if (absl::StartsWith(status.message(), "migration ")) return status;
      return absl::Status(status.code(),
                          absl::StrCat("migration ", Describe(m), ": ", status.message()));
    }
    if (applied_here) ++applied_count;
  }
  return applied_count;
}

absl::Status CheckMigrationsApplied(ConnectionPool& pool, std::span<const Migration> migrations,
                                    std::string_view schema_table) {
  if (absl::Status s = ValidateMigrations(migrations); !s.ok()) return s;
  absl::StatusOr<std::string> table = QuotedTableName(schema_table);
  if (!table.ok()) return table.status();
  return RunInReadOnlyTransaction(pool, [&](pqxx::work& tx) -> absl::Status {
    if (tx.exec_params1("SELECT to_regclass($1) IS NULL", *table)[0].as<bool>()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the database has no schema yet (no table ", std::string(schema_table),
                       "): apply the migrations as the owner role first"));
    }
    std::map<int64_t, AppliedRow> applied;
    for (const pqxx::row& row : tx.exec(
             absl::StrCat("SELECT version, name, checksum FROM ", *table, " ORDER BY version"))) {
      applied[row[0].as<int64_t>()] = {row[1].as<std::string>(), row[2].as<std::string>()};
    }
    if (absl::Status s = CheckHistory(migrations, applied); !s.ok()) return s;
    for (const Migration& m : migrations) {
      if (!applied.contains(m.version)) {
        return absl::FailedPreconditionError(
            absl::StrCat("migration ", Describe(m),
                         " is not applied: apply the migrations as the owner role first"));
      }
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int> ApplyMigrations(std::string_view dsn, std::span<const Migration> migrations,
                                    std::string_view schema_table) {
  ConnectionPool pool(PoolOptions{.dsn = std::string(dsn), .max_size = 1});
  return ApplyMigrations(pool, migrations, schema_table);
}

}  // namespace rkl::db
