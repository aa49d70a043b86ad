// The TR-34 cases of the KmsCore conformance suite (kms_core_suite.h): a terminal with a KRD
// (TestKrd, the libs/tr34 KRD side) against KmsCore, FakeHsm (real tokens, libs/tr34
// builders) and FakeCa (kdh-ca). Every token is checked as the terminal checks it
// (ReceiveTwoPassKeyToken, CheckKdhNotRevoked, header, KCV). docs/kms.md "TR-34 terminals".

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kms_core_suite.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;
using ::testing::HasSubstr;

constexpr char kAdmin[] = "admin:alice";

// RT_KRD encoded by hand, so that sizes the builder refuses can be sent.
Bytes RawRtKrd(size_t nonce_size) {
  const Bytes oid = {0x06, 0x0A, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x19, 0x03};
  Bytes octets = {0x04, static_cast<uint8_t>(nonce_size)};
  for (size_t i = 0; i < nonce_size; ++i) octets.push_back(static_cast<uint8_t>(i + 1));
  Bytes set = {0x31, static_cast<uint8_t>(octets.size())};
  set.insert(set.end(), octets.begin(), octets.end());
  Bytes body = oid;
  body.insert(body.end(), set.begin(), set.end());
  Bytes out = {0x30, static_cast<uint8_t>(body.size())};
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

absl::StatusOr<KdhKeyRecord> Provision(KmsCore& core) {
  return core.ProvisionKdhKey(kAdmin, "kdh-test", 2048);
}

crypto::Certificate KdhCert(const KdhKeyRecord& k) {
  absl::StatusOr<crypto::Certificate> c = crypto::Certificate::FromDer(k.certificate_der);
  EXPECT_TRUE(c.ok());
  return *c;
}

// The install proof of `krd` for `tmk` and its pending random number.
Bytes Proof(const TestKrd& krd, KeyAlgorithm algorithm, const crypto::SecretBytes& tmk) {
  absl::StatusOr<Bytes> proof =
      tr34::InstallProof(algorithm, tmk, krd.party.cert.SubjectCommonName(), krd.nonce);
  EXPECT_TRUE(proof.ok()) << proof.status();
  return proof.ok() ? *proof : Bytes();
}

// A token for `krd` (its SN is the certificate's CN) in TMK_DELIVERED, accepted by the KRD
// as rkl-pos accepts one; its TMK in `tmk`.
::testing::AssertionResult RequestAndAccept(KmsCore& core, const FakeCa& ca, int64_t now_s,
                                            TestKrd& krd, KeyAlgorithm algorithm,
                                            const KdhKeyRecord& kdh, crypto::SecretBytes& tmk) {
  absl::StatusOr<KeyTokenResult> r = core.RequestKeyToken(krd.party.cert.SubjectCommonName(),
                                                          krd.CtKrd(), krd.NewRtKrd(), algorithm);
  if (!r.ok()) return ::testing::AssertionFailure() << "RequestKeyToken: " << r.status();
  if (r->state != TerminalState::kTmkDelivered) {
    return ::testing::AssertionFailure() << "state " << TerminalStateName(r->state);
  }
  absl::StatusOr<crypto::SecretBytes> accepted =
      krd.Accept(r->key_token, KdhCert(kdh), ca.kdh_ca().cert, algorithm, r->tmk_kcv, now_s);
  if (!accepted.ok()) return ::testing::AssertionFailure() << "KRD: " << accepted.status();
  tmk = *std::move(accepted);
  return ::testing::AssertionSuccess();
}

}  // namespace

TEST_P(KmsCoreSuite, Tr34TerminalGoesFromRegisteredToDeliveredToInstalled) {
  UseTr34({.metrics = KmsMetrics::Register(metrics_)});
  auto delivered = [&](const std::string& protocol) {
    return Counted("rkl_kms_tmk_deliveries_total", {{"protocol", protocol}});
  };
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok()) << kdh.status();
  EXPECT_EQ(ca_->last_hsm_id(), "hsm-kms");

  // CT_KDH: the KDH certificate for role KDH under kdh-ca, with a current CRL.
  absl::StatusOr<Bytes> ct_kdh = core_->GetKdhCredential("");
  ASSERT_TRUE(ct_kdh.ok()) << ct_kdh.status();
  absl::StatusOr<tr34::CredentialToken> cred = tr34::ParseCredentialToken(*ct_kdh);
  ASSERT_TRUE(cred.ok()) << cred.status();
  ASSERT_EQ(cred->certificates.size(), 1u);
  EXPECT_TRUE(tr34::CheckRole(cred->certificates[0], tr34::Role::kKdh, ca_->kdh_ca().cert).ok());
  EXPECT_TRUE(
      tr34::CheckKdhNotRevoked(cred->certificates[0], cred->crls, ca_->kdh_ca().cert, NowS()).ok());

  TestKrd krd = NewKrd("TR34-HAPPY");
  absl::StatusOr<std::vector<KrdRegistrationResult>> reg =
      core_->RegisterKrdCredentials(kAdmin, {krd.CtKrd()});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_EQ(reg->size(), 1u);
  EXPECT_TRUE((*reg)[0].status.ok()) << (*reg)[0].status;
  EXPECT_EQ((*reg)[0].sn, "TR34-HAPPY");
  TerminalRecord t = Terminal("TR34-HAPPY");
  EXPECT_EQ(t.state, TerminalState::kTkReceived);
  EXPECT_EQ(t.protocol, TerminalProtocol::kTr34);
  EXPECT_EQ(t.krd_id, (*reg)[0].krd_id);
  EXPECT_EQ(t.krd_id.size(), 64u);

  EXPECT_EQ(delivered("tr34"), 0);
  crypto::SecretBytes tmk;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, KeyAlgorithm::kAes128, *kdh, tmk));
  EXPECT_EQ(delivered("tr34"), 1);
  EXPECT_EQ(delivered("patent"), 0);
  t = Terminal("TR34-HAPPY");
  EXPECT_EQ(t.state, TerminalState::kTmkDelivered);
  EXPECT_EQ(t.tmk_generation, 1u);
  EXPECT_EQ(t.krd_nonce, krd.nonce);
  EXPECT_EQ(t.tmk_kcv, hsm_->LiveTmkKcv("TR34-HAPPY"));

  absl::StatusOr<TerminalState> confirmed =
      core_->ConfirmKeyToken("TR34-HAPPY", Proof(krd, KeyAlgorithm::kAes128, tmk));
  ASSERT_TRUE(confirmed.ok()) << confirmed.status();
  EXPECT_EQ(*confirmed, TerminalState::kInstalled);
  EXPECT_EQ(Terminal("TR34-HAPPY").state, TerminalState::kInstalled);
  // A repeat of the accepted proof (a lost reply) answers INSTALLED again.
  confirmed = core_->ConfirmKeyToken("TR34-HAPPY", Proof(krd, KeyAlgorithm::kAes128, tmk));
  ASSERT_TRUE(confirmed.ok()) << confirmed.status();
  EXPECT_EQ(*confirmed, TerminalState::kInstalled);
  // Installed: another token is refused, and no delivery is counted.
  EXPECT_EQ(core_->RequestKeyToken("TR34-HAPPY", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(delivered("tr34"), 1);
  EXPECT_EQ(Counted("rkl_kms_auth_failures_total"), 0);

  EXPECT_EQ(CountAudit("TR34-HAPPY", "krd.bind", "OK"), 1);
  EXPECT_EQ(CountAudit("TR34-HAPPY", "key_token.issue", "OK"), 1);
  EXPECT_EQ(CountAudit("TR34-HAPPY", "terminal.installed", "OK"), 1);
  const std::string tmk_hex = ToHex(tmk.RevealSecret());
  for (const AuditEntry& e : AuditOf("TR34-HAPPY")) {
    EXPECT_THAT(e.detail, ::testing::Not(HasSubstr(tmk_hex)));
  }

  absl::StatusOr<Statistics> st = core_->GetStatistics();
  ASSERT_TRUE(st.ok());
  EXPECT_THAT(st->terminals_by_protocol,
              ::testing::Contains(std::pair<std::string, uint64_t>("TR34", 1)));
}

TEST_P(KmsCoreSuite, Tr34EveryAlgorithmYieldsATokenTheKrdAccepts) {
  UseTr34();
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok()) << kdh.status();
  for (KeyAlgorithm a : {KeyAlgorithm::kAes128, KeyAlgorithm::kAes256, KeyAlgorithm::kTdes2}) {
    SCOPED_TRACE(std::string(crypto::KeyAlgorithmName(a)));
    TestKrd krd = NewKrd("TR34-ALG-" + std::to_string(static_cast<int>(a)));
    crypto::SecretBytes tmk;
    ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, a, *kdh, tmk));
    absl::StatusOr<TerminalState> confirmed =
        core_->ConfirmKeyToken(krd.party.cert.SubjectCommonName(), Proof(krd, a, tmk));
    ASSERT_TRUE(confirmed.ok()) << confirmed.status();
  }
}

TEST_P(KmsCoreSuite, Tr34RpcsAnswerNotConfiguredWithoutKrdCasOrCa) {
  TestKrd krd = NewKrd("TR34-OFF");
  // The suite's default core: no CA port, no KRD CA.
  for (const absl::Status& s :
       {core_->GetKdhCredential("").status(),
        core_->RequestKeyToken("TR34-OFF", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
            .status(),
        core_->ConfirmKeyToken("TR34-OFF", Bytes(16)).status(),
        core_->ProvisionKdhKey(kAdmin, "", 0).status(),
        core_->RegisterKrdCredentials(kAdmin, {krd.CtKrd()}).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(s.message(), HasSubstr("tr34: not configured"));
  }
  // Malformed input is INVALID_ARGUMENT all the same.
  EXPECT_EQ(core_->GetKdhCredential("bad sn").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->RequestKeyToken("bad sn", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ConfirmKeyToken("bad sn", Bytes(16)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ProvisionKdhKey(kAdmin, std::string(65, 'a'), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A CA but no KRD CA: still not configured for terminals.
  UseTr34(KmsCoreOptions{});
  KmsCoreOptions none;
  core_ = std::make_unique<KmsCore>(
      repo(), *hsm_, [this] { return absl::FromUnixSeconds(NowS()); }, crypto::FillRandom, none,
      ca_.get());
  absl::Status s =
      core_->RequestKeyToken("TR34-OFF", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_THAT(s.message(), HasSubstr("tr34: not configured"));
}

TEST_P(KmsCoreSuite, Tr34WithoutKdhKeyIsFailedPrecondition) {
  UseTr34();
  TestKrd krd = NewKrd("TR34-NOKDH");
  absl::Status s = core_->GetKdhCredential("").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("no KDH key"));
  s = core_->RequestKeyToken("TR34-NOKDH", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("no KDH key"));
  EXPECT_EQ(hsm_->calls("BuildKeyToken"), 0);
}

TEST_P(KmsCoreSuite, Tr34OnlyOneKdhKeyIsActive) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  absl::Status s = Provision(*core_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(hsm_->kdh_keys(), 1);  // refused before HSM #2 made another key
  absl::StatusOr<std::vector<KdhKeyRecord>> keys = core_->ListKdhKeys();
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_TRUE((*keys)[0].active);
  EXPECT_EQ(KdhCert((*keys)[0]).SubjectCommonName(),
            "kdh:hsm-kms:" + std::to_string((*keys)[0].key_index));
  // Labels and sizes are checked.
  EXPECT_EQ(core_->ProvisionKdhKey(kAdmin, "x", 1024).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ProvisionKdhKey(kAdmin, std::string(65, 'a'), 2048).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(KmsCoreSuite, Tr34KdhHsmIdComesFromOptions) {
  UseTr34(KmsCoreOptions{.kdh_hsm_id = "hsm-two"});
  ASSERT_TRUE(Provision(*core_).ok());
  EXPECT_EQ(ca_->last_hsm_id(), "hsm-two");
}

TEST_P(KmsCoreSuite, Tr34KrdFromAnUntrustedCaIsRefused) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  // Same issuer name as the trusted KRD CA, another key: the signature decides.
  TestKrd krd = NewKrd("TR34-UNTRUSTED", UntrustedKrdCa());
  absl::Status s =
      core_->RequestKeyToken("TR34-UNTRUSTED", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("ct_krd"));
  EXPECT_EQ(repo().GetTerminal("TR34-UNTRUSTED").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hsm_->calls("BuildKeyToken"), 0);
}

TEST_P(KmsCoreSuite, Tr34KdhCertificateOfferedAsKrdIsRefused) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  // A certificate of kdh-ca (role KDH), and one of the KRD CA made for signing only.
  TestKrd kdh_like{
      NewTr34EndEntity("TR34-ROLE", crypto::KeyUsage::kDigitalSignature, ca_->kdh_ca(), NowS()),
      {}};
  TestKrd signer = NewKrd("TR34-ROLE", KrdCa(), crypto::KeyUsage::kDigitalSignature);
  for (TestKrd* krd : {&kdh_like, &signer}) {
    absl::Status s =
        core_->RequestKeyToken("TR34-ROLE", krd->CtKrd(), krd->NewRtKrd(), KeyAlgorithm::kAes128)
            .status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  }
  EXPECT_EQ(repo().GetTerminal("TR34-ROLE").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(KmsCoreSuite, Tr34KrdNamingAnotherSnIsRefused) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  TestKrd krd = NewKrd("TR34-CN-A");
  absl::Status s =
      core_->RequestKeyToken("TR34-CN-B", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("ct_krd"));
  EXPECT_EQ(repo().GetTerminal("TR34-CN-B").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(repo().GetTerminal("TR34-CN-A").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(KmsCoreSuite, Tr34SecondKrdForABoundSnIsRefusedAndTheFirstStillWorks) {
  UseTr34();
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok());
  TestKrd first = NewKrd("TR34-BOUND");
  TestKrd second = NewKrd("TR34-BOUND");
  crypto::SecretBytes tmk;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), first, KeyAlgorithm::kAes128, *kdh, tmk));
  absl::Status s =
      core_->RequestKeyToken("TR34-BOUND", second.CtKrd(), second.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_EQ(CountAudit("TR34-BOUND", "krd.refuse", "PERMISSION_DENIED"), 1);
  // Nor through registration.
  absl::StatusOr<std::vector<KrdRegistrationResult>> reg =
      core_->RegisterKrdCredentials(kAdmin, {second.CtKrd(), first.CtKrd()});
  ASSERT_TRUE(reg.ok());
  EXPECT_EQ((*reg)[0].status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE((*reg)[1].status.ok());
  EXPECT_TRUE((*reg)[1].duplicate);
  // The bound KRD goes on: the same TMK again, then installed.
  crypto::SecretBytes again;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), first, KeyAlgorithm::kAes128, *kdh, again));
  EXPECT_EQ(again, tmk);
  ASSERT_TRUE(
      core_->ConfirmKeyToken("TR34-BOUND", Proof(first, KeyAlgorithm::kAes128, again)).ok());
}

TEST_P(KmsCoreSuite, Tr34MalformedAndOversizeInputsAreRefused) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  TestKrd krd = NewKrd("TR34-SIZE");
  TestKrd other = NewKrd("TR34-SIZE2");
  const Bytes rt = krd.NewRtKrd();
  struct Case {
    const char* name;
    Bytes ct;
    Bytes rt;
    const char* field;
  };
  Bytes big_ct = krd.CtKrd();
  big_ct.resize(kMaxCtKrdSize + 1, 0);
  const crypto::Certificate two[] = {krd.party.cert, other.party.cert};
  Bytes two_certs = *tr34::BuildCredentialToken(two);
  for (const Case& c : std::vector<Case>{
           {"ct over 16 KiB", big_ct, rt, "ct_krd"},
           {"ct garbage", Bytes{0x30, 0x01, 0x00}, rt, "ct_krd"},
           {"ct with two certificates", two_certs, rt, "ct_krd"},
           {"rt over 256 bytes", krd.CtKrd(), Bytes(kMaxRtKrdSize + 1, 0x30), "rt_krd"},
           {"rt garbage", krd.CtKrd(), Bytes{0x01, 0x02}, "rt_krd"},
           {"nonce of 7 bytes", krd.CtKrd(), RawRtKrd(7), "rt_krd"},
           {"nonce of 65 bytes", krd.CtKrd(), RawRtKrd(65), "rt_krd"},
       }) {
    SCOPED_TRACE(c.name);
    absl::Status s =
        core_->RequestKeyToken("TR34-SIZE", c.ct, c.rt, KeyAlgorithm::kAes128).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(c.field));
  }
  // 8 and 64 bytes are fine.
  for (size_t n : {size_t{8}, size_t{64}}) {
    absl::Status s =
        core_->RequestKeyToken("TR34-SIZE", krd.CtKrd(), RawRtKrd(n), KeyAlgorithm::kAes128)
            .status();
    EXPECT_TRUE(s.ok()) << n << ": " << s;
  }
}

TEST_P(KmsCoreSuite, Tr34InstalledTerminalNeedsRekeyAndRekeyGivesANewTmk) {
  UseTr34();
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok());
  TestKrd krd = NewKrd("TR34-REKEY");
  crypto::SecretBytes tmk1;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, KeyAlgorithm::kAes128, *kdh, tmk1));
  ASSERT_TRUE(core_->ConfirmKeyToken("TR34-REKEY", Proof(krd, KeyAlgorithm::kAes128, tmk1)).ok());
  const std::string kcv1 = Terminal("TR34-REKEY").tmk_kcv;

  absl::Status s =
      core_->RequestKeyToken("TR34-REKEY", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("re-key"));

  ASSERT_TRUE(core_->MarkForRekey(kAdmin, "TR34-REKEY", "yearly").ok());
  EXPECT_EQ(Terminal("TR34-REKEY").state, TerminalState::kRekeyPending);
  crypto::SecretBytes tmk2;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, KeyAlgorithm::kAes128, *kdh, tmk2));
  EXPECT_NE(tmk2, tmk1);
  TerminalRecord t = Terminal("TR34-REKEY");
  EXPECT_NE(t.tmk_kcv, kcv1);
  EXPECT_EQ(t.tmk_generation, 2u);
  EXPECT_EQ(t.state, TerminalState::kTmkDelivered);
  // The old TMK's proof no longer installs anything.
  s = core_->ConfirmKeyToken("TR34-REKEY", Proof(krd, KeyAlgorithm::kAes128, tmk1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  Advance(absl::Minutes(1));
  ASSERT_TRUE(core_->ConfirmKeyToken("TR34-REKEY", Proof(krd, KeyAlgorithm::kAes128, tmk2)).ok());
  t = Terminal("TR34-REKEY");
  EXPECT_EQ(t.state, TerminalState::kInstalled);
  EXPECT_FALSE(t.rekey_requested);
  EXPECT_EQ(t.consecutive_failures, 0u);
}

TEST_P(KmsCoreSuite, Tr34RepeatedRequestRewrapsTheSameTmkForTheNewNonce) {
  UseTr34();
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok());
  TestKrd krd = NewKrd("TR34-REPEAT");
  crypto::SecretBytes tmk1, tmk2;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, KeyAlgorithm::kAes256, *kdh, tmk1));
  const Bytes old_nonce = krd.nonce;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, KeyAlgorithm::kAes256, *kdh, tmk2));
  EXPECT_EQ(tmk1, tmk2);
  EXPECT_EQ(Terminal("TR34-REPEAT").tmk_generation, 1u);
  // Only the last token's random number installs.
  absl::StatusOr<Bytes> stale =
      tr34::InstallProof(KeyAlgorithm::kAes256, tmk1, "TR34-REPEAT", old_nonce);
  ASSERT_TRUE(stale.ok());
  EXPECT_EQ(core_->ConfirmKeyToken("TR34-REPEAT", *stale).status().code(),
            absl::StatusCode::kUnauthenticated);
  Advance(absl::Minutes(1));
  EXPECT_TRUE(core_->ConfirmKeyToken("TR34-REPEAT", Proof(krd, KeyAlgorithm::kAes256, tmk2)).ok());
}

TEST_P(KmsCoreSuite, Tr34RevokedAndLockedTerminalsAreRefused) {
  UseTr34(KmsCoreOptions{.lockout_threshold = 2});
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok());
  TestKrd revoked = NewKrd("TR34-REVOKED");
  crypto::SecretBytes tmk;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), revoked, KeyAlgorithm::kAes128, *kdh, tmk));
  ASSERT_TRUE(core_->RevokeTerminal(kAdmin, "TR34-REVOKED", "stolen").ok());
  EXPECT_EQ(hsm_->UndestroyedKeys("TR34-REVOKED"), 0);
  absl::Status s = core_
                       ->RequestKeyToken("TR34-REVOKED", revoked.CtKrd(), revoked.NewRtKrd(),
                                         KeyAlgorithm::kAes128)
                       .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("revoked"));
  s = core_->ConfirmKeyToken("TR34-REVOKED", Proof(revoked, KeyAlgorithm::kAes128, tmk)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;

  // Two wrong proofs lock the terminal (lockout_threshold 2).
  TestKrd locked = NewKrd("TR34-LOCKED");
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), locked, KeyAlgorithm::kAes128, *kdh, tmk));
  for (int i = 0; i < 2; ++i) {
    s = core_->ConfirmKeyToken("TR34-LOCKED", Bytes(16, 0x55)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
    if (std::optional<absl::Duration> wait = RetryDelay(s)) Advance(*wait);
  }
  EXPECT_EQ(Terminal("TR34-LOCKED").state, TerminalState::kLocked);
  s = core_
          ->RequestKeyToken("TR34-LOCKED", locked.CtKrd(), locked.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("locked"));
  // Unlocked, it goes on.
  ASSERT_TRUE(core_->UnlockTerminal(kAdmin, "TR34-LOCKED", "checked").ok());
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), locked, KeyAlgorithm::kAes128, *kdh, tmk));
  EXPECT_TRUE(
      core_->ConfirmKeyToken("TR34-LOCKED", Proof(locked, KeyAlgorithm::kAes128, tmk)).ok());
}

TEST_P(KmsCoreSuite, Tr34WrongProofIsRefusedCountedAndBacksOff) {
  UseTr34();
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok());
  TestKrd krd = NewKrd("TR34-WRONG");
  crypto::SecretBytes tmk;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, KeyAlgorithm::kAes128, *kdh, tmk));
  Bytes wrong = Proof(krd, KeyAlgorithm::kAes128, tmk);
  wrong[0] ^= 0x01;
  absl::Status s = core_->ConfirmKeyToken("TR34-WRONG", wrong).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  TerminalRecord t = Terminal("TR34-WRONG");
  EXPECT_EQ(t.consecutive_failures, 1u);
  EXPECT_EQ(t.state, TerminalState::kTmkDelivered);
  EXPECT_EQ(CountAudit("TR34-WRONG", "install.fail", "UNAUTHENTICATED"), 1);
  absl::StatusOr<Statistics> st = core_->GetStatistics();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->auth_failures_total, 1u);
  // Backing off: even the right proof waits, and HSM #2 is not asked.
  const int verifies = hsm_->calls("VerifyKeyTokenInstallProof");
  s = core_->ConfirmKeyToken("TR34-WRONG", Proof(krd, KeyAlgorithm::kAes128, tmk)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(hsm_->calls("VerifyKeyTokenInstallProof"), verifies);
  Advance(absl::Seconds(1));
  ASSERT_TRUE(core_->ConfirmKeyToken("TR34-WRONG", Proof(krd, KeyAlgorithm::kAes128, tmk)).ok());
  EXPECT_EQ(Terminal("TR34-WRONG").consecutive_failures, 0u);
  // A proof of the wrong length is malformed, not an attempt.
  EXPECT_EQ(core_->ConfirmKeyToken("TR34-WRONG", Bytes(8)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(KmsCoreSuite, Tr34ConfirmWithoutTokenIsFailedPrecondition) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  TestKrd krd = NewKrd("TR34-NOTOKEN");
  ASSERT_TRUE(core_->RegisterKrdCredentials(kAdmin, {krd.CtKrd()}).ok());
  absl::Status s = core_->ConfirmKeyToken("TR34-NOTOKEN", Bytes(16)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(core_->ConfirmKeyToken("TR34-UNKNOWN", Bytes(16)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_P(KmsCoreSuite, Tr34CrlIsCachedAndSurvivesACaOutageWhileCurrent) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  ASSERT_TRUE(core_->GetKdhCredential("").ok());
  EXPECT_EQ(ca_->crl_calls(), 1);
  ASSERT_TRUE(core_->GetKdhCredential("").ok());
  EXPECT_EQ(ca_->crl_calls(), 1);  // cached
  // Inside the refresh margin (CRL valid 1 h, margin 10 min): fetched again.
  Advance(absl::Minutes(51));
  ASSERT_TRUE(core_->GetKdhCredential("").ok());
  EXPECT_EQ(ca_->crl_calls(), 2);
  // CA down, cached CRL still current: served.
  ca_->SetDown(true);
  Advance(absl::Minutes(55));
  absl::StatusOr<Bytes> served = core_->GetKdhCredential("");
  ASSERT_TRUE(served.ok()) << served.status();
  // Past its nextUpdate with the CA still down: UNAVAILABLE.
  Advance(absl::Minutes(10));
  absl::Status s = core_->GetKdhCredential("").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  TestKrd krd = NewKrd("TR34-CADOWN");
  s = core_->RequestKeyToken("TR34-CADOWN", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  ca_->SetDown(false);
  EXPECT_TRUE(core_->GetKdhCredential("").ok());
}

// A KDH certificate revoked at the CA reaches terminals as revoked within crl_max_age (1 min
// by default), not at the nextUpdate of the CRL KMS holds.
TEST_P(KmsCoreSuite, Tr34CrlIsFetchedAgainOnceOlderThanItsMaxAge) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  ASSERT_TRUE(core_->GetKdhCredential("").ok());
  EXPECT_EQ(ca_->crl_calls(), 1);
  Advance(absl::Seconds(59));
  ASSERT_TRUE(core_->GetKdhCredential("").ok());
  EXPECT_EQ(ca_->crl_calls(), 1);  // younger than a minute: cached
  Advance(absl::Seconds(1));
  ASSERT_TRUE(core_->GetKdhCredential("").ok());
  EXPECT_EQ(ca_->crl_calls(), 2);  // a minute old: fetched again
}

TEST_P(KmsCoreSuite, Tr34CaDownWithoutCachedCrlIsUnavailable) {
  UseTr34();
  ASSERT_TRUE(Provision(*core_).ok());
  ca_->SetDown(true);
  absl::Status s = core_->GetKdhCredential("").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("crl"));
  // Provisioning needs the CA too.
  EXPECT_EQ(hsm_->kdh_keys(), 1);
}

TEST_P(KmsCoreSuite, Tr34AndPatentSnsStayWithTheirProtocol) {
  UseTr34();
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok());
  // A patent terminal asking for a TR-34 token.
  TestTerminal patent("TR34-PATENT", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(patent).ok());
  TestKrd krd = NewKrd("TR34-PATENT");
  absl::Status s =
      core_->RequestKeyToken("TR34-PATENT", krd.CtKrd(), krd.NewRtKrd(), KeyAlgorithm::kAes128)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("patent protocol"));
  EXPECT_EQ(core_->ConfirmKeyToken("TR34-PATENT", Bytes(16)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<std::vector<KrdRegistrationResult>> reg =
      core_->RegisterKrdCredentials(kAdmin, {krd.CtKrd()});
  ASSERT_TRUE(reg.ok());
  EXPECT_EQ((*reg)[0].status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Terminal("TR34-PATENT").protocol, TerminalProtocol::kPatent);

  // A TR-34 terminal asking for the patent flow, or given a transport key.
  TestKrd tr = NewKrd("TR34-ONLY");
  crypto::SecretBytes tmk;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), tr, KeyAlgorithm::kAes128, *kdh, tmk));
  TestTerminal as_patent("TR34-ONLY", KeyAlgorithm::kAes128);
  s = core_->BeginAuthentication("TR34-ONLY", as_patent.NewRnd1()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("TR-34"));
  s = Submit(as_patent).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("TR-34"));
  EXPECT_EQ(Terminal("TR34-ONLY").state, TerminalState::kTmkDelivered);
}

TEST_P(KmsCoreSuite, Tr34RegistrationTakesOneToAThousandAndAnswersEach) {
  UseTr34();
  TestKrd a = NewKrd("TR34-REG-A");
  TestKrd untrusted = NewKrd("TR34-REG-B", UntrustedKrdCa());
  absl::StatusOr<std::vector<KrdRegistrationResult>> reg =
      core_->RegisterKrdCredentials(kAdmin, {a.CtKrd(), untrusted.CtKrd(), Bytes{0x01}, a.CtKrd()});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_EQ(reg->size(), 4u);
  EXPECT_TRUE((*reg)[0].status.ok());
  EXPECT_FALSE((*reg)[0].duplicate);
  EXPECT_EQ((*reg)[1].status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*reg)[2].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*reg)[3].status.ok());
  EXPECT_TRUE((*reg)[3].duplicate);
  EXPECT_EQ(repo().GetTerminal("TR34-REG-B").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->RegisterKrdCredentials(kAdmin, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // An oversize credential makes the whole call malformed; nothing is bound.
  Bytes big(kMaxCtKrdSize + 1, 0x30);
  TestKrd c = NewKrd("TR34-REG-C");
  absl::Status s = core_->RegisterKrdCredentials(kAdmin, {c.CtKrd(), big}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("ct_krd[1]"));
  EXPECT_EQ(repo().GetTerminal("TR34-REG-C").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(
      core_->RegisterKrdCredentials(kAdmin, std::vector<Bytes>(1001, Bytes{0x01})).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_P(KmsCoreSuite, Tr34TerminalsAreListedWithTheirProtocol) {
  UseTr34();
  TestKrd a = NewKrd("TR34-LIST");
  ASSERT_TRUE(core_->RegisterKrdCredentials(kAdmin, {a.CtKrd()}).ok());
  TestTerminal p("TR34-LISTP", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(p).ok());
  absl::StatusOr<TerminalPage> page = core_->ListTerminals(std::nullopt, "TR34-LIST", 10, "");
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->terminals.size(), 2u);
  EXPECT_EQ(page->terminals[0].protocol, TerminalProtocol::kTr34);
  EXPECT_FALSE(page->terminals[0].krd_id.empty());
  EXPECT_EQ(page->terminals[0].krd_certificate_der, a.party.cert.ToDer());
  EXPECT_EQ(page->terminals[1].protocol, TerminalProtocol::kPatent);
  EXPECT_TRUE(page->terminals[1].krd_id.empty());
  absl::StatusOr<Statistics> st = core_->GetStatistics();
  ASSERT_TRUE(st.ok());
  std::map<std::string, uint64_t> by(st->terminals_by_protocol.begin(),
                                     st->terminals_by_protocol.end());
  EXPECT_EQ(by["TR34"], 1u);
  EXPECT_EQ(by["PATENT"], 1u);
}

TEST_P(KmsCoreSuite, Tr34RepositoryKeepsAtMostOneActiveKdhKey) {
  // The repository's own guard (the database's unique index), for two replicas racing.
  KdhKeyRecord first{.key_index = 501,
                     .label = "kdh",
                     .certificate_der = Bytes{0x30, 0x00},
                     .serial_hex = "0A",
                     .not_after_s = 1'900'000'000,
                     .created_at_ms = 1,
                     .active = true};
  ASSERT_TRUE(repo().InsertKdhKey(first, {}).ok());
  KdhKeyRecord second = first;
  second.key_index = 502;
  absl::Status s = repo().InsertKdhKey(second, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  absl::StatusOr<KdhKeyRecord> active = repo().GetActiveKdhKey();
  ASSERT_TRUE(active.ok());
  EXPECT_EQ(active->key_index, 501u);
  EXPECT_EQ(active->certificate_der, first.certificate_der);
  EXPECT_EQ(active->serial_hex, "0A");
  absl::StatusOr<std::vector<KdhKeyRecord>> all = repo().ListKdhKeys();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1u);
}

TEST_P(KmsCoreSuite, Tr34ProvisioningWithTheCaDownStoresNothing) {
  UseTr34();
  ca_->SetDown(true);
  absl::Status s = core_->ProvisionKdhKey(kAdmin, "", 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  absl::StatusOr<std::vector<KdhKeyRecord>> keys = core_->ListKdhKeys();
  ASSERT_TRUE(keys.ok());
  EXPECT_TRUE(keys->empty());
  EXPECT_EQ(CountAudit("", "kdh_key.provision", "UNAVAILABLE"), 1);
  ca_->SetDown(false);
  EXPECT_TRUE(core_->ProvisionKdhKey(kAdmin, "", 0).ok());
}

TEST_P(KmsCoreSuite, Tr34AnUnreachableHsmCostsTheTerminalNoAttempt) {
  UseTr34();
  absl::StatusOr<KdhKeyRecord> kdh = Provision(*core_);
  ASSERT_TRUE(kdh.ok());
  TestKrd krd = NewKrd("TR34-HSMDOWN");
  crypto::SecretBytes tmk;
  ASSERT_TRUE(RequestAndAccept(*core_, *ca_, NowS(), krd, KeyAlgorithm::kAes128, *kdh, tmk));
  hsm_->FailNextCalls(1);
  absl::Status s =
      core_->ConfirmKeyToken("TR34-HSMDOWN", Proof(krd, KeyAlgorithm::kAes128, tmk)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(Terminal("TR34-HSMDOWN").consecutive_failures, 0u);
  // At once again (no back-off): installed.
  EXPECT_TRUE(core_->ConfirmKeyToken("TR34-HSMDOWN", Proof(krd, KeyAlgorithm::kAes128, tmk)).ok());
}

}  // namespace rkl::kms::testing
