#pragma once
// The operator side of translation, for tests: an operator-ca and an operator card, and the
// evidence an operator terminal's signed package gives HSM #1 (PROTOCOL §4) — built from
// rkl::crypto and the MTMS proto only, never from HSM code.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "operator_evidence.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/x509.h"
#include "rkl/v1/mtms.pb.h"

namespace rkl::hsm::testing {

template <typename T>
T MustOk(absl::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "test operator: %s\n", v.status().ToString().c_str());
    std::abort();
  }
  return *std::move(v);
}

struct TestOperator {
  crypto::PrivateKey ca_key;
  crypto::Certificate ca;
  crypto::PrivateKey key;
  crypto::Certificate certificate;
  std::string id;

  // An operator-ca (self-signed, EC P-256) and one operator card "operator:<id>", valid from
  // `not_before_s` for `days`.
  static TestOperator Create(const std::string& id = "op1", int64_t not_before_s = 1'600'000'000,
                             int days = 3650) {
    crypto::PrivateKey ca_key = MustOk(crypto::GenerateEcP256Key());
    crypto::CertificateBuilder ca_builder;
    ca_builder.SetSubjectCommonName("operator-ca")
        .SetSerial(Serial())
        .SetValidity(not_before_s, not_before_s + 2 * int64_t{days} * 86400)
        .SetBasicConstraints(true, 0)
        .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign);
    crypto::Certificate ca = MustOk(ca_builder.SelfSign(ca_key));
    return Issue(std::move(ca_key), std::move(ca), id, not_before_s, days);
  }

  // Another card from the same operator-ca.
  TestOperator Another(const std::string& other_id, int64_t not_before_s, int days) const {
    crypto::PrivateKey k =
        MustOk(crypto::PrivateKey::FromPkcs8DerSecret(MustOk(ca_key.ExportPkcs8DerSecret())));
    return Issue(std::move(k), ca, other_id, not_before_s, days);
  }

  // What MTMS passes HSM #1 with a translation: the package the operator signed.
  TranslateEvidence Sign(const std::string& sn, const Bytes& ctk_pu, crypto::KeyAlgorithm algorithm,
                         int64_t created_at_ms) const {
    v1::TransportKeyPackage p;
    p.set_sn(sn);
    p.set_ctk_pu(std::string(ctk_pu.begin(), ctk_pu.end()));
    p.set_work_certificate_serial("01");
    p.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(algorithm)));
    p.set_created_at_unix_ms(created_at_ms);
    Bytes nonce = crypto::RandomBytes(16);
    p.set_nonce(std::string(nonce.begin(), nonce.end()));
    p.set_operator_id(id);
    std::string b = p.SerializeAsString();
    Bytes package(b.begin(), b.end());
    Bytes signature = MustOk(crypto::EcdsaSign(key, package));
    return TranslateEvidence{.package = std::move(package),
                             .package_signature = std::move(signature),
                             .operator_certificate_der = certificate.ToDer()};
  }

  // The operator-ca certificate as a PEM file (HSM #1's translation.operator_ca_file).
  void WriteCaFile(const std::string& path) const { std::ofstream(path) << ca.ToPem(); }

 private:
  static Bytes Serial() {
    Bytes serial = crypto::RandomBytes(16);
    serial[0] = (serial[0] & 0x7F) | 0x01;
    return serial;
  }
  static TestOperator Issue(crypto::PrivateKey ca_key, crypto::Certificate ca,
                            const std::string& id, int64_t not_before_s, int days) {
    crypto::PrivateKey key = MustOk(crypto::GenerateEcP256Key());
    crypto::CertificateBuilder b;
    b.SetSubjectCommonName("operator:" + id)
        .SetSerial(Serial())
        .SetValidity(not_before_s, not_before_s + int64_t{days} * 86400)
        .SetPublicKey(key.GetPublicKey())
        .SetBasicConstraints(false, std::nullopt)
        .SetKeyUsage(crypto::KeyUsage::kDigitalSignature);
    crypto::Certificate cert = MustOk(b.Sign(ca, ca_key));
    return TestOperator{std::move(ca_key), std::move(ca), std::move(key), std::move(cert), id};
  }
};

}  // namespace rkl::hsm::testing
