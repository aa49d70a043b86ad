#pragma once
// TR-34 test doubles for rkl-kms: a PKI made here (kdh-ca, a trusted KRD CA, an untrusted
// one), KRDs (terminal secure modules) holding their private key, and FakeCa, the CaPort of
// kdh-ca with failure injection. Test-only: private keys live in process memory.

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "ca_port.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/x509.h"
#include "rkl/tr34/tokens.h"

namespace rkl::kms::testing {

struct Tr34Party {
  crypto::PrivateKey key;
  crypto::Certificate cert;
};

// A self-signed CA valid around `now_s`.
Tr34Party NewTr34Ca(const std::string& cn, int64_t now_s);
// An end-entity certificate from `ca` (keyUsage `usage` critical, CA:FALSE).
Tr34Party NewTr34EndEntity(const std::string& cn, crypto::KeyUsage usage, const Tr34Party& ca,
                           int64_t now_s);

// A terminal's KRD: its certificate (CN = SN) and private key, and what it needs to build its
// requests and check a key token as rkl-pos would.
struct TestKrd {
  Tr34Party party;
  Bytes nonce;  // the random number of the pending request

  Bytes CtKrd() const;                     // CT_KRD with the KRD certificate
  Bytes NewRtKrd(size_t nonce_size = 16);  // draws a nonce; RT_KRD
  // The KRD's whole check of a key token: ReceiveTwoPassKeyToken with the pending nonce,
  // CheckKdhNotRevoked on its CRLs, the header TmkHeader(algorithm), KCV == `kcv`. The TMK.
  absl::StatusOr<crypto::SecretBytes> Accept(const Bytes& key_token, const crypto::Certificate& kdh,
                                             const crypto::Certificate& ca_kdh,
                                             crypto::KeyAlgorithm algorithm, const std::string& kcv,
                                             int64_t now_s) const;
};

// FakeCa: kdh-ca. Issues KDH certificates; its CRL is valid for crl_validity from the
// clock's now at each GetKdhCrl (nothing revoked).
class FakeCa final : public CaPort {
 public:
  FakeCa(Clock clock, int64_t crl_validity_s = 3600);

  absl::StatusOr<IssuedKdhCertificate> IssueKdhCertificate(std::span<const uint8_t> public_key_der,
                                                           const std::string& hsm_id,
                                                           uint64_t key_index) override;
  absl::StatusOr<KdhCrl> GetKdhCrl() override;

  const Tr34Party& kdh_ca() const { return kdh_ca_; }
  // While down, every call answers UNAVAILABLE.
  void SetDown(bool down);
  int crl_calls() const;
  std::string last_hsm_id() const;

 private:
  Clock clock_;
  int64_t crl_validity_s_;
  Tr34Party kdh_ca_;
  mutable absl::Mutex mu_;
  bool down_ ABSL_GUARDED_BY(mu_) = false;
  int crl_calls_ ABSL_GUARDED_BY(mu_) = 0;
  uint8_t next_serial_ ABSL_GUARDED_BY(mu_) = 0x10;
  std::string last_hsm_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace rkl::kms::testing
