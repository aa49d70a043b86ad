#pragma once
// HsmKeySource: how the CA sees a key inside an HSM before it certifies it. The CA certifies
// a KDH signing key only when the named HSM itself says that its key at that index is a
// live KDH_SIGN key with exactly the public key of the request (CaCore::IssueKdhCertificate),
// so a caller cannot have a key of its own certified as an HSM's. The gRPC implementation
// (Hsm.GetCertifiableKey under the CA's own TLS identity) is GrpcHsmKeySource, outside the
// core; tests use a fake.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"

namespace rkl::ca {

enum class HsmKeyUsage { kOther, kKdhSign, kTransportDecrypt };

// What an HSM states about one of its keys.
struct CertifiableKey {
  Bytes public_key_der;  // SubjectPublicKeyInfo DER
  HsmKeyUsage usage = HsmKeyUsage::kOther;
  std::string hsm_id;  // the answering HSM's own id
};

class HsmKeySource {
 public:
  virtual ~HsmKeySource() = default;
  // Whether the CA has an endpoint for this HSM (hsm.endpoints).
  virtual bool Knows(std::string_view hsm_id) const = 0;
  // The HSM's own answer about its key `key_index`: its refusal as it gave it (NOT_FOUND,
  // PERMISSION_DENIED, FAILED_PRECONDITION, INVALID_ARGUMENT), or UNAVAILABLE when it cannot
  // be reached in time.
  virtual absl::StatusOr<CertifiableKey> Get(const std::string& hsm_id, uint64_t key_index) = 0;
};

// hsm.endpoints: "hsm-id=host:port,hsm-id=host:port" (spaces around items allowed; empty:
// none). INVALID_ARGUMENT naming hsm.endpoints for an item without "=", an empty id or
// target, or an id given twice.
absl::StatusOr<std::map<std::string, std::string, std::less<>>> ParseHsmEndpoints(
    std::string_view text);

}  // namespace rkl::ca
