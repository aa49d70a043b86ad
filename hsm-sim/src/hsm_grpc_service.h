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
// With a metrics::Metrics every command is counted in rkl_hsm_commands_total{command,result}
// (command: the short RPC name; result: the status code name it answered, "OK",
// "PERMISSION_DENIED", ...), refusals by authorization included.
// Thread-safe; the core must outlive the service.

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "hsm_core.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "rkl/metrics/metrics.h"
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
  // `metrics` may be null: nothing is counted.
  HsmGrpcService(HsmCore& core, HsmRole role,
                 const std::vector<std::string>& operational_identities,
                 metrics::Metrics* metrics = nullptr);

 private:
  // UnaryService::Bind, counting each call's answer in rkl_hsm_commands_total: every RPC the
  // constructor binds goes through here.
  template <typename Body>
  void Bind(std::string_view method, Body body) {
    CountedBind(method, std::function(std::move(body)));
  }
  template <typename Request, typename Response>
  void CountedBind(
      std::string_view method,
      std::function<absl::Status(const rpc::UnaryCall&, const Request*, Response*)> body) {
    UnaryService::Bind(method, [this, command = std::string(method), body = std::move(body)](
                                   const rpc::UnaryCall& call, const Request* req, Response* resp) {
      absl::Status status = body(call, req, resp);
      Count(commands_, command, status.code());
      return status;
    });
  }

 public:
  // rkl_hsm_commands_total in `metrics` (null without metrics), and one count in it.
  using CommandCounters = prometheus::Family<prometheus::Counter>;
  static CommandCounters* CommandFamily(metrics::Metrics* metrics);
  static void Count(CommandCounters* family, const std::string& command, absl::StatusCode code);

 private:
  HsmCore& core_;
  CommandCounters* commands_;
};

}  // namespace rkl::hsm
