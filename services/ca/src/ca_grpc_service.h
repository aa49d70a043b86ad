#pragma once
// rkl.v1.CertificateAuthority over CaCore: translates messages, authorizes the caller from
// its mTLS identity and converts statuses (rpc::ToGrpcStatus). No logic of its own.
//
// Who may call what (PROTOCOL §2, ARCHITECTURE "Trust boundaries"):
//   GetIssuerCertificate, GetCrl, GetCertificateStatus — any rkl identity (services, admins);
//   IssueWorkCertificate — `mtms` only;
//   IssueOperatorCertificate, IssueServiceCertificate, RevokeCertificate — admin:* only.
// Thread-safe; the core is not owned and must outlive the service.

#include <grpcpp/server_context.h>

#include "ca_core.h"
#include "rkl/rpc/identity.h"
#include "rkl/v1/ca.grpc.pb.h"

namespace rkl::ca {

// The authorization table above, for the service and for tests.
rpc::Authorizer MakeCaAuthorizer();

class CaGrpcService final : public rkl::v1::CertificateAuthority::Service {
 public:
  explicit CaGrpcService(CaCore* core) : core_(core), authorizer_(MakeCaAuthorizer()) {}

  grpc::Status GetIssuerCertificate(grpc::ServerContext* ctx,
                                    const v1::GetIssuerCertificateRequest* request,
                                    v1::GetIssuerCertificateResponse* response) override;
  grpc::Status IssueWorkCertificate(grpc::ServerContext* ctx,
                                    const v1::IssueWorkCertificateRequest* request,
                                    v1::IssuedCertificate* response) override;
  grpc::Status IssueOperatorCertificate(grpc::ServerContext* ctx,
                                        const v1::IssueOperatorCertificateRequest* request,
                                        v1::IssuedCertificate* response) override;
  grpc::Status IssueServiceCertificate(grpc::ServerContext* ctx,
                                       const v1::IssueServiceCertificateRequest* request,
                                       v1::IssuedCertificate* response) override;
  grpc::Status RevokeCertificate(grpc::ServerContext* ctx,
                                 const v1::RevokeCertificateRequest* request,
                                 v1::CertificateStatus* response) override;
  grpc::Status GetCrl(grpc::ServerContext* ctx, const v1::GetCrlRequest* request,
                      v1::GetCrlResponse* response) override;
  grpc::Status GetCertificateStatus(grpc::ServerContext* ctx,
                                    const v1::GetCertificateStatusRequest* request,
                                    v1::CertificateStatus* response) override;

 private:
  CaCore* core_;
  const rpc::Authorizer authorizer_;
};

// Enum conversions shared with rklctl.
absl::StatusOr<IssuerId> IssuerFromProto(v1::Issuer issuer);
v1::Issuer IssuerToProto(IssuerId issuer);
absl::StatusOr<crypto::CrlReason> ReasonFromProto(v1::RevocationReason reason);
v1::RevocationReason ReasonToProto(crypto::CrlReason reason);

}  // namespace rkl::ca
