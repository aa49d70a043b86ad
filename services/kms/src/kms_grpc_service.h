#pragma once
// KmsGrpcService: the rkl.v1.Kms adapter over KmsCore. It only authorizes the caller
// (rpc::ServiceAdapter, by the roles kms.proto declares on each RPC: SubmitTransportKey
// `mtms`; admin RPCs `admin:*`; terminal RPCs public, since the terminal proves itself with
// AUK), translates messages and converts statuses once. Before the core sees a terminal RPC
// (BeginAuthentication, CompleteAuthentication, ConfirmInstallation) the call spends a
// token of its source address's budget and of its SN's (TerminalRateLimits); over either
// budget it is RESOURCE_EXHAUSTED with google.rpc.RetryInfo, having cost no database access
// and no HSM command, and counted in rkl_kms_rate_limited_total (KmsCore::metrics()).
// VerifyAuditChain goes to the audit chain itself (rkl::audit), which
// KMS keeps beside the core. Thread-safe; the core and the chain must outlive it.

#include <memory>

#include "kms_core.h"
#include "rkl/audit/audit_log.h"
#include "rkl/rpc/public_call_gate.h"
#include "rkl/rpc/unary_service.h"
#include "rkl/v1/kms.grpc.pb.h"

namespace rkl::kms {

// Budgets of the terminal RPCs, shared by the three (docs/kms.md "Rate limits"): per
// source address and per SN.
using TerminalRateLimits = rpc::PublicCallLimits;

class KmsGrpcService final : public rpc::UnaryService {
 public:
  KmsGrpcService(KmsCore& core, audit::PgAuditLog& audit, TerminalRateLimits limits = {});

  // Terminal calls refused for volume since start.
  uint64_t rate_limited() const { return gate_.refused(); }

 private:
  // OK, or RESOURCE_EXHAUSTED with the time until the caller's next token.
  absl::Status AdmitTerminalCall(const grpc::ServerContextBase& ctx, const std::string& sn);

  KmsCore& core_;
  audit::PgAuditLog& audit_;
  rpc::PublicCallGate gate_;
};

void ToProto(const TerminalRecord& t, rkl::v1::Terminal* out);

}  // namespace rkl::kms
