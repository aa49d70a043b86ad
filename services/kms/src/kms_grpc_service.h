#pragma once
// KmsGrpcService: the rkl.v1.Kms adapter over KmsCore. It only authorizes the caller
// (rpc::ServiceAdapter, by the roles kms.proto declares on each RPC: SubmitTransportKey
// `mtms`; admin RPCs `admin:*`; terminal RPCs public, since the terminal proves itself with
// AUK), translates messages and converts statuses once. Before the core sees a terminal RPC
// (BeginAuthentication, CompleteAuthentication, ConfirmInstallation) the call spends a
// token of its source address's budget and of its SN's (TerminalRateLimits); over either
// budget it is RESOURCE_EXHAUSTED with google.rpc.RetryInfo, having cost no database access
// and no HSM command. VerifyAuditChain goes to the audit chain itself (rkl::audit), which
// KMS keeps beside the core. Thread-safe; the core and the chain must outlive it.

#include <memory>

#include "kms_core.h"
#include "rkl/audit/audit_log.h"
#include "rkl/rpc/adapter.h"
#include "rkl/rpc/public_call_gate.h"
#include "rkl/v1/kms.grpc.pb.h"

namespace rkl::kms {

// Budgets of the terminal RPCs, shared by the three (docs/kms.md "Rate limits"): per
// source address and per SN.
using TerminalRateLimits = rpc::PublicCallLimits;

class KmsGrpcService final : public rkl::v1::Kms::Service {
 public:
  KmsGrpcService(KmsCore& core, audit::PgAuditLog& audit, TerminalRateLimits limits = {});

  // Terminal calls refused for volume since start.
  uint64_t rate_limited() const { return gate_.refused(); }

  grpc::Status SubmitTransportKey(grpc::ServerContext* ctx,
                                  const rkl::v1::KmsSubmitTransportKeyRequest* req,
                                  rkl::v1::KmsSubmitTransportKeyResponse* resp) override;
  grpc::Status BeginAuthentication(grpc::ServerContext* ctx,
                                   const rkl::v1::BeginAuthenticationRequest* req,
                                   rkl::v1::BeginAuthenticationResponse* resp) override;
  grpc::Status CompleteAuthentication(grpc::ServerContext* ctx,
                                      const rkl::v1::CompleteAuthenticationRequest* req,
                                      rkl::v1::CompleteAuthenticationResponse* resp) override;
  grpc::Status ConfirmInstallation(grpc::ServerContext* ctx,
                                   const rkl::v1::ConfirmInstallationRequest* req,
                                   rkl::v1::ConfirmInstallationResponse* resp) override;
  grpc::Status GetTerminal(grpc::ServerContext* ctx, const rkl::v1::GetTerminalRequest* req,
                           rkl::v1::Terminal* resp) override;
  grpc::Status ListTerminals(grpc::ServerContext* ctx, const rkl::v1::ListTerminalsRequest* req,
                             rkl::v1::ListTerminalsResponse* resp) override;
  grpc::Status UnlockTerminal(grpc::ServerContext* ctx, const rkl::v1::TerminalAdminRequest* req,
                              rkl::v1::Terminal* resp) override;
  grpc::Status RevokeTerminal(grpc::ServerContext* ctx, const rkl::v1::TerminalAdminRequest* req,
                              rkl::v1::Terminal* resp) override;
  grpc::Status MarkForRekey(grpc::ServerContext* ctx, const rkl::v1::TerminalAdminRequest* req,
                            rkl::v1::Terminal* resp) override;
  grpc::Status GetStatistics(grpc::ServerContext* ctx, const rkl::v1::Empty* req,
                             rkl::v1::Statistics* resp) override;
  grpc::Status ListAudit(grpc::ServerContext* ctx, const rkl::v1::ListAuditRequest* req,
                         rkl::v1::ListAuditResponse* resp) override;
  grpc::Status VerifyAuditChain(grpc::ServerContext* ctx,
                                const rkl::v1::VerifyAuditChainRequest* req,
                                rkl::v1::VerifyAuditChainResponse* resp) override;

 private:
  // OK, or RESOURCE_EXHAUSTED with the time until the caller's next token.
  absl::Status AdmitTerminalCall(const grpc::ServerContext& ctx, const std::string& sn);

  KmsCore& core_;
  audit::PgAuditLog& audit_;
  const rpc::ServiceAdapter adapter_;
  rpc::PublicCallGate gate_;
};

void ToProto(const TerminalRecord& t, rkl::v1::Terminal* out);

}  // namespace rkl::kms
