// Keys at rest (PROTOCOL §9) against real PostgreSQL: sealing binds every record to its
// metadata, tampering is refused, the LMK is bound to the database.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "hsm_fixture.h"
#include "lmk.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/random.h"

namespace rkl::hsm {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::HsmInstance;

class KeyStorePgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = rkl::testing::TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    auto hsm = HsmInstance::Create(*pki_);
    ASSERT_TRUE(hsm.ok()) << hsm.status();
    hsm_ = *std::move(hsm);
    pool_ = std::make_unique<db::ConnectionPool>(db::PoolOptions{.dsn = hsm_->dsn()});
    audit_ = std::make_unique<PgAuditLog>(*pool_, DeriveAuditKey(hsm_->lmk(), "hsm-kms").value());
  }

  // A store of its own, so nothing is served from the daemon's cache.
  std::unique_ptr<PgKeyStore> FreshStore(size_t cache = 0) {
    return std::make_unique<PgKeyStore>(*pool_, hsm_->lmk(), *audit_, cache);
  }

  absl::StatusOr<crypto::SecretBytes> Open(PgKeyStore& store, uint64_t index) {
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
    auto tmk = hsm_->daemon().core().GenerateTmk("kms", sn, crypto::KeyAlgorithm::kAes128, false);
    EXPECT_TRUE(tmk.ok()) << tmk.status();
    return tmk->tmk_index;
  }

  // A busy new HSM: 900 live TEK/AUK/TMK records (keys 1000000..1000899, SNs SN-0..SN-299)
  // that PostgreSQL has no statistics for — the state plans must not depend on.
  void AddUnanalyzedLiveKeys() {
    hsm_->Sql("ALTER TABLE hsm_key SET (autovacuum_enabled = false)");
    hsm_->Sql(
        "INSERT INTO hsm_key (key_index, key_type, algorithm, usage, bound_sn, label, state, "
        "created_at_ms, updated_at_ms, nonce, sealed) "
        "SELECT 1000000 + g, 4 + g % 3, 17, 1, 'SN-' || (g / 3), 'k:' || g, 1, 0, 0, "
        "'\\x00', '\\x00' FROM generate_series(0, 899) g");
  }

  std::unique_ptr<rkl::testing::TestPki> pki_;
  std::unique_ptr<HsmInstance> hsm_;
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
  AddUnanalyzedLiveKeys();
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  tx.exec("SET plan_cache_mode = force_generic_plan");
  for (KeyType type : {KeyType::kTek, KeyType::kAuk, KeyType::kTmk}) {
    SCOPED_TRACE(static_cast<int>(type));
    std::string name = absl::StrCat("live", static_cast<int>(type));
    tx.exec(absl::StrCat("PREPARE ", name, "(text) AS ", FindLiveKeysSql(type)));
    std::string plan;
    for (const auto& row :
         tx.exec(absl::StrCat("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE ", name, "('SN-7')"))) {
      plan += row[0].as<std::string>() + "\n";
    }
    EXPECT_THAT(plan, HasSubstr("Index Scan using hsm_key_one_live_per_sn")) << plan;
    EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
    EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan"))) << plan;
  }
  // PrefetchLive's statement for TEK and AUK together, likewise.
  const KeyType both[] = {KeyType::kTek, KeyType::kAuk};
  tx.exec(absl::StrCat("PREPARE live_both(text) AS ", FindLiveKeysSql(both)));
  std::string plan;
  for (const auto& row :
       tx.exec("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE live_both('SN-7')")) {
    plan += row[0].as<std::string>() + "\n";
  }
  EXPECT_THAT(plan, HasSubstr("hsm_key_one_live_per_sn")) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan"))) << plan;
}

TEST_F(KeyStorePgTest, PrefetchUsesThePrimaryKeyEvenAsAGenericPreparedPlan) {
  // Same condition as above: 900 keys, no statistics. `key_index = ANY($1)` was planned as
  // a sequential scan here; every branch of the prefetch must be an index lookup.
  AddUnanalyzedLiveKeys();
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  tx.exec("SET plan_cache_mode = force_generic_plan");
  tx.exec(absl::StrCat("PREPARE pre(bigint, bigint, bigint) AS ", PrefetchKeysSql(3)));
  std::string plan;
  for (const auto& row : tx.exec("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE pre(1000007, 1000008, 5)")) {
    plan += row[0].as<std::string>() + "\n";
  }
  EXPECT_THAT(plan, HasSubstr("hsm_key_pkey")) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Seq Scan"))) << plan;
  EXPECT_THAT(plan, ::testing::Not(HasSubstr("Rows Removed"))) << plan;
}

TEST_F(KeyStorePgTest, TamperedKeyIsRefusedOverGrpcToo) {
  auto core_tmk =
      hsm_->daemon().core().GenerateTmk("kms", "SN-G", crypto::KeyAlgorithm::kAes128, false);
  ASSERT_TRUE(core_tmk.ok());
  // A fresh daemon (empty cache) on the tampered database.
  hsm_->Sql(
      absl::StrCat("UPDATE hsm_key SET bound_sn = 'SN-H' WHERE key_index = ", core_tmk->tmk_index));
  ASSERT_TRUE(hsm_->Start().ok());
  auto stub = hsm_->Stub("kms");
  v1::GenerateTmkRequest req;
  req.set_sn("SN-H");
  req.set_algorithm(v1::KEY_ALGORITHM_AES128);
  auto r = testing::Call(*stub, &v1::Hsm::Stub::GenerateTmk, req);
  EXPECT_EQ(r.status(), absl::InternalError(absl::StrCat("key record ", core_tmk->tmk_index,
                                                         " failed its integrity check")));
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
  o.database_dsn = hsm_->dsn();
  o.lmk_file = hsm_->lmk_file();
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
    RKL_ASSIGN_OR_RETURN(KeyRecord inserted,
                         tx.InsertKey(NewKey{.type = KeyType::kTmk,
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
    return NewKey{.type = type, .algorithm = 17, .usage = usage, .bound_sn = "SN-TWO",
                  .label = label, .kcv = "0A0B0C", .material = crypto::RandomSecret(16)};
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
      RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live, tx.FindLiveKeys(KeyType::kTmk, "SN-LOCKED"));
      if (live.size() != 1 || live[0].index != index) return absl::InternalError("wrong keys");
      return tx.Audit(AuditEvent{.actor = "kms", .action = "test_ro_live", .result = "OK"});
    });
    done = true;
  });
  for (int i = 0; i < 500 && !done; ++i) absl::SleepFor(absl::Milliseconds(10));
  const bool finished_while_locked = done;
  held.abort();  // lets a waiting reader finish either way
  reader.join();
  EXPECT_TRUE(finished_while_locked) << "the read-only unit waited for the row lock";
  EXPECT_TRUE(s.ok()) << s;
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
