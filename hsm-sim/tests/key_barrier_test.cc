// Unit tests of KeyBarrier over the in-memory row store: what PROTOCOL §9 promises of keys at
// rest — every record bound to its metadata, tampering refused, the LMK bound to the rows —
// holds here with the same sealing code PostgreSQL's rows go through.
#include "key_barrier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "absl/strings/str_cat.h"
#include "fake_key_store.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/aead.h"
#include "rkl/crypto/random.h"

namespace rkl::hsm {
namespace {

using crypto::SecretBytes;
using testing::FakeAuditLog;
using testing::FakeKeyRecordStore;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kCreatedAt = 1'700'000'000'000;

NewKey TerminalKey(KeyType type, const std::string& sn, uint64_t kek_index = 0) {
  const KeyUsage usage = type == KeyType::kTek   ? KeyUsage::kExportKek
                         : type == KeyType::kAuk ? KeyUsage::kTerminalAuth
                                                 : KeyUsage::kTerminalMaster;
  return NewKey{.type = type,
                .algorithm = 0x11,
                .usage = usage,
                .bound_sn = sn,
                .label = absl::StrCat(KeyTypeName(type), ":", sn),
                .kcv = "0A0B0C",
                .kek_index = kek_index,
                .material = crypto::RandomSecret(16)};
}

class KeyBarrierTest : public ::testing::Test {
 protected:
  uint64_t Insert(const NewKey& key) {
    uint64_t index = 0;
    absl::Status s = barrier_.Transact([&](KeyTransaction& tx) -> absl::Status {
      RKL_ASSIGN_OR_RETURN(KeyRecord r, tx.InsertKey(key, kCreatedAt));
      index = r.index;
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    return index;
  }

  static absl::StatusOr<SecretBytes> Open(KeyBarrier& barrier, uint64_t index) {
    absl::StatusOr<SecretBytes> out = absl::NotFoundError("no such key");
    absl::Status s = barrier.Transact([&](KeyTransaction& tx) -> absl::Status {
      RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> r, tx.FindKey(index));
      if (r) out = tx.Unseal(*r);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return out;
  }
  absl::StatusOr<SecretBytes> Open(uint64_t index) { return Open(barrier_, index); }

  KeyRecord& Row(uint64_t index) { return rows_.state().keys.at(index); }

  // Refused with exactly the integrity error, which names the index and nothing else: no
  // key bytes (of `material`), no AAD.
  void ExpectRefused(uint64_t index, const SecretBytes& material, const std::string& what) {
    absl::StatusOr<SecretBytes> opened = Open(index);
    EXPECT_EQ(opened.status(), absl::InternalError(absl::StrCat("key record ", index,
                                                                " failed its integrity check")))
        << what;
    EXPECT_THAT(opened.status().message(), Not(HasSubstr(ToHex(material.RevealSecret())))) << what;
  }

  FakeAuditLog audit_;
  FakeKeyRecordStore rows_{audit_};
  KeyBarrier barrier_{rows_, testing::TestLmk(), /*cache_capacity=*/0};
};

TEST_F(KeyBarrierTest, IntactRecordOpensAndRowsHoldOnlySealedBytes) {
  const NewKey key = TerminalKey(KeyType::kTmk, "SN-A", /*kek_index=*/3);
  const uint64_t index = Insert(key);
  auto opened = Open(index);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(*opened == key.material);
  const KeyRecord& row = Row(index);
  EXPECT_EQ(row.nonce.size(), crypto::kAeadNonceSize);
  EXPECT_EQ(row.sealed.size(), key.material.size() + 16);  // ciphertext ‖ GCM tag
  const auto clear = key.material.RevealSecret();
  EXPECT_EQ(std::search(row.sealed.begin(), row.sealed.end(), clear.begin(), clear.end()),
            row.sealed.end());
}

TEST_F(KeyBarrierTest, SealedFormIsTheStoredFormat) {
  // nonce ‖ sealed is AeadSeal's blob under the LMK with the record's AAD (PROTOCOL §9), as
  // PostgreSQL rows written before the barrier existed hold it.
  const NewKey key = TerminalKey(KeyType::kTmk, "SN-1", /*kek_index=*/7);
  const uint64_t index = Insert(key);
  const KeyRecord& row = Row(index);
  Bytes blob = row.nonce;
  blob.insert(blob.end(), row.sealed.begin(), row.sealed.end());
  auto opened = crypto::AeadOpen(
      testing::TestLmk(), blob,
      KeyRecordAad(index, KeyType::kTmk, 0x11, KeyUsage::kTerminalMaster, "SN-1", kCreatedAt, 7));
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(*opened == key.material);
}

TEST_F(KeyBarrierTest, AadLayoutIsFixed) {
  EXPECT_EQ(KeyRecordAad(7, KeyType::kTek, 0x11, KeyUsage::kExportKek, "SN-1", kCreatedAt),
            FromHex("524B4C2D48534D2D4B45592D31000000000000000704110404534E2D310000018BCFE56800")
                .value());
  EXPECT_EQ(KeyRecordAad(9, KeyType::kTmk, 0x11, KeyUsage::kTerminalMaster, "SN-1", kCreatedAt, 7),
            FromHex("524B4C2D48534D2D4B45592D32000000000000000906110604534E2D310000018BCFE56800"
                    "0000000000000007")
                .value());
  EXPECT_EQ(
      ComponentAad("c-1", "custodian:carol"),
      FromHex("524B4C2D48534D2D434F4D504F4E454E542D3103632D310F637573746F6469616E3A6361726F6C")
          .value());
}

TEST_F(KeyBarrierTest, FlippedByteOfASealedRowIsRefused) {
  const std::vector<std::pair<std::string, std::function<void(KeyRecord&)>>> flips = {
      {"nonce", [](KeyRecord& r) { r.nonce[0] ^= 1; }},
      {"ciphertext", [](KeyRecord& r) { r.sealed[0] ^= 1; }},
      {"tag", [](KeyRecord& r) { r.sealed.back() ^= 1; }},
      {"short nonce", [](KeyRecord& r) { r.nonce.pop_back(); }},
      {"erased", [](KeyRecord& r) { r.sealed.clear(); }},
  };
  int n = 0;
  for (const auto& [what, flip] : flips) {
    const NewKey key = TerminalKey(KeyType::kTmk, absl::StrCat("SN-F", n++));
    const uint64_t index = Insert(key);
    flip(Row(index));
    ExpectRefused(index, key.material, what);
  }
}

TEST_F(KeyBarrierTest, EveryAadColumnIsBound) {
  const std::vector<std::pair<std::string, std::function<void(KeyRecord&)>>> changes = {
      {"key_type", [](KeyRecord& r) { r.type = KeyType::kTek; }},
      {"algorithm", [](KeyRecord& r) { r.algorithm = 0x13; }},
      {"usage", [](KeyRecord& r) { r.usage = KeyUsage::kExportKek; }},
      {"bound_sn", [](KeyRecord& r) { r.bound_sn = "SN-OTHER"; }},
      {"created_at_ms", [](KeyRecord& r) { ++r.created_at_ms; }},
      {"kek_index changed", [](KeyRecord& r) { r.kek_index = 99; }},
      {"kek_index removed", [](KeyRecord& r) { r.kek_index = 0; }},
  };
  int n = 0;
  for (const auto& [what, change] : changes) {
    const NewKey key = TerminalKey(KeyType::kTmk, absl::StrCat("SN-C", n++), /*kek_index=*/5);
    const uint64_t index = Insert(key);
    change(Row(index));
    ExpectRefused(index, key.material, what);
  }
  // An unbound record given a binding afterwards.
  const NewKey unbound = TerminalKey(KeyType::kTmk, "SN-UNBOUND");
  const uint64_t index = Insert(unbound);
  Row(index).kek_index = 5;
  ExpectRefused(index, unbound.material, "kek_index added");
}

TEST_F(KeyBarrierTest, KrdBindingIsBound) {
  // A TR-34 TMK's KRD is part of its AAD (tag RKL-HSM-KEY-3): it cannot be changed, removed,
  // turned into a TEK binding, nor added to a record sealed without it.
  const std::string krd_a(64, 'A'), krd_b(64, 'B');
  EXPECT_EQ(
      KeyRecordAad(9, KeyType::kTmk, 0x11, KeyUsage::kTerminalMaster, "SN-1", kCreatedAt, 0, "AB"),
      FromHex("524B4C2D48534D2D4B45592D33000000000000000906110604534E2D310000018BCFE56800"
              "0000000000000000024142")
          .value());
  const std::vector<std::pair<std::string, std::function<void(KeyRecord&)>>> changes = {
      {"bound_krd changed", [&](KeyRecord& r) { r.bound_krd = krd_b; }},
      {"bound_krd removed", [](KeyRecord& r) { r.bound_krd.clear(); }},
      {"bound to a TEK instead",
       [](KeyRecord& r) {
         r.bound_krd.clear();
         r.kek_index = 5;
       }},
      {"bound_sn", [](KeyRecord& r) { r.bound_sn = "SN-OTHER"; }},
  };
  int n = 0;
  for (const auto& [what, change] : changes) {
    NewKey key = TerminalKey(KeyType::kTmk, absl::StrCat("SN-K", n++));
    key.bound_krd = krd_a;
    const uint64_t index = Insert(key);
    ASSERT_TRUE(Open(index).ok()) << what;
    EXPECT_EQ(Row(index).bound_krd, krd_a);
    change(Row(index));
    ExpectRefused(index, key.material, what);
  }
  const NewKey unbound = TerminalKey(KeyType::kTmk, "SN-K-UNBOUND");
  const uint64_t index = Insert(unbound);
  Row(index).bound_krd = krd_a;
  ExpectRefused(index, unbound.material, "bound_krd added");
}

TEST_F(KeyBarrierTest, SealedBytesMovedToAnotherRowAreRefused) {
  // The TEK's sealed bytes copied over the AUK's (another index, type and usage) and over the
  // TEK of another SN: neither opens, and the TEK itself still does.
  const NewKey tek = TerminalKey(KeyType::kTek, "SN-A");
  const NewKey auk = TerminalKey(KeyType::kAuk, "SN-A");
  const NewKey other = TerminalKey(KeyType::kTek, "SN-B");
  const uint64_t tek_index = Insert(tek), auk_index = Insert(auk), other_index = Insert(other);
  for (uint64_t target : {auk_index, other_index}) {
    Row(target).nonce = Row(tek_index).nonce;
    Row(target).sealed = Row(tek_index).sealed;
    ExpectRefused(target, tek.material, absl::StrCat("moved to ", target));
  }
  EXPECT_TRUE(Open(tek_index).ok());
  // The whole record moved to another index.
  KeyRecord moved = Row(tek_index);
  moved.index = 1000;
  rows_.state().keys.erase(tek_index);
  rows_.state().keys[1000] = moved;
  ExpectRefused(1000, tek.material, "moved to index 1000");
}

TEST_F(KeyBarrierTest, RowsSealedUnderAnotherLmkAreRefused) {
  const NewKey key = TerminalKey(KeyType::kAuk, "SN-A");
  const uint64_t index = Insert(key);
  KeyBarrier other(rows_, testing::TestLmk(2), /*cache_capacity=*/0);
  absl::StatusOr<SecretBytes> opened = Open(other, index);
  EXPECT_EQ(opened.status(),
            absl::InternalError(absl::StrCat("key record ", index, " failed its integrity check")));
  EXPECT_THAT(opened.status().message(), Not(HasSubstr(ToHex(key.material.RevealSecret()))));
  EXPECT_TRUE(Open(index).ok());
}

TEST_F(KeyBarrierTest, CacheNeverHidesTampering) {
  KeyBarrier cached(rows_, testing::TestLmk(), /*cache_capacity=*/16);
  const uint64_t index = Insert(TerminalKey(KeyType::kTmk, "SN-A"));
  ASSERT_TRUE(Open(cached, index).ok());
  ASSERT_TRUE(Open(cached, index).ok());
  EXPECT_EQ(cached.cache().hits(), 1u);
  Row(index).sealed[3] ^= 1;
  EXPECT_EQ(Open(cached, index).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(cached.cache().size(), 0u);
}

TEST_F(KeyBarrierTest, DeletingErasesTheSealedBytesAndTheCachedKey) {
  KeyBarrier cached(rows_, testing::TestLmk(), /*cache_capacity=*/16);
  const uint64_t index = Insert(TerminalKey(KeyType::kTmk, "SN-A"));
  ASSERT_TRUE(Open(cached, index).ok());
  EXPECT_EQ(cached.cache().size(), 1u);
  ASSERT_TRUE(cached
                  .Transact([&](KeyTransaction& tx) {
                    return tx.SetKeyState(index, KeyState::kDeleted, kCreatedAt + 1);
                  })
                  .ok());
  EXPECT_EQ(cached.cache().size(), 0u);
  EXPECT_TRUE(Row(index).nonce.empty());
  EXPECT_TRUE(Row(index).sealed.empty());
  EXPECT_EQ(Open(cached, index).status().code(), absl::StatusCode::kInternal);
}

TEST_F(KeyBarrierTest, ComponentsAreSealedAndBoundToCeremonyAndCustodian) {
  const SecretBytes a = crypto::RandomSecret(32), b = crypto::RandomSecret(32);
  auto add = [&](const std::string& ceremony, const std::string& custodian, const SecretBytes& c) {
    return barrier_.Transact([&](KeyTransaction& tx) {
      return tx.AddComponent(ceremony, custodian, "0A0B0C", c, kCreatedAt);
    });
  };
  auto open = [&](const std::string& ceremony) {
    absl::StatusOr<std::vector<SecretBytes>> out;
    absl::Status s = barrier_.Transact([&](KeyTransaction& tx) {
      out = tx.OpenComponents(ceremony);
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    return out;
  };
  ASSERT_TRUE(add("c-1", "custodian:carol", a).ok());
  ASSERT_TRUE(add("c-1", "custodian:dave", b).ok());
  EXPECT_EQ(add("c-1", "custodian:dave", b).code(), absl::StatusCode::kAlreadyExists);
  auto opened = open("c-1");
  ASSERT_TRUE(opened.ok()) << opened.status();
  ASSERT_EQ(opened->size(), 2u);
  EXPECT_TRUE((*opened)[0] == a);
  EXPECT_TRUE((*opened)[1] == b);

  // Carol's sealed component handed to Dave: refused, naming Dave's and no key bytes.
  auto& components = rows_.state().components.at("c-1");
  components[1].sealed.nonce = components[0].sealed.nonce;
  components[1].sealed.sealed = components[0].sealed.sealed;
  opened = open("c-1");
  EXPECT_EQ(opened.status(),
            absl::InternalError(
                "component of 'custodian:dave' in ceremony c-1 failed its integrity check"));
  EXPECT_THAT(opened.status().message(), Not(HasSubstr(ToHex(a.RevealSecret()))));
  // A component moved to another ceremony.
  rows_.state().components["c-2"] = {components[0]};
  EXPECT_EQ(open("c-2").status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace rkl::hsm
