// Keys at rest (PROTOCOL §9) against real PostgreSQL: sealing binds every record to its
// metadata, tampering is refused, the LMK is bound to the database.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <pqxx/pqxx>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core_checks.h"
#include "hsm_fixture.h"
#include "lmk.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/testing/race.h"
#include "rkl/testing/wait.h"
#include "test_terminal.h"

namespace rkl::hsm {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::HsmInstanceTest;

// EXPLAIN (ANALYZE, COSTS OFF) of `statement` (an EXECUTE), one line per plan row.
std::string ExplainAnalyze(pqxx::work& tx, const std::string& statement) {
  std::string plan;
  for (const auto& row : tx.exec(absl::StrCat("EXPLAIN (ANALYZE, COSTS OFF) ", statement))) {
    plan += row[0].as<std::string>() + "\n";
  }
  return plan;
}

// A barrier over a row store of its own, wired as the daemon wires them.
struct BarrierOverPg {
  BarrierOverPg(db::ConnectionPool& pool, const crypto::SecretBytes& lmk, PgAuditLog& audit,
                size_t cache)
      : rows(pool, audit), barrier(rows, lmk, cache) {}
  absl::Status Transact(KeyBarrier::Unit fn) { return barrier.Transact(fn); }
  absl::Status TransactReadOnly(KeyBarrier::Unit fn) { return barrier.TransactReadOnly(fn); }
  absl::Status TransactOneWrite(KeyBarrier::Unit fn) { return barrier.TransactOneWrite(fn); }
  UnsealedKeyCache& cache() { return barrier.cache(); }
  void SetBeforeOneWriteHookForTest(std::function<void()> hook) {
    rows.SetBeforeOneWriteHookForTest(std::move(hook));
  }

  PgKeyRecordStore rows;
  KeyBarrier barrier;
};

class KeyStorePgTest : public HsmInstanceTest {
 protected:
  void SetUp() override {
    HsmInstanceTest::SetUp();
    if (HasFatalFailure()) return;
    pool_ = std::make_unique<db::ConnectionPool>(db::PoolOptions{.dsn = hsm_->runtime_dsn()});
    audit_ = std::make_unique<PgAuditLog>(*pool_, DeriveAuditKey(hsm_->lmk(), "hsm-kms").value());
  }

  // A store of its own, so nothing is served from the daemon's cache.
  std::unique_ptr<BarrierOverPg> FreshStore(size_t cache = 0) {
    return std::make_unique<BarrierOverPg>(*pool_, hsm_->lmk(), *audit_, cache);
  }

  absl::StatusOr<crypto::SecretBytes> Open(BarrierOverPg& store, uint64_t index) {
    absl::StatusOr<crypto::SecretBytes> out = absl::NotFoundError("no such key");
    absl::Status s = store.Transact([&](KeyTransaction& tx) -> absl::Status {
      auto r = tx.FindKey(index);
      if (!r.ok()) return r.status();
      if (*r) out = tx.Unseal(**r);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return out;
  }

  uint64_t NewTmk(const std::string& sn) {
    return testing::InsertTestKey(*hsm_, KeyType::kTmk, sn);
  }

  // A whole §7 authentication by `t`, then the delivery of its TMK under `tek`.
  absl::StatusOr<AuthenticatedDelivery> Deliver(const testing::TestTerminal& t, uint64_t auk,
                                                uint64_t tek, bool replace_existing = false) {
    HsmCore& core = hsm_->daemon().core();
    Bytes rnd1 = crypto::RandomBytes(16);
    auto challenge = core.AuthChallenge("kms", auk, t.sn, rnd1);
    if (!challenge.ok()) return challenge.status();
    Bytes crnd2 = protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value();
    return core.AuthenticateAndDeliver("kms", {auk, t.sn, rnd1, challenge->rnd2, crnd2},
                                       t.tk.algorithm, replace_existing, tek);
  }

  // A busy new HSM: 900 live TEK/AUK/TMK records (keys 1000000..1000899, SNs SN-0..SN-299)
  // that PostgreSQL has no statistics for — the state plans must not depend on.
  void AddUnanalyzedLiveKeys() {
    hsm_->Sql("ALTER TABLE hsm_key SET (autovacuum_enabled = false)");
    InsertLiveKeys(900);
  }
  // `count` live TEK/AUK/TMK records from key 1000000 on, three per SN from SN-0 on.
  void InsertLiveKeys(int count) {
    hsm_->Sql(absl::StrCat(
        "INSERT INTO hsm_key (key_index, key_type, algorithm, usage, bound_sn, label, state, "
        "created_at_ms, updated_at_ms, nonce, sealed) "
        "SELECT 1000000 + g, 4 + g % 3, 17, 1, 'SN-' || (g / 3), 'k:' || g, 1, 0, 0, "
        "'\\x00', '\\x00' FROM generate_series(0, ",
        count - 1, ") g"));
  }

  // A transaction that plans prepared statements generically, as the HSM's own connections
  // do, on a busy new HSM's table (AddUnanalyzedLiveKeys); rolled back when it ends.
  struct GenericPlans {
    explicit GenericPlans(const std::string& dsn) : conn(dsn), tx(conn) {
      tx.exec("SET plan_cache_mode = force_generic_plan");
    }
    pqxx::connection conn;
    pqxx::work tx;
  };
  std::unique_ptr<GenericPlans> GenericPlansOnUnanalyzedKeys() {
    AddUnanalyzedLiveKeys();
    return std::make_unique<GenericPlans>(hsm_->dsn());
  }

  std::unique_ptr<db::ConnectionPool> pool_;
  std::unique_ptr<PgAuditLog> audit_;
};

TEST_F(KeyStorePgTest, IntactRecordOpens) {
  uint64_t index = NewTmk("SN-A");
  auto store = FreshStore();
  auto key = Open(*store, index);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->size(), 16u);
}

TEST_F(KeyStorePgTest, AlteredNonceCiphertextOrAadColumnIsRefused) {
  // Each alteration on its own record, each a column the sealing must cover.
  const std::vector<std::pair<std::string, std::string>> alterations = {
      {"nonce", "nonce = set_byte(nonce, 0, get_byte(nonce, 0) # 1)"},
      {"ciphertext", "sealed = set_byte(sealed, 0, get_byte(sealed, 0) # 1)"},
      {"tag",
       "sealed = set_byte(sealed, length(sealed) - 1, get_byte(sealed, length(sealed) - 1) # 1)"},
      {"key_type", "key_type = 4"},
      {"algorithm", "algorithm = 19"},
      {"usage", "usage = 4"},
      {"bound_sn", "bound_sn = 'SN-OTHER'"},
      {"created_at_ms", "created_at_ms = created_at_ms + 1"},
  };
  int n = 0;
  for (const auto& [what, set] : alterations) {
    uint64_t index = NewTmk(absl::StrCat("SN-T", n++));
    hsm_->Sql(absl::StrCat("UPDATE hsm_key SET ", set, " WHERE key_index = ", index));
    auto store = FreshStore();
    auto key = Open(*store, index);
    EXPECT_EQ(key.status(), absl::InternalError(
                                absl::StrCat("key record ", index, " failed its integrity check")))
        << what;
  }
  // The key index itself: move a record to another index.
  uint64_t index = NewTmk("SN-MOVE");
  hsm_->Sql(absl::StrCat("UPDATE hsm_key SET key_index = 100000 WHERE key_index = ", index));
  auto store = FreshStore();
  EXPECT_EQ(Open(*store, 100000).status().code(), absl::StatusCode::kInternal);
}

TEST_F(KeyStorePgTest, SwappedSealedBytesAreRefused) {
  uint64_t a = NewTmk("SN-A"), b = NewTmk("SN-B");
  hsm_->Sql(
      absl::StrCat("UPDATE hsm_key k SET nonce = o.nonce, sealed = o.sealed FROM hsm_key o WHERE "
                   "(k.key_index, o.key_index) IN ((",
                   a, ",", b, "), (", b, ",", a, "))"));
  auto store = FreshStore();
  EXPECT_EQ(Open(*store, a).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(Open(*store, b).status().code(), absl::StatusCode::kInternal);
}

TEST_F(KeyStorePgTest, CacheNeverHidesTampering) {
  uint64_t index = NewTmk("SN-A");
  auto store = FreshStore(/*cache=*/16);
  ASSERT_TRUE(Open(*store, index).ok());
  ASSERT_TRUE(Open(*store, index).ok());
  EXPECT_EQ(store->cache().hits(), 1u);
  hsm_->Sql(
      absl::StrCat("UPDATE hsm_key SET sealed = set_byte(sealed, 3, get_byte(sealed, 3) # 1)"
                   " WHERE key_index = ",
                   index));
  EXPECT_EQ(Open(*store, index).status().code(), absl::StatusCode::kInternal);
}

TEST_F(KeyStorePgTest, ParsedRsaKeyIsCachedButNeverHidesTampering) {
  auto generated = hsm_->daemon().core().GenerateRsaKeyPair("admin:ops", 2048, "work-test");
  ASSERT_TRUE(generated.ok()) << generated.status();
  const uint64_t index = generated->key_index;
  auto store = FreshStore(/*cache=*/16);
  auto open_rsa = [&]() -> absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> {
    absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> out = absl::NotFoundError("none");
    absl::Status s = store->Transact([&](KeyTransaction& tx) -> absl::Status {
      auto r = tx.FindKey(index);
      if (!r.ok()) return r.status();
      if (*r) out = tx.UnsealRsa(**r);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return out;
  };
  auto first = open_rsa();
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = open_rsa();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->get(), second->get());  // parsed once, then served from the cache
  EXPECT_EQ((*second)->GetPublicKey().ToDer(), generated->public_key_der);
  hsm_->Sql(
      absl::StrCat("UPDATE hsm_key SET sealed = set_byte(sealed, 3, get_byte(sealed, 3) # 1)"
                   " WHERE key_index = ",
                   index));
  EXPECT_EQ(open_rsa().status().code(), absl::StatusCode::kInternal);
}

TEST_F(KeyStorePgTest, LiveKeyLookupUsesTheIndexEvenAsAGenericPreparedPlan) {
  // Statements run prepared (db::Exec); PostgreSQL may switch them to a generic plan, which
  // must still go straight to the one live key of the SN, even while the table has no
  // statistics yet (a busy new HSM: 900 live keys, never analyzed). Under exactly these
  // conditions the earlier statement (key type as $1) scanned every live key.
  auto session = GenericPlansOnUnanalyzedKeys();
  pqxx::work& tx = session->tx;
  for (KeyType type : {KeyType::kTek, KeyType::kAuk, KeyType::kTmk}) {
    SCOPED_TRACE(static_cast<int>(type));
    std::string name = absl::StrCat("live", static_cast<int>(type));
    tx.exec(absl::StrCat("PREPARE ", name, "(text) AS ", FindLiveKeysSql(type)));
    const std::string plan = ExplainAnalyze(tx, absl::StrCat("EXECUTE ", name, "('SN-7')"));
    EXPECT_THAT(plan, HasSubstr("Index Scan using hsm_key_one_live_per_sn")) << plan;
    EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
    EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan"))) << plan;
  }
  // PrefetchLive's statement for TEK and AUK together, likewise.
  const KeyType both[] = {KeyType::kTek, KeyType::kAuk};
  tx.exec(absl::StrCat("PREPARE live_both(text) AS ", FindLiveKeysSql(both)));
  const std::string plan = ExplainAnalyze(tx, "EXECUTE live_both('SN-7')");
  EXPECT_THAT(plan, HasSubstr("hsm_key_one_live_per_sn")) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan"))) << plan;
}

TEST_F(KeyStorePgTest, PrefetchWithLiveUsesOneIndexProbePerKeyEvenAsAGenericPreparedPlan) {
  // The composite commands' one read: two keys by index and an SN's live keys by type.
  auto session = GenericPlansOnUnanalyzedKeys();
  pqxx::work& tx = session->tx;
  const KeyType types[] = {KeyType::kTek, KeyType::kAuk};
  tx.exec(absl::StrCat("PREPARE both_ways AS ", PrefetchWithLiveSql(2, types, false)));
  const std::string plan = ExplainAnalyze(tx, "EXECUTE both_ways('SN-7', '1000000', '1000001')");
  EXPECT_THAT(plan, HasSubstr("hsm_key_pkey")) << plan;
  EXPECT_THAT(plan, HasSubstr("hsm_key_one_live_per_sn")) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan"))) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
  // SN-7's TEK and AUK (keys 1000021, 1000022), then the two keys by index.
  pqxx::result rows = tx.exec("EXECUTE both_ways('SN-7', '1000000', '1000001')");
  std::vector<std::pair<uint64_t, bool>> got;
  // The flag follows the key columns (kKeyColumns: 15 of them).
  for (const auto& row : rows) got.emplace_back(row[0].as<uint64_t>(), row[15].as<bool>());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::pair<uint64_t, bool>>{
                     {1000000, false}, {1000001, false}, {1000021, true}, {1000022, true}}));
}

TEST_F(KeyStorePgTest, PrefetchUsesThePrimaryKeyEvenAsAGenericPreparedPlan) {
  // Same condition as above: 900 keys, no statistics. `key_index = ANY($1)` was planned as
  // a sequential scan here; every branch of the prefetch must be an index lookup.
  auto session = GenericPlansOnUnanalyzedKeys();
  pqxx::work& tx = session->tx;
  tx.exec(absl::StrCat("PREPARE pre(bigint, bigint, bigint) AS ", PrefetchKeysSql(3)));
  const std::string plan = ExplainAnalyze(tx, "EXECUTE pre(1000007, 1000008, 5)");
  EXPECT_THAT(plan, HasSubstr("hsm_key_pkey")) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan"))) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
}

TEST_F(KeyStorePgTest, OneWriteStatementUsesThePrimaryKeyEvenAsAGenericPreparedPlan) {
  // The HSM's connections use generic plans (hsm_daemon.cc); the one-write statement's
  // locking read and superseding must be index lookups there too, on a table with no
  // statistics. Live keys 1000000 and 1000001 (SN-0's TEK and AUK) are superseded, two new
  // keys inserted; EXPLAIN ANALYZE runs it, and the transaction is rolled back.
  auto session = GenericPlansOnUnanalyzedKeys();
  pqxx::work& tx = session->tx;
  tx.exec(absl::StrCat("PREPARE ow AS ", OneWriteSql(2, 2, 2)));
  std::string args =
      "1000000, 1000001, 5, 1000000, 1000001, 999999, 5, 'kms', 'test', "
      "'SN-0', '', 'OK', '\\x00', 'req-1'";
  for (int i = 0; i < 2; ++i) {
    absl::StrAppend(&args, ", ", 2000000 + i, ", ", 4 + i, ", 17, ", 4 + i, ", 'SN-0', 'plan:", i,
                    "', '', 5, 0, '\\x', '\\x00', '\\x00', 0, ''");
  }
  const std::string plan = ExplainAnalyze(tx, absl::StrCat("EXECUTE ow(", args, ")"));
  EXPECT_THAT(plan, HasSubstr("hsm_key_pkey")) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan on hsm_key"))) << plan;
  // And it did what it says: both superseded, both new keys live.
  EXPECT_EQ(tx.exec1("SELECT string_agg(key_index::text, ',' ORDER BY key_index) FROM hsm_key "
                     "WHERE bound_sn = 'SN-0' AND state = 1 AND key_type IN (4, 5)")[0]
                .as<std::string>(),
            "2000000,2000001");
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_key WHERE key_index IN (1000000, 1000001) "
                     "AND state = 2")[0]
                .as<int>(),
            2);
}

TEST_F(KeyStorePgTest, OneWriteStatementsPlannedWhileTheTableIsNearlyEmptyStayIndexLookups) {
  // A new HSM's connections make their generic plans during its first commands, while
  // hsm_key holds a handful of rows and has no statistics, and keep them as the table grows
  // (nothing invalidates them until an ANALYZE). Each check must then still be one index
  // probe per key: the primary key for the keys a command used, hsm_key_one_live_per_sn for
  // an SN's live key of a type. With the live-label index applicable to these statements,
  // such a plan scanned every live key (migration 006).
  hsm_->Sql("ALTER TABLE hsm_key SET (autovacuum_enabled = false)");
  GenericPlans session(hsm_->dsn());
  pqxx::work& tx = session.tx;
  const std::string audit = "'5', '0', 'kms', 'test', 'SN-0', '', 'OK', '\\x00', 'req-1'";
  auto key = [](int i) {
    return absl::StrCat(", '", 2000000 + i, "', '", 4 + i % 3, "', '17', '1', 'SN-X', 'plan:", i,
                        "', '', '0', '0', '\\x', '\\x00', '\\x00', '0', ''");
  };
  struct Shape {
    std::string name;
    OneWriteShape shape;
    std::string args;
  };
  // The shapes of HSM #2's commands: a read-only one (cached keys held, audit as JSON), one
  // that creates a key (keys locked, no live TMK yet), one that checks two absent types.
  const std::vector<Shape> shapes = {
      {"held", OneWriteShape{.held = 2, .audit_json = true}, "'1000000', '1000001', '[]'"},
      {"locked_absent", OneWriteShape{.locked = 2, .absent = {KeyType::kTmk}, .keys = 1},
       absl::StrCat("'1000000', '1000001', 'SN-0', ", audit, key(0))},
      {"held_absent", OneWriteShape{.held = 2, .absent = {KeyType::kTek, KeyType::kAuk}, .keys = 2},
       absl::StrCat("'1000000', '1000001', 'SN-0', 'SN-0', ", audit, key(1), key(2))},
  };
  for (const Shape& s : shapes) {
    tx.exec(absl::StrCat("PREPARE ", s.name, " AS ", OneWriteSql(s.shape)));
    // Planned and run now, on the nearly empty table (its checks fail: nothing written).
    EXPECT_FALSE(tx.exec1(absl::StrCat("EXECUTE ", s.name, "(", s.args, ")"))[0].as<bool>());
  }
  // Autovacuum was turned off before planning: setting it now would invalidate the plans.
  InsertLiveKeys(3000);
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    const std::string plan = ExplainAnalyze(tx, absl::StrCat("EXECUTE ", s.name, "(", s.args, ")"));
    EXPECT_THAT(plan, HasSubstr("hsm_key_pkey")) << plan;
    if (!s.shape.absent.empty()) {
      EXPECT_THAT(plan, HasSubstr("hsm_key_one_live_per_sn")) << plan;
    }
    EXPECT_THAT(plan, ::testing::Not(HasSubstr("hsm_key_live_label"))) << plan;
    EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan on hsm_key"))) << plan;
    EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
  }
}

TEST_F(KeyStorePgTest, TamperedKeyIsRefusedOverGrpcToo) {
  const uint64_t auk = testing::InsertTestKey(*hsm_, KeyType::kAuk, "SN-G");
  // A fresh daemon (empty cache) on the tampered database.
  hsm_->Sql(absl::StrCat("UPDATE hsm_key SET bound_sn = 'SN-H' WHERE key_index = ", auk));
  ASSERT_TRUE(hsm_->Start().ok());
  auto stub = hsm_->Stub("kms");
  v1::AuthChallengeRequest req;
  req.set_auk_index(auk);
  req.set_sn("SN-H");
  req.set_rnd1(std::string(16, 'r'));
  auto r = testing::Call(*stub, &v1::Hsm::Stub::AuthChallenge, req);
  EXPECT_EQ(r.status(),
            absl::InternalError(absl::StrCat("key record ", auk, " failed its integrity check")));
}

TEST_F(KeyStorePgTest, ATmksBindingToItsTekCannotBeChangedOrRemoved) {
  // kek_index is part of a bound record's AAD: re-binding the TMK to another TEK (say one
  // an attacker imported), or unbinding it, makes the record fail to open.
  const uint64_t tmk = testing::InsertTestKey(*hsm_, KeyType::kTmk, "SN-BIND",
                                              crypto::KeyAlgorithm::kAes128, /*kek_index=*/41);
  ASSERT_TRUE(Open(*FreshStore(), tmk).ok());
  for (int kek : {42, 0}) {
    SCOPED_TRACE(kek);
    hsm_->Sql(absl::StrCat("UPDATE hsm_key SET kek_index = ", kek, " WHERE key_index = ", tmk));
    EXPECT_EQ(Open(*FreshStore(), tmk).status(),
              absl::InternalError(absl::StrCat("key record ", tmk, " failed its integrity check")));
  }
  // Only a TMK has a KEK.
  EXPECT_THROW(hsm_->Sql(absl::StrCat("UPDATE hsm_key SET kek_index = 7 WHERE key_index = ",
                                      testing::InsertTestKey(*hsm_, KeyType::kTek, "SN-BIND"))),
               pqxx::check_violation);
}

TEST_F(KeyStorePgTest, DatabaseAllowsOneLiveTmkPerSn) {
  uint64_t index = NewTmk("SN-A");
  EXPECT_THROW(hsm_->Sql(absl::StrCat(
                   "INSERT INTO hsm_key (key_index, key_type, algorithm, usage, bound_sn, label, "
                   "state, created_at_ms, updated_at_ms, nonce, sealed) SELECT 99999, key_type, "
                   "algorithm, usage, bound_sn, 'other', 1, 0, 0, nonce, sealed FROM hsm_key "
                   "WHERE key_index = ",
                   index)),
               pqxx::unique_violation);
}

TEST_F(KeyStorePgTest, WrongLmkIsFatalWithAClearMessage) {
  hsm_->Stop();
  crypto::SecretBytes other = crypto::RandomSecret(32);
  std::string file = hsm_->WriteOtherLmkFile(other);
  absl::Status s = hsm_->Start(file);
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("wrong LMK"), HasSubstr(file), HasSubstr(LmkKcv(hsm_->lmk()).value()),
                    HasSubstr(LmkKcv(other).value())));
  // The right LMK still starts.
  EXPECT_TRUE(hsm_->Start().ok());
}

TEST_F(KeyStorePgTest, AnotherHsmIdOnTheSameDatabaseIsFatal) {
  hsm_->Stop();
  HsmDaemonOptions o;
  o.hsm_id = "hsm-mtms";
  o.database_dsn = hsm_->runtime_dsn();
  o.lmk_file = hsm_->lmk_file();
  o.role = HsmRole::kKms;
  o.operational_identities = {"mtms"};
  o.listen_address = "127.0.0.1:0";
  o.tls = pki_->Issue("hsm-mtms").value();
  auto d = HsmDaemon::Start(o);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr("hsm-kms"));
}

TEST_F(KeyStorePgTest, UnsafeLmkFileIsFatal) {
  hsm_->Stop();
  ::chmod(hsm_->lmk_file().c_str(), 0644);
  absl::Status s = hsm_->Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr(hsm_->lmk_file()));
  ::chmod(hsm_->lmk_file().c_str(), 0600);
}

TEST_F(KeyStorePgTest, ReadOnlyUnitRefusesWritesAndWritesNothing) {
  uint64_t index = NewTmk("SN-RO");
  auto store = FreshStore();
  auto count = [&](const std::string& sql) {
    pqxx::connection conn(hsm_->dsn());
    pqxx::work tx(conn);
    return tx.exec1(sql)[0].as<int64_t>();
  };
  const int64_t keys = count("SELECT count(*) FROM hsm_key");
  const int64_t pending = count("SELECT count(*) FROM hsm_audit_pending");
  absl::Status s = store->TransactReadOnly([&](KeyTransaction& tx) -> absl::Status {
    auto found = tx.FindKey(index);  // reading is fine
    if (!found.ok() || !found->has_value()) return absl::InternalError("read failed");
    RKL_RETURN_IF_ERROR(tx.SetKeyState(index, KeyState::kDeleted, 1));
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test", .result = "OK"});
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("read-only"));
  EXPECT_EQ(count("SELECT count(*) FROM hsm_key"), keys);
  EXPECT_EQ(count(absl::StrCat("SELECT state FROM hsm_key WHERE key_index = ", index)), 1);
  EXPECT_EQ(count("SELECT count(*) FROM hsm_audit_pending"), pending);

  // A read-only unit that forgets its audit record does not pass either.
  s = store->TransactReadOnly(
      [&](KeyTransaction& tx) -> absl::Status { return tx.FindKey(index).status(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;

  // And one that reads and audits writes exactly its record.
  s = store->TransactReadOnly([&](KeyTransaction& tx) -> absl::Status {
    RKL_RETURN_IF_ERROR(tx.FindKey(index).status());
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_ro", .result = "OK"});
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(count("SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_ro'"), 1);
}

TEST_F(KeyStorePgTest, ReadOnlyUnitWithSeveralRecordsWritesThemInOneGroupInOrder) {
  // TranslateTransportKeys audits each item: the records of one unit commit together.
  uint64_t index = NewTmk("SN-RG");
  auto store = FreshStore();
  const uint64_t groups = audit_->groups_written();
  absl::Status s = store->TransactReadOnly([&](KeyTransaction& tx) -> absl::Status {
    RKL_RETURN_IF_ERROR(tx.FindKey(index).status());
    for (const char* sn : {"SN-G1", "SN-G2", "SN-G3"}) {
      RKL_RETURN_IF_ERROR(
          tx.Audit(AuditEvent{.actor = "kms", .action = "test_group", .sn = sn, .result = "OK"}));
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(audit_->groups_written(), groups + 1);
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  std::vector<std::string> sns;
  for (const auto& row : tx.exec(
           "SELECT sn FROM (SELECT id AS seq, sn, action FROM hsm_audit_pending UNION ALL "
           "SELECT seq, sn, action FROM hsm_audit) a WHERE action = 'test_group' ORDER BY seq")) {
    sns.push_back(row[0].as<std::string>());
  }
  EXPECT_THAT(sns, ::testing::ElementsAre("SN-G1", "SN-G2", "SN-G3"));
}

TEST_F(KeyStorePgTest, PrefetchedRecordsAreTheStoredOnesAndAChangedOneIsReadAfresh) {
  uint64_t a = NewTmk("SN-PA");
  uint64_t b = NewTmk("SN-PB");
  auto store = FreshStore();
  absl::Status s = store->Transact([&](KeyTransaction& tx) -> absl::Status {
    const uint64_t keys[] = {a, b, 999999};
    RKL_RETURN_IF_ERROR(tx.Prefetch(keys));
    auto ra = tx.FindKey(a);
    auto rb = tx.FindKey(b);
    auto missing = tx.FindKey(999999);
    EXPECT_TRUE(ra.ok() && ra->has_value() && (*ra)->index == a && (*ra)->bound_sn == "SN-PA");
    EXPECT_TRUE(rb.ok() && rb->has_value() && (*rb)->bound_sn == "SN-PB");
    EXPECT_TRUE(missing.ok() && !missing->has_value());
    RKL_RETURN_IF_ERROR(tx.SetKeyState(a, KeyState::kSuperseded, 2));
    auto again = tx.FindKey(a);
    EXPECT_TRUE(again.ok() && again->has_value() && (*again)->state == KeyState::kSuperseded);
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_prefetch", .result = "OK"});
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(KeyStorePgTest, AKeyInsertedInAUnitReadsBackExactlyAsStored) {
  // The unit remembers what it wrote instead of reading it back: what it remembers must be
  // the stored record, field for field, and open to the same material.
  auto store = FreshStore();
  const crypto::SecretBytes material = crypto::RandomSecret(16);
  KeyRecord in_unit;
  absl::Status s = store->Transact([&](KeyTransaction& tx) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(KeyRecord inserted, tx.InsertKey(NewKey{.type = KeyType::kTmk,
                                                                 .algorithm = 17,
                                                                 .usage = KeyUsage::kTerminalMaster,
                                                                 .bound_sn = "SN-IN",
                                                                 .label = "tmk:SN-IN",
                                                                 .kcv = "ABCDEF",
                                                                 .material = material},
                                                          1234));
    const uint64_t keys[] = {inserted.index};
    RKL_RETURN_IF_ERROR(tx.Prefetch(keys));
    RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> found, tx.FindKey(inserted.index));
    if (!found) return absl::InternalError("inserted key not found in its own unit");
    in_unit = *found;
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_insert", .result = "OK"});
  });
  ASSERT_TRUE(s.ok()) << s;
  KeyRecord stored;
  auto fresh = FreshStore();
  s = fresh->Transact([&](KeyTransaction& tx) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> found, tx.FindKey(in_unit.index));
    if (!found) return absl::InternalError("inserted key not stored");
    stored = *found;
    RKL_ASSIGN_OR_RETURN(crypto::SecretBytes opened, tx.Unseal(stored));
    EXPECT_TRUE(opened == material);
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_read", .result = "OK"});
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(in_unit.type, stored.type);
  EXPECT_EQ(in_unit.algorithm, stored.algorithm);
  EXPECT_EQ(in_unit.usage, stored.usage);
  EXPECT_EQ(in_unit.bound_sn, stored.bound_sn);
  EXPECT_EQ(in_unit.label, stored.label);
  EXPECT_EQ(in_unit.kcv, stored.kcv);
  EXPECT_EQ(in_unit.state, stored.state);
  EXPECT_EQ(in_unit.created_at_ms, stored.created_at_ms);
  EXPECT_EQ(in_unit.rsa_bits, stored.rsa_bits);
  EXPECT_EQ(in_unit.public_key_der, stored.public_key_der);
  EXPECT_EQ(in_unit.nonce, stored.nonce);
  EXPECT_EQ(in_unit.sealed, stored.sealed);
}

TEST_F(KeyStorePgTest, KeysInsertedTogetherAndPrefetchedLiveKeysAreTheStoredOnes) {
  auto store = FreshStore();
  auto key = [](KeyType type, KeyUsage usage, const char* label) {
    return NewKey{.type = type,
                  .algorithm = 17,
                  .usage = usage,
                  .bound_sn = "SN-TWO",
                  .label = label,
                  .kcv = "0A0B0C",
                  .material = crypto::RandomSecret(16)};
  };
  const NewKey keys[] = {key(KeyType::kTek, KeyUsage::kExportKek, "tek:SN-TWO"),
                         key(KeyType::kAuk, KeyUsage::kTerminalAuth, "auk:SN-TWO")};
  std::vector<KeyRecord> inserted;
  absl::Status s = store->Transact([&](KeyTransaction& tx) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(inserted, tx.InsertKeys(keys, 99));
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_insert_two", .result = "OK"});
  });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(inserted.size(), 2u);
  EXPECT_LT(inserted[0].index, inserted[1].index);
  auto fresh = FreshStore();
  s = fresh->Transact([&](KeyTransaction& tx) -> absl::Status {
    const KeyType types[] = {KeyType::kTek, KeyType::kAuk};
    RKL_RETURN_IF_ERROR(tx.PrefetchLive(types, "SN-TWO"));
    for (int i = 0; i < 2; ++i) {
      RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live, tx.FindLiveKeys(keys[i].type, "SN-TWO"));
      EXPECT_EQ(live.size(), 1u);
      if (live.size() != 1) continue;
      EXPECT_EQ(live[0].index, inserted[i].index);
      EXPECT_EQ(live[0].label, keys[i].label);
      EXPECT_EQ(live[0].usage, keys[i].usage);
      EXPECT_EQ(live[0].nonce, inserted[i].nonce);
      EXPECT_EQ(live[0].sealed, inserted[i].sealed);
      RKL_ASSIGN_OR_RETURN(crypto::SecretBytes opened, tx.Unseal(live[0]));
      EXPECT_TRUE(opened == keys[i].material) << i;
    }
    // A change made by the unit is seen: the prefetched live set is not served after it.
    RKL_RETURN_IF_ERROR(tx.SetKeyState(inserted[0].index, KeyState::kSuperseded, 100));
    RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> after, tx.FindLiveKeys(KeyType::kTek, "SN-TWO"));
    EXPECT_TRUE(after.empty());
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_live", .result = "OK"});
  });
  ASSERT_TRUE(s.ok()) << s;
}

// Backends of this database that PostgreSQL shows waiting for a heavyweight lock (a row
// lock taken FOR UPDATE is one): the positive evidence that a statement is blocked.
int64_t BackendsWaitingForALock(const std::string& dsn) {
  pqxx::connection conn(dsn);
  pqxx::nontransaction tx(conn);
  return tx
      .exec1(
          "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
          "AND wait_event_type = 'Lock'")[0]
      .as<int64_t>();
}

TEST_F(KeyStorePgTest, ReadOnlyUnitDoesNotWaitForALockOnALiveKey) {
  // A read-only unit runs in autocommit, where FOR UPDATE would only wait for (and then
  // briefly take) a lock it cannot keep. Another transaction holds the live TMK's lock.
  uint64_t index = NewTmk("SN-LOCKED");
  pqxx::connection locker(hsm_->dsn());
  pqxx::work held(locker);
  held.exec(absl::StrCat("SELECT 1 FROM hsm_key WHERE key_index = ", index, " FOR UPDATE"));
  auto store = FreshStore();
  std::atomic<bool> done{false};
  absl::Status s;
  std::thread reader([&] {
    s = store->TransactReadOnly([&](KeyTransaction& tx) -> absl::Status {
      RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live,
                           tx.FindLiveKeys(KeyType::kTmk, "SN-LOCKED"));
      if (live.size() != 1 || live[0].index != index) return absl::InternalError("wrong keys");
      return tx.Audit(AuditEvent{.actor = "kms", .action = "test_ro_live", .result = "OK"});
    });
    done = true;
  });
  // Either the reader finishes, or PostgreSQL shows it waiting for the lock: the outcome is
  // an event either way, however slow the machine.
  int64_t waiting = 0;
  EXPECT_TRUE(rkl::testing::WaitUntil(
      [&] { return done || (waiting = BackendsWaitingForALock(hsm_->dsn())) > 0; }));
  const bool finished_while_locked = done;
  held.abort();  // lets a waiting reader finish either way
  reader.join();
  EXPECT_EQ(waiting, 0) << "the read-only unit waited for the row lock";
  EXPECT_TRUE(finished_while_locked) << "the read-only unit waited for the row lock";
  EXPECT_TRUE(s.ok()) << s;
}

int64_t CountOf(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  return tx.exec1(sql)[0].as<int64_t>();
}

NewKey TestTmk(const std::string& sn) {
  return NewKey{.type = KeyType::kTmk,
                .algorithm = 17,
                .usage = KeyUsage::kTerminalMaster,
                .bound_sn = sn,
                .label = "tmk:" + sn,
                .kcv = "0A0B0C",
                .material = crypto::RandomSecret(16)};
}

// A re-key as a one-write unit: the SN's live TMKs superseded, a new one in, one record.
absl::Status RekeyInOneWrite(BarrierOverPg& store, const std::string& sn, const std::string& action,
                             std::vector<std::vector<uint64_t>>* seen, KeyRecord* made) {
  return store.TransactOneWrite([&](KeyTransaction& tx) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live, tx.FindLiveKeys(KeyType::kTmk, sn));
    std::vector<uint64_t> indexes;
    for (const KeyRecord& r : live) {
      indexes.push_back(r.index);
      RKL_RETURN_IF_ERROR(tx.SetKeyState(r.index, KeyState::kSuperseded, 7));
    }
    if (seen != nullptr) seen->push_back(indexes);
    RKL_ASSIGN_OR_RETURN(*made, tx.InsertKey(TestTmk(sn), 7));
    return tx.Audit(AuditEvent{.actor = "kms", .action = action, .sn = sn, .result = "OK"});
  });
}

TEST_F(KeyStorePgTest, OneWriteUnitSupersedesInsertsAndAuditsTogether) {
  const uint64_t old = NewTmk("SN-OW");
  auto store = FreshStore();
  KeyRecord made;
  std::vector<std::vector<uint64_t>> seen;
  absl::Status done = RekeyInOneWrite(*store, "SN-OW", "test_one_write", &seen, &made);
  ASSERT_TRUE(done.ok()) << done;
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], std::vector<uint64_t>{old});
  const std::string dsn = hsm_->dsn();
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT state FROM hsm_key WHERE key_index = ", old)), 2);
  EXPECT_EQ(CountOf(dsn, "SELECT key_index FROM hsm_key WHERE bound_sn = 'SN-OW' AND state = 1"),
            static_cast<int64_t>(made.index));
  EXPECT_EQ(CountOf(dsn,
                    "SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_one_write' "
                    "AND sn = 'SN-OW'"),
            1);
  // Exactly what was written: a fresh store finds the same record and opens it.
  auto fresh = FreshStore();
  absl::Status s = fresh->Transact([&](KeyTransaction& tx) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> stored, tx.FindKey(made.index));
    if (!stored) return absl::NotFoundError("not stored");
    EXPECT_EQ(stored->nonce, made.nonce);
    EXPECT_EQ(stored->sealed, made.sealed);
    EXPECT_EQ(stored->created_at_ms, 7);
    EXPECT_EQ(stored->label, "tmk:SN-OW");
    RKL_RETURN_IF_ERROR(tx.Unseal(*stored).status());
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_read", .result = "OK"});
  });
  EXPECT_TRUE(s.ok()) << s;
  // The audit records it wrote are sealed into the chain like any other, and verify.
  auto verified = audit_->Verify(nullptr);
  ASSERT_TRUE(verified.ok()) << verified.status();
}

TEST_F(KeyStorePgTest, OneWriteUnitRunsAgainWhenALiveKeyItReadWasSupersededMeanwhile) {
  // Between the unit's reads and its write, another command supersedes the live TMK the
  // unit found. Its write must then change nothing, and the unit run again on fresh reads.
  const uint64_t old = NewTmk("SN-RACE");
  const std::string dsn = hsm_->dsn();
  const int64_t keys_before = CountOf(dsn, "SELECT count(*) FROM hsm_key");
  auto store = FreshStore();
  auto other = FreshStore();
  int hooks = 0;
  store->SetBeforeOneWriteHookForTest([&] {
    if (hooks++ > 0) return;
    absl::Status s = other->Transact([&](KeyTransaction& tx) -> absl::Status {
      RKL_RETURN_IF_ERROR(tx.SetKeyState(old, KeyState::kSuperseded, 5));
      return tx.Audit(AuditEvent{.actor = "kms", .action = "test_other", .result = "OK"});
    });
    EXPECT_TRUE(s.ok()) << s;
  });
  KeyRecord made;
  std::vector<std::vector<uint64_t>> seen;
  absl::Status s = RekeyInOneWrite(*store, "SN-RACE", "test_race", &seen, &made);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(seen.size(), 2u) << "the unit was not run again";
  EXPECT_EQ(seen[0], std::vector<uint64_t>{old});
  EXPECT_TRUE(seen[1].empty());
  // The first run wrote nothing: one key more than before (the second run's), one record.
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_key"), keys_before + 1);
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_race'"), 1);
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT updated_at_ms FROM hsm_key WHERE key_index = ", old)),
            5);
  EXPECT_EQ(CountOf(dsn, "SELECT key_index FROM hsm_key WHERE bound_sn = 'SN-RACE' AND state = 1"),
            static_cast<int64_t>(made.index));
}

TEST_F(KeyStorePgTest, OneWriteUnitWaitsForATransactionHoldingTheLiveKeyAndSeesItsOutcome) {
  // A transaction holds the live TMK's row lock and supersedes it while the unit writes:
  // the unit's statement waits for the lock, sees the committed change and runs again.
  const uint64_t old = NewTmk("SN-HELD");
  pqxx::connection locker(hsm_->dsn());
  auto held = std::make_unique<pqxx::work>(locker);
  auto store = FreshStore();
  std::atomic<int> hooks{0};
  store->SetBeforeOneWriteHookForTest([&] { ++hooks; });
  held->exec(absl::StrCat("SELECT 1 FROM hsm_key WHERE key_index = ", old, " FOR UPDATE"));
  std::atomic<bool> done{false};
  absl::Status s;
  KeyRecord made;
  std::vector<std::vector<uint64_t>> seen;
  std::thread writer([&] {
    s = RekeyInOneWrite(*store, "SN-HELD", "test_held", &seen, &made);
    done = true;
  });
  // The write either blocks on the held lock (PostgreSQL lists its backend as waiting) or
  // wrongly goes past it (done): wait for whichever happens, not for a duration.
  EXPECT_TRUE(rkl::testing::WaitUntil(
      [&] { return done || (hooks.load() > 0 && BackendsWaitingForALock(hsm_->dsn()) > 0); }));
  const bool waited = !done;
  held->exec(absl::StrCat("UPDATE hsm_key SET state = 2 WHERE key_index = ", old));
  held->commit();
  writer.join();
  EXPECT_TRUE(waited) << "the write did not wait for the row lock";
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[1].empty());
  EXPECT_EQ(
      CountOf(hsm_->dsn(), "SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_held'"), 1);
}

TEST_F(KeyStorePgTest, OneWriteUnitsForOneSnAgreeOnOneLiveKey) {
  // Concurrent re-keys of one SN: each supersedes what it found, so in the end exactly one
  // TMK is live and every other one was superseded, each by one of the units. As many units
  // as a unit has runs: each lost run is another unit's success, so however the scheduler
  // interleaves them none runs out of runs (more units would make ABORTED a matter of luck).
  NewTmk("SN-MANY");
  auto store = FreshStore();
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(PgKeyRecordStore::kMaxOneWriteRuns);
  std::vector<KeyRecord> made(results.size());
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = RekeyInOneWrite(*store, "SN-MANY", "test_many", nullptr, &made[i]);
    });
  }
  for (auto& t : threads) t.join();
  // A twin inserted between a run's read and write is ALREADY_EXISTS (HsmCore re-runs the
  // command); nothing else may happen.
  const int ok = rkl::testing::CountWinners(results, absl::StatusCode::kAlreadyExists);
  EXPECT_GE(ok, 1);
  const std::string dsn = hsm_->dsn();
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-MANY' AND state = 1"),
            1);
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-MANY'"), 1 + ok);
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_many'"), ok);
}

TEST_F(KeyStorePgTest, OneWriteUnitTwinIsAlreadyExistsAndWritesNothing) {
  // The unit finds no live TMK; before it writes, another command makes one.
  auto store = FreshStore();
  bool made_twin = false;
  store->SetBeforeOneWriteHookForTest([&] {
    if (made_twin) return;
    made_twin = true;
    NewTmk("SN-TWIN");
  });
  const std::string dsn = hsm_->dsn();
  KeyRecord made;
  absl::Status s = RekeyInOneWrite(*store, "SN-TWIN", "test_twin", nullptr, &made);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-TWIN'"), 1);
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_twin'"), 0);
}

TEST_F(KeyStorePgTest, OneWriteUnitRefusesWhatItCannotHoldBackAndWritesNothing) {
  const uint64_t tmk = NewTmk("SN-REF");
  const uint64_t other = NewTmk("SN-REF-OTHER");
  const std::string dsn = hsm_->dsn();
  const int64_t keys = CountOf(dsn, "SELECT count(*) FROM hsm_key");
  const int64_t pending = CountOf(dsn, "SELECT count(*) FROM hsm_audit_pending");
  auto store = FreshStore();
  const AuditEvent record{.actor = "kms", .action = "test_refused", .result = "OK"};
  using Body = std::function<absl::Status(KeyTransaction&)>;
  const std::vector<std::pair<std::string, Body>> bodies = {
      {"a read after a write",
       [&](KeyTransaction& tx) -> absl::Status {
         RKL_RETURN_IF_ERROR(tx.InsertKey(TestTmk("SN-REF-NEW"), 1).status());
         RKL_RETURN_IF_ERROR(tx.FindKey(other).status());
         return tx.Audit(record);
       }},
      {"superseding a key not found as live",
       [&](KeyTransaction& tx) -> absl::Status {
         RKL_RETURN_IF_ERROR(tx.FindKey(tmk).status());
         RKL_RETURN_IF_ERROR(tx.SetKeyState(tmk, KeyState::kSuperseded, 1));
         return tx.Audit(record);
       }},
      {"deleting a live key",
       [&](KeyTransaction& tx) -> absl::Status {
         RKL_RETURN_IF_ERROR(tx.FindLiveKeys(KeyType::kTmk, "SN-REF").status());
         RKL_RETURN_IF_ERROR(tx.SetKeyState(tmk, KeyState::kDeleted, 1));
         return tx.Audit(record);
       }},
      {"a ceremony write",
       [&](KeyTransaction& tx) -> absl::Status {
         RKL_RETURN_IF_ERROR(tx.DeleteComponents("no-such-ceremony"));
         return tx.Audit(record);
       }},
      {"a second audit record",
       [&](KeyTransaction& tx) -> absl::Status {
         RKL_RETURN_IF_ERROR(tx.InsertKey(TestTmk("SN-REF-NEW"), 1).status());
         RKL_RETURN_IF_ERROR(tx.Audit(record));
         return tx.Audit(record);
       }},
      {"no audit record",
       [&](KeyTransaction& tx) -> absl::Status {
         return tx.InsertKey(TestTmk("SN-REF-NEW"), 1).status();
       }},
  };
  for (const auto& [what, body] : bodies) {
    absl::Status s = store->TransactOneWrite(body);
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << what << ": " << s;
  }
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_key"), keys);
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT state FROM hsm_key WHERE key_index = ", tmk)), 1);
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_audit_pending"), pending);
}

TEST_F(KeyStorePgTest, TmkDeliveriesReKeyAndAgreeOnOneLiveKeyUnderConcurrency) {
  // AuthenticateAndDeliver runs as a one-write unit: a re-key supersedes the live TMK in the
  // same statement that inserts the new one, and concurrent first deliveries agree on one.
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-REKEY");
  const testing::TerminalKeys keys = testing::InsertTerminalKeys(*hsm_, t);
  auto first = Deliver(t, keys.auk, keys.tek);
  ASSERT_TRUE(first.ok()) << first.status();
  auto again = Deliver(t, keys.auk, keys.tek);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->tmk.tmk_index, first->tmk.tmk_index);
  EXPECT_FALSE(again->tmk.created);
  auto rekeyed = Deliver(t, keys.auk, keys.tek, /*replace_existing=*/true);
  ASSERT_TRUE(rekeyed.ok()) << rekeyed.status();
  EXPECT_NE(rekeyed->tmk.tmk_index, first->tmk.tmk_index);
  EXPECT_TRUE(rekeyed->tmk.created);
  const std::string dsn = hsm_->dsn();
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT state FROM hsm_key WHERE key_index = ",
                                      first->tmk.tmk_index)),
            2);
  EXPECT_EQ(CountOf(dsn,
                    "SELECT key_index FROM hsm_key WHERE bound_sn = 'SN-REKEY' AND "
                    "state = 1 AND key_type = 6"),
            static_cast<int64_t>(rekeyed->tmk.tmk_index));
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT kek_index FROM hsm_key WHERE key_index = ",
                                      rekeyed->tmk.tmk_index)),
            static_cast<int64_t>(keys.tek));

  const testing::TestTerminal c = testing::TestTerminal::Create("SN-CONC");
  const testing::TerminalKeys ckeys = testing::InsertTerminalKeys(*hsm_, c);
  testing::ExpectConcurrentDeliveriesAgreeOnOneTmk(hsm_->daemon().core(), "kms", c, ckeys.auk,
                                                   ckeys.tek);
  EXPECT_EQ(CountOf(dsn,
                    "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-CONC' AND "
                    "key_type = 6"),
            1);
}

TEST_F(KeyStorePgTest, NewTransportKeyArrivingWhileATmkIsMadeNeverLeavesItUnderAnotherTek) {
  // A new TK for the SN lands between the delivery's reads and its write: the delivery's
  // write finds the TEK and AUK it read superseded, writes nothing, runs again and is
  // refused (the old AUK is superseded). No TMK is made for the old TEK; the next delivery
  // with the new keys makes one bound to the new TEK.
  PgKeyRecordStore& rows = hsm_->daemon().key_records();
  KeyBarrier& store = hsm_->daemon().key_barrier();
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-RACE-TK");
  const testing::TerminalKeys keys = testing::InsertTerminalKeys(*hsm_, t);
  const testing::TestTerminal renewed = testing::TestTerminal::Create("SN-RACE-TK");
  testing::TerminalKeys renewed_keys;
  bool raced = false;
  rows.SetBeforeOneWriteHookForTest([&] {
    if (raced) return;
    raced = true;
    // What an import of the new TK does: supersede the SN's live keys, store the new pair.
    absl::Status s = store.Transact([&](KeyTransaction& tx) -> absl::Status {
      for (KeyType type : {KeyType::kTek, KeyType::kAuk, KeyType::kTmk}) {
        RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live, tx.FindLiveKeys(type, t.sn));
        for (const KeyRecord& k : live) {
          RKL_RETURN_IF_ERROR(tx.SetKeyState(k.index, KeyState::kSuperseded, 1));
        }
      }
      return tx.Audit(AuditEvent{.actor = "kms", .action = "test_import", .result = "OK"});
    });
    ASSERT_TRUE(s.ok()) << s;
    renewed_keys = testing::InsertTerminalKeys(*hsm_, renewed);
  });
  auto delivered = Deliver(t, keys.auk, keys.tek);
  rows.SetBeforeOneWriteHookForTest(nullptr);
  ASSERT_TRUE(raced);
  EXPECT_EQ(delivered.status().code(), absl::StatusCode::kFailedPrecondition) << delivered.status();
  const std::string dsn = hsm_->dsn();
  EXPECT_EQ(CountOf(dsn,
                    "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-RACE-TK' AND "
                    "key_type = 6"),
            0);
  auto next = Deliver(renewed, renewed_keys.auk, renewed_keys.tek);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT kek_index FROM hsm_key WHERE key_index = ",
                                      next->tmk.tmk_index)),
            static_cast<int64_t>(renewed_keys.tek));
}

TEST_F(KeyStorePgTest, TmkMadeWhileANewTransportKeyWasImportedIsSupersededNotReused) {
  // The other order: the delivery commits its TMK (bound to TEK1) between the import's
  // reads and its write, so the import supersedes TEK1 and AUK1 but not that TMK. The next
  // delivery, under TEK2, must not send it: it is superseded and a new TMK is made.
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-RACE-TMK");
  const testing::TerminalKeys keys = testing::InsertTerminalKeys(*hsm_, t);
  auto first = Deliver(t, keys.auk, keys.tek);
  ASSERT_TRUE(first.ok()) << first.status();
  // As the race leaves it: TEK1/AUK1 superseded, TEK2/AUK2 live, TMK1 (bound to TEK1) live.
  hsm_->Sql(absl::StrCat("UPDATE hsm_key SET state = 2 WHERE key_index IN (", keys.tek, ", ",
                         keys.auk, ")"));
  const testing::TestTerminal renewed = testing::TestTerminal::Create("SN-RACE-TMK");
  const testing::TerminalKeys renewed_keys = testing::InsertTerminalKeys(*hsm_, renewed);
  auto second = Deliver(renewed, renewed_keys.auk, renewed_keys.tek);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->tmk.created);
  EXPECT_NE(second->tmk.kcv, first->tmk.kcv);
  auto block =
      keyblock::ParseTmkBlock(renewed.tk.tek, renewed.tk.algorithm, second->block.key_block);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->tmk_kcv, second->tmk.kcv);
  const std::string dsn = hsm_->dsn();
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT state FROM hsm_key WHERE key_index = ",
                                      first->tmk.tmk_index)),
            2);
}

TEST_F(KeyStorePgTest, CompositeCommandsSendOneReadAndOneWriteEach) {
  // KMS's HSM commands per terminal on PostgreSQL: ImportAndChallenge reads PK, MAK and
  // the SN's live TEK/AUK in one statement and writes the keys with their audit record in
  // another; then every record the next commands need is in the store's record cache, so
  // AuthenticateAndDeliver writes the TMK with its record in one statement that checks
  // AUK, TEK and the SN's live keys, and VerifyInstallProof writes its record in one that
  // checks AUK and TMK. The results are the protocol's (the terminal opens the delivered
  // block).
  const std::vector<std::pair<std::string, crypto::SecretBytes>> pk_parts = {
      {"custodian:a", crypto::RandomSecret(32)}, {"custodian:b", crypto::RandomSecret(32)}};
  const std::vector<std::pair<std::string, crypto::SecretBytes>> mak_parts = {
      {"custodian:a", crypto::RandomSecret(32)}, {"custodian:b", crypto::RandomSecret(32)}};
  auto pk_key = testing::RunCeremony(*hsm_, v1::KEY_TYPE_PK, "PK-T", pk_parts);
  auto mak_key = testing::RunCeremony(*hsm_, v1::KEY_TYPE_MAK, "MAK-T", mak_parts);
  ASSERT_TRUE(pk_key.ok() && mak_key.ok()) << pk_key.status() << mak_key.status();
  const crypto::SecretBytes pk = testing::Xor(pk_parts[0].second, pk_parts[1].second);
  const crypto::SecretBytes mak = testing::Xor(mak_parts[0].second, mak_parts[1].second);
  auto ctk_pk_of = [&](const testing::TestTerminal& t) {
    protocol::CtkPkHeader header{
        .algorithm = t.tk.algorithm, .sn = t.sn, .created_at_unix_ms = 1764000000000};
    Bytes pk_kcv = crypto::Kcv(crypto::CipherFamily::kAes, pk).value();
    Bytes mak_kcv = crypto::Kcv(crypto::CipherFamily::kAes, mak).value();
    std::copy_n(pk_kcv.begin(), 3, header.pk_kcv.begin());
    std::copy_n(mak_kcv.begin(), 3, header.mak_kcv.begin());
    return protocol::BuildCtkPk(header, protocol::EncodeTkPayload(t.tk).value(), pk, mak).value();
  };
  HsmCore& core = hsm_->daemon().core();
  PgKeyRecordStore& store = hsm_->daemon().key_records();
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-COMPOSITE");
  const ImportCommand import{pk_key->key_index, mak_key->key_index, t.sn, ctk_pk_of(t)};
  const Bytes rnd1 = crypto::RandomBytes(16);

  uint64_t before = store.statements_sent();
  auto begun = core.ImportAndChallenge("kms", import, rnd1);
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_EQ(store.statements_sent() - before, 2u);
  EXPECT_EQ(begun->imported.tek_kcv, t.TekKcv());
  const protocol::AuthKeys keys = t.AuthKeys();
  ASSERT_TRUE(
      protocol::VerifyCrnd1(keys, rnd1, begun->challenge.rnd2, begun->challenge.crnd1).ok());

  before = store.statements_sent();
  auto delivered =
      core.AuthenticateAndDeliver("kms",
                                  {begun->imported.auk_index, t.sn, rnd1, begun->challenge.rnd2,
                                   protocol::MakeCrnd2(keys, rnd1, begun->challenge.rnd2).value()},
                                  t.tk.algorithm, false, begun->imported.tek_index);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_EQ(store.statements_sent() - before, 1u);
  auto block = keyblock::ParseTmkBlock(t.tk.tek, t.tk.algorithm, delivered->block.key_block);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->tmk_kcv, delivered->tmk.kcv);

  // The terminal's proof of installation: read-only, its record written by the store in the
  // one statement that checks the cached AUK and TMK.
  const Bytes rnd3 = crypto::RandomBytes(16), rnd4 = crypto::RandomBytes(16);
  const Bytes tmk_kcv = FromHex(delivered->tmk.kcv).value();
  before = store.statements_sent();
  absl::Status proved = core.VerifyInstallProof(
      "kms", {begun->imported.auk_index, t.sn, delivered->tmk.kcv, rnd3, rnd4,
              protocol::MakeInstallProof(keys, t.sn, tmk_kcv, rnd3, rnd4).value()});
  EXPECT_TRUE(proved.ok()) << proved;
  EXPECT_EQ(store.statements_sent() - before, 1u);

  // KMS's retry of the same import: the same keys back, nothing new stored.
  const std::string dsn = hsm_->dsn();
  const int64_t keys_before = CountOf(dsn, "SELECT count(*) FROM hsm_key");
  before = store.statements_sent();
  auto again = core.ImportAndChallenge("kms", import, crypto::RandomBytes(16));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(store.statements_sent() - before, 1u);
  EXPECT_EQ(again->imported.tek_index, begun->imported.tek_index);
  EXPECT_EQ(again->imported.auk_index, begun->imported.auk_index);
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_key"), keys_before);

  // Another new terminal, with PK and MAK kept: its import assumes the SN has no keys and
  // its one statement checks that.
  const testing::TestTerminal t2 = testing::TestTerminal::Create("SN-COMPOSITE-2");
  before = store.statements_sent();
  auto second = core.ImportAndChallenge(
      "kms", {pk_key->key_index, mak_key->key_index, t2.sn, ctk_pk_of(t2)}, rnd1);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(store.statements_sent() - before, 1u);
  EXPECT_EQ(second->imported.tek_kcv, t2.TekKcv());

  // A terminal whose keys this process has never seen (stored by another replica): the
  // assumption fails the check, nothing is written, and the import runs again on the rows
  // and supersedes them.
  const testing::TestTerminal t3 = testing::TestTerminal::Create("SN-COMPOSITE-3");
  const testing::TerminalKeys old3 = testing::InsertTerminalKeys(*hsm_, t3);
  const testing::TestTerminal t3new = testing::TestTerminal::Create("SN-COMPOSITE-3");
  auto third = core.ImportAndChallenge(
      "kms", {pk_key->key_index, mak_key->key_index, t3new.sn, ctk_pk_of(t3new)}, rnd1);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->imported.tek_kcv, t3new.TekKcv());
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT count(*) FROM hsm_key WHERE state = 2 AND "
                                      "key_index IN (",
                                      old3.tek, ", ", old3.auk, ")")),
            2);
  EXPECT_EQ(CountOf(dsn,
                    "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-COMPOSITE-3' AND "
                    "state = 1"),
            2);

  // A new transport key for the SN supersedes the old pair and the TMK in the same write.
  const testing::TestTerminal renewed = testing::TestTerminal::Create("SN-COMPOSITE");
  auto replaced = core.ImportAndChallenge(
      "kms", {pk_key->key_index, mak_key->key_index, renewed.sn, ctk_pk_of(renewed)}, rnd1);
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_NE(replaced->imported.tek_index, begun->imported.tek_index);
  EXPECT_EQ(CountOf(dsn, absl::StrCat("SELECT count(*) FROM hsm_key WHERE state = 2 AND "
                                      "key_index IN (",
                                      begun->imported.tek_index, ", ", begun->imported.auk_index,
                                      ", ", delivered->tmk.tmk_index, ")")),
            3);
  EXPECT_EQ(CountOf(dsn,
                    "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-COMPOSITE' AND "
                    "state = 1 AND key_type IN (4, 5)"),
            2);
}

// Records of `action` for `sn` with result OK, sealed or pending.
int64_t OkRecords(const std::string& dsn, const std::string& action, const std::string& sn) {
  return CountOf(dsn, absl::StrCat("SELECT count(*) FROM (SELECT action, sn, result FROM "
                                   "hsm_audit_pending UNION ALL SELECT action, sn, result FROM "
                                   "hsm_audit) a WHERE result = 'OK' AND action = '",
                                   action, "' AND sn = '", sn, "'"));
}

// What another replica's DestroyTerminalKeys does, on a store of its own (so nothing of the
// daemon's process sees it but the rows).
void DestroyElsewhere(BarrierOverPg& other, const std::string& sn) {
  absl::Status s = other.Transact([&](KeyTransaction& tx) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> keys, tx.FindUndeletedKeysOf(sn));
    for (const KeyRecord& k : keys) {
      RKL_RETURN_IF_ERROR(tx.SetKeyState(k.index, KeyState::kDeleted, 1));
    }
    return tx.Audit(AuditEvent{.actor = "admin", .action = "test_destroy", .result = "OK"});
  });
  ASSERT_TRUE(s.ok()) << s;
}

TEST_F(KeyStorePgTest, CachedTerminalKeysCostOneStatementPerCommand) {
  // Once a command has read a terminal's keys, the next commands on them take the records
  // from the store's cache: each is one statement (its checks and its audit record).
  HsmCore& core = hsm_->daemon().core();
  PgKeyRecordStore& store = hsm_->daemon().key_records();
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-CACHED");
  const testing::TerminalKeys keys = testing::InsertTerminalKeys(*hsm_, t);
  auto first = Deliver(t, keys.auk, keys.tek);  // reads the records
  ASSERT_TRUE(first.ok()) << first.status();

  uint64_t before = store.statements_sent();
  const Bytes rnd1 = crypto::RandomBytes(16);
  auto challenge = core.AuthChallenge("kms", keys.auk, t.sn, rnd1);
  ASSERT_TRUE(challenge.ok()) << challenge.status();
  EXPECT_EQ(store.statements_sent() - before, 1u);
  ASSERT_TRUE(protocol::VerifyCrnd1(t.AuthKeys(), rnd1, challenge->rnd2, challenge->crnd1).ok());

  before = store.statements_sent();
  auto again = core.AuthenticateAndDeliver(
      "kms",
      {keys.auk, t.sn, rnd1, challenge->rnd2,
       protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value()},
      t.tk.algorithm, false, keys.tek);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(store.statements_sent() - before, 1u);
  EXPECT_FALSE(again->tmk.created);
  EXPECT_EQ(again->tmk.tmk_index, first->tmk.tmk_index);

  const Bytes rnd3 = crypto::RandomBytes(16), rnd4 = crypto::RandomBytes(16);
  const Bytes kcv = FromHex(first->tmk.kcv).value();
  before = store.statements_sent();
  absl::Status proved = core.VerifyInstallProof(
      "kms", {keys.auk, t.sn, first->tmk.kcv, rnd3, rnd4,
              protocol::MakeInstallProof(t.AuthKeys(), t.sn, kcv, rnd3, rnd4).value()});
  EXPECT_TRUE(proved.ok()) << proved;
  EXPECT_EQ(store.statements_sent() - before, 1u);
}

TEST_F(KeyStorePgTest, KeysAnotherReplicaDestroyedAreNeverUsedFromTheCache) {
  // The daemon has every record of the terminal cached; another replica (a store of its
  // own on the same database) destroys the terminal's keys. No command of the daemon uses
  // them: each is refused as if it had read the rows, and no success is audited.
  HsmCore& core = hsm_->daemon().core();
  const std::string dsn = hsm_->dsn();
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-GONE");
  const testing::TerminalKeys keys = testing::InsertTerminalKeys(*hsm_, t);
  auto first = Deliver(t, keys.auk, keys.tek);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(Deliver(t, keys.auk, keys.tek).ok());  // served from the cache
  auto other = FreshStore();
  DestroyElsewhere(*other, t.sn);

  const int64_t challenges = OkRecords(dsn, audit::action::kAuthChallenge, t.sn);
  const int64_t deliveries = OkRecords(dsn, audit::action::kTmkAuthenticateAndDeliver, t.sn);
  const int64_t proofs = OkRecords(dsn, audit::action::kInstallVerifyProof, t.sn);
  const Bytes rnd1 = crypto::RandomBytes(16), rnd2 = crypto::RandomBytes(16);
  auto challenge = core.AuthChallenge("kms", keys.auk, t.sn, rnd1);
  EXPECT_EQ(challenge.status().code(), absl::StatusCode::kNotFound) << challenge.status();
  auto delivered = core.AuthenticateAndDeliver(
      "kms", {keys.auk, t.sn, rnd1, rnd2, protocol::MakeCrnd2(t.AuthKeys(), rnd1, rnd2).value()},
      t.tk.algorithm, false, keys.tek);
  EXPECT_EQ(delivered.status().code(), absl::StatusCode::kNotFound) << delivered.status();
  const Bytes kcv = FromHex(first->tmk.kcv).value();
  absl::Status proved = core.VerifyInstallProof(
      "kms", {keys.auk, t.sn, first->tmk.kcv, rnd1, rnd2,
              protocol::MakeInstallProof(t.AuthKeys(), t.sn, kcv, rnd1, rnd2).value()});
  EXPECT_EQ(proved.code(), absl::StatusCode::kNotFound) << proved;
  EXPECT_EQ(OkRecords(dsn, audit::action::kAuthChallenge, t.sn), challenges);
  EXPECT_EQ(OkRecords(dsn, audit::action::kTmkAuthenticateAndDeliver, t.sn), deliveries);
  EXPECT_EQ(OkRecords(dsn, audit::action::kInstallVerifyProof, t.sn), proofs);
  EXPECT_EQ(CountOf(dsn, "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-GONE' AND state = 1"),
            0);
}

TEST_F(KeyStorePgTest, TmkAnotherReplicaSupersededIsNotProvedFromTheCache) {
  // The live TMK is cached; another replica supersedes it (what a new transport key does).
  // A proof of installation of that TMK is refused: it is no longer the SN's live TMK.
  HsmCore& core = hsm_->daemon().core();
  const std::string dsn = hsm_->dsn();
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-OLD-TMK");
  const testing::TerminalKeys keys = testing::InsertTerminalKeys(*hsm_, t);
  auto first = Deliver(t, keys.auk, keys.tek);
  ASSERT_TRUE(first.ok()) << first.status();
  auto other = FreshStore();
  absl::Status s = other->Transact([&](KeyTransaction& tx) -> absl::Status {
    RKL_RETURN_IF_ERROR(tx.SetKeyState(first->tmk.tmk_index, KeyState::kSuperseded, 1));
    return tx.Audit(AuditEvent{.actor = "kms", .action = "test_supersede", .result = "OK"});
  });
  ASSERT_TRUE(s.ok()) << s;
  const int64_t proofs = OkRecords(dsn, audit::action::kInstallVerifyProof, t.sn);
  const Bytes rnd3 = crypto::RandomBytes(16), rnd4 = crypto::RandomBytes(16);
  const Bytes kcv = FromHex(first->tmk.kcv).value();
  absl::Status proved = core.VerifyInstallProof(
      "kms", {keys.auk, t.sn, first->tmk.kcv, rnd3, rnd4,
              protocol::MakeInstallProof(t.AuthKeys(), t.sn, kcv, rnd3, rnd4).value()});
  EXPECT_EQ(proved.code(), absl::StatusCode::kFailedPrecondition) << proved;
  EXPECT_EQ(OkRecords(dsn, audit::action::kInstallVerifyProof, t.sn), proofs);
}

TEST_F(KeyStorePgTest, DestroyBetweenACachedDeliveryAndItsWriteRefusesTheDelivery) {
  // Every record the delivery needs is cached; the terminal's keys are destroyed by
  // another replica after the delivery has made its TMK and before its statement: the
  // statement finds AUK and TEK gone and writes nothing, and the delivery, run again on
  // the rows, is refused. No TMK is stored and no success is audited.
  HsmCore& core = hsm_->daemon().core();
  PgKeyRecordStore& rows = hsm_->daemon().key_records();
  const std::string dsn = hsm_->dsn();
  const testing::TestTerminal t = testing::TestTerminal::Create("SN-GONE-MID");
  const testing::TerminalKeys keys = testing::InsertTerminalKeys(*hsm_, t);
  auto first = Deliver(t, keys.auk, keys.tek, /*replace_existing=*/false);
  ASSERT_TRUE(first.ok()) << first.status();
  const int64_t deliveries = OkRecords(dsn, audit::action::kTmkAuthenticateAndDeliver, t.sn);
  const Bytes rnd1 = crypto::RandomBytes(16);
  auto challenge = core.AuthChallenge("kms", keys.auk, t.sn, rnd1);
  ASSERT_TRUE(challenge.ok()) << challenge.status();
  auto other = FreshStore();
  bool destroyed = false;
  rows.SetBeforeOneWriteHookForTest([&] {
    if (destroyed) return;
    destroyed = true;
    DestroyElsewhere(*other, t.sn);
  });
  auto delivered = core.AuthenticateAndDeliver(
      "kms",
      {keys.auk, t.sn, rnd1, challenge->rnd2,
       protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value()},
      t.tk.algorithm, /*replace_existing=*/true, keys.tek);
  rows.SetBeforeOneWriteHookForTest(nullptr);
  ASSERT_TRUE(destroyed);
  EXPECT_EQ(delivered.status().code(), absl::StatusCode::kNotFound) << delivered.status();
  EXPECT_EQ(OkRecords(dsn, audit::action::kTmkAuthenticateAndDeliver, t.sn), deliveries);
  EXPECT_EQ(CountOf(dsn,
                    "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-GONE-MID' AND "
                    "key_type = 6"),
            1);  // only the first delivery's TMK, destroyed
  EXPECT_EQ(CountOf(dsn,
                    "SELECT count(*) FROM hsm_key WHERE bound_sn = 'SN-GONE-MID' AND "
                    "state = 1"),
            0);
}

TEST_F(KeyStorePgTest, AuditGroupsAreWrittenEvenWhenEveryCommandConnectionIsTaken) {
  // Commands hold their pool's connections while they work; the record they all wait for
  // must not queue behind them. With the command pool exhausted, a group still commits.
  db::ConnectionPool commands(db::PoolOptions{
      .dsn = hsm_->dsn(), .max_size = 1, .borrow_timeout = absl::Milliseconds(200)});
  db::ConnectionPool writer(db::PoolOptions{.dsn = hsm_->dsn(), .max_size = 1});
  PgAuditLog log(commands, writer, DeriveAuditKey(hsm_->lmk(), "hsm-kms").value());
  auto held = commands.Borrow();
  ASSERT_TRUE(held.ok()) << held.status();
  absl::Status s = log.AppendGrouped(
      AuditEvent{.at_ms = 1, .actor = "kms", .action = "test_writer_pool", .result = "OK"});
  EXPECT_TRUE(s.ok()) << s;
  // The same log on one shared pool would have had to wait for the held connection.
  PgAuditLog shared(commands, DeriveAuditKey(hsm_->lmk(), "hsm-kms").value());
  EXPECT_EQ(shared
                .AppendGrouped(
                    AuditEvent{.at_ms = 2, .actor = "kms", .action = "test_shared", .result = "OK"})
                .code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace rkl::hsm
