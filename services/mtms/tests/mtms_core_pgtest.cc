// PostgreSQL tier: the same conformance suite as mtms_test, over PgMtmsRepository on a
// fresh database with the embedded migrations, plus what only a real database shows.

#include <pqxx/pqxx>

#include "mtms_pg_repository.h"
#include "mtms_suite.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/migration.h"
#include "rkl/mtms/migrations.h"
#include "rkl/testing/test_database.h"

namespace rkl::mtms::testing {
namespace {

struct PgBackend {
  static std::unique_ptr<PgBackend> Create() {
    auto db = rkl::testing::TestDatabase::Create();
    if (!db.ok()) {
      ADD_FAILURE() << db.status();
      return nullptr;
    }
    auto backend = std::make_unique<PgBackend>();
    backend->db.emplace(*std::move(db));
    auto applied = db::ApplyMigrations(backend->db->dsn(), rkl::mtms::Migrations());
    if (!applied.ok()) {
      ADD_FAILURE() << applied.status();
      return nullptr;
    }
    return backend;
  }

  // Each replica has its own pool, as separate processes would.
  MtmsRepository& Replica(int i) {
    while (static_cast<int>(repositories.size()) <= i) {
      pools.push_back(
          std::make_unique<db::ConnectionPool>(db::PoolOptions{.dsn = db->dsn(), .max_size = 4}));
      repositories.push_back(std::make_unique<PgMtmsRepository>(*pools.back()));
    }
    return *repositories[i];
  }

  void OverwritePackage(const std::string& id, const Bytes& package) {
    pqxx::connection conn(db->dsn());
    pqxx::work tx(conn);
    tx.exec_params("UPDATE sn_key_mtms SET package = $2 WHERE submission_id = $1", id,
                   pqxx::binarystring(package.data(), package.size()));
    tx.commit();
  }

  pqxx::result Sql(const std::string& statement) {
    pqxx::connection conn(db->dsn());
    pqxx::work tx(conn);
    pqxx::result r = tx.exec(statement);
    tx.commit();
    return r;
  }

  std::optional<rkl::testing::TestDatabase> db;
  std::vector<std::unique_ptr<db::ConnectionPool>> pools;
  std::vector<std::unique_ptr<PgMtmsRepository>> repositories;
};

INSTANTIATE_TYPED_TEST_SUITE_P(Postgres, MtmsSuite, ::testing::Types<PgBackend>);

class MtmsSchemaPgTest : public MtmsSuite<PgBackend> {};

TEST_F(MtmsSchemaPgTest, ReplayIsRefusedByTheDatabaseConstraintItself) {
  auto receipt = Submit({.sn = "SN-CONSTRAINT"});
  ASSERT_TRUE(receipt.ok());
  // Bypassing the code: a second row with the same (operator_id, nonce) cannot exist.
  EXPECT_THROW(backend_->Sql("INSERT INTO sn_key_mtms (submission_id, sn, operator_id, nonce,"
                             " package, signature, operator_certificate_pem,"
                             " operator_certificate_serial, work_certificate_serial, ctk_pu,"
                             " algorithm_code, created_at_ms, received_at_ms, state,"
                             " next_attempt_at_ms)"
                             " SELECT 'other', sn, operator_id, nonce, package, signature,"
                             " operator_certificate_pem, operator_certificate_serial,"
                             " work_certificate_serial, ctk_pu, algorithm_code, created_at_ms,"
                             " received_at_ms, 'RECEIVED', next_attempt_at_ms FROM sn_key_mtms"),
               pqxx::unique_violation);
}

TEST_F(MtmsSchemaPgTest, AtMostOneCurrentWorkKeyIsAConstraint) {
  EXPECT_THROW(backend_->Sql("UPDATE work_keys SET state = 'CURRENT'"
                             " WHERE state = 'CURRENT'; INSERT INTO work_keys (serial_hex, hsm_id,"
                             " hsm_key_index, public_key_der, certificate_pem, terminal_root_pem,"
                             " state, created_at_ms) VALUES ('AB', 'h', 999, '', '', '',"
                             " 'CURRENT', 0)"),
               pqxx::unique_violation);
}

TEST_F(MtmsSchemaPgTest, MigrationsAreIdempotentAtRestart) {
  auto again = db::ApplyMigrations(backend_->db->dsn(), rkl::mtms::Migrations());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 0);
}

}  // namespace
}  // namespace rkl::mtms::testing
