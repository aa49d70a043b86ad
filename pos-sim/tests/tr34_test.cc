// rkl-pos as a TR-34 KRD: the KRD CA, manufacture, the two-pass exchange against a fake KMS
// whose KDH key is real (tokens built with rkl::tr34), every refusal (clear message naming
// the rule, secure module byte-identical), the Annex B known answer, the CLI and a mixed fleet
// over gRPC.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli_harness.h"
#include "clients.h"
#include "fakes.h"
#include "files.h"
#include "krd_ca.h"
#include "provision.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/seal.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"
#include "terminal.h"

namespace rkl::pos {
namespace {

using crypto::KeyAlgorithm;
using crypto::KeyUsage;
using testing::Concat;
using testing::FakeKms;
using testing::FileBytes;
using ::testing::HasSubstr;
using testing::KdhWorld;
using testing::TempDir;
using testing::Tr34Misbehaviour;

constexpr char kRefused[] = "key_token: refused, secure module unchanged: ";
constexpr char kCtKdhRefused[] = "ct_kdh: refused, secure module unchanged: ";

struct FakeTime {
  absl::Time now = absl::Now();
  Clock clock() {
    return [this] { return now; };
  }
  Sleeper sleeper() {
    return [this](absl::Duration d) { now += d; };
  }
};

class Tr34TerminalTest : public ::testing::Test {
 protected:
  Terminal Make(const std::string& sn, KeyAlgorithm algorithm = KeyAlgorithm::kAes128) {
    auto t = Terminal::ManufactureTr34(dir_.path(), sn, algorithm, KdhWorld::Get().Factory(),
                                       time_.clock());
    EXPECT_TRUE(t.ok()) << t.status();
    return *std::move(t);
  }
  absl::StatusOr<DownloadResult> Load(Terminal& t) {
    return t.LoadTmkTr34(kms_, {}, time_.sleeper());
  }
  std::string StateFile(const std::string& sn) {
    return TerminalDirectory(dir_.path(), sn) + "/secure_module.sealed";
  }
  // Snapshots the state file when KMS is asked for a key token (the random number is
  // committed by then): a refused token must leave the module exactly so.
  void SnapshotAtRequest(const std::string& sn) {
    kms_.set_on_key_token_request(
        [this, sn](const std::string&) { at_request_ = FileBytes(StateFile(sn)); });
  }
  // A token-phase refusal: the message names the rule, the state file is byte-identical to
  // what it was when the token was requested, and no TMK was stored.
  void ExpectTokenRefused(Tr34Misbehaviour m, const std::string& rule) {
    SCOPED_TRACE(rule);
    const std::string sn = "REF-" + std::to_string(next_++);
    Terminal t = Make(sn);
    SnapshotAtRequest(sn);
    kms_.set_tr34_misbehaviour(m);
    auto r = Load(t);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr(kRefused));
    EXPECT_THAT(r.status().message(), HasSubstr(rule));
    EXPECT_THAT(r.status().message(),
                ::testing::Not(HasSubstr(ToHex(kms_.TmkOf(sn).RevealSecret()))));
    ASSERT_FALSE(at_request_.empty());
    EXPECT_EQ(FileBytes(StateFile(sn)), at_request_);
    auto reopened = Terminal::Load(dir_.path(), sn, time_.clock());
    ASSERT_TRUE(reopened.ok());
    EXPECT_TRUE(reopened->secure_module().state().tmk.empty());
    EXPECT_EQ(reopened->secure_module().state().lifecycle, Lifecycle::kTokenRequested);
    EXPECT_EQ(kms_.confirm_key_token_calls(), 0);
    kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kNone);
    at_request_.clear();
  }
  // A CT_KDH refusal: nothing was committed at all, and no key token was requested.
  void ExpectCtKdhRefused(Tr34Misbehaviour m, const std::string& rule) {
    SCOPED_TRACE(rule);
    const std::string sn = "KDH-" + std::to_string(next_++);
    Terminal t = Make(sn);
    const Bytes before = FileBytes(StateFile(sn));
    kms_.set_tr34_misbehaviour(m);
    const int requests = kms_.key_token_calls();
    auto r = Load(t);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr(kCtKdhRefused));
    EXPECT_THAT(r.status().message(), HasSubstr(rule));
    EXPECT_EQ(FileBytes(StateFile(sn)), before);
    EXPECT_EQ(kms_.key_token_calls(), requests);
    kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kNone);
  }

  FakeTime time_;
  TempDir dir_;
  FakeKms kms_;
  Bytes at_request_;
  int next_ = 1;
};

TEST(KrdCaTest, CaCertificateFollowsTheProfileAndIsNeverOverwritten) {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  auto ca = CreateKrdCa("acme-krd-ca", now);
  ASSERT_TRUE(ca.ok()) << ca.status();
  const crypto::Certificate& c = ca->cert;
  EXPECT_EQ(c.SubjectCommonName(), "acme-krd-ca");
  EXPECT_TRUE(c.IsSelfSigned());
  EXPECT_TRUE(c.IsCa());
  EXPECT_TRUE(c.BasicConstraintsCritical());
  EXPECT_EQ(c.PathLength(), 0);
  EXPECT_TRUE(c.KeyUsageCritical());
  EXPECT_EQ(c.KeyUsageBits(), KeyUsage::kKeyCertSign | KeyUsage::kCrlSign);
  EXPECT_FALSE(c.SubjectKeyId().empty());
  EXPECT_FALSE(c.AuthorityKeyId().empty());
  EXPECT_EQ(ca->key.Bits(), 3072);
  EXPECT_GE(c.NotAfter() - c.NotBefore(), int64_t{20} * 365 * 86400);

  TempDir dir;
  const auto pin = crypto::SecretBytes::CopyOf(AsBytes(testing::kTestPin));
  ASSERT_TRUE(WriteKrdCa(dir.path(), *ca, pin, {.iterations = 1000}).ok());
  const Bytes card = FileBytes(dir.path() + "/krd-ca.p12");
  auto opened = OpenKrdCaCard(card, pin);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->cert, c);
  auto pem = crypto::Certificate::FromPem(*ReadFileText(dir.path() + "/" + kKrdCaCertificateFile));
  ASSERT_TRUE(pem.ok());
  EXPECT_EQ(*pem, c);
  // Wrong PIN: the card's uniform message.
  auto wrong = OpenKrdCaCard(card, crypto::SecretBytes::CopyOf(AsBytes("0000")));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  // Never overwritten.
  auto again = WriteKrdCa(dir.path(), *ca, pin, {.iterations = 1000});
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.message(), HasSubstr("never overwritten"));
  EXPECT_EQ(FileBytes(dir.path() + "/krd-ca.p12"), card);
}

TEST_F(Tr34TerminalTest, ManufactureMakesAKrdCertifiedByTheKrdCa) {
  const KdhWorld& w = KdhWorld::Get();
  Terminal t = Make("KRD-1", KeyAlgorithm::kAes256);
  const SecureModuleState& s = t.secure_module().state();
  EXPECT_EQ(s.protocol, Protocol::kTr34);
  EXPECT_EQ(s.lifecycle, Lifecycle::kManufactured);
  EXPECT_EQ(s.kdh_ca_der, w.kdh_ca.ToDer());
  EXPECT_FALSE(s.krd_private_key.empty());
  EXPECT_TRUE(s.terminal_root_der.empty());
  auto cert = crypto::Certificate::FromDer(s.krd_certificate_der);
  ASSERT_TRUE(cert.ok());
  EXPECT_EQ(cert->SubjectCommonName(), "KRD-1");
  EXPECT_TRUE(cert->KeyUsageCritical());
  EXPECT_EQ(cert->KeyUsageBits(), KeyUsage::kKeyEncipherment);
  EXPECT_FALSE(cert->IsCa());
  EXPECT_FALSE(cert->SubjectKeyId().empty());
  EXPECT_EQ(cert->AuthorityKeyId(), w.krd_ca.cert.SubjectKeyId());
  EXPECT_LE(cert->NotAfter(), w.krd_ca.cert.NotAfter());  // capped by the CA
  EXPECT_TRUE(tr34::CheckRole(*cert, tr34::Role::kKrd, w.krd_ca.cert).ok());
  EXPECT_EQ(*tr34::SnOfKrdCertificate(*cert), "KRD-1");
  auto key = crypto::PrivateKey::FromPkcs8DerSecret(s.krd_private_key);
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(key->Bits(), 2048);
  EXPECT_EQ(*cert->GetPublicKey(), key->GetPublicKey());
  const SecureModuleDescription d = t.Describe();
  EXPECT_EQ(d.protocol, "tr34");
  EXPECT_EQ(d.krd_id, tr34::KrdIdOf(*tr34::CertIdOf(*cert)));
  EXPECT_EQ(d.krd_id.size(), 64u);
  EXPECT_TRUE(d.kdh_bound.empty());
  // CT_KRD carries exactly the KRD certificate.
  auto ct = t.KrdCredentialToken();
  ASSERT_TRUE(ct.ok());
  auto parsed = tr34::ParseCredentialToken(*ct);
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->certificates.size(), 1u);
  EXPECT_EQ(parsed->certificates[0], *cert);
}

class Tr34HappyPathTest : public Tr34TerminalTest,
                          public ::testing::WithParamInterface<KeyAlgorithm> {};

TEST_P(Tr34HappyPathTest, TwoPassExchangeInstallsTheTmkKmsWrapped) {
  const KeyAlgorithm algorithm = GetParam();
  const std::string sn = "HAPPY-" + std::string(crypto::KeyAlgorithmName(algorithm));
  Terminal t = Make(sn, algorithm);
  auto r = Load(t);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kms_state, "TERMINAL_STATE_INSTALLED");
  EXPECT_EQ(r->confirm_attempts, 1);
  const SecureModuleState& s = t.secure_module().state();
  EXPECT_EQ(s.lifecycle, Lifecycle::kInstalled);
  EXPECT_TRUE(s.tmk == kms_.TmkOf(sn));
  EXPECT_EQ(s.tmk.size(), crypto::KeyLength(algorithm));
  EXPECT_EQ(s.kdh_certificate_der, KdhWorld::Get().kdh.ToDer());
  EXPECT_TRUE(s.pending_nonce.empty());
  EXPECT_EQ(s.accepted_nonce.size(), kKrdNonceSize);
  EXPECT_EQ(kms_.StateOf(sn), "TERMINAL_STATE_INSTALLED");
  EXPECT_EQ(r->tmk_kcv, *crypto::KcvHex(algorithm, kms_.TmkOf(sn)));
  EXPECT_EQ(t.Describe().tmk_kcv, r->tmk_kcv);
  EXPECT_THAT(t.Describe().kdh_bound, HasSubstr("kdh:hsm-kms:1"));
  // The state survives a reopen.
  auto reopened = Terminal::Load(dir_.path(), sn, time_.clock());
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(reopened->Describe().lifecycle, "INSTALLED");
  // An installed terminal asks for nothing more.
  EXPECT_EQ(Load(*reopened).status().code(), absl::StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, Tr34HappyPathTest,
                         ::testing::Values(KeyAlgorithm::kAes128, KeyAlgorithm::kAes256,
                                           KeyAlgorithm::kTdes2),
                         [](const auto& info) {
                           return std::string(crypto::KeyAlgorithmName(info.param));
                         });

TEST_F(Tr34TerminalTest, LostConfirmationResumesFromTmkLoadedWithTheSameTmk) {
  Terminal t = Make("RESUME-1");
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kRejectConfirmation);
  auto first = Load(t);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(first.status().message(), HasSubstr("ConfirmKeyToken"));
  EXPECT_EQ(t.secure_module().state().lifecycle, Lifecycle::kTmkLoaded);
  const crypto::SecretBytes held = t.secure_module().state().tmk;
  ASSERT_FALSE(held.empty());
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kNone);
  const int requests = kms_.key_token_calls();
  auto second = Load(t);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(t.secure_module().state().lifecycle, Lifecycle::kInstalled);
  EXPECT_TRUE(t.secure_module().state().tmk == held);
  EXPECT_EQ(second->tmk_kcv, *crypto::KcvHex(KeyAlgorithm::kAes128, held));
  EXPECT_EQ(kms_.StateOf("RESUME-1"), "TERMINAL_STATE_INSTALLED");
  // The held proof was enough: no new key token (KMS refuses one to an INSTALLED terminal).
  EXPECT_EQ(kms_.key_token_calls(), requests);
}

TEST_F(Tr34TerminalTest, ResumeWhoseProofKmsRefusesAsksAgainForTheSameTmk) {
  Terminal t = Make("RESUME-3");
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kRejectConfirmation);
  ASSERT_FALSE(Load(t).ok());
  const crypto::SecretBytes held = t.secure_module().state().tmk;
  const Bytes first_nonce = t.secure_module().state().accepted_nonce;
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kNone);
  // KMS issued a token for another random number meanwhile: the held proof no longer
  // verifies, the terminal asks again and gets the same TMK.
  auto ct = t.KrdCredentialToken();
  auto rt = tr34::BuildRandomNumberToken(crypto::RandomBytes(16));
  ASSERT_TRUE(kms_.RequestKeyToken("RESUME-3", *ct, *rt, KeyAlgorithm::kAes128).ok());
  const int requests = kms_.key_token_calls();
  auto r = Load(t);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(kms_.key_token_calls(), requests + 1);
  EXPECT_TRUE(t.secure_module().state().tmk == held);
  EXPECT_NE(t.secure_module().state().accepted_nonce, first_nonce);
  EXPECT_EQ(kms_.StateOf("RESUME-3"), "TERMINAL_STATE_INSTALLED");
}

TEST_F(Tr34TerminalTest, ResumeAcceptsOnlyTheTmkAlreadyHeld) {
  Terminal t = Make("RESUME-2");
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kRejectConfirmation);
  ASSERT_FALSE(Load(t).ok());
  ASSERT_EQ(t.secure_module().state().lifecycle, Lifecycle::kTmkLoaded);
  const crypto::SecretBytes held = t.secure_module().state().tmk;
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kNone);
  kms_.ForgetTmk("RESUME-2");  // KMS refuses the held proof and now wraps another TMK
  SnapshotAtRequest("RESUME-2");
  auto r = Load(t);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("another TMK than the one awaiting confirmation"));
  EXPECT_EQ(FileBytes(StateFile("RESUME-2")), at_request_);
  EXPECT_TRUE(t.secure_module().state().tmk == held);
}

TEST_F(Tr34TerminalTest, ReplayedTokenIsRefusedAfterANewRandomNumber) {
  Terminal t = Make("REPLAY-1");
  // The first token is accepted (TMK_LOADED); its confirmation's answer is lost.
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kRejectConfirmation);
  ASSERT_FALSE(Load(t).ok());
  ASSERT_EQ(t.secure_module().state().lifecycle, Lifecycle::kTmkLoaded);
  const Bytes accepted_nonce = t.secure_module().state().accepted_nonce;
  // KMS refuses the held proof, so the terminal asks again with a new random number, and
  // is answered with the token it accepted before: refused.
  kms_.ForgetTmk("REPLAY-1");
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kReplayToken);
  SnapshotAtRequest("REPLAY-1");
  auto r = Load(t);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(r.status().message(), HasSubstr(kRefused));
  EXPECT_THAT(r.status().message(), HasSubstr("random number is not the one this KRD issued"));
  EXPECT_EQ(FileBytes(StateFile("REPLAY-1")), at_request_);
  EXPECT_EQ(t.secure_module().state().accepted_nonce, accepted_nonce);
  EXPECT_EQ(t.secure_module().state().lifecycle, Lifecycle::kTmkLoaded);
}

TEST_F(Tr34TerminalTest, AnAcceptedTokenIsNeverAcceptedAgain) {
  Terminal t = Make("ONCE-1");
  ASSERT_TRUE(t.BindKdh(*kms_.GetKdhCredential("ONCE-1")).ok());
  auto parts = t.PrepareKeyTokenRequest();
  ASSERT_TRUE(parts.ok());
  auto ct = t.KrdCredentialToken();
  auto delivery = kms_.RequestKeyToken("ONCE-1", *ct, parts->rt_krd, KeyAlgorithm::kAes128);
  ASSERT_TRUE(delivery.ok()) << delivery.status();
  ASSERT_TRUE(t.AcceptKeyToken(delivery->key_token, delivery->tmk_kcv).ok());
  const Bytes before = FileBytes(StateFile("ONCE-1"));
  auto again = t.AcceptKeyToken(delivery->key_token, delivery->tmk_kcv);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.message(), HasSubstr("no random number is pending"));
  EXPECT_EQ(FileBytes(StateFile("ONCE-1")), before);
}

TEST_F(Tr34TerminalTest, RandomNumberIsPersistedBeforeItIsSent) {
  Terminal t = Make("NONCE-1");
  ASSERT_TRUE(t.BindKdh(*kms_.GetKdhCredential("NONCE-1")).ok());
  auto parts = t.PrepareKeyTokenRequest();
  ASSERT_TRUE(parts.ok());
  auto sent = tr34::ParseRandomNumberToken(parts->rt_krd);
  ASSERT_TRUE(sent.ok());
  EXPECT_GE(sent->size(), 16u);
  auto reopened = Terminal::Load(dir_.path(), "NONCE-1", time_.clock());
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(reopened->secure_module().state().pending_nonce, *sent);
  EXPECT_EQ(reopened->secure_module().state().lifecycle, Lifecycle::kTokenRequested);
  // Each request has a fresh number.
  auto next = t.PrepareKeyTokenRequest();
  ASSERT_TRUE(next.ok());
  EXPECT_NE(*tr34::ParseRandomNumberToken(next->rt_krd), *sent);
}

TEST_F(Tr34TerminalTest, KeyTokenRefusals) {
  ExpectTokenRefused(Tr34Misbehaviour::kWrongNonce, "random number is not the one this KRD issued");
  ExpectTokenRefused(Tr34Misbehaviour::kOtherKrd, "addressed to another KRD");
  ExpectTokenRefused(Tr34Misbehaviour::kTamperEnvelope, "messageDigest");
  ExpectTokenRefused(Tr34Misbehaviour::kTamperSignature, "signature does not verify");
  ExpectTokenRefused(Tr34Misbehaviour::kHeaderMismatch, "is not the TMK header");
  ExpectTokenRefused(Tr34Misbehaviour::kKcvMismatch,
                     "tmk_kcv: the KCV KMS sent does not match the TMK in the key token");
  ExpectTokenRefused(Tr34Misbehaviour::kRevokedInToken, "is revoked by its CA's CRL");
  ExpectTokenRefused(Tr34Misbehaviour::kWrongTmkLength, "the TMK is 32 bytes; a AES128 TMK is 16");
}

TEST_F(Tr34TerminalTest, KdhCredentialRefusals) {
  ExpectCtKdhRefused(Tr34Misbehaviour::kRevokedKdh, "is revoked by its CA's CRL");
  ExpectCtKdhRefused(Tr34Misbehaviour::kNoCrl, "no current CRL signed by the KDH CA");
  ExpectCtKdhRefused(Tr34Misbehaviour::kStaleCrl, "no current CRL signed by the KDH CA");
  ExpectCtKdhRefused(Tr34Misbehaviour::kKdhFromOtherCa,
                     "its signature does not verify under the KDH CA");
  ExpectCtKdhRefused(Tr34Misbehaviour::kKrdCertAsKdh, "not issued by the KDH CA");
  ExpectCtKdhRefused(Tr34Misbehaviour::kTwoKdhCertificates,
                     "CT_KDH must carry exactly one certificate (the KDH's), it carries 2");
}

TEST_F(Tr34TerminalTest, AnotherKdhIsRefusedOnceBound) {
  Terminal t = Make("BOUND-1");
  ASSERT_TRUE(t.BindKdh(*kms_.GetKdhCredential("BOUND-1")).ok());
  EXPECT_EQ(t.secure_module().state().lifecycle, Lifecycle::kKdhBound);
  const Bytes before = FileBytes(StateFile("BOUND-1"));
  kms_.set_tr34_misbehaviour(Tr34Misbehaviour::kOtherKdh);
  auto r = Load(t);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("is bound to another KDH"));
  EXPECT_THAT(r.status().message(), HasSubstr("rebind"));
  EXPECT_THAT(r.status().message(), HasSubstr("out of rkl-pos's scope"));
  EXPECT_EQ(FileBytes(StateFile("BOUND-1")), before);
  EXPECT_EQ(kms_.key_token_calls(), 0);
}

TEST_F(Tr34TerminalTest, ProtocolsDoNotMix) {
  // A patent terminal has no KRD key.
  auto patent = Terminal::Manufacture(dir_.path(), "PAT-1", KeyAlgorithm::kAes128,
                                      testing::TerminalPki::Get().root, time_.clock());
  ASSERT_TRUE(patent.ok());
  EXPECT_THAT(Load(*patent).status().message(), HasSubstr("manufactured for the patent flow"));
  ProvisionContext ctx;
  ctx.state_dir = dir_.path();
  ctx.protocol = Protocol::kTr34;
  ctx.protocol_explicit = true;
  auto p = ProtocolFor(ctx, "PAT-1");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(p.status().message(), HasSubstr("--protocol tr34 applies to new terminals only"));
  // A TR-34 terminal runs TR-34 whatever the context says, and refuses the patent's steps.
  Terminal t = Make("TR34-1");
  ctx.protocol = Protocol::kPatent;
  EXPECT_EQ(*ProtocolFor(ctx, "TR34-1"), Protocol::kTr34);
  const Bytes before = FileBytes(StateFile("TR34-1"));
  EXPECT_THAT(t.InstallWorkCertificate(testing::TerminalPki::Get().work).message(),
              HasSubstr("is a TR-34 KRD"));
  EXPECT_THAT(t.GenerateTransportKey().message(), HasSubstr("is a TR-34 KRD"));
  EXPECT_EQ(FileBytes(StateFile("TR34-1")), before);
}

// A version-1 state file (a patent terminal from before TR-34) still opens, as patent.
TEST_F(Tr34TerminalTest, VersionOneStateFilesStillOpen) {
  auto made = Terminal::Manufacture(dir_.path(), "OLD-1", KeyAlgorithm::kAes256,
                                    testing::TerminalPki::Get().root, time_.clock());
  ASSERT_TRUE(made.ok());
  auto v2 = SerializeState(made->secure_module().state());
  ASSERT_TRUE(v2.ok());
  // Version 1: magic "RKLSM\x01" and fields 1-12 only.
  auto in = v2->RevealSecret();
  Bytes v1 = {'R', 'K', 'L', 'S', 'M', 0x01};
  for (size_t at = 6; at < in.size();) {
    const size_t len = size_t{in[at + 1]} << 24 | size_t{in[at + 2]} << 16 |
                       size_t{in[at + 3]} << 8 | size_t{in[at + 4]};
    if (in[at] <= 12) v1.insert(v1.end(), in.begin() + at, in.begin() + at + 5 + len);
    at += 5 + len;
  }
  auto device_key = ReadSecretFile(made->secure_module().device_key_file());
  ASSERT_TRUE(device_key.ok());
  auto sealing = crypto::SealingKey::Create(*std::move(device_key));
  ASSERT_TRUE(sealing.ok());
  auto sealed = sealing->Seal(AsBytes(std::string_view("OLD-1")), crypto::SecretBytes::CopyOf(v1));
  ASSERT_TRUE(sealed.ok());
  ASSERT_TRUE(WriteFileAtomically(StateFile("OLD-1"), *sealed, 0600).ok());
  auto opened = SecureModule::Open(dir_.path(), "OLD-1");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->state().protocol, Protocol::kPatent);
  EXPECT_EQ(opened->state().algorithm, KeyAlgorithm::kAes256);
  EXPECT_EQ(opened->state().terminal_root_der, made->secure_module().state().terminal_root_der);
  EXPECT_EQ(opened->Describe().protocol, "patent");
  // A version-1 file with a TR-34 field is corrupt.
  Bytes bad = v1;
  bad.insert(bad.end(), {13, 0, 0, 0, 1, 2});
  EXPECT_EQ(ParseState(crypto::SecretBytes::CopyOf(bad)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(Tr34TerminalTest, Tr34StateRoundTrips) {
  Terminal t = Make("RT-1", KeyAlgorithm::kTdes2);
  ASSERT_TRUE(Load(t).ok());
  auto bytes = SerializeState(t.secure_module().state());
  ASSERT_TRUE(bytes.ok());
  auto back = ParseState(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  const SecureModuleState& s = t.secure_module().state();
  EXPECT_EQ(back->protocol, Protocol::kTr34);
  EXPECT_EQ(back->kdh_ca_der, s.kdh_ca_der);
  EXPECT_EQ(back->krd_certificate_der, s.krd_certificate_der);
  EXPECT_TRUE(back->krd_private_key == s.krd_private_key);
  EXPECT_EQ(back->kdh_certificate_der, s.kdh_certificate_der);
  EXPECT_EQ(back->accepted_nonce, s.accepted_nonce);
  EXPECT_TRUE(back->tmk == s.tmk);
  // The device key and TMK are in no file in clear.
  const testing::RevealedKeys keys = SecureModuleTestPeer::RevealKeysForTest(t.secure_module());
  ASSERT_FALSE(keys.krd_private_key.empty());
  for (const char* file : {"secure_module.sealed", "device.key"}) {
    const Bytes content = FileBytes(TerminalDirectory(dir_.path(), "RT-1") + "/" + file);
    const std::string hay(content.begin(), content.end());
    EXPECT_EQ(hay.find(std::string(keys.krd_private_key.begin(), keys.krd_private_key.end())),
              std::string::npos);
    EXPECT_EQ(hay.find(std::string(keys.tmk.begin(), keys.tmk.end())), std::string::npos);
  }
}

// ---- TR-34-2019 Annex B: rkl-pos's receive path over the published two-pass token ----

Bytes Sample(const std::string& name) {
  std::ifstream in(std::string(RKL_TR34_TEST_DATA) + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << name;
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The sample KDH 1 certificate carries duplicated extensions, which crypto::Certificate
// refuses (libs/tr34/tests/data/README.md, item 3): its id and key are read through OpenSSL.
tr34::PeerKey SampleKdh1() {
  const Bytes pem = Sample("kdh_1_cert.pem");
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  crypto::X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  EXPECT_NE(x, nullptr);
  auto i2d = [](auto* obj, auto encode) {
    Bytes out(static_cast<size_t>(encode(obj, nullptr)));
    unsigned char* p = out.data();
    encode(obj, &p);
    return out;
  };
  const Bytes name = i2d(X509_get_issuer_name(x.get()), i2d_X509_NAME);
  const Bytes serial = i2d(X509_get_serialNumber(x.get()), i2d_ASN1_INTEGER);
  // IssuerAndSerialNumber ::= SEQUENCE { issuer, serialNumber } (short or 2-byte length).
  Bytes body = name;
  body.insert(body.end(), serial.begin(), serial.end());
  Bytes id = {0x30};
  if (body.size() < 128) {
    id.push_back(static_cast<uint8_t>(body.size()));
  } else if (body.size() < 256) {
    id.insert(id.end(), {0x81, static_cast<uint8_t>(body.size())});
  } else {
    id.insert(id.end(),
              {0x82, static_cast<uint8_t>(body.size() >> 8), static_cast<uint8_t>(body.size())});
  }
  id.insert(id.end(), body.begin(), body.end());
  auto key = crypto::PublicKey::FromEvpPkey(crypto::EvpPkeyPtr(X509_get_pubkey(x.get())));
  EXPECT_TRUE(key.ok());
  return tr34::PeerKey{tr34::CertId{id}, *std::move(key)};
}

// libs/tr34/tests/data/README.md, item 1: B.9's encryptedKey does not decrypt under the
// published KRD 1 key with any OAEP choice. So the KRD's path accepts the signature and the
// random number of B.12 and then refuses the token with the uniform decryption message; the
// CRL, header and KCV checks are never reached, and no TMK comes out.
TEST(Tr34AnnexBTest, SampleTwoPassTokenB9SignatureAcceptedDecryptionRefused) {
  const Bytes token = Sample("b9_two_pass_key_token.der");
  const tr34::PeerKey kdh1 = SampleKdh1();
  ASSERT_TRUE(tr34::VerifySignedToken(token, kdh1).ok());
  const Bytes pem = Sample("krd_1_key.pem");
  auto krd_key = crypto::PrivateKey::FromPemSecret(crypto::SecretBytes::CopyOf(pem));
  ASSERT_TRUE(krd_key.ok());
  auto krd_cert = crypto::Certificate::FromPem(
      std::string_view(reinterpret_cast<const char*>(Sample("krd_1_cert.pem").data()),
                       Sample("krd_1_cert.pem").size()));
  ASSERT_TRUE(krd_cert.ok()) << krd_cert.status();
  auto own_id = tr34::CertIdOf(*krd_cert);
  ASSERT_TRUE(own_id.ok());
  const Bytes nonce = *FromHex("167EB0E72781E4940112233445566778");  // B.12
  ASSERT_EQ(*tr34::ParseRandomNumberToken(Sample("b12_rt_krd.der")), nonce);
  int crl_checks = 0;
  auto tmk = ReceiveTmkFromKeyToken(token, kdh1, nonce, *own_id, *krd_key, KeyAlgorithm::kTdes2, "",
                                    [&](std::span<const Bytes>) {
                                      ++crl_checks;
                                      return absl::OkStatus();
                                    });
  ASSERT_FALSE(tmk.ok());
  EXPECT_EQ(tmk.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(tmk.status().message(), std::string(kRefused) + "TR-34 key token: decryption failed");
  EXPECT_EQ(crl_checks, 0);
  // With another random number the same path stops earlier, at the nonce.
  Bytes other = nonce;
  other[0] ^= 1;
  auto wrong = ReceiveTmkFromKeyToken(token, kdh1, other, *own_id, *krd_key, KeyAlgorithm::kTdes2,
                                      "", [](std::span<const Bytes>) { return absl::OkStatus(); });
  EXPECT_THAT(wrong.status().message(), HasSubstr("random number is not the one"));
}

// ---- the CLI and a mixed fleet, over gRPC ----

class Tr34CliTest : public testing::FakeServersTest {
 protected:
  // krd-ca init, and the TR-34 manufacture flags for that card.
  std::vector<std::string> Tr34Flags(testing::CliHarness& cli) {
    const std::string pin_file = cli.dir() + "/krd-pin";
    const std::string kdh_ca = cli.dir() + "/kdh-ca.pem";
    std::string pin = std::string(testing::kTestPin) + "\n";
    EXPECT_TRUE(WriteFileAtomically(pin_file, Bytes(pin.begin(), pin.end()), 0600).ok());
    const std::string pem = KdhWorld::Get().kdh_ca.ToPem();
    EXPECT_TRUE(WriteFileAtomically(kdh_ca, Bytes(pem.begin(), pem.end()), 0644).ok());
    // The fake KMS trusts KdhWorld's KRD CA: use its card.
    const std::string card = cli.dir() + "/krd-ca.p12";
    EXPECT_TRUE(WriteFileAtomically(card, KdhWorld::Get().krd_ca_p12, 0600).ok());
    return {"--kdh-ca", kdh_ca, "--krd-ca-card", card, "--krd-ca-pin-file", pin_file};
  }
};

TEST_F(Tr34CliTest, KrdCaInitWritesTheCardOnce) {
  testing::CliHarness cli(*servers_);
  const std::string pin_file = cli.dir() + "/pin";
  ASSERT_TRUE(WriteFileAtomically(pin_file, Bytes{'1', '2', '3', '4', '\n'}, 0600).ok());
  const std::string out = cli.dir() + "/ca";
  auto r = cli.Run({"krd-ca", "init", "--out", out, "--pin-file", pin_file, "--name", "acme"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("acme"));
  auto card =
      OpenKrdCaCard(FileBytes(out + "/krd-ca.p12"), crypto::SecretBytes::CopyOf(AsBytes("1234")));
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_EQ(card->cert.SubjectCommonName(), "acme");
  EXPECT_EQ(card->key.Bits(), 3072);
  const Bytes first = FileBytes(out + "/krd-ca.p12");
  r = cli.Run({"krd-ca", "init", "--out", out, "--pin-file", pin_file});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("never overwritten"));
  EXPECT_EQ(FileBytes(out + "/krd-ca.p12"), first);
}

TEST_F(Tr34CliTest, ManufactureExportProvisionAndStatus) {
  testing::CliHarness cli(*servers_);
  const auto tr34 = Tr34Flags(cli);
  const std::string export_file = cli.dir() + "/krds.txt";
  for (const char* sn : {"CT-1", "CT-2"}) {
    auto r = cli.Run(Concat({{"manufacture", "--sn", sn, "--protocol", "tr34", "--krd-export",
                              export_file, "--algorithm", "AES256"},
                             cli.StateFlags(),
                             tr34}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("protocol      tr34"));
    EXPECT_THAT(r.out, HasSubstr("KRD id"));
  }
  // The manufacturer's file: one base64 CT_KRD per line, CN = SN.
  const auto text = ReadFileText(export_file);
  ASSERT_TRUE(text.ok());
  std::vector<std::string> lines = absl::StrSplit(*text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u);
  for (size_t i = 0; i < lines.size(); ++i) {
    Bytes der(lines[i].size());
    const int n = EVP_DecodeBlock(der.data(), reinterpret_cast<const uint8_t*>(lines[i].data()),
                                  static_cast<int>(lines[i].size()));
    ASSERT_GT(n, 0);
    der.resize(static_cast<size_t>(n));
    // EVP_DecodeBlock counts the bytes '=' padding stands for.
    der.resize(der.size() -
               static_cast<size_t>(std::count(lines[i].end() - 2, lines[i].end(), '=')));
    auto ct = tr34::ParseCredentialToken(der);
    ASSERT_TRUE(ct.ok()) << ct.status();
    EXPECT_EQ(*tr34::SnOfKrdCertificate(ct->certificates[0]), i == 0 ? "CT-1" : "CT-2");
  }
  // provision uses TR-34 for a TR-34 terminal (no --protocol needed, no operator card).
  auto r = cli.Run(
      Concat({{"provision", "--sn", "CT-1"}, cli.StateFlags(), cli.KmsFlags(), cli.AdminFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("INSTALLED"));
  EXPECT_THAT(r.out, HasSubstr("kms (admin)   TERMINAL_STATE_INSTALLED"));
  EXPECT_THAT(r.out, HasSubstr("KDH bound     kdh:hsm-kms:1"));
  r = cli.Run(Concat({{"status"}, cli.StateFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("PROTO"));
  EXPECT_THAT(r.out, HasSubstr("tr34"));
  EXPECT_THAT(r.out, HasSubstr(servers_->kms().GetTerminal("CT-1")->tmk_kcv));
  // --protocol tr34 for a patent terminal: refused, named.
  r = cli.Run(Concat({{"manufacture", "--sn", "PAT-9"}, cli.StateFlags(), cli.RootFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = cli.Run(Concat({{"provision", "--sn", "PAT-9", "--protocol", "tr34"},
                      cli.StateFlags(),
                      cli.KmsFlags(),
                      tr34}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("manufactured for the patent flow"));
}

TEST_F(Tr34CliTest, MixedFleetAlternatesProtocols) {
  testing::CliHarness cli(*servers_);
  auto r = cli.Run(Concat({{"fleet", "--count", "6", "--concurrency", "3", "--prefix", "MIX",
                            "--progress", "none", "--protocol", "mixed"},
                           cli.AllStepsFlags(),
                           Tr34Flags(cli)}));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_THAT(r.out, HasSubstr("protocol mixed"));
  EXPECT_THAT(r.out, HasSubstr("tr34-key-token"));
  for (int i = 1; i <= 6; ++i) {
    const std::string sn = absl::StrFormat("MIX-%06d", i);
    auto t = Terminal::Load(cli.state_dir(), sn, testing::RealClock());
    ASSERT_TRUE(t.ok()) << sn;
    EXPECT_EQ(t->Describe().lifecycle, "INSTALLED") << sn;
    EXPECT_EQ(t->secure_module().state().protocol, i % 2 == 1 ? Protocol::kPatent : Protocol::kTr34)
        << sn;
    EXPECT_EQ(servers_->kms().StateOf(sn), "TERMINAL_STATE_INSTALLED");
  }
}

}  // namespace
}  // namespace rkl::pos
