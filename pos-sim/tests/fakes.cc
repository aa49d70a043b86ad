#include "fakes.h"

#include <openssl/x509.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "files.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/identity.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/must.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"
#include "rkl/v1/kms.grpc.pb.h"
#include "rkl/v1/mtms.grpc.pb.h"

namespace rkl::pos::testing {
namespace {

using crypto::Certificate;
using crypto::CertificateBuilder;
using crypto::KeyUsage;
using crypto::SecretBytes;
using rkl::testing::Must;

int64_t Now() { return absl::ToUnixSeconds(absl::Now()); }

Certificate SelfSignedCa(const crypto::PrivateKey& key, const std::string& cn) {
  return Must(CertificateBuilder()
                  .SetSubjectCommonName(cn)
                  .SetSerial(crypto::RandomBytes(8))
                  .SetValidity(Now() - 3600, Now() + 86400 * 365)
                  .SetBasicConstraints(true, 0)
                  .SetKeyUsage(KeyUsage::kKeyCertSign | KeyUsage::kCrlSign)
                  .SelfSign(key));
}

Certificate WorkCert(const Certificate& issuer, const crypto::PrivateKey& issuer_key,
                     const crypto::PublicKey& pu, KeyUsage usage, bool critical, int64_t not_before,
                     int64_t not_after) {
  Bytes serial = crypto::RandomBytes(8);
  serial[0] &= 0x7f;
  serial[0] |= 0x01;
  return Must(CertificateBuilder()
                  .SetSubjectCommonName("hsm-work:hsm-mtms:1")
                  .SetSerial(serial)
                  .SetValidity(not_before, not_after)
                  .SetPublicKey(pu)
                  .SetBasicConstraints(false, std::nullopt)
                  .SetKeyUsage(usage, critical)
                  .Sign(issuer, issuer_key));
}

TerminalPki* BuildPki() {
  auto root_key = Must(crypto::GenerateRsaKey(2048));
  auto root = SelfSignedCa(root_key, "terminal-root");
  auto other_key = Must(crypto::GenerateRsaKey(2048));
  auto other_root = SelfSignedCa(other_key, "terminal-root");  // same name, other key
  auto work_key = Must(crypto::GenerateRsaKey(2048));
  const crypto::PublicKey pu = work_key.GetPublicKey();
  const int64_t now = Now();
  auto work =
      WorkCert(root, root_key, pu, KeyUsage::kKeyEncipherment, true, now - 3600, now + 86400 * 30);
  auto other = WorkCert(other_root, other_key, pu, KeyUsage::kKeyEncipherment, true, now - 3600,
                        now + 86400 * 30);
  auto wrong_usage =
      WorkCert(root, root_key, pu, KeyUsage::kKeyEncipherment | KeyUsage::kDigitalSignature, true,
               now - 3600, now + 86400 * 30);
  auto not_critical =
      WorkCert(root, root_key, pu, KeyUsage::kKeyEncipherment, false, now - 3600, now + 86400 * 30);
  auto expired =
      WorkCert(root, root_key, pu, KeyUsage::kKeyEncipherment, true, now - 86400 * 30, now - 86400);
  auto renewed_key = Must(crypto::GenerateRsaKey(2048));
  auto renewed = WorkCert(root, root_key, renewed_key.GetPublicKey(), KeyUsage::kKeyEncipherment,
                          true, now - 3600, now + 86400 * 30);

  auto op_ca_key = Must(crypto::GenerateEcP256Key());
  auto op_ca = SelfSignedCa(op_ca_key, "operator-ca");
  auto op_key = Must(crypto::GenerateEcP256Key());
  auto op_cert = Must(CertificateBuilder()
                          .SetSubjectCommonName(absl::StrCat("operator:", kOperatorId))
                          .SetSerial(crypto::RandomBytes(8))
                          .SetValidity(now - 3600, now + 86400 * 30)
                          .SetPublicKey(op_key.GetPublicKey())
                          .SetBasicConstraints(false, std::nullopt)
                          .SetKeyUsage(KeyUsage::kDigitalSignature)
                          .Sign(op_ca, op_ca_key));
  const Certificate chain[] = {op_ca};
  auto p12 =
      Must(crypto::WritePkcs12(op_key, op_cert, chain, "operator card",
                               SecretBytes::CopyOf(AsBytes(kTestPin)), {.iterations = 1000}));
  return new TerminalPki{std::move(root_key),     std::move(root),    std::move(work_key),
                         std::move(work),         std::move(other),   std::move(wrong_usage),
                         std::move(not_critical), std::move(expired), std::move(other_root),
                         std::move(renewed_key),  std::move(renewed), std::move(op_ca),
                         std::move(op_key),       std::move(op_cert), std::move(p12)};
}

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }
Bytes Byt(const std::string& s) { return Bytes(s.begin(), s.end()); }

Certificate EndEntity(const Certificate& issuer, const crypto::PrivateKey& issuer_key,
                      const crypto::PublicKey& key, const std::string& cn, KeyUsage usage) {
  Bytes serial = crypto::RandomBytes(8);
  serial[0] = static_cast<uint8_t>((serial[0] & 0x7f) | 0x01);
  return Must(CertificateBuilder()
                  .SetSubjectCommonName(cn)
                  .SetSerial(serial)
                  .SetValidity(Now() - 3600, Now() + 86400 * 365)
                  .SetPublicKey(key)
                  .SetBasicConstraints(false, std::nullopt)
                  .SetKeyUsage(usage)
                  .Sign(issuer, issuer_key));
}

Bytes Crl(const Certificate& ca, const crypto::PrivateKey& key, int64_t last, int64_t next,
          const Certificate* revoked) {
  crypto::CrlBuilder b;
  b.SetLastUpdate(last).SetNextUpdate(next).SetCrlNumber(1);
  if (revoked != nullptr) b.AddRevoked(revoked->SerialBytes(), last);
  return Must(b.Sign(ca, key)).ToDer();
}

KdhWorld* BuildKdhWorld() {
  const int64_t now = Now();
  auto kdh_ca_key = Must(crypto::GenerateRsaKey(2048));
  auto kdh_ca = SelfSignedCa(kdh_ca_key, "kdh-ca");
  auto kdh_key = Must(crypto::GenerateRsaKey(2048));
  auto kdh = EndEntity(kdh_ca, kdh_ca_key, kdh_key.GetPublicKey(), "kdh:hsm-kms:1",
                       KeyUsage::kDigitalSignature);
  auto other_kdh = EndEntity(kdh_ca, kdh_ca_key, kdh_key.GetPublicKey(), "kdh:hsm-kms:2",
                             KeyUsage::kDigitalSignature);
  Bytes crl = Crl(kdh_ca, kdh_ca_key, now - 3600, now + 86400 * 30, nullptr);
  Bytes revoked_crl = Crl(kdh_ca, kdh_ca_key, now - 3600, now + 86400 * 30, &kdh);
  Bytes stale_crl = Crl(kdh_ca, kdh_ca_key, now - 86400 * 10, now - 86400, nullptr);
  auto other_ca_key = Must(crypto::GenerateRsaKey(2048));
  auto other_ca = SelfSignedCa(other_ca_key, "kdh-ca");
  auto kdh_other_ca = EndEntity(other_ca, other_ca_key, kdh_key.GetPublicKey(), "kdh:hsm-kms:1",
                                KeyUsage::kDigitalSignature);
  Bytes other_ca_crl = Crl(other_ca, other_ca_key, now - 3600, now + 86400 * 30, nullptr);
  KrdCa krd_ca = Must(CreateKrdCa("test-krd-ca", now - 3600));
  auto krd_role_cert = EndEntity(krd_ca.cert, krd_ca.key, kdh_key.GetPublicKey(), "KRD-AS-KDH",
                                 KeyUsage::kKeyEncipherment);
  auto other_krd_key = Must(crypto::GenerateRsaKey(2048));
  auto other_krd =
      Must(IssueKrdCertificate(krd_ca, "OTHER-KRD", other_krd_key.GetPublicKey(), now - 60));
  Bytes p12 =
      Must(crypto::WritePkcs12(krd_ca.key, krd_ca.cert, {}, "krd-ca",
                               SecretBytes::CopyOf(AsBytes(kTestPin)), {.iterations = 1000}));
  return new KdhWorld{std::move(kdh_ca_key),
                      std::move(kdh_ca),
                      std::move(kdh_key),
                      std::move(kdh),
                      std::move(crl),
                      std::move(revoked_crl),
                      std::move(stale_crl),
                      std::move(other_kdh),
                      std::move(other_ca_key),
                      std::move(other_ca),
                      std::move(kdh_other_ca),
                      std::move(other_ca_crl),
                      std::move(krd_ca),
                      std::move(krd_role_cert),
                      std::move(other_krd_key),
                      std::move(other_krd),
                      std::move(p12)};
}

}  // namespace

const KdhWorld& KdhWorld::Get() {
  static KdhWorld* world = BuildKdhWorld();
  return *world;
}

const TerminalPki& TerminalPki::Get() {
  static TerminalPki* pki = BuildPki();
  return *pki;
}

// ---- FakeKms ----

void FakeKms::Ingest(const std::string& sn, crypto::KeyAlgorithm algorithm, SecretBytes tek,
                     SecretBytes auk) {
  absl::MutexLock l(&mu_);
  Record& r = terminals_[sn];
  r.algorithm = algorithm;
  r.tek = std::move(tek);
  r.auk = std::move(auk);
  r.tmk = SecretBytes();
  r.tmk_kcv.clear();
  r.state = "TERMINAL_STATE_TK_RECEIVED";
  r.not_found_remaining = forwarding_delay_;
}

void FakeKms::ForgetTmk(const std::string& sn) {
  absl::MutexLock l(&mu_);
  Record& r = terminals_.at(sn);
  r.tmk = SecretBytes();
  r.tmk_kcv.clear();
  r.state = "TERMINAL_STATE_TK_RECEIVED";
}

SecretBytes FakeKms::TmkOf(const std::string& sn) {
  absl::MutexLock l(&mu_);
  auto it = terminals_.find(sn);
  return it == terminals_.end() ? SecretBytes() : it->second.tmk;
}

absl::StatusOr<AuthChallenge> FakeKms::BeginAuthentication(const std::string& sn, const Bytes& rnd1,
                                                           absl::Duration wait) {
  absl::MutexLock l(&mu_);
  ++begin_calls_;
  begin_waits_.push_back(wait);
  auto it = terminals_.find(sn);
  if (it == terminals_.end()) return absl::NotFoundError("sn: no such terminal");
  Record& r = it->second;
  if (r.not_found_remaining > 0) {
    --r.not_found_remaining;
    return absl::NotFoundError("sn: no such terminal");
  }
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(r.algorithm, rnd1, "rnd1"));
  Bytes rnd2 = crypto::RandomBytes(crypto::BlockSize(r.algorithm));
  SecretBytes auk = r.auk;
  if (misbehaviour_ == KmsMisbehaviour::kCannotProveAuk) {
    auk = crypto::GenerateKey(r.algorithm);
  }
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys, protocol::DeriveAuthKeys(r.algorithm, auk, sn));
  RKL_ASSIGN_OR_RETURN(Bytes crnd1, protocol::MakeCrnd1(keys, rnd1, rnd2));
  std::string id = absl::StrCat("session-", ++next_session_);
  sessions_[id] = Session{sn, rnd1, rnd2};
  return AuthChallenge{id, crnd1, rnd2};
}

absl::StatusOr<KeyDelivery> FakeKms::CompleteAuthentication(const std::string& session_id,
                                                            const std::string& sn,
                                                            const Bytes& crnd2) {
  absl::MutexLock l(&mu_);
  auto s = sessions_.find(session_id);
  if (s == sessions_.end() || s->second.sn != sn) {
    return absl::NotFoundError("session_id: no such session");
  }
  Record& r = terminals_.at(sn);
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys, protocol::DeriveAuthKeys(r.algorithm, r.auk, sn));
  RKL_RETURN_IF_ERROR(protocol::VerifyCrnd2(keys, s->second.rnd1, s->second.rnd2, crnd2));
  if (r.tmk.empty()) {
    r.tmk = crypto::GenerateKey(r.algorithm);
    r.tmk_kcv = Must(crypto::KcvHex(r.algorithm, r.tmk));
  }
  // An installed terminal that authenticates again gets its TMK again and stays installed.
  if (r.state != "TERMINAL_STATE_INSTALLED") r.state = "TERMINAL_STATE_TMK_DELIVERED";
  KeyDelivery d{"", r.tmk_kcv};
  switch (misbehaviour_) {
    case KmsMisbehaviour::kBadMac: {
      RKL_ASSIGN_OR_RETURN(d.key_block,
                           keyblock::BuildTmkBlock(r.tek, r.algorithm, r.tmk, r.algorithm));
      char& last = d.key_block.back();
      last = last == '0' ? '1' : '0';
      break;
    }
    case KmsMisbehaviour::kBadHeader:
    case KmsMisbehaviour::kBadKc: {
      RKL_ASSIGN_OR_RETURN(keyblock::KeyBlockHeader h,
                           keyblock::TmkBlockHeader(r.tek, r.algorithm, r.tmk, r.algorithm));
      if (misbehaviour_ == KmsMisbehaviour::kBadHeader) {
        h.exportability = 'E';
      } else {
        SecretBytes other = crypto::GenerateKey(r.algorithm);
        h.optional_blocks[0].data =
            h.optional_blocks[0].data.substr(0, 2) + Must(crypto::KcvHex(r.algorithm, other));
      }
      RKL_ASSIGN_OR_RETURN(d.key_block, keyblock::Build(r.tek, h, r.tmk));
      break;
    }
    case KmsMisbehaviour::kWrongTmkAlgorithm: {
      SecretBytes other = crypto::GenerateKey(crypto::KeyAlgorithm::kAes256);
      RKL_ASSIGN_OR_RETURN(d.key_block, keyblock::BuildTmkBlock(r.tek, r.algorithm, other,
                                                                crypto::KeyAlgorithm::kAes256));
      break;
    }
    case KmsMisbehaviour::kWrongKcvField: {
      RKL_ASSIGN_OR_RETURN(d.key_block,
                           keyblock::BuildTmkBlock(r.tek, r.algorithm, r.tmk, r.algorithm));
      d.tmk_kcv = d.tmk_kcv == "000000" ? "111111" : "000000";
      break;
    }
    default: {
      RKL_ASSIGN_OR_RETURN(d.key_block,
                           keyblock::BuildTmkBlock(r.tek, r.algorithm, r.tmk, r.algorithm));
    }
  }
  return d;
}

absl::StatusOr<std::string> FakeKms::ConfirmInstallation(const std::string& session_id,
                                                         const std::string& sn,
                                                         const Bytes& proof) {
  absl::MutexLock l(&mu_);
  auto s = sessions_.find(session_id);
  if (s == sessions_.end() || s->second.sn != sn) {
    return absl::FailedPreconditionError("session_id: not usable");
  }
  if (misbehaviour_ == KmsMisbehaviour::kRejectConfirmation) {
    return absl::UnavailableError("hsm: unavailable");
  }
  ++confirm_calls_;
  Record& r = terminals_.at(sn);
  // As KMS: the same proof in a confirmed session again answers INSTALLED.
  if (s->second.completed && r.state != "TERMINAL_STATE_INSTALLED") {
    return absl::FailedPreconditionError("session_id: not usable");
  }
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys, protocol::DeriveAuthKeys(r.algorithm, r.auk, sn));
  RKL_ASSIGN_OR_RETURN(Bytes kcv, FromHex(r.tmk_kcv));
  RKL_RETURN_IF_ERROR(
      protocol::VerifyInstallProof(keys, sn, kcv, s->second.rnd1, s->second.rnd2, proof));
  s->second.completed = true;
  r.state = "TERMINAL_STATE_INSTALLED";
  return r.state;
}

// ---- FakeKms: TR-34 ----

absl::StatusOr<Bytes> FakeKms::GetKdhCredential(const std::string&) {
  const KdhWorld& w = KdhWorld::Get();
  Tr34Misbehaviour m;
  {
    absl::MutexLock l(&mu_);
    m = tr34_misbehaviour_;
  }
  std::vector<Certificate> certs = {w.kdh};
  std::vector<Bytes> crls = {w.crl};
  switch (m) {
    case Tr34Misbehaviour::kRevokedKdh:
      crls = {w.revoked_crl};
      break;
    case Tr34Misbehaviour::kNoCrl:
      crls.clear();
      break;
    case Tr34Misbehaviour::kStaleCrl:
      crls = {w.stale_crl};
      break;
    case Tr34Misbehaviour::kKdhFromOtherCa:
      certs = {w.kdh_other_ca};
      crls = {w.other_ca_crl};
      break;
    case Tr34Misbehaviour::kKrdCertAsKdh:
      certs = {w.krd_role_cert};
      break;
    case Tr34Misbehaviour::kOtherKdh:
      certs = {w.other_kdh};
      break;
    case Tr34Misbehaviour::kTwoKdhCertificates:
      certs = {w.kdh, w.other_kdh};
      break;
    default:
      break;
  }
  return tr34::BuildCredentialToken(certs, crls);
}

absl::StatusOr<KeyTokenDelivery> FakeKms::RequestKeyToken(const std::string& sn,
                                                          const Bytes& ct_krd, const Bytes& rt_krd,
                                                          crypto::KeyAlgorithm algorithm) {
  const KdhWorld& w = KdhWorld::Get();
  std::function<void(const std::string&)> hook;
  {
    absl::MutexLock l(&mu_);
    hook = on_key_token_request_;
  }
  if (hook) hook(sn);
  // As KMS: the KRD certificate under the trusted KRD CA, CN = SN.
  RKL_ASSIGN_OR_RETURN(tr34::CredentialToken credential, tr34::ParseCredentialToken(ct_krd));
  if (credential.certificates.size() != 1) {
    return absl::InvalidArgumentError("ct_krd: one certificate");
  }
  RKL_ASSIGN_OR_RETURN(
      tr34::PeerKey krd,
      tr34::PeerFromCertificate(credential.certificates[0], tr34::Role::kKrd, w.krd_ca.cert));
  RKL_ASSIGN_OR_RETURN(std::string cn, tr34::SnOfKrdCertificate(credential.certificates[0]));
  if (cn != sn) return absl::PermissionDeniedError("ct_krd: CN is not the SN");
  RKL_ASSIGN_OR_RETURN(Bytes nonce, tr34::ParseRandomNumberToken(rt_krd));

  absl::MutexLock l(&mu_);
  ++key_token_calls_;
  Record& r = terminals_[sn];
  if (r.state == "TERMINAL_STATE_INSTALLED") {
    return absl::FailedPreconditionError("sn: already INSTALLED");
  }
  const Tr34Misbehaviour m = tr34_misbehaviour_;
  if (m == Tr34Misbehaviour::kReplayToken) {
    if (r.last_token.empty()) return absl::FailedPreconditionError("no token to replay");
    return KeyTokenDelivery{r.last_token, r.last_kcv, "TERMINAL_STATE_TMK_DELIVERED"};
  }
  if (r.tmk.empty() || r.algorithm != algorithm) {
    r.algorithm = algorithm;
    r.tmk = crypto::GenerateKey(algorithm);
    r.tmk_kcv = Must(crypto::KcvHex(algorithm, r.tmk));
  }
  const crypto::CipherFamily family = crypto::FamilyOf(algorithm);
  std::string header = Must(tr34::TmkHeader(algorithm));
  if (m == Tr34Misbehaviour::kHeaderMismatch) {
    header =
        Must(tr34::TmkHeader(family == crypto::CipherFamily::kAes ? crypto::KeyAlgorithm::kTdes2
                                                                  : crypto::KeyAlgorithm::kAes128));
  }
  SecretBytes long_tmk;
  const SecretBytes* tmk = &r.tmk;
  std::string kcv = r.tmk_kcv;
  if (m == Tr34Misbehaviour::kWrongTmkLength) {
    long_tmk = crypto::GenerateKey(crypto::KeyAlgorithm::kAes256);
    tmk = &long_tmk;
    kcv = Must(crypto::KcvHex(crypto::CipherFamily::kAes, long_tmk));
  }
  tr34::PeerKey to = krd;
  if (m == Tr34Misbehaviour::kOtherKrd) {
    to = Must(tr34::PeerFromCertificate(w.other_krd, tr34::Role::kKrd, w.krd_ca.cert));
  }
  tr34::KeyTokenRequest request{
      .kdh_id = Must(tr34::CertIdOf(w.kdh)),
      .kdh_key = &w.kdh_key,
      .krd = std::move(to),
      .tmk_family = family,
      .tmk = tmk,
      .header = header,
      .krd_nonce = m == Tr34Misbehaviour::kWrongNonce ? crypto::RandomBytes(nonce.size()) : nonce,
      .signing_time = std::nullopt,
      .crls = {m == Tr34Misbehaviour::kRevokedInToken ? w.revoked_crl : w.crl}};
  RKL_ASSIGN_OR_RETURN(Bytes token, tr34::BuildKeyToken(request));
  if (m == Tr34Misbehaviour::kTamperSignature) token.back() ^= 0x01;
  if (m == Tr34Misbehaviour::kTamperEnvelope) {
    RKL_ASSIGN_OR_RETURN(tr34::KeyToken parsed, tr34::ParseKeyToken(token));
    const size_t at = ToHex(token).find(ToHex(parsed.enveloped_data)) / 2;
    token[at + parsed.enveloped_data.size() - 5] ^= 0x40;
  }
  if (m == Tr34Misbehaviour::kKcvMismatch) kcv = kcv == "000000" ? "111111" : "000000";
  r.tr34_nonce = nonce;
  r.last_token = token;
  r.last_kcv = kcv;
  r.state = "TERMINAL_STATE_TMK_DELIVERED";
  return KeyTokenDelivery{token, kcv, r.state};
}

absl::StatusOr<std::string> FakeKms::ConfirmKeyToken(const std::string& sn, const Bytes& proof) {
  absl::MutexLock l(&mu_);
  if (tr34_misbehaviour_ == Tr34Misbehaviour::kRejectConfirmation) {
    return absl::UnavailableError("hsm: unavailable");
  }
  ++confirm_key_token_calls_;
  auto it = terminals_.find(sn);
  if (it == terminals_.end() || it->second.tmk.empty()) {
    return absl::FailedPreconditionError("sn: no key token issued");
  }
  Record& r = it->second;
  if (!tr34::VerifyInstallProof(r.algorithm, r.tmk, sn, r.tr34_nonce, proof)) {
    return absl::UnauthenticatedError("proof: does not verify");
  }
  r.state = "TERMINAL_STATE_INSTALLED";
  return r.state;
}

absl::StatusOr<KmsTerminalView> FakeKms::GetTerminal(const std::string& sn) {
  absl::MutexLock l(&mu_);
  auto it = terminals_.find(sn);
  if (it == terminals_.end()) return absl::NotFoundError("sn: no such terminal");
  return KmsTerminalView{sn, it->second.state, it->second.tmk_kcv, "", ""};
}

absl::StatusOr<std::vector<KmsTerminalView>> FakeKms::ListTerminals(const std::string& prefix) {
  absl::MutexLock l(&mu_);
  std::vector<KmsTerminalView> out;
  for (const auto& [sn, r] : terminals_) {
    if (absl::StartsWith(sn, prefix)) out.push_back({sn, r.state, r.tmk_kcv, "", ""});
  }
  return out;
}

// ---- FakeMtms ----

absl::StatusOr<WorkCertificateBundle> FakeMtms::GetWorkCertificate() {
  const TerminalPki& pki = TerminalPki::Get();
  absl::MutexLock l(&mu_);
  std::string pem = work_override_.empty() ? pki.work.ToPem() : work_override_;
  return WorkCertificateBundle{pem, pki.root.ToPem(), pki.work.SerialHex()};
}

absl::StatusOr<SubmissionReceipt> FakeMtms::SubmitTransportKey(
    const Bytes& package, const Bytes& signature, const std::string& operator_certificate_pem) {
  const TerminalPki& pki = TerminalPki::Get();
  RKL_ASSIGN_OR_RETURN(Certificate op, Certificate::FromPem(operator_certificate_pem));
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey op_key, op.GetPublicKey());
  RKL_RETURN_IF_ERROR(crypto::EcdsaVerify(op_key, package, signature));
  rkl::v1::TransportKeyPackage p;
  if (!p.ParseFromArray(package.data(), static_cast<int>(package.size()))) {
    return absl::InvalidArgumentError("package: not a TransportKeyPackage");
  }
  if (p.operator_id() != kOperatorId || p.nonce().size() != 16) {
    return absl::InvalidArgumentError("package: operator_id or nonce");
  }
  if (p.work_certificate_serial() != pki.work.SerialHex()) {
    return absl::FailedPreconditionError("work_certificate_serial: unknown");
  }
  auto payload = crypto::RsaOaepDecrypt(pki.work_key, Byt(p.ctk_pu()), protocol::OaepLabel(p.sn()));
  if (!payload.ok()) return absl::UnauthenticatedError("ctk_pu: does not decrypt");
  RKL_ASSIGN_OR_RETURN(protocol::TransportKey tk, protocol::ParseTkPayload(*payload));
  if (static_cast<int>(crypto::KeyAlgorithmCode(tk.algorithm)) != p.algorithm()) {
    return absl::InvalidArgumentError("algorithm: differs from the payload");
  }
  kms_.Ingest(p.sn(), tk.algorithm, std::move(tk.tek), std::move(tk.auk));
  absl::MutexLock l(&mu_);
  return SubmissionReceipt{absl::StrCat("sub-", ++submissions_), "SUBMISSION_STATE_FORWARDED"};
}

// ---- gRPC adapters over the fakes ----

namespace {

class FakeMtmsService final : public rkl::v1::Mtms::Service {
 public:
  FakeMtmsService(FakeMtms& mtms, CallLog& calls) : mtms_(mtms), calls_(calls) {}
  grpc::Status GetWorkCertificate(grpc::ServerContext* ctx,
                                  const rkl::v1::GetWorkCertificateRequest*,
                                  rkl::v1::GetWorkCertificateResponse* resp) override {
    calls_.Add("GetWorkCertificate", rpc::RequestId(*ctx));
    auto b = mtms_.GetWorkCertificate();
    if (!b.ok()) return rpc::ToGrpcStatus(b.status());
    resp->set_work_certificate_pem(b->work_certificate_pem);
    resp->set_terminal_root_pem(b->terminal_root_pem);
    resp->set_serial_hex(b->serial_hex);
    return grpc::Status::OK;
  }
  grpc::Status SubmitTransportKey(grpc::ServerContext* ctx,
                                  const rkl::v1::SubmitTransportKeyRequest* req,
                                  rkl::v1::SubmitTransportKeyResponse* resp) override {
    calls_.Add("SubmitTransportKey", rpc::RequestId(*ctx));
    auto r = mtms_.SubmitTransportKey(Byt(req->package()), Byt(req->signature()),
                                      req->operator_certificate_pem());
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    resp->set_submission_id(r->submission_id);
    resp->set_state(rkl::v1::SUBMISSION_STATE_FORWARDED);
    return grpc::Status::OK;
  }

 private:
  FakeMtms& mtms_;
  CallLog& calls_;
};

class FakeKmsService final : public rkl::v1::Kms::Service {
 public:
  FakeKmsService(FakeKms& kms, CallLog& calls) : kms_(kms), calls_(calls) {}
  grpc::Status BeginAuthentication(grpc::ServerContext* ctx,
                                   const rkl::v1::BeginAuthenticationRequest* req,
                                   rkl::v1::BeginAuthenticationResponse* resp) override {
    calls_.Add("BeginAuthentication", rpc::RequestId(*ctx));
    auto r =
        kms_.BeginAuthentication(req->sn(), Byt(req->rnd1()), absl::Milliseconds(req->wait_ms()));
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    resp->set_session_id(r->session_id);
    resp->set_crnd1(Str(r->crnd1));
    resp->set_rnd2(Str(r->rnd2));
    return grpc::Status::OK;
  }
  grpc::Status CompleteAuthentication(grpc::ServerContext* ctx,
                                      const rkl::v1::CompleteAuthenticationRequest* req,
                                      rkl::v1::CompleteAuthenticationResponse* resp) override {
    calls_.Add("CompleteAuthentication", rpc::RequestId(*ctx));
    auto r = kms_.CompleteAuthentication(req->session_id(), req->sn(), Byt(req->crnd2()));
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    resp->set_key_block(r->key_block);
    resp->set_tmk_kcv(r->tmk_kcv);
    return grpc::Status::OK;
  }
  grpc::Status ConfirmInstallation(grpc::ServerContext* ctx,
                                   const rkl::v1::ConfirmInstallationRequest* req,
                                   rkl::v1::ConfirmInstallationResponse* resp) override {
    calls_.Add("ConfirmInstallation", rpc::RequestId(*ctx));
    auto r = kms_.ConfirmInstallation(req->session_id(), req->sn(), Byt(req->proof()));
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    resp->set_state(rkl::v1::TERMINAL_STATE_INSTALLED);
    return grpc::Status::OK;
  }
  grpc::Status GetKdhCredential(grpc::ServerContext*, const rkl::v1::GetKdhCredentialRequest* req,
                                rkl::v1::GetKdhCredentialResponse* resp) override {
    auto r = kms_.GetKdhCredential(req->sn());
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    resp->set_ct_kdh(Str(*r));
    return grpc::Status::OK;
  }
  grpc::Status RequestKeyToken(grpc::ServerContext*, const rkl::v1::RequestKeyTokenRequest* req,
                               rkl::v1::RequestKeyTokenResponse* resp) override {
    crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
    if (req->algorithm() != rkl::v1::KEY_ALGORITHM_UNSPECIFIED) {
      auto a = crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(req->algorithm()));
      if (!a.ok()) return rpc::ToGrpcStatus(a.status());
      algorithm = *a;
    }
    auto r = kms_.RequestKeyToken(req->sn(), Byt(req->ct_krd()), Byt(req->rt_krd()), algorithm);
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    resp->set_key_token(Str(r->key_token));
    resp->set_tmk_kcv(r->tmk_kcv);
    resp->set_state(rkl::v1::TERMINAL_STATE_TMK_DELIVERED);
    return grpc::Status::OK;
  }
  grpc::Status ConfirmKeyToken(grpc::ServerContext*, const rkl::v1::ConfirmKeyTokenRequest* req,
                               rkl::v1::ConfirmInstallationResponse* resp) override {
    auto r = kms_.ConfirmKeyToken(req->sn(), Byt(req->proof()));
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    resp->set_state(rkl::v1::TERMINAL_STATE_INSTALLED);
    return grpc::Status::OK;
  }
  grpc::Status GetTerminal(grpc::ServerContext* ctx, const rkl::v1::GetTerminalRequest* req,
                           rkl::v1::Terminal* resp) override {
    if (!rpc::IsAdmin(rpc::GetCallerIdentity(*ctx).name)) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "admin only");
    }
    auto r = kms_.GetTerminal(req->sn());
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    Fill(*r, resp);
    return grpc::Status::OK;
  }
  grpc::Status ListTerminals(grpc::ServerContext* ctx, const rkl::v1::ListTerminalsRequest* req,
                             rkl::v1::ListTerminalsResponse* resp) override {
    if (!rpc::IsAdmin(rpc::GetCallerIdentity(*ctx).name)) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "admin only");
    }
    auto r = kms_.ListTerminals(req->sn_prefix());
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    for (const auto& v : *r) Fill(v, resp->add_terminals());
    return grpc::Status::OK;
  }

 private:
  static void Fill(const KmsTerminalView& v, rkl::v1::Terminal* t) {
    t->set_sn(v.sn);
    rkl::v1::TerminalState state = rkl::v1::TERMINAL_STATE_UNSPECIFIED;
    rkl::v1::TerminalState_Parse(v.state, &state);
    t->set_state(state);
    t->set_tmk_kcv(v.tmk_kcv);
  }
  FakeKms& kms_;
  CallLog& calls_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FakeServers>> FakeServers::Start() {
  std::unique_ptr<FakeServers> s(new FakeServers());
  RKL_ASSIGN_OR_RETURN(s->pki_, rkl::testing::TestPki::Create());
  RKL_ASSIGN_OR_RETURN(s->admin_tls_, s->pki_->Issue("admin:ops"));
  RKL_ASSIGN_OR_RETURN(rpc::TlsFiles mtms_tls, s->pki_->Issue("mtms"));
  RKL_ASSIGN_OR_RETURN(rpc::TlsFiles kms_tls, s->pki_->Issue("kms"));
  s->mtms_service_ = std::make_unique<FakeMtmsService>(s->mtms_, s->calls_);
  s->kms_service_ = std::make_unique<FakeKmsService>(s->kms_, s->calls_);
  RKL_ASSIGN_OR_RETURN(s->mtms_server_,
                       rpc::Server::Start({.listen_address = "127.0.0.1:0",
                                           .tls = mtms_tls,
                                           .client_cert_mode = rpc::ClientCertMode::kNone},
                                          {s->mtms_service_.get()}));
  RKL_ASSIGN_OR_RETURN(
      s->kms_server_,
      rpc::Server::Start({.listen_address = "127.0.0.1:0",
                          .tls = kms_tls,
                          .client_cert_mode = rpc::ClientCertMode::kOptionalVerified},
                         {s->kms_service_.get()}));
  return s;
}

FakeServers::~FakeServers() {
  if (mtms_server_) mtms_server_->Shutdown(absl::ZeroDuration());
  if (kms_server_) kms_server_->Shutdown(absl::ZeroDuration());
}

std::string FakeServers::mtms_target() const {
  return absl::StrCat("127.0.0.1:", mtms_server_->port());
}
std::string FakeServers::kms_target() const {
  return absl::StrCat("127.0.0.1:", kms_server_->port());
}

// ---- helpers ----

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "rkl-pos-test-XXXXXX").string();
  char* made = ::mkdtemp(tmpl.data());
  if (made == nullptr) std::abort();
  path_ = made;
}
TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Bytes FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace rkl::pos::testing

namespace rkl::pos {

testing::RevealedKeys SecureModuleTestPeer::RevealKeysForTest(const SecureModule& module) {
  auto copy = [](const crypto::SecretBytes& s) {
    auto r = s.RevealSecret();
    return Bytes(r.begin(), r.end());
  };
  // The device key never leaves its SealingKey; its file is the same 32 bytes.
  absl::StatusOr<crypto::SecretBytes> device_key = ReadSecretFile(module.device_key_file());
  testing::RevealedKeys keys{copy(module.state_.tek), copy(module.state_.auk),
                             copy(module.state_.tmk), device_key.ok() ? copy(*device_key) : Bytes(),
                             Bytes()};
  if (!module.state_.krd_private_key.empty()) {
    // The RSA private key as PKCS#1 RSAPrivateKey DER: the PKCS#8 form the module keeps, and
    // PEM/base64 of either, contain it.
    auto key = crypto::PrivateKey::FromPkcs8DerSecret(module.state_.krd_private_key);
    if (key.ok()) {
      const int n = i2d_PrivateKey(key->evp_pkey(), nullptr);
      if (n > 0) {
        keys.krd_private_key.resize(static_cast<size_t>(n));
        unsigned char* p = keys.krd_private_key.data();
        i2d_PrivateKey(key->evp_pkey(), &p);
      }
    }
  }
  return keys;
}

}  // namespace rkl::pos
