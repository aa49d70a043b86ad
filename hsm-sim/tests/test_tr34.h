#pragma once
// A throwaway TR-34 PKI for the HSM's key-token tests: a KRD CA the HSM trusts, another KRD
// CA it does not, a KDH CA, KRDs (terminals: CN = SN, keyEncipherment, their own RSA-2048
// key) and KDH certificates for keys the HSM generated (digitalSignature), as
// docs/tr34.md profiles them; and the KRD's side of a key token (tr34::ReceiveTwoPassKeyToken).
// Test-only; not thread-safe.

#include <gtest/gtest.h>

#include <string>

#include "absl/status/statusor.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"

namespace rkl::hsm::testing {

// Validity wide enough for any clock a test runs under (2020 to 2100).
inline constexpr int64_t kTr34NotBefore = 1'577'836'800;
inline constexpr int64_t kTr34NotAfter = 4'102'444'800;

struct Tr34Party {
  crypto::PrivateKey key;
  crypto::Certificate cert;
};

inline Tr34Party NewTr34Ca(const std::string& cn) {
  crypto::PrivateKey key = crypto::GenerateRsaKey(2048).value();
  crypto::Certificate cert =
      crypto::CertificateBuilder()
          .SetSubjectCommonName(cn)
          .SetSerial({0x01})
          .SetValidity(kTr34NotBefore, kTr34NotAfter)
          .SetBasicConstraints(true, 0)
          .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign)
          .SelfSign(key)
          .value();
  return Tr34Party{std::move(key), std::move(cert)};
}

inline crypto::Certificate IssueTr34(const std::string& cn, uint8_t serial,
                                     const crypto::PublicKey& key, crypto::KeyUsage usage,
                                     const Tr34Party& ca) {
  return crypto::CertificateBuilder()
      .SetSubjectCommonName(cn)
      .SetSerial({serial})
      .SetValidity(kTr34NotBefore, kTr34NotAfter)
      .SetPublicKey(key)
      .SetBasicConstraints(false, std::nullopt)
      .SetKeyUsage(usage)
      .Sign(ca.cert, ca.key)
      .value();
}

// A terminal's KRD: its own key and a certificate from `ca` naming `sn`.
inline Tr34Party NewKrd(const std::string& sn, uint8_t serial, const Tr34Party& ca) {
  crypto::PrivateKey key = crypto::GenerateRsaKey(2048).value();
  crypto::Certificate cert =
      IssueTr34(sn, serial, key.GetPublicKey(), crypto::KeyUsage::kKeyEncipherment, ca);
  return Tr34Party{std::move(key), std::move(cert)};
}

// A KDH certificate for the public key `spki_der` (GenerateKdhKey's answer).
inline crypto::Certificate NewKdhCertificate(const Bytes& spki_der, uint8_t serial,
                                             const Tr34Party& kdh_ca) {
  return IssueTr34("kdh:hsm-kms:" + std::to_string(serial), serial,
                   crypto::PublicKey::FromDer(spki_der).value(),
                   crypto::KeyUsage::kDigitalSignature, kdh_ca);
}

inline Bytes Der(const crypto::Certificate& cert) { return cert.ToDer(); }

inline std::string KrdIdOfCert(const crypto::Certificate& cert) {
  return tr34::KrdIdOf(tr34::CertIdOf(cert).value());
}

// The KRD's whole check of a two-pass key token: the key block it accepts.
inline absl::StatusOr<tr34::KeyBlock> ReceiveToken(const Bytes& token,
                                                   const crypto::Certificate& kdh_cert,
                                                   const Tr34Party& krd, const Bytes& nonce) {
  tr34::PeerKey kdh{tr34::CertIdOf(kdh_cert).value(), kdh_cert.GetPublicKey().value()};
  return tr34::ReceiveTwoPassKeyToken(token, kdh, nonce, tr34::CertIdOf(krd.cert).value(), krd.key);
}

}  // namespace rkl::hsm::testing
