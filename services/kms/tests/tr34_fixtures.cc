#include "tr34_fixtures.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/tr34/profile.h"

namespace rkl::kms::testing {
namespace {

constexpr int64_t kDay = 86'400;

crypto::PrivateKey NewRsaKey() {
  absl::StatusOr<crypto::PrivateKey> key = crypto::GenerateRsaKey(2048);
  if (!key.ok()) std::abort();
  return *std::move(key);
}

}  // namespace

Tr34Party NewTr34Ca(const std::string& cn, int64_t now_s) {
  crypto::PrivateKey key = NewRsaKey();
  absl::StatusOr<crypto::Certificate> cert =
      crypto::CertificateBuilder()
          .SetSubjectCommonName(cn)
          .SetSerial({0x01})
          .SetValidity(now_s - kDay, now_s + 365 * kDay)
          .SetBasicConstraints(true, 0)
          .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign)
          .SelfSign(key);
  if (!cert.ok()) std::abort();
  return Tr34Party{std::move(key), *std::move(cert)};
}

Tr34Party NewTr34EndEntity(const std::string& cn, crypto::KeyUsage usage, const Tr34Party& ca,
                           int64_t now_s) {
  crypto::PrivateKey key = NewRsaKey();
  Bytes serial = crypto::RandomBytes(8);
  serial[0] &= 0x7F;
  serial[0] |= 0x01;
  absl::StatusOr<crypto::Certificate> cert = crypto::CertificateBuilder()
                                                 .SetSubjectCommonName(cn)
                                                 .SetSerial(serial)
                                                 .SetValidity(now_s - kDay, now_s + 365 * kDay)
                                                 .SetPublicKey(key.GetPublicKey())
                                                 .SetBasicConstraints(false, std::nullopt)
                                                 .SetKeyUsage(usage)
                                                 .Sign(ca.cert, ca.key);
  if (!cert.ok()) std::abort();
  return Tr34Party{std::move(key), *std::move(cert)};
}

Bytes TestKrd::CtKrd() const {
  const crypto::Certificate certs[] = {party.cert};
  absl::StatusOr<Bytes> ct = tr34::BuildCredentialToken(certs);
  if (!ct.ok()) std::abort();
  return *ct;
}

Bytes TestKrd::NewRtKrd(size_t nonce_size) {
  nonce = crypto::RandomBytes(nonce_size);
  absl::StatusOr<Bytes> rt = tr34::BuildRandomNumberToken(nonce);
  if (!rt.ok()) std::abort();
  return *rt;
}

absl::StatusOr<crypto::SecretBytes> TestKrd::Accept(const Bytes& key_token,
                                                    const crypto::Certificate& kdh,
                                                    const crypto::Certificate& ca_kdh,
                                                    crypto::KeyAlgorithm algorithm,
                                                    const std::string& kcv, int64_t now_s) const {
  RKL_ASSIGN_OR_RETURN(tr34::PeerKey kdh_peer,
                       tr34::PeerFromCertificate(kdh, tr34::Role::kKdh, ca_kdh));
  RKL_ASSIGN_OR_RETURN(tr34::CertId own_id, tr34::CertIdOf(party.cert));
  RKL_ASSIGN_OR_RETURN(tr34::KeyBlock block,
                       tr34::ReceiveTwoPassKeyToken(key_token, kdh_peer, nonce, own_id, party.key));
  RKL_ASSIGN_OR_RETURN(tr34::KeyToken parsed, tr34::ParseKeyToken(key_token));
  RKL_RETURN_IF_ERROR(tr34::CheckKdhNotRevoked(kdh, parsed.crls, ca_kdh, now_s));
  RKL_ASSIGN_OR_RETURN(std::string header, tr34::TmkHeader(algorithm));
  if (block.header != header) return absl::DataLossError("key block header is not TmkHeader");
  RKL_ASSIGN_OR_RETURN(std::string got, crypto::KcvHex(algorithm, block.key));
  if (got != kcv) return absl::DataLossError("TMK KCV differs from the one KMS returned");
  return std::move(block.key);
}

FakeCa::FakeCa(Clock clock, int64_t crl_validity_s)
    : clock_(std::move(clock)),
      crl_validity_s_(crl_validity_s),
      kdh_ca_(NewTr34Ca("rkl test kdh-ca", absl::ToUnixSeconds(clock_()))) {}

void FakeCa::SetDown(bool down) {
  absl::MutexLock lock(&mu_);
  down_ = down;
}

int FakeCa::crl_calls() const {
  absl::MutexLock lock(&mu_);
  return crl_calls_;
}

std::string FakeCa::last_hsm_id() const {
  absl::MutexLock lock(&mu_);
  return last_hsm_id_;
}

absl::StatusOr<IssuedKdhCertificate> FakeCa::IssueKdhCertificate(
    std::span<const uint8_t> public_key_der, const std::string& hsm_id, uint64_t key_index) {
  uint8_t serial;
  {
    absl::MutexLock lock(&mu_);
    if (down_) return absl::UnavailableError("fake CA: unreachable (injected)");
    serial = next_serial_++;
    last_hsm_id_ = hsm_id;
  }
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey key, crypto::PublicKey::FromDer(public_key_der));
  const int64_t now_s = absl::ToUnixSeconds(clock_());
  RKL_ASSIGN_OR_RETURN(crypto::Certificate cert,
                       crypto::CertificateBuilder()
                           .SetSubjectCommonName(absl::StrCat("kdh:", hsm_id, ":", key_index))
                           .SetSerial({serial})
                           .SetValidity(now_s - 60, now_s + 365 * kDay)
                           .SetPublicKey(key)
                           .SetBasicConstraints(false, std::nullopt)
                           .SetKeyUsage(crypto::KeyUsage::kDigitalSignature)
                           .Sign(kdh_ca_.cert, kdh_ca_.key));
  return IssuedKdhCertificate{cert.ToDer(), cert.SerialHex(), cert.NotAfter()};
}

absl::StatusOr<KdhCrl> FakeCa::GetKdhCrl() {
  {
    absl::MutexLock lock(&mu_);
    ++crl_calls_;
    if (down_) return absl::UnavailableError("fake CA: unreachable (injected)");
  }
  const int64_t now_s = absl::ToUnixSeconds(clock_());
  RKL_ASSIGN_OR_RETURN(crypto::Crl crl, crypto::CrlBuilder()
                                            .SetLastUpdate(now_s - 60)
                                            .SetNextUpdate(now_s + crl_validity_s_)
                                            .SetCrlNumber(1)
                                            .Sign(kdh_ca_.cert, kdh_ca_.key));
  return KdhCrl{crl.ToDer(), now_s + crl_validity_s_};
}

}  // namespace rkl::kms::testing
