#include "rkl/testing/test_database.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <pqxx/pqxx>
#include <random>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace rkl::testing {
namespace {

constexpr char kDsnFileEnv[] = "RKL_TEST_PG_DSN_FILE";

std::string UniqueDatabaseName() {
  static std::atomic<unsigned> counter{0};
  std::random_device rd;
  // Lower case only: the name is quoted anyway, but an unquoted psql session should be
  // able to type it when someone inspects a leftover by hand.
  return absl::StrCat("rkl_test_", ::getpid(), "_", counter.fetch_add(1), "_",
                      absl::Hex(rd(), absl::kZeroPad8));
}

}  // namespace

absl::StatusOr<std::string> ReadClusterDsn() {
  const char* path = std::getenv(kDsnFileEnv);
  if (path == nullptr || *path == '\0') {
    return absl::FailedPreconditionError(absl::StrCat(
        kDsnFileEnv,
        " is not set. Run PostgreSQL tests through ctest (they need fixture rkl_pg), or "
        "start a cluster by hand with `libs/testing/pg-cluster start DIR` and export ",
        kDsnFileEnv, "=DIR/dsn"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat(kDsnFileEnv, "=", path,
                     " cannot be read: is the test cluster running? (ctest fixture rkl_pg, or "
                     "`libs/testing/pg-cluster start DIR`)"));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  std::string dsn(absl::StripAsciiWhitespace(contents.str()));
  if (dsn.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(kDsnFileEnv, "=", path, " is empty"));
  }
  return dsn;
}

absl::StatusOr<TestDatabase> TestDatabase::Create() {
  absl::StatusOr<std::string> admin_dsn = ReadClusterDsn();
  if (!admin_dsn.ok()) return admin_dsn.status();
  std::string name = UniqueDatabaseName();
  // Both roles log in with one random password: they exist only for this database.
  std::random_device rd;
  const std::string password =
      absl::StrCat(absl::Hex(rd(), absl::kZeroPad8), absl::Hex(rd(), absl::kZeroPad8));
  try {
    pqxx::connection conn(*admin_dsn);
    pqxx::nontransaction tx(conn);  // CREATE DATABASE cannot run inside a transaction.
    const std::string db = tx.quote_name(name);
    const std::string owner = tx.quote_name(name + "_owner");
    const std::string runtime = tx.quote_name(name + "_app");
    for (const std::string& role : {owner, runtime}) {
      tx.exec(absl::StrCat("CREATE ROLE ", role, " LOGIN PASSWORD ", tx.quote(password)));
    }
    tx.exec(absl::StrCat("CREATE DATABASE ", db, " OWNER ", owner));
    tx.exec(absl::StrCat("REVOKE ALL ON DATABASE ", db, " FROM PUBLIC"));
    tx.exec(absl::StrCat("GRANT CONNECT ON DATABASE ", db, " TO ", runtime));
  } catch (const std::exception& e) {
    // The admin DSN carries the cluster's password, so it is not repeated here; libpq's own
    // messages never include it.
    return absl::UnavailableError(
        absl::StrCat("cannot create test database ", name, ": ", e.what()));
  }
  return TestDatabase(*std::move(admin_dsn), std::move(name), password);
}

TestDatabase::TestDatabase(std::string admin_dsn, std::string name, std::string password)
    : admin_dsn_(std::move(admin_dsn)),
      name_(std::move(name)),
      // In a key=value conninfo the last occurrence of a keyword wins.
      dsn_(absl::StrCat(admin_dsn_, " dbname=", name_)),
      owner_role_(name_ + "_owner"),
      runtime_role_(name_ + "_app"),
      owner_dsn_(absl::StrCat(dsn_, " user=", owner_role_, " password=", password)),
      runtime_dsn_(absl::StrCat(dsn_, " user=", runtime_role_, " password=", password)) {}

TestDatabase::TestDatabase(TestDatabase&& other) noexcept
    : admin_dsn_(std::move(other.admin_dsn_)),
      name_(std::exchange(other.name_, {})),
      dsn_(std::move(other.dsn_)),
      owner_role_(std::move(other.owner_role_)),
      runtime_role_(std::move(other.runtime_role_)),
      owner_dsn_(std::move(other.owner_dsn_)),
      runtime_dsn_(std::move(other.runtime_dsn_)) {}

TestDatabase& TestDatabase::operator=(TestDatabase&& other) noexcept {
  if (this != &other) {
    Drop();
    admin_dsn_ = std::move(other.admin_dsn_);
    name_ = std::exchange(other.name_, {});
    dsn_ = std::move(other.dsn_);
    owner_role_ = std::move(other.owner_role_);
    runtime_role_ = std::move(other.runtime_role_);
    owner_dsn_ = std::move(other.owner_dsn_);
    runtime_dsn_ = std::move(other.runtime_dsn_);
  }
  return *this;
}

TestDatabase::~TestDatabase() { Drop(); }

void TestDatabase::Drop() noexcept {
  if (name_.empty()) return;
  try {
    pqxx::connection conn(admin_dsn_);
    pqxx::nontransaction tx(conn);
    tx.exec(absl::StrCat("DROP DATABASE IF EXISTS ", tx.quote_name(name_), " WITH (FORCE)"));
    // Their privileges went with the database, so nothing else holds them.
    tx.exec(absl::StrCat("DROP ROLE IF EXISTS ", tx.quote_name(runtime_role_), ", ",
                         tx.quote_name(owner_role_)));
  } catch (const std::exception& e) {
    // A destructor cannot fail the test; the cluster is discarded after the run anyway.
    std::fprintf(stderr, "TestDatabase: cannot drop %s: %s\n", name_.c_str(), e.what());
  }
  name_.clear();
}

}  // namespace rkl::testing
