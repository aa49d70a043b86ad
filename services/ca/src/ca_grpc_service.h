#pragma once
// rkl.v1.CertificateAuthority over CaCore: translates messages, authorizes the caller from
// its mTLS identity (rpc::ServiceAdapter, by the roles ca.proto declares on each RPC) and
// converts statuses once. No logic of its own.
//
// Who may call what (ca.proto; PROTOCOL §2, ARCHITECTURE "Trust boundaries"):
//   GetIssuerCertificate, GetCrl, GetCertificateStatus — any rkl identity (services,
//     admins, custodians);
//   IssueWorkCertificate — `mtms` only;
//   IssueKdhCertificate — `kms` only (TR-34: the KDH key lives in HSM #2, which KMS fronts);
//   RequestCertificate, ApproveCertificateRequest, GetCertificateRequest,
//     ListCertificateRequests, RevokeCertificate — admin:* only (and the core adds the
//     rules of dual control: the approver is another admin than the requester, both holding
//     a good certificate of this CA).
// A refused call is audited (CaCore::RecordRefusal). Thread-safe; the core is not owned and
// must outlive the service.

#include <grpcpp/server_context.h>

#include <functional>

#include "ca_core.h"
#include "rkl/rpc/unary_service.h"
#include "rkl/v1/ca.grpc.pb.h"

namespace rkl::ca {

class CaGrpcService final : public rpc::UnaryService {
 public:
  // `on_revoked`, when set, runs after every successful revocation (the daemon refreshes
  // the CRL its own mTLS server enforces there).
  explicit CaGrpcService(CaCore* core, std::function<void()> on_revoked = nullptr);

 private:
  void FillRequest(const CertificateRequestRecord& r, v1::CertificateRequestInfo* out);

  CaCore* core_;
  const std::function<void()> on_revoked_;
};

// Enum conversions shared with rklctl.
absl::StatusOr<IssuerId> IssuerFromProto(v1::Issuer issuer);
v1::Issuer IssuerToProto(IssuerId issuer);
absl::StatusOr<crypto::CrlReason> ReasonFromProto(v1::RevocationReason reason);
v1::RevocationReason ReasonToProto(crypto::CrlReason reason);

}  // namespace rkl::ca
