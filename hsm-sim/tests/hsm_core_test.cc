// Unit tests of HsmCore's rules, with the in-memory store (no database, no network).
#include "hsm_core.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/ascii.h"
#include "core_checks.h"
#include "fake_key_store.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "test_operator.h"
#include "test_terminal.h"

namespace rkl::hsm {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;
using testing::EncryptComponent;
using testing::FakeAuditLog;
using testing::FakeClock;
using testing::FakeKeyRecordStore;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::TestTerminal;

constexpr char kAlice[] = "admin:alice";
constexpr char kBob[] = "admin:bob";
// Key custodians: the only identities ceremonies accept.
constexpr char kCarol[] = "custodian:carol";
constexpr char kDave[] = "custodian:dave";
constexpr char kKms[] = "kms";

constexpr int64_t kCreatedAt = 1'700'000'000'000;

class HsmCoreTest : public ::testing::Test {
 protected:
  void SetUp() override { MakeCore(true); }

  void MakeCore(bool self_test_passed, int batch_threads = 0) {
    core_ = std::make_unique<HsmCore>(
        store_, audit_, clock_, testing::DeterministicRandom(42),
        HsmCoreOptions{.self_test_passed = self_test_passed,
                       .ceremony_key_bits = 2048,  // 3072 in production; speed only
                       .batch_threads = batch_threads,
                       .operator_cas = {operator_.ca}});
  }

  // Runs a two-custodian ceremony and returns the key's index; components are returned.
  uint64_t Ceremony(KeyType type, const std::string& label, SecretBytes* c1 = nullptr,
                    SecretBytes* c2 = nullptr) {
    auto begun = core_->BeginCeremony(kCarol, label, type, 2, 0);
    EXPECT_TRUE(begun.ok()) << begun.status();
    SecretBytes a = crypto::RandomSecret(32), b = crypto::RandomSecret(32);
    EXPECT_TRUE(core_
                    ->AddComponent(kCarol, begun->ceremony_id,
                                   EncryptComponent(begun->component_encryption_key_der,
                                                    begun->ceremony_id, a))
                    .ok());
    EXPECT_TRUE(core_
                    ->AddComponent(kDave, begun->ceremony_id,
                                   EncryptComponent(begun->component_encryption_key_der,
                                                    begun->ceremony_id, b))
                    .ok());
    auto done = core_->CompleteCeremony(kCarol, begun->ceremony_id);
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
    auto imported = Import(t, ctk_pk_);
    ASSERT_TRUE(imported.ok()) << imported.status();
    tek_ = imported->tek_index;
    auk_ = imported->auk_index;
  }

  // A translate command for `t`, with an operator's signature over exactly its fields.
  TranslateCommand Translate(const TestTerminal& t, Bytes ctk_pu) {
    return Signed({.pr_index = pr_,
                   .ctk_pu = std::move(ctk_pu),
                   .sn = t.sn,
                   .created_at_ms = kCreatedAt,
                   .pk_index = pk_,
                   .mak_index = mak_,
                   .algorithm = t.tk.algorithm});
  }
  // `cmd` with the evidence signed anew for its current fields.
  TranslateCommand Signed(TranslateCommand cmd) {
    cmd.evidence = operator_.Sign(cmd.sn, cmd.ctk_pu, cmd.algorithm.value_or(KeyAlgorithm::kAes128),
                                  cmd.created_at_ms);
    return cmd;
  }

  // The import part of ImportAndChallenge (the challenge answers a fresh Rnd1).
  absl::StatusOr<ImportedTransportKey> Import(const TestTerminal& t, const Bytes& ctk_pk) {
    auto begun = core_->ImportAndChallenge(kKms, {pk_, mak_, t.sn, ctk_pk},
                                           crypto::RandomBytes(crypto::BlockSize(t.tk.algorithm)));
    if (!begun.ok()) return begun.status();
    return begun->imported;
  }
  // Translate and import a terminal's transport key: its TEK and AUK indexes.
  absl::StatusOr<ImportedTransportKey> Enrol(const TestTerminal& t) {
    auto ctk = core_->TranslateTransportKey("mtms", Translate(t, t.CtkPu(pu_)));
    if (!ctk.ok()) return ctk.status();
    return Import(t, *ctk);
  }

  // A whole §7 authentication by `t` with `auk`, then the delivery under `tek`.
  absl::StatusOr<AuthenticatedDelivery> Deliver(const TestTerminal& t, uint64_t auk, uint64_t tek,
                                                bool replace_existing = false,
                                                std::optional<KeyAlgorithm> algorithm = {}) {
    Bytes rnd1 = crypto::RandomBytes(crypto::BlockSize(t.tk.algorithm));
    auto challenge = core_->AuthChallenge(kKms, auk, t.sn, rnd1);
    if (!challenge.ok()) return challenge.status();
    Bytes crnd2 = protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value();
    return core_->AuthenticateAndDeliver(kKms, {auk, t.sn, rnd1, challenge->rnd2, crnd2},
                                         algorithm.value_or(t.tk.algorithm), replace_existing, tek);
  }

  // The newest audit record of `action`.
  AuditEvent LastEvent(const std::string& action) {
    auto events = audit_.events();
    for (auto it = events.rbegin(); it != events.rend(); ++it) {
      if (it->action == action) return *it;
    }
    ADD_FAILURE() << "no audit record of " << action;
    return {};
  }

  // The clear material of a stored key, opened through the barrier.
  SecretBytes Material(uint64_t index) {
    SecretBytes out;
    absl::Status s = store_.Transact([&](KeyTransaction& tx) -> absl::Status {
      RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(index));
      if (!record) return absl::NotFoundError("no such key");
      RKL_ASSIGN_OR_RETURN(out, tx.Unseal(*record));
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  FakeAuditLog audit_;
  FakeKeyRecordStore rows_{audit_};
  KeyBarrier store_{rows_, testing::TestLmk(), /*cache_capacity=*/16};
  FakeClock clock_;
  testing::TestOperator operator_ = testing::TestOperator::Create();
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
  EXPECT_EQ(rows_.component_rows(), 0u);
  // The ceremony key is gone, material included.
  for (const auto& [i, k] : rows_.state().keys) {
    if (k.usage == KeyUsage::kCeremonyDecrypt) {
      EXPECT_EQ(k.state, KeyState::kDeleted);
      EXPECT_TRUE(k.sealed.empty());
    }
  }
}

TEST_F(HsmCoreTest, ComponentKcvIsReportedToItsCustodian) {
  auto begun = core_->BeginCeremony(kCarol, "MAK-1", KeyType::kMak, 2, 0);
  ASSERT_TRUE(begun.ok());
  SecretBytes a = crypto::RandomSecret(32);
  auto added = core_->AddComponent(
      kCarol, begun->ceremony_id,
      EncryptComponent(begun->component_encryption_key_der, begun->ceremony_id, a));
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(added->component_kcv, crypto::KcvHex(KeyAlgorithm::kAes256, a).value());
  EXPECT_EQ(added->components_added, 1u);
  EXPECT_EQ(added->components_required, 2u);
}

TEST_F(HsmCoreTest, SingleCustodianCannotCompleteACeremony) {
  auto begun = core_->BeginCeremony(kCarol, "PK", KeyType::kPk, 2, 0);
  ASSERT_TRUE(begun.ok());
  auto enc = [&] {
    return EncryptComponent(begun->component_encryption_key_der, begun->ceremony_id,
                            crypto::RandomSecret(32));
  };
  ASSERT_TRUE(core_->AddComponent(kCarol, begun->ceremony_id, enc()).ok());
  auto again = core_->AddComponent(kCarol, begun->ceremony_id, enc());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr("custodian:carol"));
  auto complete = core_->CompleteCeremony(kCarol, begun->ceremony_id);
  EXPECT_EQ(complete.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(complete.status().message(), HasSubstr("1 of 2"));
}

// Issue 20: one person with an admin (or service) certificate cannot run a ceremony, with one
// identity or two; only custodian:* identities take part, each once.
TEST_F(HsmCoreTest, CeremoniesRefuseEveryoneButCustodians) {
  const size_t keys_before = rows_.state().keys.size();
  for (const char* who : {kAlice, kBob, "kms", "mtms", ""}) {
    auto begun = core_->BeginCeremony(who, "PK-X", KeyType::kPk, 2, 0);
    EXPECT_EQ(begun.status().code(), absl::StatusCode::kPermissionDenied) << who;
    EXPECT_THAT(begun.status().message(), HasSubstr("not a key custodian"));
  }
  EXPECT_EQ(rows_.state().keys.size(), keys_before);  // not even a ceremony key
  auto begun = core_->BeginCeremony(kCarol, "PK-X", KeyType::kPk, 2, 0);
  ASSERT_TRUE(begun.ok()) << begun.status();
  auto enc = [&] {
    return EncryptComponent(begun->component_encryption_key_der, begun->ceremony_id,
                            crypto::RandomSecret(32));
  };
  for (const char* who : {kAlice, kBob}) {
    EXPECT_EQ(core_->AddComponent(who, begun->ceremony_id, enc()).status().code(),
              absl::StatusCode::kPermissionDenied)
        << who;
  }
  EXPECT_EQ(rows_.component_rows(), 0u);
  ASSERT_TRUE(core_->AddComponent(kCarol, begun->ceremony_id, enc()).ok());
  ASSERT_TRUE(core_->AddComponent(kDave, begun->ceremony_id, enc()).ok());
  EXPECT_EQ(core_->CompleteCeremony(kAlice, begun->ceremony_id).status().code(),
            absl::StatusCode::kPermissionDenied);
  auto done = core_->CompleteCeremony(kDave, begun->ceremony_id);
  ASSERT_TRUE(done.ok()) << done.status();
  // Every refusal is in the audit log, under the identity that tried.
  int refused = 0;
  for (const AuditEvent& e : audit_.events()) {
    if (e.actor == kAlice && e.action.starts_with("ceremony.") && e.result == "PERMISSION_DENIED") {
      ++refused;
    }
  }
  EXPECT_EQ(refused, 3);
}

TEST_F(HsmCoreTest, ExpiredCeremonyIsErasedAndRefused) {
  auto begun = core_->BeginCeremony(kCarol, "PK", KeyType::kPk, 2, 60);
  ASSERT_TRUE(begun.ok());
  ASSERT_TRUE(core_
                  ->AddComponent(kCarol, begun->ceremony_id,
                                 EncryptComponent(begun->component_encryption_key_der,
                                                  begun->ceremony_id, crypto::RandomSecret(32)))
                  .ok());
  EXPECT_EQ(rows_.component_rows(), 1u);
  clock_.Advance(absl::Seconds(61));
  auto late = core_->AddComponent(kDave, begun->ceremony_id,
                                  EncryptComponent(begun->component_encryption_key_der,
                                                   begun->ceremony_id, crypto::RandomSecret(32)));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.status().message(), HasSubstr("expired"));
  EXPECT_EQ(rows_.component_rows(), 0u);
  EXPECT_EQ(rows_.state().ceremonies.at(begun->ceremony_id).state, CeremonyState::kExpired);
  EXPECT_EQ(core_->CompleteCeremony(kCarol, begun->ceremony_id).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(HsmCoreTest, ComponentForAnotherCeremonyIsRejected) {
  auto one = core_->BeginCeremony(kCarol, "PK", KeyType::kPk, 2, 0);
  auto two = core_->BeginCeremony(kCarol, "MAK", KeyType::kMak, 2, 0);
  ASSERT_TRUE(one.ok() && two.ok());
  // Encrypted to ceremony one's key with ceremony two's label: OAEP label mismatch.
  Bytes wrong_label = EncryptComponent(one->component_encryption_key_der, two->ceremony_id,
                                       crypto::RandomSecret(32));
  auto r = core_->AddComponent(kCarol, one->ceremony_id, wrong_label);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  // A 16-byte component is refused with the same answer.
  Bytes short_component = EncryptComponent(one->component_encryption_key_der, one->ceremony_id,
                                           crypto::RandomSecret(16));
  auto s = core_->AddComponent(kCarol, one->ceremony_id, short_component);
  EXPECT_EQ(s.status(), r.status());
  EXPECT_EQ(core_->AddComponent(kCarol, one->ceremony_id, Bytes(10, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->AddComponent(kCarol, std::string(32, 'F'), Bytes(256, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->AddComponent(kCarol, "nope", Bytes(256, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, BeginCeremonyValidatesItsArguments) {
  EXPECT_EQ(core_->BeginCeremony(kCarol, "PK", KeyType::kPk, 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->BeginCeremony(kCarol, "PK", KeyType::kTmk, 2, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->BeginCeremony(kCarol, "", KeyType::kPk, 2, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->BeginCeremony(kCarol, "PK", KeyType::kPk, 2, 90000).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, TranslateThenImportYieldsTheTerminalsKeys) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto tek = core_->GetKeyInfo(kAlice, tek_);
  auto auk = core_->GetKeyInfo(kAlice, auk_);
  ASSERT_TRUE(tek.ok() && auk.ok());
  EXPECT_EQ(tek->kcv, t.TekKcv());
  EXPECT_EQ(auk->kcv, t.AukKcv());
  EXPECT_EQ(tek->usage, KeyUsage::kExportKek);
  EXPECT_EQ(auk->usage, KeyUsage::kTerminalAuth);
  EXPECT_EQ(tek->bound_sn, "SN-1");
  // Importing the same Ctk_pk again returns the same keys.
  auto again = Import(t, ctk_pk_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->tek_index, tek_);
  EXPECT_EQ(again->auk_index, auk_);
}

TEST_F(HsmCoreTest, NewTransportKeySupersedesTheOldOne) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal t2 = TestTerminal::Create("SN-1");
  auto imported = Enrol(t2);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_NE(imported->tek_index, tek_);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, tek_)->state, KeyState::kSuperseded);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, auk_)->state, KeyState::kSuperseded);
  // The superseded AUK can no longer authenticate.
  auto r = core_->AuthChallenge(kKms, auk_, "SN-1", Bytes(16, 1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
}

// ---- Translation needs an operator's signature (claim 4, inside HSM #1) -------------------

TEST_F(HsmCoreTest, TranslateNeedsAnOperatorSignatureOverExactlyThisTransportKey) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal victim = TestTerminal::Create("SN-VICTIM");
  const TranslateCommand good = Translate(victim, victim.CtkPu(pu_));
  ASSERT_TRUE(core_->TranslateTransportKey("mtms", good).ok());

  struct Case {
    std::string what;
    TranslateCommand cmd;
    absl::StatusCode code;
  };
  std::vector<Case> cases;
  TranslateCommand c = good;
  c.evidence = {};
  cases.push_back({"no evidence", c, absl::StatusCode::kUnauthenticated});
  c = good;
  c.evidence.package_signature = {};
  cases.push_back({"no signature", c, absl::StatusCode::kUnauthenticated});
  c = good;
  c.evidence.package_signature.back() ^= 1;
  cases.push_back({"forged signature", c, absl::StatusCode::kUnauthenticated});
  c = good;
  c.evidence =
      testing::TestOperator::Create("op1").Sign(c.sn, c.ctk_pu, *c.algorithm, c.created_at_ms);
  cases.push_back({"an operator of another CA", c, absl::StatusCode::kUnauthenticated});
  c = good;
  c.evidence.operator_certificate_der = operator_.ca.ToDer();  // the CA is no operator
  cases.push_back({"the CA's own certificate", c, absl::StatusCode::kUnauthenticated});
  // Signed by the operator, but for something else than what HSM #1 is asked to translate.
  c = good;
  c.evidence = operator_.Sign("SN-OTHER", c.ctk_pu, *c.algorithm, c.created_at_ms);
  cases.push_back({"signed for another SN", c, absl::StatusCode::kPermissionDenied});
  c = good;
  c.evidence = operator_.Sign(c.sn, t.CtkPu(pu_, c.sn), *c.algorithm, c.created_at_ms);
  cases.push_back({"signed for another Ctk_Pu", c, absl::StatusCode::kPermissionDenied});
  c = good;
  c.evidence = operator_.Sign(c.sn, c.ctk_pu, KeyAlgorithm::kAes256, c.created_at_ms);
  cases.push_back({"signed for another algorithm", c, absl::StatusCode::kPermissionDenied});
  c = good;
  c.created_at_ms += 1;
  cases.push_back({"signed with another created_at", c, absl::StatusCode::kPermissionDenied});
  c = good;
  c.evidence.package = Bytes{0xFF, 0xFF, 0xFF};
  c.evidence.package_signature = crypto::EcdsaSign(operator_.key, c.evidence.package).value();
  cases.push_back({"a signed package that is no package", c, absl::StatusCode::kInvalidArgument});
  c = good;
  c.created_at_ms = int64_t{1'500'000'000'000};  // before the card was valid
  c = Signed(c);
  cases.push_back({"a card not valid at created_at", c, absl::StatusCode::kFailedPrecondition});

  std::vector<TranslateCommand> batch;
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    const size_t before = audit_.events().size();
    auto r = core_->TranslateTransportKey("mtms", k.cmd);
    EXPECT_EQ(r.status().code(), k.code) << r.status();
    // Refused before anything was decrypted, with its own message (not the uniform one).
    EXPECT_NE(r.status().message(), "transport key rejected");
    auto events = audit_.events();
    ASSERT_EQ(events.size(), before + 1);
    EXPECT_EQ(events.back().action, "tk.translate");
    EXPECT_EQ(events.back().result, absl::StatusCodeToString(k.code));
    batch.push_back(k.cmd);
  }
  // Each item of a batch is checked the same way, on its own.
  batch.push_back(good);
  auto answers = core_->TranslateTransportKeys("mtms", batch);
  ASSERT_TRUE(answers.ok()) << answers.status();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].what);
    EXPECT_EQ((*answers)[i].status(), core_->TranslateTransportKey("mtms", cases[i].cmd).status());
  }
  EXPECT_TRUE(answers->back().ok()) << answers->back().status();
}

TEST_F(HsmCoreTest, AnHsmWithoutOperatorCaTranslatesNothing) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  core_ = std::make_unique<HsmCore>(store_, audit_, clock_, testing::DeterministicRandom(1),
                                    HsmCoreOptions{});
  EXPECT_EQ(core_->TranslateTransportKey("mtms", Translate(t, t.CtkPu(pu_))).status().code(),
            absl::StatusCode::kFailedPrecondition);
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
  // Declared (and signed) algorithm differs from the payload's.
  TranslateCommand cmd = Translate(t, t.CtkPu(pu_));
  cmd.algorithm = KeyAlgorithm::kAes256;
  failures.push_back(core_->TranslateTransportKey("mtms", Signed(cmd)).status());
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
  EXPECT_EQ(core_->TranslateTransportKey("mtms", Signed(bad_sn)).status().code(),
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

// Issue 21, finding 6: a refused command's SN reaches the audit bounded and marked, never
// as the megabyte a caller sent.
TEST_F(HsmCoreTest, RefusalAuditsKeepABoundedMarkedFormOfAnInvalidSn) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  const std::string huge(1 << 20, 'A');
  TranslateCommand bad = Translate(t, t.CtkPu(pu_));
  bad.sn = huge;
  EXPECT_EQ(core_->TranslateTransportKey("mtms", bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  AuditEvent translate = LastEvent("tk.translate");
  EXPECT_EQ(translate.result, "INVALID_ARGUMENT");
  EXPECT_EQ(translate.sn, "invalid:41414141414141414141414141414141...(1048576 bytes)");
  EXPECT_EQ(core_->DestroyTerminalKeys(kKms, "bad\nsn", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LastEvent("terminal.keys_destroy").sn, "invalid:6261640a736e(6 bytes)");
  std::vector<TranslateCommand> batch{bad};
  ASSERT_TRUE(core_->TranslateTransportKeys("mtms", batch).ok());
  EXPECT_EQ(LastEvent("tk.translate").sn.size(), translate.sn.size());
  // Valid SNs are kept as they are.
  EXPECT_EQ(AuditSn("SN-1"), "SN-1");
  EXPECT_EQ(AuditSn(""), "");
  EXPECT_EQ(AuditSn(std::string(33, 'A')), "invalid:41414141414141414141414141414141...(33 bytes)");
}

TEST_F(HsmCoreTest, TranslateBatchAnswersEachItemAsTheSingleCommandDoes) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal t2 = TestTerminal::Create("SN-2");
  TranslateCommand bad_sn = Translate(t2, t2.CtkPu(pu_));
  bad_sn.sn = "sn lower";
  TranslateCommand unknown_pr = Translate(t2, t2.CtkPu(pu_));
  unknown_pr.pr_index = 999;
  TranslateCommand unsigned_item = Translate(t2, t2.CtkPu(pu_));
  unsigned_item.evidence = {};
  const std::vector<TranslateCommand> items = {
      Translate(t, t.CtkPu(pu_)),            // OK
      Translate(t2, t2.CtkPu(pu_, "SN-1")),  // another SN's label: rejected
      Signed(bad_sn),                        // INVALID_ARGUMENT
      unknown_pr,                            // NOT_FOUND
      unsigned_item,                         // no operator signature: UNAUTHENTICATED
      Translate(t2, t2.CtkPu(pu_)),          // OK, after five others
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
    const std::vector<std::string> results = {"OK",        "UNAUTHENTICATED", "INVALID_ARGUMENT",
                                              "NOT_FOUND", "UNAUTHENTICATED", "OK"};
    for (size_t i = 0; i < items.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(events[before + i].action, "tk.translate");
      EXPECT_EQ(events[before + i].sn, AuditSn(items[i].sn));  // an invalid SN bounded and marked
      EXPECT_EQ(events[before + i].result, results[i]);
      // The single command gives the same answer (Ctk_pk is deterministic).
      auto single = core_->TranslateTransportKey("mtms", items[i]);
      EXPECT_EQ((*batch)[i].status(), single.status());
      if (single.ok()) {
        EXPECT_EQ(*(*batch)[i], *single);
      }
    }
    EXPECT_EQ((*batch)[1].status(), absl::UnauthenticatedError("transport key rejected"));
    EXPECT_NE((*batch)[4].status().message(), "transport key rejected");
    // The OK items are the terminals' own keys.
    auto imported = Import(t2, *(*batch)[5]);
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
  size_t keys_before = rows_.state().keys.size();
  auto r = Import(t2, tampered);
  EXPECT_EQ(r.status(), absl::UnauthenticatedError("ctk_pk: MAC does not verify"));
  EXPECT_EQ(rows_.state().keys.size(), keys_before);
  // The right Ctk_pk under the wrong SN.
  EXPECT_EQ(Import(TestTerminal::Create("SN-3"), *ctk).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Garbage is malformed.
  EXPECT_EQ(Import(t2, Bytes(40, 7)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, ImportUnderOtherCeremonyKeysIsRefused) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  Bytes rnd1 = crypto::RandomBytes(16);
  // Another MAK with the same PK: the MAC fails.
  uint64_t other_mak = Ceremony(KeyType::kMak, "MAK-2");
  EXPECT_EQ(core_->ImportAndChallenge(kKms, {pk_, other_mak, t.sn, ctk_pk_}, rnd1).status().code(),
            absl::StatusCode::kUnauthenticated);
  // Another PK with the right MAK: the MAC holds but the header names another PK.
  uint64_t other_pk = Ceremony(KeyType::kPk, "PK-2");
  auto r = core_->ImportAndChallenge(kKms, {other_pk, mak_, t.sn, ctk_pk_}, rnd1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("ceremony keys differ"));
}

// ---- TMK: one per SN, bound to its TEK ------------------------------------------------------

TEST_F(HsmCoreTest, OneLiveTmkPerSn) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto first = Deliver(t, auk_, tek_);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->tmk.created);
  auto again = Deliver(t, auk_, tek_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->tmk.created);
  EXPECT_EQ(again->tmk.tmk_index, first->tmk.tmk_index);
  EXPECT_EQ(again->tmk.kcv, first->tmk.kcv);
  EXPECT_EQ(Deliver(t, auk_, tek_, false, KeyAlgorithm::kTdes2).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto rekey = Deliver(t, auk_, tek_, true);
  ASSERT_TRUE(rekey.ok()) << rekey.status();
  EXPECT_TRUE(rekey->tmk.created);
  EXPECT_NE(rekey->tmk.tmk_index, first->tmk.tmk_index);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, first->tmk.tmk_index)->state, KeyState::kSuperseded);
  Bytes rnd1 = crypto::RandomBytes(16);
  auto challenge = core_->AuthChallenge(kKms, auk_, t.sn, rnd1);
  ASSERT_TRUE(challenge.ok());
  Bytes crnd2 = protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value();
  EXPECT_EQ(core_
                ->AuthenticateAndDeliver(kKms, {auk_, t.sn, rnd1, challenge->rnd2, crnd2},
                                         std::nullopt, false, tek_)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, TdesTmkHasOddParity) {
  TestTerminal t = TestTerminal::Create("SN-T", KeyAlgorithm::kTdes2);
  Provision(t);
  auto delivered = Deliver(t, auk_, tek_);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_TRUE(crypto::HasOddParity(Material(delivered->tmk.tmk_index)));
}

TEST_F(HsmCoreTest, TmkIsBoundToTheTekItIsDeliveredUnder) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto delivered = Deliver(t, auk_, tek_);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  auto info = core_->GetKeyInfo(kAlice, delivered->tmk.tmk_index);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->kek_index, tek_);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, tek_)->kek_index, 0u);
  EXPECT_THAT(LastEvent("tmk.authenticate_and_deliver").detail,
              HasSubstr(absl::StrCat("bound_to_tek=", tek_)));
}

TEST_F(HsmCoreTest, NewTransportKeyAfterDeliverySupersedesTheTmk) {
  // TK, then its TMK, then a new TK for the SN (PROTOCOL §8, re-keying): the new TK
  // supersedes the TMK with the old TEK and AUK, and the next delivery makes a new TMK —
  // the first TMK never leaves under the new TEK.
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto first = Deliver(t, auk_, tek_);
  ASSERT_TRUE(first.ok()) << first.status();
  TestTerminal t2 = TestTerminal::Create("SN-1");  // the same terminal's new TK
  auto imported = Enrol(t2);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(core_->GetKeyInfo(kAlice, first->tmk.tmk_index)->state, KeyState::kSuperseded);
  EXPECT_THAT(LastEvent("tk.import_and_challenge").detail,
              HasSubstr(absl::StrCat("superseded=", first->tmk.tmk_index)));
  // Even asked for the existing TMK (replace_existing false), the delivery makes a new one.
  auto second = Deliver(t2, imported->auk_index, imported->tek_index);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->tmk.created);
  EXPECT_NE(second->tmk.tmk_index, first->tmk.tmk_index);
  EXPECT_NE(second->tmk.kcv, first->tmk.kcv);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, second->tmk.tmk_index)->kek_index, imported->tek_index);
  auto block = keyblock::ParseTmkBlock(t2.tk.tek, t2.tk.algorithm, second->block.key_block);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->tmk_kcv, second->tmk.kcv);
  // The old TEK and AUK are of no use any more.
  EXPECT_EQ(Deliver(t, auk_, tek_).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(HsmCoreTest, ATmkIsNeverExportedUnderAnotherTek) {
  // A TMK made for TEK1 whose TEK was replaced without it being superseded (a new transport
  // key that raced the delivery; or a TMK made before TMKs were bound): the next delivery
  // under TEK2 supersedes it and makes a new one, instead of sending it under TEK2.
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto first = Deliver(t, auk_, tek_);
  ASSERT_TRUE(first.ok()) << first.status();
  TestTerminal t2 = TestTerminal::Create("SN-1");
  auto imported = Enrol(t2);
  ASSERT_TRUE(imported.ok()) << imported.status();
  // Put the old TMK back to ACTIVE, as the race would have left it.
  rows_.state().keys.at(first->tmk.tmk_index).state = KeyState::kActive;
  auto second = Deliver(t2, imported->auk_index, imported->tek_index);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->tmk.created);
  EXPECT_NE(second->tmk.kcv, first->tmk.kcv);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, first->tmk.tmk_index)->state, KeyState::kSuperseded);
  // The same with a TMK bound to no TEK.
  rows_.state().keys.at(second->tmk.tmk_index).kek_index = 0;
  auto third = Deliver(t2, imported->auk_index, imported->tek_index);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(third->tmk.created);
  EXPECT_NE(third->tmk.kcv, second->tmk.kcv);
}

TEST_F(HsmCoreTest, AuthenticationIsReflectionSafeAndBoundToTheSn) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  Bytes rnd1 = crypto::RandomBytes(16);
  auto challenge = core_->AuthChallenge(kKms, auk_, t.sn, rnd1);
  ASSERT_TRUE(challenge.ok()) << challenge.status();
  auto keys = t.AuthKeys();
  ASSERT_TRUE(protocol::VerifyCrnd1(keys, rnd1, challenge->rnd2, challenge->crnd1).ok());
  // KMS's own answer reflected back does not verify.
  EXPECT_EQ(
      core_
          ->AuthenticateAndDeliver(kKms, {auk_, t.sn, rnd1, challenge->rnd2, challenge->crnd1},
                                   KeyAlgorithm::kAes128, false, tek_)
          .status()
          .code(),
      absl::StatusCode::kUnauthenticated);
  Bytes crnd2 = protocol::MakeCrnd2(keys, rnd1, challenge->rnd2).value();
  EXPECT_TRUE(core_
                  ->AuthenticateAndDeliver(kKms, {auk_, t.sn, rnd1, challenge->rnd2, crnd2},
                                           KeyAlgorithm::kAes128, false, tek_)
                  .ok());
  // The AUK of SN-1 for SN-2.
  EXPECT_EQ(core_->AuthChallenge(kKms, auk_, "SN-2", rnd1).status().code(),
            absl::StatusCode::kPermissionDenied);
  // The TEK for authentication.
  EXPECT_EQ(core_->AuthChallenge(kKms, tek_, t.sn, rnd1).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(core_->AuthChallenge(kKms, auk_, t.sn, Bytes(8, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, DeliveryOnlyUnderTheSnsOwnTek) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal other = TestTerminal::Create("SN-2");
  auto other_keys = Enrol(other);
  ASSERT_TRUE(other_keys.ok()) << other_keys.status();
  const size_t keys_before = rows_.state().keys.size();
  // Under the AUK, under PK, under another terminal's TEK: refused, and no TMK is left.
  for (uint64_t kek : {auk_, pk_, other_keys->tek_index}) {
    SCOPED_TRACE(kek);
    EXPECT_EQ(Deliver(t, auk_, kek).status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(rows_.state().keys.size(), keys_before);
  }
  auto delivered = Deliver(t, auk_, tek_);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  auto block = keyblock::ParseTmkBlock(t.tk.tek, t.tk.algorithm, delivered->block.key_block);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->tmk_kcv, delivered->tmk.kcv);
}

TEST_F(HsmCoreTest, InstallProofMustNameTheLiveTmk) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto delivered = Deliver(t, auk_, tek_);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  const GeneratedTmk* tmk = &delivered->tmk;
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
  EXPECT_EQ(events[records_before].action, "tk.import_and_challenge");
  EXPECT_EQ(events[records_before + 1].action, "tmk.authenticate_and_deliver");
  EXPECT_THAT(events[records_before + 1].detail, ::testing::HasSubstr("crnd2=verified"));
  EXPECT_THAT(events[records_before + 1].detail, ::testing::HasSubstr(delivered->tmk.kcv));
}

TEST_F(HsmCoreTest, NoTmkIsMadeOrExportedWithoutAVerifiedCrnd2) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  Bytes rnd1 = crypto::RandomBytes(16);
  auto challenge = core_->AuthChallenge(kKms, auk_, t.sn, rnd1);
  ASSERT_TRUE(challenge.ok());
  size_t keys_before = rows_.state().keys.size();
  // KMS's own Crnd1 reflected back, and a token of another terminal's keys.
  for (const Bytes& crnd2 :
       {challenge->crnd1,
        protocol::MakeCrnd2(TestTerminal::Create("SN-1").AuthKeys(), rnd1, challenge->rnd2)
            .value()}) {
    auto r = core_->AuthenticateAndDeliver(kKms, {auk_, t.sn, rnd1, challenge->rnd2, crnd2},
                                           KeyAlgorithm::kAes128, false, tek_);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(rows_.state().keys.size(), keys_before);  // no TMK
  // Export only under the SN's own TEK, even after a verified token.
  Bytes crnd2 = protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value();
  EXPECT_EQ(core_
                ->AuthenticateAndDeliver(kKms, {auk_, t.sn, rnd1, challenge->rnd2, crnd2},
                                         KeyAlgorithm::kAes128, false, auk_)
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(rows_.state().keys.size(), keys_before);  // the TMK it made was rolled back
}

TEST_F(HsmCoreTest, ImportAndChallengeIsAllOrNothing) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  TestTerminal t2 = TestTerminal::Create("SN-2");
  auto ctk = core_->TranslateTransportKey("mtms", Translate(t2, t2.CtkPu(pu_)));
  ASSERT_TRUE(ctk.ok());
  size_t keys_before = rows_.state().keys.size();
  // A TDES-length nonce for an AES terminal: the challenge fails, so the import is undone.
  EXPECT_EQ(core_->ImportAndChallenge(kKms, {pk_, mak_, t2.sn, *ctk}, Bytes(8, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rows_.state().keys.size(), keys_before);
  Bytes tampered = *ctk;
  tampered.back() ^= 1;
  EXPECT_EQ(core_->ImportAndChallenge(kKms, {pk_, mak_, t2.sn, tampered}, crypto::RandomBytes(16))
                .status(),
            absl::UnauthenticatedError("ctk_pk: MAC does not verify"));
  EXPECT_EQ(rows_.state().keys.size(), keys_before);
}

// ---- Revocation ----------------------------------------------------------------------------

TEST_F(HsmCoreTest, DestroyTerminalKeysErasesEveryKeyOfTheSn) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto first = Deliver(t, auk_, tek_);
  ASSERT_TRUE(first.ok()) << first.status();
  TestTerminal t2 = TestTerminal::Create("SN-1");  // a re-key: the first keys superseded
  auto imported = Enrol(t2);
  ASSERT_TRUE(imported.ok()) << imported.status();
  auto second = Deliver(t2, imported->auk_index, imported->tek_index);
  ASSERT_TRUE(second.ok()) << second.status();
  TestTerminal bystander = TestTerminal::Create("SN-2");
  auto bystander_keys = Enrol(bystander);
  ASSERT_TRUE(bystander_keys.ok());

  auto destroyed = core_->DestroyTerminalKeys(kKms, "SN-1", "stolen");
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  const std::vector<uint64_t> all = {tek_,
                                     auk_,
                                     first->tmk.tmk_index,
                                     imported->tek_index,
                                     imported->auk_index,
                                     second->tmk.tmk_index};
  EXPECT_THAT(*destroyed, ::testing::UnorderedElementsAreArray(all));
  for (uint64_t index : all) {
    EXPECT_EQ(core_->GetKeyInfo(kAlice, index)->state, KeyState::kDeleted);
    EXPECT_TRUE(rows_.state().keys.at(index).sealed.empty());
  }
  EXPECT_EQ(core_->GetKeyInfo(kAlice, bystander_keys->tek_index)->state, KeyState::kActive);
  const AuditEvent record = LastEvent("terminal.keys_destroy");
  EXPECT_EQ(record.actor, kKms);
  EXPECT_EQ(record.sn, "SN-1");
  EXPECT_EQ(record.result, "OK");
  EXPECT_THAT(record.detail, HasSubstr("stolen"));
  // The terminal can get no TMK any more, and a repeat destroys nothing.
  EXPECT_EQ(Deliver(t2, imported->auk_index, imported->tek_index).status().code(),
            absl::StatusCode::kNotFound);
  auto again = core_->DestroyTerminalKeys(kKms, "SN-1", "");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
  EXPECT_EQ(core_->DestroyTerminalKeys(kKms, "bad sn", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->DestroyTerminalKeys(kKms, "SN-1", "a\nb").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmCoreTest, DeletedKeyIsGoneAndErased) {
  TestTerminal t = TestTerminal::Create("SN-1");
  Provision(t);
  auto delivered = Deliver(t, auk_, tek_);
  ASSERT_TRUE(delivered.ok());
  const uint64_t tmk = delivered->tmk.tmk_index;
  ASSERT_TRUE(core_->DeleteKey(kAlice, tmk).ok());
  EXPECT_TRUE(rows_.state().keys.at(tmk).sealed.empty());
  EXPECT_EQ(core_->GetKeyInfo(kAlice, tmk)->state, KeyState::kDeleted);
  EXPECT_EQ(core_->DeleteKey(kAlice, 999).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(core_->DeleteKey(kAlice, tmk).ok());  // idempotent
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
  uint64_t pk = Ceremony(KeyType::kPk, "PK");
  EXPECT_EQ(core_->GetPublicKey("mtms", pk).status().code(), absl::StatusCode::kPermissionDenied);
}

// What the CA is told about a key it would certify (GetCertifiableKey): only a live RSA key
// of usage KDH_SIGN or TRANSPORT_DECRYPT, with this HSM's own id; every answer audited.
TEST_F(HsmCoreTest, CertifiableKeyIsOnlyALiveKdhOrWorkKey) {
  core_ = std::make_unique<HsmCore>(
      store_, audit_, clock_, testing::DeterministicRandom(42),
      HsmCoreOptions{.ceremony_key_bits = 2048, .hsm_id = "hsm-under-test"});
  auto kdh = core_->GenerateKdhKey(kKms, 2048, "kdh");
  ASSERT_TRUE(kdh.ok()) << kdh.status();
  auto work = core_->GenerateRsaKeyPair("mtms", 2048, "work");
  ASSERT_TRUE(work.ok()) << work.status();

  auto got = core_->GetCertifiableKey("ca", kdh->key_index);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->public_key_der, kdh->public_key_der);
  EXPECT_EQ(got->usage, KeyUsage::kKdhSign);
  EXPECT_EQ(got->hsm_id, "hsm-under-test");
  const AuditEvent audited = LastEvent("public_key.get");
  EXPECT_EQ(audited.actor, "ca");
  EXPECT_EQ(audited.detail,
            absl::StrCat("key=", kdh->key_index, " for=certification usage=KDH_SIGN"));
  got = core_->GetCertifiableKey("ca", work->key_index);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->usage, KeyUsage::kTransportDecrypt);
  EXPECT_EQ(got->public_key_der, work->public_key_der);

  EXPECT_EQ(core_->GetCertifiableKey("ca", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->GetCertifiableKey("ca", 999).status(),
            absl::NotFoundError("key_index: key 999 not found"));
  // A symmetric key (a ceremony's PK) is no key the CA certifies.
  const uint64_t pk = Ceremony(KeyType::kPk, "PK");
  EXPECT_EQ(core_->GetCertifiableKey("ca", pk).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Superseded, then deleted.
  ASSERT_TRUE(store_
                  .Transact([&](KeyTransaction& tx) {
                    return tx.SetKeyState(kdh->key_index, KeyState::kSuperseded, 0);
                  })
                  .ok());
  EXPECT_EQ(core_->GetCertifiableKey("ca", kdh->key_index).status(),
            absl::FailedPreconditionError(
                absl::StrCat("key_index: key ", kdh->key_index, " is SUPERSEDED")));
  ASSERT_TRUE(core_->DeleteKey(kAlice, work->key_index).ok());
  EXPECT_EQ(core_->GetCertifiableKey("ca", work->key_index).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(HsmCoreTest, FailedSelfTestRefusesEveryCryptographicCommand) {
  uint64_t pk = Ceremony(KeyType::kPk, "PK");
  MakeCore(false);
  const absl::Status want = absl::FailedPreconditionError("HSM self-test failed");
  EXPECT_EQ(core_->GenerateRsaKeyPair("mtms", 2048, "w").status(), want);
  EXPECT_EQ(core_->GetPublicKey("mtms", 1).status(), want);
  EXPECT_EQ(core_->BeginCeremony(kCarol, "PK", KeyType::kPk, 2, 0).status(), want);
  EXPECT_EQ(core_->AddComponent(kCarol, "x", Bytes(384, 1)).status(), want);
  EXPECT_EQ(core_->CompleteCeremony(kCarol, "x").status(), want);
  EXPECT_EQ(core_->TranslateTransportKey("mtms", {}).status(), want);
  EXPECT_EQ(core_->TranslateTransportKeys("mtms", std::vector<TranslateCommand>(1)).status(), want);
  EXPECT_EQ(core_->ImportAndChallenge(kKms, {}, Bytes(16)).status(), want);
  EXPECT_EQ(core_->AuthChallenge(kKms, 1, "SN-1", Bytes(16)).status(), want);
  EXPECT_EQ(core_->AuthenticateAndDeliver(kKms, {}, KeyAlgorithm::kAes128, false, 2).status(),
            want);
  EXPECT_EQ(core_->VerifyInstallProof(kKms, {}), want);
  EXPECT_EQ(core_->GenerateRandom(kKms, 16).status(), want);
  // Looking at key metadata still works, so an operator can investigate.
  EXPECT_TRUE(core_->GetKeyInfo(kAlice, pk).ok());
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
  EXPECT_EQ(events[before].action, "tk.translate");
  EXPECT_EQ(events[before].result, "OK");
  EXPECT_EQ(events[before].sn, "SN-1");
  EXPECT_THAT(events[before].detail, HasSubstr("tek_kcv=" + t.TekKcv()));
  EXPECT_THAT(events[before].detail, HasSubstr("operator=op1"));
  EXPECT_EQ(events[before + 1].result, "UNAUTHENTICATED");
  EXPECT_EQ(events[before + 2].result, "PERMISSION_DENIED");
  EXPECT_EQ(events[before + 2].action, "rpc.refused");
  EXPECT_THAT(events[before + 2].detail, HasSubstr("method=DeleteKey"));
  std::vector<std::string> secrets = {ToHex(t.tk.tek.RevealSecret()),
                                      ToHex(t.tk.auk.RevealSecret()), ToHex(c1.RevealSecret()),
                                      ToHex(c2.RevealSecret())};
  for (const AuditEvent& e : events) {
    for (const std::string& s : secrets) {
      EXPECT_THAT(absl::AsciiStrToUpper(e.detail), Not(HasSubstr(s)));
    }
  }
}

TEST_F(HsmCoreTest, ConcurrentDeliveriesForOneSnAgreeOnOneTmk) {
  TestTerminal t = TestTerminal::Create("SN-C");
  Provision(t);
  testing::ExpectConcurrentDeliveriesAgreeOnOneTmk(*core_, kKms, t, auk_, tek_);
}

}  // namespace
}  // namespace rkl::hsm
