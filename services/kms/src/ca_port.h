#pragma once
// CaPort: the slice of rkl's CA (rkl.v1.CertificateAuthority) that rkl-kms uses for TR-34:
// the KDH certificate from kdh-ca and kdh-ca's CRL. Certificates and CRLs are public; nothing
// crossing this interface is key material. Errors: UNAVAILABLE / DEADLINE_EXCEEDED when the
// CA cannot be reached, the CA's own refusals otherwise. Implementations are thread-safe.

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"

namespace rkl::kms {

struct IssuedKdhCertificate {
  Bytes certificate_der;
  std::string serial_hex;
  int64_t not_after_s = 0;
};

struct KdhCrl {
  Bytes crl_der;
  int64_t next_update_s = 0;
};

class CaPort {
 public:
  virtual ~CaPort() = default;

  // Ca.IssueKdhCertificate: kdh-ca certifies `public_key_der` (SubjectPublicKeyInfo) as
  // the KDH key `key_index` of HSM `hsm_id`.
  virtual absl::StatusOr<IssuedKdhCertificate> IssueKdhCertificate(
      std::span<const uint8_t> public_key_der, const std::string& hsm_id, uint64_t key_index) = 0;
  // Ca.GetCrl(ISSUER_KDH_CA), as DER.
  virtual absl::StatusOr<KdhCrl> GetKdhCrl() = 0;
};

}  // namespace rkl::kms
