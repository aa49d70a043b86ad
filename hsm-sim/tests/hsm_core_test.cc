// Unit tests of HsmCore's rules, with the in-memory store (no database, no network).
#include "hsm_core.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/ascii.h"
#include "core_checks.h"
#include "fake_key_store.h"
#include "rkl/crypto/kcv.h"
#include "test_terminal.h"

namespace rkl::hsm {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;
using testing::EncryptComponent;
using testing::FakeAuditLog;
using testing::FakeClock;
using testing::FakeKeyStore;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::TestTerminal;

constexpr char kAlice[] = "admin:alice";
constexpr char kBob[] = "admin:bob";
constexpr char kKms[] = "kms";

class HsmCoreTest : public ::testing::Test {
 protected:
  void SetUp() override { MakeCore(true); }

  void MakeCore(bool self_test_passed, int batch_threads = 0) {
    core_ = std::make_unique<HsmCore>(
        store_, audit_, clock_, testing::DeterministicRandom(42),
        HsmCoreOptions{.self_test_passed = self_test_passed,
                       .ceremony_key_bits = 2048,  // 3072 in production; speed only
                       .batch_threads = batch_threads});
  }

  // Runs a two-custodian ceremony and returns the key's index; components are returned.
  uint64_t Ceremony(KeyType type, const std::string& label, SecretBytes* c1 = nullptr,
                    SecretBytes* c2 = nullptr) {
    auto begun = core_->BeginCeremony(kAlice, label, type, 2, 0);
    EXPECT_TRUE(begun.ok()) << begun.status();
    SecretBytes a = crypto::RandomSecret(32), b = crypto::RandomSecret(32);
    EXPECT_TRUE(core_
                    ->AddComponent(kAlice, begun->ceremony_id,
                                   EncryptComponent(begun->component_encryption_key_der,
                                                    begun->ceremony_id, a))
                    .ok());
    EXPECT_TRUE(core_
                    ->AddComponent(kBob, begun->ceremony_id,
                                   EncryptComponent(begun->component_encryption_key_der,
                                                    begun->ceremony_id, b))
                    .ok());
    auto done = core_->CompleteCeremony(kAlice, begun->ceremony_id);
    EXPECT_TRUE(done.ok()) << done.status();
    if (c1) *c1 = a;
    if (c2) *c2 = b;
    return done.ok() ? done->key_index : 0;
  }

  // PK, MAK and an RSA work key; a terminal's TEK/AUK imported.
  void Provision(const TestTerminal& t) {
    pk_ = Ceremony(KeyType::kPk, "PK");
    mak_ = Ceremony(KeyType::kMak, "MAK");
    auto rsa = core_->GenerateRsaKeyPair("mtms", 2048, "work");
    ASSERT_TRUE(rsa.ok()) << rsa.status();
    pr_ = rsa->key_index;
    pu_ = rsa->public_key_der;
    auto ctk = core_->TranslateTransportKey("mtms", Translate(t, t.CtkPu(pu_)));
    ASSERT_TRUE(ctk.ok()) << ctk.status();
    ctk_pk_ = *ctk;
    auto imported = core_->ImportTransportKey(kKms, {pk_, mak_, t.sn, ctk_pk_});
    ASSERT_TRUE(imported.ok()) << imported.status();
    tek_ = imported->tek_index;
    auk_ = imported->auk_index;
  }

  TranslateCommand Translate(const TestTerminal& t, Bytes ctk_pu) {
    return {.pr_index = pr_,
            .ctk_pu = std::move(ctk_pu),
            .sn = t.sn,
            .created_at_ms = 1234,
            .pk_index = pk_,
            .mak_index = mak_,
            .algorithm = t.tk.algorithm};
  }

  FakeAuditLog audit_;
  FakeKeyStore store_{audit_};
  FakeClock clock_;
  std::unique_ptr<HsmCore> core_;
  uint64_t pk_ = 0, mak_ = 0, pr_ = 0, tek_ = 0, auk_ = 0;
  Bytes pu_, ctk_pk_;
};

TEST_F(HsmCoreTest, CeremonyCombinesComponentsAndErasesThem) {
  SecretBytes a, b;
  uint64_t index = Ceremony(KeyType::kPk, "PK-2026", &a, &b);
  auto info = core_->GetKeyInfo(kAlice, index);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->kcv, crypto::KcvHex(KeyAlgorithm::kAes256, testing::Xor(a, b)).value());
  EXPECT_EQ(info->usage, KeyUsage::kTkWrap);
  EXPECT_EQ(store_.component_rows(), 0u);
  // The ceremony key is gone, material included.
  for (const auto& [i, k] : store_.state().keys) {
    if (k.record.usage == KeyUsage::kCeremonyDecrypt) {
      EXPECT_EQ(k.record.state, KeyState::kDeleted);
      EXPECT_TRUE(k.material.empty());
    }
  }
}

TEST_F(HsmCoreTest, ComponentKcvIsReportedToItsCustodian) {
  auto begun = core_->BeginCeremony(kAlice, "MAK-1", KeyType::kMak, 2, 0);
  ASSERT_TRUE(begun.ok());
  SecretBytes a = crypto::RandomSecret(32);
  auto added = core_->AddComponent(
      kAlice, begun->ceremony_id,
      EncryptComponent(begun->component_encryption_key_der, begun->ceremony_id, a));
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(added->component_kcv, crypto::KcvHex(KeyAlgorithm::kAes256, a).value());
  EXPECT_EQ(added->components_added, 1u);
  EXPECT_EQ(added->components_required, 2u);
}

TEST_F(HsmCoreTest, SingleCustodianCannotCompleteACeremony) {
  auto begun = core_->BeginCeremony(kAlice, "PK", KeyType::kPk, 2, 0);
  ASSERT_TRUE(begun.ok());
  auto enc = [&] {
    return EncryptComponent(begun->component_encryption_key_der, begun->ceremony_id,
                            crypto::RandomSecret(32));
  };
  ASSERT_TRUE(core_->AddComponent(kAlice, begun->ceremony_id, enc()).ok());
  auto again = core_->AddComponent(kAlice, begun->ceremony_id, enc());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr("admin:alice"));
  auto complete = core_->CompleteCeremony(kAlice, begun->ceremony_id);
  EXPECT_EQ(complete.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(complete.status().message(), HasSubstr("1 of 2"));
}

TEST_F(HsmCoreTest, ExpiredCeremonyIsErasedAndRefused) {
  auto begun = core_->BeginCeremony(kAlice, "PK", KeyType::kPk, 2, 60);
  ASSERT_TRUE(begun.ok());
  ASSERT_TRUE(core_
                  ->AddComponent(kAlice, begun->ceremony_id,
                                 EncryptComponent(begun->component_encryption_key_der,
                                                  begun->ceremony_id, crypto::RandomSecret(32)))
                  .ok());
  EXPECT_EQ(store_.component_rows(), 1u);
  clock_.Advance(absl::Seconds(61));
  auto late = core_->AddComponent(kBob, begun->ceremony_id,
                                  EncryptComponent(begun->component_encryption_key_der,
                                                   begun->ceremony_id, crypto::RandomSecret(32)));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.status().message(), HasSubstr("expired"));
  EXPECT_EQ(store_.component_rows(), 0u);
  EXPECT_EQ(store_.state().ceremonies.at(begun->ceremony_id).state, CeremonyState::kExpired);
  EXPECT_EQ(core_->CompleteCeremony(kAlice, begun->ceremony_id).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(HsmCoreTest, ComponentForAnotherCeremonyIsRejected) {
  auto one = core_->BeginCeremony(kAlice, "PK", KeyType::kPk, 2, 0);
  auto two = core_->BeginCeremony(kAlice, "MAK", KeyType::kMak, 2, 0);
  ASSERT_TRUE(one.ok() && two.ok());
  // Encrypted to ceremony one's key with ceremony two's label: OAEP label mismatch.
  Bytes wrong_label = EncryptComponent(one->component_encryption_key_der, two->ceremony_id,
                                       crypto::RandomSecret(32));
  auto r = core_->AddComponent(kAlice, one->ceremony_id, wrong_label);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  // A 16-byte component is refused with the same answer.
  Bytes short_component = EncryptComponent(one->component_encryption_key_der, one->ceremony_id,
                                           crypto::RandomSecret(16));
  auto s = core_->AddComponent(kAlice, one->ceremony_id, short_component);
  EXPECT_EQ(s.status(), r.status());
  EXPECT_EQ(core_->AddComponent(kAlice, one->ceremony_id, Bytes(10, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->AddComponent(kAlice, std::string(32, 'F'), Bytes(256, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->AddComponent(kAlice, "nope", Bytes(256, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, BeginCeremonyValidatesItsArguments) {
  EXPECT_EQ(core_->BeginCeremony(kAlice, "PK", KeyType::kPk, 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->BeginCeremony(kAlice, "PK", KeyType::kTmk, 2, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->BeginCeremony(kAlice, "", KeyType::kPk, 2, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->BeginCeremony(kAlice, "PK", KeyType::kPk, 2, 90000).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, TranslateThenImportYieldsTheTerminalsKeys) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto tek = core_->GetKeyInfo(kKms, tek_);
  auto auk = core_->GetKeyInfo(kKms, auk_);
  ASSERT_TRUE(tek.ok() && auk.ok());
  EXPECT_EQ(tek->kcv, t.TekKcv());
  EXPECT_EQ(auk->kcv, t.AukKcv());
  EXPECT_EQ(tek->usage, KeyUsage::kExportKek);
  EXPECT_EQ(auk->usage, KeyUsage::kTerminalAuth);
  EXPECT_EQ(tek->bound_sn, "SN-1");
  // Importing the same Ctk_pk again returns the same keys.
  auto again = core_->ImportTransportKey(kKms, {pk_, mak_, t.sn, ctk_pk_});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->tek_index, tek_);
  EXPECT_EQ(again->auk_index, auk_);
}

TEST_F(HsmCoreTest, NewTransportKeySupersedesTheOldOne) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal t2 = TestTerminal::Create("SN-1");
  auto ctk = core_->TranslateTransportKey("mtms", Translate(t2, t2.CtkPu(pu_)));
  ASSERT_TRUE(ctk.ok());
  auto imported = core_->ImportTransportKey(kKms, {pk_, mak_, t2.sn, *ctk});
  ASSERT_TRUE(imported.ok());
  EXPECT_NE(imported->tek_index, tek_);
  EXPECT_EQ(core_->GetKeyInfo(kKms, tek_)->state, KeyState::kSuperseded);
  EXPECT_EQ(core_->GetKeyInfo(kKms, auk_)->state, KeyState::kSuperseded);
  // The superseded AUK can no longer authenticate.
  auto r = core_->AuthChallenge(kKms, auk_, "SN-1", Bytes(16, 1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(HsmCoreTest, TranslateGivesOneAnswerForEveryDecryptionOrFormatFailure) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  std::vector<absl::Status> failures;
  // Encrypted under another SN's label.
  failures.push_back(
      core_->TranslateTransportKey("mtms", Translate(t, t.CtkPu(pu_, "SN-2"))).status());
  // Random bytes of the right length.
  failures.push_back(core_->TranslateTransportKey("mtms", Translate(t, Bytes(256, 0x5A))).status());
  // Declared algorithm differs from the payload's.
  TranslateCommand cmd = Translate(t, t.CtkPu(pu_));
  cmd.algorithm = KeyAlgorithm::kAes256;
  failures.push_back(core_->TranslateTransportKey("mtms", cmd).status());
  // A payload that is not P (right key, right label, wrong content).
  auto pu = crypto::PublicKey::FromDer(pu_).value();
  Bytes junk =
      crypto::RsaOaepEncrypt(pu, crypto::RandomSecret(34), protocol::OaepLabel(t.sn)).value();
  failures.push_back(core_->TranslateTransportKey("mtms", Translate(t, junk)).status());
  for (const absl::Status& s : failures) {
    EXPECT_EQ(s, absl::UnauthenticatedError("transport key rejected"));
  }
}

TEST_F(HsmCoreTest, TranslateRefusesMalformedRequestsAndWrongKeys) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TranslateCommand bad_sn = Translate(t, t.CtkPu(pu_));
  bad_sn.sn = "sn lower";
  EXPECT_EQ(core_->TranslateTransportKey("mtms", bad_sn).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->TranslateTransportKey("mtms", Translate(t, Bytes(100, 1))).status().code(),
            absl::StatusCode::kInvalidArgument);
  TranslateCommand swapped = Translate(t, t.CtkPu(pu_));
  std::swap(swapped.pk_index, swapped.mak_index);
  EXPECT_EQ(core_->TranslateTransportKey("mtms", swapped).status().code(),
            absl::StatusCode::kPermissionDenied);
  TranslateCommand unknown = Translate(t, t.CtkPu(pu_));
  unknown.pr_index = 999;
  EXPECT_EQ(core_->TranslateTransportKey("mtms", unknown).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(HsmCoreTest, TranslateBatchAnswersEachItemAsTheSingleCommandDoes) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal t2 = TestTerminal::Create("SN-2");
  TranslateCommand bad_sn = Translate(t2, t2.CtkPu(pu_));
  bad_sn.sn = "sn lower";
  TranslateCommand unknown_pr = Translate(t2, t2.CtkPu(pu_));
  unknown_pr.pr_index = 999;
  const std::vector<TranslateCommand> items = {
      Translate(t, t.CtkPu(pu_)),            // OK
      Translate(t2, t2.CtkPu(pu_, "SN-1")),  // another SN's label: rejected
      bad_sn,                                // INVALID_ARGUMENT
      unknown_pr,                            // NOT_FOUND
      Translate(t2, t2.CtkPu(pu_)),          // OK, after four others
  };
  for (int threads : {1, 3}) {  // decrypted one after the other, and on several threads
    SCOPED_TRACE(absl::StrCat("batch_threads = ", threads));
    MakeCore(true, threads);
    const size_t before = audit_.events().size();
    auto batch = core_->TranslateTransportKeys("mtms", items);
    ASSERT_TRUE(batch.ok()) << batch.status();
    ASSERT_EQ(batch->size(), items.size());
    auto events = audit_.events();
    ASSERT_EQ(events.size(), before + items.size());  // one record per item, in order
    const std::vector<std::string> results = {"OK", "UNAUTHENTICATED", "INVALID_ARGUMENT",
                                              "NOT_FOUND", "OK"};
    for (size_t i = 0; i < items.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(events[before + i].action, "translate_transport_key");
      EXPECT_EQ(events[before + i].sn, items[i].sn);
      EXPECT_EQ(events[before + i].result, results[i]);
      // The single command gives the same answer (Ctk_pk is deterministic).
      auto single = core_->TranslateTransportKey("mtms", items[i]);
      EXPECT_EQ((*batch)[i].status(), single.status());
      if (single.ok()) {
        EXPECT_EQ(*(*batch)[i], *single);
      }
    }
    EXPECT_EQ((*batch)[1].status(), absl::UnauthenticatedError("transport key rejected"));
    // The OK items are the terminals' own keys.
    auto imported = core_->ImportTransportKey(kKms, {pk_, mak_, "SN-2", *(*batch)[4]});
    ASSERT_TRUE(imported.ok()) << imported.status();
    EXPECT_EQ(imported->tek_kcv, t2.TekKcv());
  }
}

TEST_F(HsmCoreTest, TranslateBatchRefusesNoItemsOrTooManyAndAuditsTheRefusal) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  const size_t before = audit_.events().size();
  EXPECT_EQ(core_->TranslateTransportKeys("mtms", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<TranslateCommand> many(HsmCore::kMaxTranslateBatch + 1, Translate(t, t.CtkPu(pu_)));
  auto refused = core_->TranslateTransportKeys("mtms", many);
  EXPECT_EQ(refused.status(),
            absl::InvalidArgumentError("items: between 1 and 64 translate commands"));
  auto events = audit_.events();
  ASSERT_EQ(events.size(), before + 2);
  EXPECT_EQ(events[before + 1].result, "INVALID_ARGUMENT");
  EXPECT_THAT(events[before + 1].detail, HasSubstr("batch of 65"));
  many.pop_back();
  auto full = core_->TranslateTransportKeys("mtms", many);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->size(), HsmCore::kMaxTranslateBatch);
}

TEST_F(HsmCoreTest, ImportWithBadMacChangesNothing) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal t2 = TestTerminal::Create("SN-2");
  auto ctk = core_->TranslateTransportKey("mtms", Translate(t2, t2.CtkPu(pu_)));
  ASSERT_TRUE(ctk.ok());
  Bytes tampered = *ctk;
  tampered.back() ^= 1;
  size_t keys_before = store_.state().keys.size();
  auto r = core_->ImportTransportKey(kKms, {pk_, mak_, "SN-2", tampered});
  EXPECT_EQ(r.status(), absl::UnauthenticatedError("ctk_pk: MAC does not verify"));
  EXPECT_EQ(store_.state().keys.size(), keys_before);
  // The right Ctk_pk under the wrong SN.
  EXPECT_EQ(core_->ImportTransportKey(kKms, {pk_, mak_, "SN-3", *ctk}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Garbage is malformed.
  EXPECT_EQ(core_->ImportTransportKey(kKms, {pk_, mak_, "SN-2", Bytes(40, 7)}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, ImportUnderOtherCeremonyKeysIsRefused) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  // Another MAK with the same PK: the MAC fails.
  uint64_t other_mak = Ceremony(KeyType::kMak, "MAK-2");
  EXPECT_EQ(core_->ImportTransportKey(kKms, {pk_, other_mak, t.sn, ctk_pk_}).status().code(),
            absl::StatusCode::kUnauthenticated);
  // Another PK with the right MAK: the MAC holds but the header names another PK.
  uint64_t other_pk = Ceremony(KeyType::kPk, "PK-2");
  auto r = core_->ImportTransportKey(kKms, {other_pk, mak_, t.sn, ctk_pk_});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("ceremony keys differ"));
}

TEST_F(HsmCoreTest, OneLiveTmkPerSn) {
  auto first = core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kAes128, false);
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(first->created);
  auto again = core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kAes128, false);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->tmk_index, first->tmk_index);
  EXPECT_EQ(again->kcv, first->kcv);
  EXPECT_EQ(core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kTdes2, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto rekey = core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kAes128, true);
  ASSERT_TRUE(rekey.ok());
  EXPECT_TRUE(rekey->created);
  EXPECT_NE(rekey->tmk_index, first->tmk_index);
  EXPECT_EQ(core_->GetKeyInfo(kKms, first->tmk_index)->state, KeyState::kSuperseded);
  EXPECT_EQ(core_->GenerateTmk(kKms, "SN-1", std::nullopt, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->GenerateTmk(kKms, "", KeyAlgorithm::kAes128, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, TdesTmkHasOddParity) {
  auto tmk = core_->GenerateTmk(kKms, "SN-T", KeyAlgorithm::kTdes2, false);
  ASSERT_TRUE(tmk.ok());
  EXPECT_TRUE(crypto::HasOddParity(store_.state().keys.at(tmk->tmk_index).material));
}

TEST_F(HsmCoreTest, AuthenticationIsReflectionSafeAndBoundToTheSn) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  Bytes rnd1 = crypto::RandomBytes(16);
  auto challenge = core_->AuthChallenge(kKms, auk_, t.sn, rnd1);
  ASSERT_TRUE(challenge.ok()) << challenge.status();
  auto keys = t.AuthKeys();
  ASSERT_TRUE(protocol::VerifyCrnd1(keys, rnd1, challenge->rnd2, challenge->crnd1).ok());
  Bytes crnd2 = protocol::MakeCrnd2(keys, rnd1, challenge->rnd2).value();
  EXPECT_TRUE(core_->AuthVerify(kKms, {auk_, t.sn, rnd1, challenge->rnd2, crnd2}).ok());
  // KMS's own answer reflected back does not verify.
  EXPECT_EQ(core_->AuthVerify(kKms, {auk_, t.sn, rnd1, challenge->rnd2, challenge->crnd1}).code(),
            absl::StatusCode::kUnauthenticated);
  // The AUK of SN-1 for SN-2.
  EXPECT_EQ(core_->AuthChallenge(kKms, auk_, "SN-2", rnd1).status().code(),
            absl::StatusCode::kPermissionDenied);
  // The TEK for authentication.
  EXPECT_EQ(core_->AuthChallenge(kKms, tek_, t.sn, rnd1).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(core_->AuthChallenge(kKms, auk_, t.sn, Bytes(8, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, ExportOnlyTheTmkUnderItsOwnTek) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto tmk = core_->GenerateTmk(kKms, t.sn, KeyAlgorithm::kAes128, false);
  ASSERT_TRUE(tmk.ok());
  auto block = core_->ExportKeyBlock(kKms, tmk->tmk_index, tek_, t.sn);
  ASSERT_TRUE(block.ok()) << block.status();
  auto delivered = keyblock::ParseTmkBlock(t.tk.tek, t.tk.algorithm, block->key_block);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_EQ(delivered->tmk_kcv, tmk->kcv);
  // The AUK is not exportable; nor is anything under the AUK or under a PK.
  EXPECT_EQ(core_->ExportKeyBlock(kKms, auk_, tek_, t.sn).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(core_->ExportKeyBlock(kKms, tmk->tmk_index, auk_, t.sn).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(core_->ExportKeyBlock(kKms, tmk->tmk_index, pk_, t.sn).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Another terminal's TMK under this TEK.
  auto other = core_->GenerateTmk(kKms, "SN-2", KeyAlgorithm::kAes128, false);
  EXPECT_EQ(core_->ExportKeyBlock(kKms, other->tmk_index, tek_, t.sn).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(HsmCoreTest, InstallProofMustNameTheLiveTmk) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto tmk = core_->GenerateTmk(kKms, t.sn, KeyAlgorithm::kAes128, false);
  Bytes rnd1 = crypto::RandomBytes(16), rnd2 = crypto::RandomBytes(16);
  Bytes kcv = FromHex(tmk->kcv).value();
  Bytes proof = protocol::MakeInstallProof(t.AuthKeys(), t.sn, kcv, rnd1, rnd2).value();
  EXPECT_TRUE(core_->VerifyInstallProof(kKms, {auk_, t.sn, tmk->kcv, rnd1, rnd2, proof}).ok());
  Bytes bad = proof;
  bad[0] ^= 1;
  EXPECT_EQ(core_->VerifyInstallProof(kKms, {auk_, t.sn, tmk->kcv, rnd1, rnd2, bad}).code(),
            absl::StatusCode::kUnauthenticated);
  // A valid proof over a KCV that is not the live TMK's.
  Bytes other_kcv = {1, 2, 3};
  Bytes other = protocol::MakeInstallProof(t.AuthKeys(), t.sn, other_kcv, rnd1, rnd2).value();
  EXPECT_EQ(core_->VerifyInstallProof(kKms, {auk_, t.sn, "010203", rnd1, rnd2, other}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->VerifyInstallProof(kKms, {auk_, t.sn, "XYZ", rnd1, rnd2, proof}).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- Composite commands (KMS's two-command path) -----------------------------------------

TEST_F(HsmCoreTest, CompositeCommandsAuthenticateAndDeliverTheTmk) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);  // TEK/AUK already imported: ImportAndChallenge hands them back
  TestTerminal t2 = TestTerminal::Create("SN-2");
  auto ctk = core_->TranslateTransportKey("mtms", Translate(t2, t2.CtkPu(pu_)));
  ASSERT_TRUE(ctk.ok()) << ctk.status();
  const size_t records_before = audit_.events().size();
  Bytes rnd1 = crypto::RandomBytes(16);
  auto begun = core_->ImportAndChallenge(kKms, {pk_, mak_, t2.sn, *ctk}, rnd1);
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_EQ(begun->imported.tek_kcv, t2.TekKcv());
  EXPECT_EQ(begun->imported.auk_kcv, t2.AukKcv());
  auto keys = t2.AuthKeys();
  ASSERT_TRUE(
      protocol::VerifyCrnd1(keys, rnd1, begun->challenge.rnd2, begun->challenge.crnd1).ok());
  Bytes crnd2 = protocol::MakeCrnd2(keys, rnd1, begun->challenge.rnd2).value();
  auto delivered = core_->AuthenticateAndDeliver(
      kKms, {begun->imported.auk_index, t2.sn, rnd1, begun->challenge.rnd2, crnd2},
      KeyAlgorithm::kAes128, false, begun->imported.tek_index);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_TRUE(delivered->tmk.created);
  auto block = keyblock::ParseTmkBlock(t2.tk.tek, t2.tk.algorithm, delivered->block.key_block);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->tmk_kcv, delivered->tmk.kcv);
  // One audit record per composite command, naming what each part did.
  auto events = audit_.events();
  ASSERT_EQ(events.size(), records_before + 2);
  EXPECT_EQ(events[records_before].action, "import_and_challenge");
  EXPECT_EQ(events[records_before + 1].action, "authenticate_and_deliver");
  EXPECT_THAT(events[records_before + 1].detail, ::testing::HasSubstr("crnd2=verified"));
  EXPECT_THAT(events[records_before + 1].detail, ::testing::HasSubstr(delivered->tmk.kcv));
}

TEST_F(HsmCoreTest, NoTmkIsMadeOrExportedWithoutAVerifiedCrnd2) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  Bytes rnd1 = crypto::RandomBytes(16);
  auto challenge = core_->AuthChallenge(kKms, auk_, t.sn, rnd1);
  ASSERT_TRUE(challenge.ok());
  size_t keys_before = store_.state().keys.size();
  // KMS's own Crnd1 reflected back, and a token of another terminal's keys.
  for (const Bytes& crnd2 :
       {challenge->crnd1,
        protocol::MakeCrnd2(TestTerminal::Create("SN-1").AuthKeys(), rnd1, challenge->rnd2)
            .value()}) {
    auto r = core_->AuthenticateAndDeliver(kKms, {auk_, t.sn, rnd1, challenge->rnd2, crnd2},
                                           KeyAlgorithm::kAes128, false, tek_);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(store_.state().keys.size(), keys_before);  // no TMK
  // Export only under the SN's own TEK, even after a verified token.
  Bytes crnd2 = protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value();
  EXPECT_EQ(core_
                ->AuthenticateAndDeliver(kKms, {auk_, t.sn, rnd1, challenge->rnd2, crnd2},
                                         KeyAlgorithm::kAes128, false, auk_)
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(store_.state().keys.size(), keys_before);  // the TMK it made was rolled back
}

TEST_F(HsmCoreTest, ImportAndChallengeIsAllOrNothing) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal t2 = TestTerminal::Create("SN-2");
  auto ctk = core_->TranslateTransportKey("mtms", Translate(t2, t2.CtkPu(pu_)));
  ASSERT_TRUE(ctk.ok());
  size_t keys_before = store_.state().keys.size();
  // A TDES-length nonce for an AES terminal: the challenge fails, so the import is undone.
  EXPECT_EQ(core_->ImportAndChallenge(kKms, {pk_, mak_, t2.sn, *ctk}, Bytes(8, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_.state().keys.size(), keys_before);
  Bytes tampered = *ctk;
  tampered.back() ^= 1;
  EXPECT_EQ(core_->ImportAndChallenge(kKms, {pk_, mak_, t2.sn, tampered}, crypto::RandomBytes(16))
                .status(),
            absl::UnauthenticatedError("ctk_pk: MAC does not verify"));
  EXPECT_EQ(store_.state().keys.size(), keys_before);
}

TEST_F(HsmCoreTest, DeletedKeyIsGoneAndErased) {
  auto tmk = core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kAes128, false);
  ASSERT_TRUE(core_->DeleteKey(kAlice, tmk->tmk_index).ok());
  EXPECT_TRUE(store_.state().keys.at(tmk->tmk_index).material.empty());
  EXPECT_EQ(core_->GetKeyInfo(kAlice, tmk->tmk_index)->state, KeyState::kDeleted);
  EXPECT_EQ(core_->DeleteKey(kAlice, 999).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(core_->DeleteKey(kAlice, tmk->tmk_index).ok());  // idempotent
}

TEST_F(HsmCoreTest, GenerateRandomLimits) {
  EXPECT_EQ(core_->GenerateRandom(kKms, 32)->size(), 32u);
  EXPECT_EQ(core_->GenerateRandom(kKms, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->GenerateRandom(kKms, 1025).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, RsaKeyPairArgumentsAreChecked) {
  EXPECT_EQ(core_->GenerateRsaKeyPair("mtms", 1024, "w").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->GenerateRsaKeyPair("mtms", 2048, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto ok = core_->GenerateRsaKeyPair("mtms", 2048, "w");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(core_->GenerateRsaKeyPair("mtms", 2048, "w").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(*core_->GetPublicKey("mtms", ok->key_index), ok->public_key_der);
  auto tmk = core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kAes128, false);
  EXPECT_EQ(core_->GetPublicKey("mtms", tmk->tmk_index).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(HsmCoreTest, FailedSelfTestRefusesEveryCryptographicCommand) {
  auto tmk = core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kAes128, false);
  ASSERT_TRUE(tmk.ok());
  MakeCore(false);
  const absl::Status want = absl::FailedPreconditionError("HSM self-test failed");
  EXPECT_EQ(core_->GenerateRsaKeyPair("mtms", 2048, "w").status(), want);
  EXPECT_EQ(core_->GetPublicKey("mtms", 1).status(), want);
  EXPECT_EQ(core_->BeginCeremony(kAlice, "PK", KeyType::kPk, 2, 0).status(), want);
  EXPECT_EQ(core_->AddComponent(kAlice, "x", Bytes(384, 1)).status(), want);
  EXPECT_EQ(core_->CompleteCeremony(kAlice, "x").status(), want);
  EXPECT_EQ(core_->TranslateTransportKey("mtms", {}).status(), want);
  EXPECT_EQ(core_->TranslateTransportKeys("mtms", std::vector<TranslateCommand>(1)).status(), want);
  EXPECT_EQ(core_->ImportTransportKey(kKms, {}).status(), want);
  EXPECT_EQ(core_->GenerateTmk(kKms, "SN-1", KeyAlgorithm::kAes128, false).status(), want);
  EXPECT_EQ(core_->AuthChallenge(kKms, 1, "SN-1", Bytes(16)).status(), want);
  EXPECT_EQ(core_->AuthVerify(kKms, {}), want);
  EXPECT_EQ(core_->ExportKeyBlock(kKms, 1, 2, "SN-1").status(), want);
  EXPECT_EQ(core_->VerifyInstallProof(kKms, {}), want);
  EXPECT_EQ(core_->GenerateRandom(kKms, 16).status(), want);
  // Looking at key metadata still works, so an operator can investigate.
  EXPECT_TRUE(core_->GetKeyInfo(kKms, tmk->tmk_index).ok());
}

TEST_F(HsmCoreTest, EveryCommandIsAuditedWithoutKeyMaterial) {
  TestTerminal t = TestTerminal::Create("SN-1");
  SecretBytes c1, c2;
  pk_ = Ceremony(KeyType::kPk, "PK", &c1, &c2);
  mak_ = Ceremony(KeyType::kMak, "MAK");
  auto rsa = core_->GenerateRsaKeyPair("mtms", 2048, "work");
  pr_ = rsa->key_index;
  pu_ = rsa->public_key_der;
  size_t before = audit_.events().size();
  auto ctk = core_->TranslateTransportKey("mtms", Translate(t, t.CtkPu(pu_)));
  ASSERT_TRUE(ctk.ok());
  (void)core_->TranslateTransportKey("mtms", Translate(t, Bytes(256, 1)));
  core_->RecordRefusal("mtms", "DeleteKey", absl::PermissionDeniedError("no"));
  auto events = audit_.events();
  ASSERT_EQ(events.size(), before + 3);
  EXPECT_EQ(events[before].action, "translate_transport_key");
  EXPECT_EQ(events[before].result, "OK");
  EXPECT_EQ(events[before].sn, "SN-1");
  EXPECT_THAT(events[before].detail, HasSubstr("tek_kcv=" + t.TekKcv()));
  EXPECT_EQ(events[before + 1].result, "UNAUTHENTICATED");
  EXPECT_EQ(events[before + 2].result, "PERMISSION_DENIED");
  std::vector<std::string> secrets = {ToHex(t.tk.tek.RevealSecret()),
                                      ToHex(t.tk.auk.RevealSecret()), ToHex(c1.RevealSecret()),
                                      ToHex(c2.RevealSecret())};
  for (const AuditEvent& e : events) {
    for (const std::string& s : secrets) {
      EXPECT_THAT(absl::AsciiStrToUpper(e.detail), Not(HasSubstr(s)));
    }
  }
}

TEST_F(HsmCoreTest, ConcurrentTmkRequestsForOneSnAgreeOnOneKey) {
  testing::ExpectConcurrentTmkRequestsAgreeOnOneKey(*core_, kKms, "SN-C");
}

}  // namespace
}  // namespace rkl::hsm
