#pragma once
// HsmGrpcService: the gRPC face of HsmCore (proto/rkl/v1/hsm.proto). It only authorizes the
// caller by its mTLS identity (rpc::ServiceAdapter, by the roles hsm.proto declares on each
// RPC), translates messages and converts statuses once; every rule lives in the core.
//
// Authorization, by the instance's role and the caller's identity (docs/hsm.md, "Who may
// call what"; hsm.proto's "mtms" and "kms" roles are bound to this instance's operational
// identities or to nobody):
//  - role mtms (HSM #1): GenerateRsaKeyPair, GetPublicKey, TranslateTransportKey(s) and
//    GenerateRandom, to the operational identities (mtms) only;
//  - role kms (HSM #2): ImportAndChallenge, AuthChallenge, AuthenticateAndDeliver,
//    VerifyInstallProof, DestroyTerminalKeys, GenerateRandom and the TR-34 commands
//    (GenerateKdhKey, BuildKeyToken, VerifyKeyTokenInstallProof), to the operational
//    identities (kms) only;
//  - both roles: ceremony steps to key custodians ("custodian:*") only; GetCeremony to
//    custodians and admins; GetKeyInfo, DeleteKey and VerifyAuditChain to admins
//    ("admin:*") only — none of them returns, exports or re-wraps a key; GetCertifiableKey
//    to the CA (identity `ca`) only.
// Every other call (another role's command, another identity) is PERMISSION_DENIED and is
// audited.
// Thread-safe; the core must outlive the service.

#include <string>
#include <string_view>
#include <vector>

#include "hsm_core.h"
#include "rkl/rpc/unary_service.h"
#include "rkl/v1/hsm.grpc.pb.h"

namespace rkl::hsm {

// What one rkl-hsm instance is for: HSM #1 serves MTMS, HSM #2 serves KMS.
enum class HsmRole { kMtms, kKms };
std::string_view HsmRoleName(HsmRole role);  // "mtms", "kms"

class HsmGrpcService final : public rpc::UnaryService {
 public:
  // `operational_identities`: the services given the role's commands (admins and patterns
  // are refused: std::invalid_argument).
  HsmGrpcService(HsmCore& core, HsmRole role,
                 const std::vector<std::string>& operational_identities);

 private:
  HsmCore& core_;
};

}  // namespace rkl::hsm
