// Unit tests of HsmCore's TR-34 commands (GenerateKdhKey, BuildKeyToken,
// VerifyKeyTokenInstallProof) with the in-memory store: each token is opened on the KRD's
// side (tr34::ReceiveTwoPassKeyToken), and every rule has a refusal that fails if the rule
// is weakened.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "fake_key_store.h"
#include "hsm_core.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "test_tr34.h"

namespace rkl::hsm {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;
using testing::FakeAuditLog;
using testing::FakeClock;
using testing::FakeKeyRecordStore;
using ::testing::HasSubstr;
using testing::Tr34Party;

constexpr char kKms[] = "kms";
constexpr char kAlice[] = "admin:alice";
constexpr char kSn[] = "TR34-0001";
constexpr char kBuildAction[] = "tmk.build_key_token";
constexpr char kProofAction[] = "install.verify_key_token_proof";

class HsmTr34Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    krd_ca_ = new Tr34Party(testing::NewTr34Ca("test KRD CA"));
    untrusted_ca_ = new Tr34Party(testing::NewTr34Ca("untrusted KRD CA"));
    kdh_ca_ = new Tr34Party(testing::NewTr34Ca("test KDH CA"));
    krd_a_ = new Tr34Party(testing::NewKrd(kSn, 10, *krd_ca_));
    // Another KRD naming the same SN (a replaced secure module, or a cloned identity).
    krd_b_ = new Tr34Party(testing::NewKrd(kSn, 11, *krd_ca_));
    other_sn_krd_ = new Tr34Party(testing::NewKrd("TR34-0002", 12, *krd_ca_));
    untrusted_krd_ = new Tr34Party(testing::NewKrd(kSn, 13, *untrusted_ca_));
  }
  static void TearDownTestSuite() {
    for (Tr34Party* p :
         {krd_ca_, untrusted_ca_, kdh_ca_, krd_a_, krd_b_, other_sn_krd_, untrusted_krd_}) {
      delete p;
    }
  }

  void SetUp() override {
    MakeCore({krd_ca_->cert});
    auto kdh = core_->GenerateKdhKey(kKms, 2048, "kdh-test");
    ASSERT_TRUE(kdh.ok()) << kdh.status();
    kdh_index_ = kdh->key_index;
    kdh_cert_ = testing::NewKdhCertificate(kdh->public_key_der, 2, *kdh_ca_);
  }

  void MakeCore(std::vector<crypto::Certificate> krd_cas, bool self_test_passed = true) {
    core_ = std::make_unique<HsmCore>(store_, audit_, clock_, testing::DeterministicRandom(34),
                                      HsmCoreOptions{.self_test_passed = self_test_passed,
                                                     .ceremony_key_bits = 2048,
                                                     .krd_cas = std::move(krd_cas)});
  }

  static Bytes Nonce(size_t n = 16) { return crypto::RandomBytes(n); }

  KeyTokenCommand Command(const Tr34Party& krd, const Bytes& nonce, bool replace = false,
                          KeyAlgorithm algorithm = KeyAlgorithm::kAes128) {
    return KeyTokenCommand{.sn = krd.cert.SubjectCommonName(),
                           .algorithm = algorithm,
                           .krd_certificate_der = testing::Der(krd.cert),
                           .krd_nonce = nonce,
                           .kdh_key_index = kdh_index_,
                           .kdh_certificate_der = testing::Der(*kdh_cert_),
                           .replace_existing = replace};
  }

  // A token for `krd`, opened on the KRD's side: the TMK it carries.
  struct Delivered {
    BuiltKeyToken built;
    SecretBytes tmk;
    Bytes nonce;
  };
  Delivered Deliver(const Tr34Party& krd, bool replace = false,
                    KeyAlgorithm algorithm = KeyAlgorithm::kAes128) {
    Delivered d;
    d.nonce = Nonce();
    auto built = core_->BuildKeyToken(kKms, Command(krd, d.nonce, replace, algorithm));
    EXPECT_TRUE(built.ok()) << built.status();
    if (!built.ok()) return d;
    d.built = *built;
    auto block = testing::ReceiveToken(built->key_token, *kdh_cert_, krd, d.nonce);
    EXPECT_TRUE(block.ok()) << block.status();
    if (!block.ok()) return d;
    EXPECT_EQ(block->header, tr34::TmkHeader(algorithm).value());
    d.tmk = block->key;
    return d;
  }

  absl::Status Build(const KeyTokenCommand& cmd) {
    return core_->BuildKeyToken(kKms, cmd).status();
  }

  AuditEvent LastEvent(const std::string& action) {
    auto events = audit_.events();
    for (auto it = events.rbegin(); it != events.rend(); ++it) {
      if (it->action == action) return *it;
    }
    ADD_FAILURE() << "no audit record of " << action;
    return {};
  }

  // No audit record carries `secret` in hex, either case.
  void ExpectNotInAudit(const SecretBytes& secret) {
    const std::string hex = ToHex(secret.RevealSecret());
    for (const AuditEvent& e : audit_.events()) {
      const std::string all = absl::StrCat(e.actor, e.action, e.sn, e.detail, e.result);
      EXPECT_THAT(absl::AsciiStrToUpper(all), ::testing::Not(HasSubstr(absl::AsciiStrToUpper(hex))))
          << e.action;
    }
  }

  // A TMK as the patent's flow leaves it (bound to a TEK), straight into the store.
  uint64_t InsertPatentTmk(const std::string& sn) {
    uint64_t index = 0;
    absl::Status s = store_.Transact([&](KeyTransaction& tx) -> absl::Status {
      SecretBytes tmk = crypto::RandomSecret(16);
      RKL_ASSIGN_OR_RETURN(
          KeyRecord r,
          tx.InsertKey(NewKey{.type = KeyType::kTmk,
                              .algorithm = crypto::KeyAlgorithmCode(KeyAlgorithm::kAes128),
                              .usage = KeyUsage::kTerminalMaster,
                              .bound_sn = sn,
                              .label = "tmk:" + sn,
                              .kcv = crypto::KcvHex(KeyAlgorithm::kAes128, tmk).value(),
                              .kek_index = 999,
                              .material = tmk},
                       1));
      index = r.index;
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    return index;
  }

  static Tr34Party* krd_ca_;
  static Tr34Party* untrusted_ca_;
  static Tr34Party* kdh_ca_;
  static Tr34Party* krd_a_;
  static Tr34Party* krd_b_;
  static Tr34Party* other_sn_krd_;
  static Tr34Party* untrusted_krd_;

  FakeAuditLog audit_;
  FakeKeyRecordStore rows_{audit_};
  KeyBarrier store_{rows_, testing::TestLmk(), /*cache_capacity=*/16};
  FakeClock clock_;
  std::unique_ptr<HsmCore> core_;
  uint64_t kdh_index_ = 0;
  std::optional<crypto::Certificate> kdh_cert_;
};

Tr34Party* HsmTr34Test::krd_ca_ = nullptr;
Tr34Party* HsmTr34Test::untrusted_ca_ = nullptr;
Tr34Party* HsmTr34Test::kdh_ca_ = nullptr;
Tr34Party* HsmTr34Test::krd_a_ = nullptr;
Tr34Party* HsmTr34Test::krd_b_ = nullptr;
Tr34Party* HsmTr34Test::other_sn_krd_ = nullptr;
Tr34Party* HsmTr34Test::untrusted_krd_ = nullptr;

TEST_F(HsmTr34Test, KdhKeyIsAnRsaKeyThatOnlySigns) {
  auto info = core_->GetKeyInfo(kAlice, kdh_index_);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->type, KeyType::kRsaPrivate);
  EXPECT_EQ(info->usage, KeyUsage::kKdhSign);
  EXPECT_EQ(info->rsa_bits, 2048u);
  EXPECT_EQ(info->label, "kdh-test");
  EXPECT_EQ(LastEvent("kdh_key.generate").result, "OK");
  EXPECT_EQ(core_->GenerateKdhKey(kKms, 1024, "kdh-small").status(),
            absl::InvalidArgumentError("bits: must be 2048 or 3072"));
  EXPECT_EQ(core_->GenerateKdhKey(kKms, 2048, "kdh-test").status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(HsmTr34Test, TokenOpensOnTheKrdWithTheTmkBoundToIt) {
  Delivered d = Deliver(*krd_a_);
  ASSERT_EQ(d.tmk.size(), 16u);
  EXPECT_TRUE(d.built.created);
  EXPECT_EQ(d.built.krd_id, testing::KrdIdOfCert(krd_a_->cert));
  EXPECT_EQ(d.built.tmk_kcv, crypto::KcvHex(KeyAlgorithm::kAes128, d.tmk).value());
  auto info = core_->GetKeyInfo(kAlice, d.built.tmk_index);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->type, KeyType::kTmk);
  EXPECT_EQ(info->usage, KeyUsage::kTerminalMaster);
  EXPECT_EQ(info->bound_sn, kSn);
  EXPECT_EQ(info->bound_krd, d.built.krd_id);
  EXPECT_EQ(info->kek_index, 0u);
  EXPECT_EQ(info->kcv, d.built.tmk_kcv);
  // The token is for this KRD and this nonce only.
  EXPECT_FALSE(testing::ReceiveToken(d.built.key_token, *kdh_cert_, *krd_a_, Nonce()).ok());
  EXPECT_FALSE(testing::ReceiveToken(d.built.key_token, *kdh_cert_, *krd_b_, d.nonce).ok());
  // Audited with metadata, never the key.
  AuditEvent e = LastEvent(kBuildAction);
  EXPECT_EQ(e.result, "OK");
  EXPECT_EQ(e.sn, kSn);
  EXPECT_THAT(e.detail, HasSubstr("krd=" + d.built.krd_id));
  EXPECT_THAT(e.detail, HasSubstr("kcv=" + d.built.tmk_kcv));
  ExpectNotInAudit(d.tmk);
}

TEST_F(HsmTr34Test, EveryTmkAlgorithmHasItsHeader) {
  for (KeyAlgorithm a : {KeyAlgorithm::kAes128, KeyAlgorithm::kAes256, KeyAlgorithm::kTdes2}) {
    SCOPED_TRACE(crypto::KeyAlgorithmName(a));
    Delivered d = Deliver(*krd_a_, /*replace=*/true, a);
    EXPECT_EQ(d.tmk.size(), crypto::KeyLength(a));
    EXPECT_EQ(d.built.tmk_kcv, crypto::KcvHex(a, d.tmk).value());
  }
}

TEST_F(HsmTr34Test, RepeatSendsTheSameTmkReplaceMakesANewOne) {
  Delivered first = Deliver(*krd_a_);
  Delivered again = Deliver(*krd_a_);
  EXPECT_FALSE(again.built.created);
  EXPECT_EQ(again.built.tmk_index, first.built.tmk_index);
  EXPECT_EQ(again.built.tmk_kcv, first.built.tmk_kcv);
  EXPECT_TRUE(again.tmk == first.tmk);
  EXPECT_THAT(LastEvent(kBuildAction).detail, HasSubstr("(existing)"));

  Delivered rekeyed = Deliver(*krd_a_, /*replace=*/true);
  EXPECT_TRUE(rekeyed.built.created);
  EXPECT_NE(rekeyed.built.tmk_index, first.built.tmk_index);
  EXPECT_NE(rekeyed.built.tmk_kcv, first.built.tmk_kcv);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, first.built.tmk_index)->state, KeyState::kSuperseded);
  // The live TMK of another algorithm is not sent as this one.
  EXPECT_EQ(Build(Command(*krd_a_, Nonce(), false, KeyAlgorithm::kAes256)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(HsmTr34Test, TmkBoundToOneKrdIsNeverPutInATokenForAnother) {
  Delivered a = Deliver(*krd_a_);
  const absl::Status refused = Build(Command(*krd_b_, Nonce()));
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.message(), HasSubstr("tmk: bound to another KRD"));
  auto info = core_->GetKeyInfo(kAlice, a.built.tmk_index);
  EXPECT_EQ(info->state, KeyState::kActive);
  EXPECT_EQ(info->kcv, a.built.tmk_kcv);
  EXPECT_EQ(LastEvent(kBuildAction).result, "PERMISSION_DENIED");
  // A's TMK still goes to A.
  EXPECT_EQ(Deliver(*krd_a_).built.tmk_index, a.built.tmk_index);
  // Only a re-key moves the SN to B, with a new TMK; A's is superseded, not reused.
  Delivered b = Deliver(*krd_b_, /*replace=*/true);
  EXPECT_TRUE(b.built.created);
  EXPECT_NE(b.built.tmk_kcv, a.built.tmk_kcv);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, b.built.tmk_index)->bound_krd,
            testing::KrdIdOfCert(krd_b_->cert));
  EXPECT_EQ(core_->GetKeyInfo(kAlice, a.built.tmk_index)->state, KeyState::kSuperseded);
  EXPECT_EQ(Build(Command(*krd_a_, Nonce())).code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(HsmTr34Test, PatentTmkIsNotSentOverTr34WithoutReplace) {
  const uint64_t patent = InsertPatentTmk(kSn);
  const absl::Status refused = Build(Command(*krd_a_, Nonce()));
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.message(), HasSubstr("tmk: bound to another KRD"));
  EXPECT_EQ(core_->GetKeyInfo(kAlice, patent)->state, KeyState::kActive);
  Delivered d = Deliver(*krd_a_, /*replace=*/true);
  EXPECT_TRUE(d.built.created);
  EXPECT_NE(d.built.tmk_index, patent);
  EXPECT_EQ(core_->GetKeyInfo(kAlice, patent)->state, KeyState::kSuperseded);
}

TEST_F(HsmTr34Test, KrdCertificateMustBeAKrdOfATrustedCaNamingTheSn) {
  KeyTokenCommand untrusted = Command(*untrusted_krd_, Nonce());
  EXPECT_EQ(Build(untrusted).code(), absl::StatusCode::kPermissionDenied);
  // A KDH certificate is no KRD certificate, even named as the terminal.
  const crypto::Certificate kdh_named_sn = testing::IssueTr34(
      kSn, 20, krd_a_->key.GetPublicKey(), crypto::KeyUsage::kDigitalSignature, *kdh_ca_);
  KeyTokenCommand kdh_as_krd = Command(*krd_a_, Nonce());
  kdh_as_krd.krd_certificate_der = testing::Der(kdh_named_sn);
  EXPECT_EQ(Build(kdh_as_krd).code(), absl::StatusCode::kPermissionDenied);
  KeyTokenCommand kdh_cert = Command(*krd_a_, Nonce());
  kdh_cert.krd_certificate_der = testing::Der(*kdh_cert_);
  EXPECT_EQ(Build(kdh_cert).code(), absl::StatusCode::kPermissionDenied);
  // The trusted CA's certificate without keyEncipherment is no KRD either.
  KeyTokenCommand signing_only = Command(*krd_a_, Nonce());
  signing_only.krd_certificate_der = testing::Der(testing::IssueTr34(
      kSn, 21, krd_a_->key.GetPublicKey(), crypto::KeyUsage::kDigitalSignature, *krd_ca_));
  EXPECT_EQ(Build(signing_only).code(), absl::StatusCode::kPermissionDenied);
  // The certificate of another terminal.
  KeyTokenCommand other_sn = Command(*other_sn_krd_, Nonce());
  other_sn.sn = kSn;
  const absl::Status s = Build(other_sn);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("names terminal TR34-0002"));
  KeyTokenCommand garbage = Command(*krd_a_, Nonce());
  garbage.krd_certificate_der = {0x30, 0x03, 0x02, 0x01, 0x01};
  EXPECT_EQ(Build(garbage).code(), absl::StatusCode::kInvalidArgument);
  // None of them left a TMK behind.
  EXPECT_TRUE(Deliver(*krd_a_).built.created);
}

TEST_F(HsmTr34Test, WithoutKrdCasTr34IsNotConfigured) {
  MakeCore({});
  EXPECT_EQ(Build(Command(*krd_a_, Nonce())),
            absl::FailedPreconditionError("tr34: not configured"));
  MakeCore({untrusted_ca_->cert, krd_ca_->cert});  // any configured CA will do
  EXPECT_TRUE(Deliver(*krd_a_).built.created);
}

TEST_F(HsmTr34Test, KdhKeyMustBeALiveKdhSigningKeyHeldByTheKdhCertificate) {
  // Keys of other usages sign nothing: an RSA work key, a TMK.
  auto work = core_->GenerateRsaKeyPair("mtms", 2048, "work");
  ASSERT_TRUE(work.ok());
  KeyTokenCommand with_work = Command(*krd_a_, Nonce());
  with_work.kdh_key_index = work->key_index;
  with_work.kdh_certificate_der =
      testing::Der(testing::NewKdhCertificate(work->public_key_der, 30, *kdh_ca_));
  EXPECT_EQ(Build(with_work).code(), absl::StatusCode::kPermissionDenied);
  Delivered d = Deliver(*krd_a_);
  KeyTokenCommand with_tmk = Command(*krd_a_, Nonce());
  with_tmk.kdh_key_index = d.built.tmk_index;
  EXPECT_EQ(Build(with_tmk).code(), absl::StatusCode::kPermissionDenied);
  KeyTokenCommand unknown = Command(*krd_a_, Nonce());
  unknown.kdh_key_index = 9999;
  EXPECT_EQ(Build(unknown).code(), absl::StatusCode::kNotFound);
  // A KDH certificate of another key.
  auto other = core_->GenerateKdhKey(kKms, 2048, "kdh-other");
  ASSERT_TRUE(other.ok());
  KeyTokenCommand mismatched = Command(*krd_a_, Nonce());
  mismatched.kdh_certificate_der =
      testing::Der(testing::NewKdhCertificate(other->public_key_der, 31, *kdh_ca_));
  EXPECT_EQ(Build(mismatched),
            absl::InvalidArgumentError("kdh_certificate: does not hold the key at kdh_key_index"));
  // A deleted KDH key.
  ASSERT_TRUE(core_->DeleteKey(kAlice, kdh_index_).ok());
  EXPECT_EQ(Build(Command(*krd_a_, Nonce())).code(), absl::StatusCode::kNotFound);
}

TEST_F(HsmTr34Test, RequestFieldsAreChecked) {
  for (size_t n : {size_t{0}, size_t{7}, size_t{65}}) {
    EXPECT_EQ(Build(Command(*krd_a_, Nonce(n))),
              absl::InvalidArgumentError("krd_nonce: must be 8-64 bytes"))
        << n;
  }
  EXPECT_TRUE(Deliver(*krd_a_).built.created);  // 16 bytes
  EXPECT_TRUE(core_->BuildKeyToken(kKms, Command(*krd_a_, Nonce(8))).ok());
  EXPECT_TRUE(core_->BuildKeyToken(kKms, Command(*krd_a_, Nonce(64))).ok());
  KeyTokenCommand crls = Command(*krd_a_, Nonce());
  crls.crls.assign(5, Bytes{0x30, 0x00});
  EXPECT_EQ(Build(crls), absl::InvalidArgumentError("crls: at most 4"));
  KeyTokenCommand no_algorithm = Command(*krd_a_, Nonce());
  no_algorithm.algorithm.reset();
  EXPECT_EQ(Build(no_algorithm).code(), absl::StatusCode::kInvalidArgument);
  KeyTokenCommand bad_sn = Command(*krd_a_, Nonce());
  bad_sn.sn = "tr34 0001";
  EXPECT_EQ(Build(bad_sn).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(LastEvent(kBuildAction).sn, "tr34 0001");  // kept in its marked form
}

TEST_F(HsmTr34Test, AfterAFailedSelfTestNoTokenIsBuilt) {
  MakeCore({krd_ca_->cert}, /*self_test_passed=*/false);
  EXPECT_EQ(Build(Command(*krd_a_, Nonce())),
            absl::FailedPreconditionError("HSM self-test failed"));
}

TEST_F(HsmTr34Test, InstallProofVerifiesOnlyForTheTmkSnAndNonce) {
  Delivered d = Deliver(*krd_a_);
  auto proof = [&](const SecretBytes& tmk, const std::string& sn, const Bytes& nonce) {
    return tr34::InstallProof(KeyAlgorithm::kAes128, tmk, sn, nonce).value();
  };
  KeyTokenProofCommand ok{d.built.tmk_index, kSn, d.nonce, proof(d.tmk, kSn, d.nonce)};
  ASSERT_TRUE(core_->VerifyKeyTokenInstallProof(kKms, ok).ok());
  AuditEvent e = LastEvent(kProofAction);
  EXPECT_EQ(e.result, "OK");
  EXPECT_THAT(e.detail, HasSubstr("krd=" + d.built.krd_id));

  const absl::Status uniform = absl::UnauthenticatedError("proof: does not verify");
  KeyTokenProofCommand wrong_nonce = ok;
  wrong_nonce.krd_nonce = Nonce();
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, wrong_nonce), uniform);
  KeyTokenProofCommand other_sn_proof = ok;
  other_sn_proof.proof = proof(d.tmk, "TR34-0002", d.nonce);
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, other_sn_proof), uniform);
  KeyTokenProofCommand other_tmk = ok;
  other_tmk.proof = proof(crypto::RandomSecret(16), kSn, d.nonce);
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, other_tmk), uniform);
  KeyTokenProofCommand truncated = ok;
  truncated.proof.pop_back();
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, truncated), uniform);
  EXPECT_EQ(LastEvent(kProofAction).result, "UNAUTHENTICATED");

  // The TMK must be the SN's, live, and a TR-34 one.
  KeyTokenProofCommand other_sn = ok;
  other_sn.sn = "TR34-0002";
  other_sn.proof = proof(d.tmk, "TR34-0002", d.nonce);
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, other_sn).code(),
            absl::StatusCode::kPermissionDenied);
  KeyTokenProofCommand bad_nonce = ok;
  bad_nonce.krd_nonce = Nonce(7);
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, bad_nonce).code(),
            absl::StatusCode::kInvalidArgument);
  const uint64_t patent = InsertPatentTmk("TR34-0003");
  KeyTokenProofCommand patent_tmk{patent, "TR34-0003", d.nonce, ok.proof};
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, patent_tmk).code(),
            absl::StatusCode::kPermissionDenied);
  Delivered rekeyed = Deliver(*krd_a_, /*replace=*/true);
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, ok).code(),
            absl::StatusCode::kFailedPrecondition);
  KeyTokenProofCommand with_old_tmk{rekeyed.built.tmk_index, kSn, d.nonce,
                                    proof(d.tmk, kSn, d.nonce)};
  EXPECT_EQ(core_->VerifyKeyTokenInstallProof(kKms, with_old_tmk), uniform);
  ExpectNotInAudit(d.tmk);
  ExpectNotInAudit(rekeyed.tmk);
}

TEST_F(HsmTr34Test, RevocationAndDeletionDestroyTr34Tmks) {
  Delivered d = Deliver(*krd_a_);
  auto destroyed = core_->DestroyTerminalKeys(kKms, kSn, "stolen");
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_THAT(*destroyed, ::testing::ElementsAre(d.built.tmk_index));
  EXPECT_EQ(core_->GetKeyInfo(kAlice, d.built.tmk_index)->state, KeyState::kDeleted);
  EXPECT_TRUE(rows_.state().keys.at(d.built.tmk_index).sealed.empty());
  // A destroyed TMK is no longer the SN's: the next token carries a new one.
  Delivered next = Deliver(*krd_a_);
  EXPECT_TRUE(next.built.created);
  ASSERT_TRUE(core_->DeleteKey(kAlice, next.built.tmk_index).ok());
  EXPECT_EQ(core_->GetKeyInfo(kAlice, next.built.tmk_index)->state, KeyState::kDeleted);
  EXPECT_TRUE(rows_.state().keys.at(next.built.tmk_index).sealed.empty());
}

}  // namespace
}  // namespace rkl::hsm
