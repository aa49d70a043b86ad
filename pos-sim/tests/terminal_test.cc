#include "terminal.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "clients.h"
#include "fakes.h"
#include "operator_terminal.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/rsa.h"
#include "rkl/protocol/transport_key.h"

namespace rkl::pos {
namespace {

using testing::FakeKms;
using testing::FakeMtms;
using testing::FileBytes;
using ::testing::HasSubstr;
using testing::KmsMisbehaviour;
using ::testing::Not;
using testing::TempDir;
using testing::TerminalPki;

// A clock the sleeper advances, so waiting never depends on real time.
struct FakeTime {
  absl::Time now = absl::Now();
  Clock clock() {
    return [this] { return now; };
  }
  Sleeper sleeper() {
    return [this](absl::Duration d) { now += d; };
  }
};

class TerminalTest : public ::testing::Test {
 protected:
  TerminalTest()
      : mtms_(kms_),
        card_(*OperatorCard::Open(TerminalPki::Get().operator_p12,
                                  crypto::SecretBytes::CopyOf(AsBytes(testing::kTestPin)))),
        operator_(mtms_, &card_, time_.clock()) {}

  Terminal Make(const std::string& sn,
                crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128) {
    auto t =
        Terminal::Manufacture(dir_.path(), sn, algorithm, TerminalPki::Get().root, time_.clock());
    EXPECT_TRUE(t.ok()) << t.status();
    return *std::move(t);
  }

  // Manufactured, work certificate installed, TK generated and submitted.
  Terminal Submitted(const std::string& sn,
                     crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128) {
    Terminal t = Make(sn, algorithm);
    EXPECT_TRUE(t.InstallWorkCertificate(TerminalPki::Get().work).ok());
    EXPECT_TRUE(t.GenerateTransportKey().ok());
    auto offer = t.OfferTransportKey();
    EXPECT_TRUE(offer.ok()) << offer.status();
    auto receipt = operator_.Submit(*offer);
    EXPECT_TRUE(receipt.ok()) << receipt.status();
    EXPECT_TRUE(t.MarkSubmitted(receipt->submission_id).ok());
    return t;
  }

  absl::StatusOr<DownloadResult> Download(Terminal& t, ForwardingWait wait = {}) {
    return t.DownloadTmk(kms_, wait, time_.sleeper());
  }

  FakeTime time_;
  TempDir dir_;
  FakeKms kms_;
  FakeMtms mtms_;
  OperatorCard card_;
  OperatorTerminal operator_;
};

TEST_F(TerminalTest, FullFlowInstallsTheTmkKmsGenerated) {
  for (auto algorithm : {crypto::KeyAlgorithm::kAes128, crypto::KeyAlgorithm::kAes256,
                         crypto::KeyAlgorithm::kTdes2}) {
    const std::string sn = absl::StrCat("T-", crypto::KeyAlgorithmCode(algorithm));
    Terminal t = Submitted(sn, algorithm);
    EXPECT_EQ(t.Describe().lifecycle, "TK_SUBMITTED");
    auto r = Download(t);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->kms_state, "TERMINAL_STATE_INSTALLED");
    EXPECT_EQ(t.Describe().lifecycle, "INSTALLED");
    EXPECT_TRUE(t.secure_module().state().tmk == kms_.TmkOf(sn)) << sn;
    EXPECT_EQ(t.Describe().tmk_kcv, *crypto::KcvHex(algorithm, kms_.TmkOf(sn)));
    // The stored state survives a reload.
    auto reloaded = Terminal::Load(dir_.path(), sn, time_.clock());
    ASSERT_TRUE(reloaded.ok());
    EXPECT_EQ(reloaded->Describe().tmk_kcv, r->tmk_kcv);
  }
}

TEST_F(TerminalTest, EveryTerminalGetsItsOwnKeys) {
  Terminal a = Submitted("T-A");
  Terminal b = Submitted("T-B");
  ASSERT_TRUE(Download(a).ok());
  ASSERT_TRUE(Download(b).ok());
  EXPECT_FALSE(a.secure_module().state().tek == b.secure_module().state().tek);
  EXPECT_FALSE(a.secure_module().state().auk == b.secure_module().state().auk);
  EXPECT_FALSE(a.secure_module().state().tmk == b.secure_module().state().tmk);
}

TEST_F(TerminalTest, ManufactureNeedsTheSelfSignedRootAndAValidSn) {
  auto t = Terminal::Manufacture(dir_.path(), "T-1", crypto::KeyAlgorithm::kAes128,
                                 TerminalPki::Get().work, time_.clock());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("terminal_root"));
  auto bad_sn = Terminal::Manufacture(dir_.path(), "t-lower", crypto::KeyAlgorithm::kAes128,
                                      TerminalPki::Get().root, time_.clock());
  EXPECT_EQ(bad_sn.status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- work certificate refusals (PROTOCOL §2), each leaving the module byte-identical ----

struct CertCase {
  const char* name;
  const crypto::Certificate TerminalPki::*cert;
  absl::StatusCode code;
  const char* message;
};

class WorkCertificateRefusalTest : public TerminalTest,
                                   public ::testing::WithParamInterface<CertCase> {};

TEST_P(WorkCertificateRefusalTest, IsRefusedAndTheModuleIsUnchanged) {
  const CertCase& c = GetParam();
  Terminal t = Make("T-1");
  const std::string file = t.secure_module().state_file();
  const Bytes before = FileBytes(file);
  absl::Status s = t.InstallWorkCertificate(TerminalPki::Get().*c.cert);
  EXPECT_EQ(s.code(), c.code) << s;
  EXPECT_THAT(s.message(), HasSubstr(c.message));
  EXPECT_THAT(s.message(), HasSubstr("work_certificate"));
  EXPECT_EQ(FileBytes(file), before);
  EXPECT_EQ(t.Describe().lifecycle, "MANUFACTURED");
  // Nothing can follow: no Pu was kept.
  EXPECT_EQ(t.GenerateTransportKey().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FileBytes(file), before);
}

INSTANTIATE_TEST_SUITE_P(
    Certificates, WorkCertificateRefusalTest,
    ::testing::Values(CertCase{"OtherIssuer", &TerminalPki::work_other_issuer,
                               absl::StatusCode::kUnauthenticated,
                               "does not chain to the burned-in"},
                      CertCase{"WrongKeyUsage", &TerminalPki::work_wrong_usage,
                               absl::StatusCode::kPermissionDenied, "exactly keyEncipherment"},
                      CertCase{"KeyUsageNotCritical", &TerminalPki::work_not_critical,
                               absl::StatusCode::kPermissionDenied, "critical"},
                      CertCase{"Expired", &TerminalPki::work_expired,
                               absl::StatusCode::kFailedPrecondition, "validity"},
                      CertCase{"RootItself", &TerminalPki::root,
                               absl::StatusCode::kPermissionDenied, "keyUsage"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(TerminalTest, WorkCertificateThatIsNotPemIsInvalid) {
  Terminal t = Make("T-1");
  const Bytes before = FileBytes(t.secure_module().state_file());
  absl::Status s = t.InstallWorkCertificatePem("not a certificate");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FileBytes(t.secure_module().state_file()), before);
}

TEST_F(TerminalTest, GoodWorkCertificateIsAcceptedAfterARefusal) {
  Terminal t = Make("T-1");
  EXPECT_FALSE(t.InstallWorkCertificate(TerminalPki::Get().work_expired).ok());
  ASSERT_TRUE(t.InstallWorkCertificate(TerminalPki::Get().work).ok());
  EXPECT_EQ(t.Describe().lifecycle, "CERT_INSTALLED");
  EXPECT_EQ(t.Describe().work_certificate_serial, TerminalPki::Get().work.SerialHex());
}

// The module keeps the parsed work certificate; a new one must replace it everywhere.
TEST_F(TerminalTest, TransportKeyIsEncryptedUnderTheLatestWorkCertificate) {
  const TerminalPki& pki = TerminalPki::Get();
  Terminal t = Make("T-1");
  ASSERT_TRUE(t.InstallWorkCertificate(pki.work).ok());
  ASSERT_TRUE(t.GenerateTransportKey().ok());
  ASSERT_EQ(t.OfferTransportKey()->work_certificate_serial, pki.work.SerialHex());

  // Not sent yet: a renewed work certificate replaces the old Pu and discards that TK.
  ASSERT_TRUE(t.InstallWorkCertificate(pki.renewed_work).ok());
  EXPECT_EQ(t.Describe().work_certificate_serial, pki.renewed_work.SerialHex());
  ASSERT_TRUE(t.GenerateTransportKey().ok());
  auto offer = t.OfferTransportKey();
  ASSERT_TRUE(offer.ok()) << offer.status();
  EXPECT_EQ(offer->work_certificate_serial, pki.renewed_work.SerialHex());
  const Bytes label = protocol::OaepLabel("T-1");
  EXPECT_TRUE(crypto::RsaOaepDecrypt(pki.renewed_work_key, offer->ctk_pu, label).ok());
  EXPECT_FALSE(crypto::RsaOaepDecrypt(pki.work_key, offer->ctk_pu, label).ok());

  // A terminal loaded from its files reads the same certificate back.
  auto loaded = Terminal::Load(dir_.path(), "T-1", time_.clock());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->OfferTransportKey()->work_certificate_serial, pki.renewed_work.SerialHex());
}

TEST_F(TerminalTest, WorkCertificateCannotChangeWhileATransportKeyIsInFlight) {
  Terminal t = Submitted("T-1");
  const Bytes before = FileBytes(t.secure_module().state_file());
  EXPECT_EQ(t.InstallWorkCertificate(TerminalPki::Get().work).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FileBytes(t.secure_module().state_file()), before);
}

// ---- KMS-side refusals: authentication and key block ----

struct KmsCase {
  const char* name;
  KmsMisbehaviour misbehaviour;
  absl::StatusCode code;
  const char* message;
};

class KmsRefusalTest : public TerminalTest, public ::testing::WithParamInterface<KmsCase> {};

TEST_P(KmsRefusalTest, IsRefusedAndTheModuleIsUnchanged) {
  const KmsCase& c = GetParam();
  Terminal t = Submitted("T-1");
  const std::string file = t.secure_module().state_file();
  const Bytes before = FileBytes(file);
  kms_.set_misbehaviour(c.misbehaviour);
  auto r = Download(t);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), c.code) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(c.message));
  EXPECT_EQ(FileBytes(file), before);
  EXPECT_EQ(t.Describe().lifecycle, "TK_SUBMITTED");
  EXPECT_TRUE(t.secure_module().state().tmk.empty());
  // The terminal stays usable: with an honest KMS the same terminal completes.
  kms_.set_misbehaviour(KmsMisbehaviour::kNone);
  auto again = Download(t);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(t.Describe().lifecycle, "INSTALLED");
}

INSTANTIATE_TEST_SUITE_P(
    Kms, KmsRefusalTest,
    ::testing::Values(KmsCase{"CannotProveAuk", KmsMisbehaviour::kCannotProveAuk,
                              absl::StatusCode::kUnauthenticated, "could not prove AUK"},
                      KmsCase{"BadMac", KmsMisbehaviour::kBadMac,
                              absl::StatusCode::kUnauthenticated, "MAC does not verify"},
                      KmsCase{"BadHeader", KmsMisbehaviour::kBadHeader,
                              absl::StatusCode::kInvalidArgument, "exportability"},
                      KmsCase{"BadKcBlock", KmsMisbehaviour::kBadKc,
                              absl::StatusCode::kInvalidArgument, "KC block"},
                      KmsCase{"WrongTmkAlgorithm", KmsMisbehaviour::kWrongTmkAlgorithm,
                              absl::StatusCode::kInvalidArgument, "TMK algorithm AES256"},
                      KmsCase{"WrongKcvField", KmsMisbehaviour::kWrongKcvField,
                              absl::StatusCode::kInvalidArgument, "tmk_kcv"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(TerminalTest, TerminalDoesNotAnswerAKmsThatCannotProveAuk) {
  Terminal t = Submitted("T-1");
  kms_.set_misbehaviour(KmsMisbehaviour::kCannotProveAuk);
  ASSERT_FALSE(Download(t).ok());
  // CompleteAuthentication was never called: KMS generated no TMK.
  EXPECT_TRUE(kms_.TmkOf("T-1").empty());
}

TEST_F(TerminalTest, RefusedConfirmationKeepsTheTmkForARetry) {
  Terminal t = Submitted("T-1");
  kms_.set_misbehaviour(KmsMisbehaviour::kRejectConfirmation);
  auto r = Download(t);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(t.Describe().lifecycle, "TMK_LOADED");
  kms_.set_misbehaviour(KmsMisbehaviour::kNone);
  ASSERT_TRUE(Download(t).ok());
  EXPECT_EQ(t.Describe().lifecycle, "INSTALLED");
  EXPECT_TRUE(t.secure_module().state().tmk == kms_.TmkOf("T-1"));
}

TEST_F(TerminalTest, LostConfirmationReplyIsRepeatedAndConverges) {
  // KMS accepted the proof but its answer was lost: the same call again is answered.
  Terminal t = Submitted("T-1");
  ConfirmReplyDropper lossy(kms_, 1);
  auto r = t.DownloadTmk(lossy, {}, time_.sleeper());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(lossy.dropped(), 1);
  EXPECT_EQ(r->confirm_attempts, 2);
  EXPECT_EQ(kms_.confirm_calls(), 2);
  EXPECT_EQ(t.Describe().lifecycle, "INSTALLED");
  EXPECT_EQ(kms_.StateOf("T-1"), "TERMINAL_STATE_INSTALLED");
}

TEST_F(TerminalTest, DownloadResumesFromTmkLoadedWhenKmsHadInstalledIt) {
  // Every answer lost: KMS is INSTALLED, the terminal TMK_LOADED. Running download-tmk again
  // authenticates anew, takes the same TMK and confirms it.
  Terminal t = Submitted("T-1");
  ConfirmReplyDropper lossy(kms_, kConfirmAttempts);
  auto lost = t.DownloadTmk(lossy, {}, time_.sleeper());
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(t.Describe().lifecycle, "TMK_LOADED");
  EXPECT_EQ(kms_.StateOf("T-1"), "TERMINAL_STATE_INSTALLED");
  const crypto::SecretBytes tmk = t.secure_module().state().tmk;
  // generate-tk still refuses: the TMK must be finished first.
  EXPECT_EQ(t.GenerateTransportKey().code(), absl::StatusCode::kFailedPrecondition);

  auto resumed = Download(t);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(t.Describe().lifecycle, "INSTALLED");
  EXPECT_TRUE(t.secure_module().state().tmk == tmk);
  EXPECT_TRUE(tmk == kms_.TmkOf("T-1"));
}

TEST_F(TerminalTest, ResumingRefusesAnotherTmkAndKeepsItsOwn) {
  Terminal t = Submitted("T-1");
  kms_.set_misbehaviour(KmsMisbehaviour::kRejectConfirmation);
  ASSERT_FALSE(Download(t).ok());
  ASSERT_EQ(t.Describe().lifecycle, "TMK_LOADED");
  kms_.set_misbehaviour(KmsMisbehaviour::kNone);
  kms_.ForgetTmk("T-1");
  const Bytes before = FileBytes(t.secure_module().state_file());
  auto r = Download(t);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("another TMK than the one awaiting confirmation"));
  EXPECT_EQ(FileBytes(t.secure_module().state_file()), before);
}

// ---- waiting for MTMS→KMS forwarding ----

TEST_F(TerminalTest, DownloadWaitsUntilKmsKnowsTheTerminal) {
  kms_.set_forwarding_delay(3);
  Terminal t = Submitted("T-1");
  auto r = Download(t);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->begin_attempts, 4);
  // 50 + 100 + 200 ms of (fake) backoff.
  EXPECT_EQ(r->waited_for_forwarding, absl::Milliseconds(350));
}

TEST_F(TerminalTest, DownloadGivesUpAfterTheForwardingTimeout) {
  kms_.set_forwarding_delay(1000000);
  Terminal t = Submitted("T-1");
  const Bytes before = FileBytes(t.secure_module().state_file());
  const absl::Time start = time_.now;
  auto r = Download(t, {.timeout = absl::Seconds(10)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(r.status().message(), HasSubstr(kForwardingTimeoutMessagePrefix));
  EXPECT_EQ(time_.now - start, absl::Seconds(10));  // bounded, not a second more
  EXPECT_EQ(FileBytes(t.secure_module().state_file()), before);
}

TEST_F(TerminalTest, BeginAsksKmsToWaitForWhatIsLeftOfTheTimeoutAtMostBeginWait) {
  Terminal t = Submitted("T-1");
  ASSERT_TRUE(Download(t, {.timeout = absl::Seconds(60)}).ok());
  EXPECT_EQ(kms_.begin_waits(), std::vector<absl::Duration>{absl::Seconds(20)});  // the cap

  // A KMS that answers NOT_FOUND twice without waiting: each call asks for what is left.
  kms_.set_forwarding_delay(2);
  Terminal u = Submitted("T-2");
  auto r = Download(u, {.timeout = absl::Seconds(5), .begin_wait = absl::Seconds(20)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(kms_.begin_waits(),
            (std::vector<absl::Duration>{absl::Seconds(20), absl::Seconds(5),
                                         absl::Milliseconds(4950), absl::Milliseconds(4850)}));
}

TEST_F(TerminalTest, UnknownTerminalAtKmsIsNotRetriedForever) {
  Terminal t = Make("T-1");
  ASSERT_TRUE(t.InstallWorkCertificate(TerminalPki::Get().work).ok());
  ASSERT_TRUE(t.GenerateTransportKey().ok());  // never submitted
  auto r = Download(t, {.timeout = absl::Seconds(2)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(TerminalTest, StepsOutOfOrderAreRefused) {
  Terminal t = Make("T-1");
  EXPECT_EQ(t.GenerateTransportKey().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.OfferTransportKey().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Download(t).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TerminalTest, TransportKeyIsBoundToItsSn) {
  Terminal t = Make("T-1");
  ASSERT_TRUE(t.InstallWorkCertificate(TerminalPki::Get().work).ok());
  ASSERT_TRUE(t.GenerateTransportKey().ok());
  auto offer = t.OfferTransportKey();
  ASSERT_TRUE(offer.ok());
  offer->sn = "T-OTHER";  // the label "RKL-TK:T-1" no longer matches
  EXPECT_EQ(operator_.Submit(*offer).status().code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace rkl::pos
