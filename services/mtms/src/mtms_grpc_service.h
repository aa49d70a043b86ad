#pragma once
// MtmsGrpcService: the thin gRPC adapter of rkl.v1.Mtms over MtmsCore and Forwarder. It
// authorizes the caller (rpc::ServiceAdapter, by the roles mtms.proto declares on each RPC:
// GetWorkCertificate, SubmitTransportKey and GetOwnSubmission are public, every other RPC
// needs an `admin:*` identity), translates messages, and converts statuses once. The public
// RPCs first spend a token of the caller's address budget
// (and SubmitTransportKey one of its package SN's) in an rpc::PublicCallGate: over budget
// they are RESOURCE_EXHAUSTED with google.rpc.RetryInfo before the core, the database or
// HSM #1 sees them (docs/mtms.md "Rate limits"). No logic lives here: VerifyAuditChain goes to the
// audit chain (rkl::audit). Thread-safe; core, forwarder and chain are not owned and must
// outlive the service.

#include "mtms_core.h"
#include "mtms_forwarder.h"
#include "rkl/audit/audit_log.h"
#include "rkl/rpc/public_call_gate.h"
#include "rkl/rpc/unary_service.h"
#include "rkl/v1/mtms.grpc.pb.h"

namespace rkl::mtms {

class MtmsGrpcService final : public rpc::UnaryService {
 public:
  MtmsGrpcService(MtmsCore& core, Forwarder& forwarder, audit::PgAuditLog& audit,
                  rpc::PublicCallLimits limits = {});

  // Public calls refused for volume since start.
  uint64_t rate_limited() const { return gate_.refused(); }

 private:
  MtmsCore& core_;
  Forwarder& forwarder_;
  audit::PgAuditLog& audit_;
  rpc::PublicCallGate gate_;
};

}  // namespace rkl::mtms
