#include "ca_grpc_service.h"

#include "absl/strings/str_cat.h"
#include "rkl/rpc/status.h"

namespace rkl::ca {
namespace {

using rpc::ToGrpcStatus;

std::vector<std::string> AnyRklIdentity() {
  std::vector<std::string> ids(std::begin(kServiceNames), std::end(kServiceNames));
  ids.push_back(std::string(kAdminPrefix) + "*");
  ids.push_back(std::string(kCustodianPrefix) + "*");
  return ids;
}

void FillIssued(const crypto::Certificate& cert, v1::IssuedCertificate* out) {
  out->set_certificate_pem(cert.ToPem());
  out->set_serial_hex(cert.SerialHex());
  out->set_not_after_unix_s(cert.NotAfter());
}

void FillStatus(const CertificateRecord& r, v1::CertificateStatus* out) {
  out->set_serial_hex(r.serial_hex);
  out->set_state(r.state == CertificateState::kRevoked ? v1::CertificateStatus::STATE_REVOKED
                                                       : v1::CertificateStatus::STATE_GOOD);
  out->set_issuer(IssuerToProto(r.issuer));
  out->set_subject_cn(r.subject_cn);
  out->set_profile(std::string(ProfileName(r.profile)));
  out->set_not_after_unix_s(r.not_after);
  if (r.state == CertificateState::kRevoked) {
    out->set_revoked_at_unix_s(r.revoked_at);
    out->set_reason(ReasonToProto(r.reason));
  }
}

}  // namespace

rpc::Authorizer MakeCaAuthorizer() {
  rpc::Authorizer a;
  const std::string admins = std::string(kAdminPrefix) + "*";
  a.Allow("GetIssuerCertificate", AnyRklIdentity())
      .Allow("GetCrl", AnyRklIdentity())
      .Allow("GetCertificateStatus", AnyRklIdentity())
      .Allow("IssueWorkCertificate", {"mtms"})
      .Allow("RequestCertificate", {admins})
      .Allow("ApproveCertificateRequest", {admins})
      .Allow("GetCertificateRequest", {admins})
      .Allow("ListCertificateRequests", {admins})
      .Allow("RevokeCertificate", {admins});
  return a;
}

absl::StatusOr<IssuerId> IssuerFromProto(v1::Issuer issuer) {
  switch (issuer) {
    case v1::ISSUER_TERMINAL_ROOT:
      return IssuerId::kTerminalRoot;
    case v1::ISSUER_OPERATOR_CA:
      return IssuerId::kOperatorCa;
    case v1::ISSUER_SERVICE_CA:
      return IssuerId::kServiceCa;
    default:
      return absl::InvalidArgumentError(
          "issuer: must be ISSUER_TERMINAL_ROOT, ISSUER_OPERATOR_CA or ISSUER_SERVICE_CA");
  }
}

v1::Issuer IssuerToProto(IssuerId issuer) {
  switch (issuer) {
    case IssuerId::kTerminalRoot:
      return v1::ISSUER_TERMINAL_ROOT;
    case IssuerId::kOperatorCa:
      return v1::ISSUER_OPERATOR_CA;
    case IssuerId::kServiceCa:
      return v1::ISSUER_SERVICE_CA;
  }
  return v1::ISSUER_UNSPECIFIED;
}

absl::StatusOr<crypto::CrlReason> ReasonFromProto(v1::RevocationReason reason) {
  switch (reason) {
    case v1::REVOCATION_REASON_KEY_COMPROMISE:
      return crypto::CrlReason::kKeyCompromise;
    case v1::REVOCATION_REASON_AFFILIATION_CHANGED:
      return crypto::CrlReason::kAffiliationChanged;
    case v1::REVOCATION_REASON_SUPERSEDED:
      return crypto::CrlReason::kSuperseded;
    case v1::REVOCATION_REASON_CESSATION_OF_OPERATION:
      return crypto::CrlReason::kCessationOfOperation;
    default:
      return absl::InvalidArgumentError(
          "reason: must be KEY_COMPROMISE, AFFILIATION_CHANGED, SUPERSEDED or "
          "CESSATION_OF_OPERATION");
  }
}

v1::RevocationReason ReasonToProto(crypto::CrlReason reason) {
  switch (reason) {
    case crypto::CrlReason::kKeyCompromise:
      return v1::REVOCATION_REASON_KEY_COMPROMISE;
    case crypto::CrlReason::kAffiliationChanged:
      return v1::REVOCATION_REASON_AFFILIATION_CHANGED;
    case crypto::CrlReason::kSuperseded:
      return v1::REVOCATION_REASON_SUPERSEDED;
    case crypto::CrlReason::kCessationOfOperation:
      return v1::REVOCATION_REASON_CESSATION_OF_OPERATION;
    default:
      return v1::REVOCATION_REASON_UNSPECIFIED;
  }
}

absl::StatusOr<Caller> CaGrpcService::Authorize(const grpc::ServerContext& ctx,
                                                const char* method) {
  std::string identity = rpc::GetCallerIdentity(ctx).name;
  if (absl::Status s = authorizer_.Check(method, identity); !s.ok()) {
    core_->RecordRefusal(identity, method, s);
    return s;
  }
  return Caller{identity, rpc::PeerCertificateSerialHex(ctx)};
}

void CaGrpcService::FillRequest(const CertificateRequestRecord& r,
                                v1::CertificateRequestInfo* out) {
  out->set_request_id(r.id);
  out->set_subject(r.subject);
  out->set_profile(std::string(ProfileName(r.profile)));
  for (const std::string& d : r.dns_names) out->add_dns_names(d);
  out->set_validity_days(r.validity_days);
  out->set_requested_by(r.requested_by);
  out->set_requested_at_unix_s(r.requested_at);
  out->set_expires_at_unix_s(r.expires_at);
  out->set_state(r.state == RequestState::kIssued ? v1::CertificateRequestInfo::STATE_ISSUED
                 : core_->IsExpired(r)            ? v1::CertificateRequestInfo::STATE_EXPIRED
                                                  : v1::CertificateRequestInfo::STATE_PENDING);
  out->set_approved_by(r.approved_by);
  out->set_approved_at_unix_s(r.approved_at);
  out->set_public_key_sha256_hex(CsrKeySha256Hex(r.csr_pem));
}

grpc::Status CaGrpcService::GetIssuerCertificate(grpc::ServerContext* ctx,
                                                 const v1::GetIssuerCertificateRequest* request,
                                                 v1::GetIssuerCertificateResponse* response) {
  if (absl::StatusOr<Caller> caller = Authorize(*ctx, "GetIssuerCertificate"); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  absl::StatusOr<IssuerId> issuer = IssuerFromProto(request->issuer());
  if (!issuer.ok()) return ToGrpcStatus(issuer.status());
  absl::StatusOr<crypto::Certificate> cert = core_->GetIssuerCertificate(*issuer);
  if (!cert.ok()) return ToGrpcStatus(cert.status());
  response->set_certificate_pem(cert->ToPem());
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::IssueWorkCertificate(grpc::ServerContext* ctx,
                                                 const v1::IssueWorkCertificateRequest* request,
                                                 v1::IssuedCertificate* response) {
  if (absl::StatusOr<Caller> caller = Authorize(*ctx, "IssueWorkCertificate"); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  WorkCertificateRequest req;
  req.public_key_der.assign(request->public_key_der().begin(), request->public_key_der().end());
  req.hsm_id = request->hsm_id();
  req.key_index = request->key_index();
  req.validity_days = request->validity_days();
  absl::StatusOr<crypto::Certificate> cert = core_->IssueWorkCertificate(req);
  if (!cert.ok()) return ToGrpcStatus(cert.status());
  FillIssued(*cert, response);
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::RequestCertificate(grpc::ServerContext* ctx,
                                               const v1::RequestCertificateRequest* request,
                                               v1::CertificateRequestInfo* response) {
  absl::StatusOr<Caller> caller = Authorize(*ctx, "RequestCertificate");
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<CertificateRequestRecord> record;
  if (request->has_service()) {
    const v1::IssueServiceCertificateRequest& svc = request->service();
    ServiceCertificateRequest req;
    req.csr_pem = svc.csr_pem();
    req.name = svc.name();
    req.dns_names.assign(svc.dns_names().begin(), svc.dns_names().end());
    req.validity_days = svc.validity_days();
    record = core_->RequestServiceCertificate(*caller, req);
  } else if (request->has_operator_()) {
    const v1::IssueOperatorCertificateRequest& op = request->operator_();
    record = core_->RequestOperatorCertificate(
        *caller, {op.csr_pem(), op.operator_id(), op.validity_days()});
  } else {
    return ToGrpcStatus(absl::InvalidArgumentError("certificate: set either service or operator"));
  }
  if (!record.ok()) return ToGrpcStatus(record.status());
  FillRequest(*record, response);
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::ApproveCertificateRequest(
    grpc::ServerContext* ctx, const v1::ApproveCertificateRequestRequest* request,
    v1::CertificateRequestInfo* response) {
  absl::StatusOr<Caller> caller = Authorize(*ctx, "ApproveCertificateRequest");
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<ApprovedRequest> approved =
      core_->ApproveRequest(*caller, request->request_id(), request->subject());
  if (!approved.ok()) return ToGrpcStatus(approved.status());
  FillRequest(approved->request, response);
  FillIssued(approved->certificate, response->mutable_certificate());
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::GetCertificateRequest(grpc::ServerContext* ctx,
                                                  const v1::GetCertificateRequestRequest* request,
                                                  v1::CertificateRequestInfo* response) {
  absl::StatusOr<Caller> caller = Authorize(*ctx, "GetCertificateRequest");
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<CertificateRequestRecord> record = core_->GetRequest(request->request_id());
  if (!record.ok()) return ToGrpcStatus(record.status());
  FillRequest(*record, response);
  if (record->state == RequestState::kIssued) {
    absl::StatusOr<CertificateRecord> cert = core_->GetCertificateStatus(record->serial_hex);
    if (!cert.ok()) return ToGrpcStatus(cert.status());
    absl::StatusOr<crypto::Certificate> parsed =
        crypto::Certificate::FromDer(cert->certificate_der);
    if (!parsed.ok()) return ToGrpcStatus(parsed.status());
    FillIssued(*parsed, response->mutable_certificate());
  }
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::ListCertificateRequests(
    grpc::ServerContext* ctx, const v1::ListCertificateRequestsRequest* request,
    v1::ListCertificateRequestsResponse* response) {
  absl::StatusOr<Caller> caller = Authorize(*ctx, "ListCertificateRequests");
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<std::vector<CertificateRequestRecord>> records =
      core_->ListRequests(!request->include_decided());
  if (!records.ok()) return ToGrpcStatus(records.status());
  for (const CertificateRequestRecord& r : *records) FillRequest(r, response->add_requests());
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::RevokeCertificate(grpc::ServerContext* ctx,
                                              const v1::RevokeCertificateRequest* request,
                                              v1::CertificateStatus* response) {
  absl::StatusOr<Caller> caller = Authorize(*ctx, "RevokeCertificate");
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<crypto::CrlReason> reason = ReasonFromProto(request->reason());
  if (!reason.ok()) return ToGrpcStatus(reason.status());
  absl::StatusOr<CertificateRecord> record =
      core_->Revoke(request->serial_hex(), *reason, caller->identity);
  if (!record.ok()) return ToGrpcStatus(record.status());
  if (on_revoked_) on_revoked_();
  FillStatus(*record, response);
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::GetCrl(grpc::ServerContext* ctx, const v1::GetCrlRequest* request,
                                   v1::GetCrlResponse* response) {
  if (absl::StatusOr<Caller> caller = Authorize(*ctx, "GetCrl"); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  absl::StatusOr<IssuerId> issuer = IssuerFromProto(request->issuer());
  if (!issuer.ok()) return ToGrpcStatus(issuer.status());
  absl::StatusOr<CrlRecord> record = core_->GetCrl(*issuer);
  if (!record.ok()) return ToGrpcStatus(record.status());
  absl::StatusOr<crypto::Crl> crl = crypto::Crl::FromDer(record->crl_der);
  if (!crl.ok()) return ToGrpcStatus(crl.status());
  response->set_crl_pem(crl->ToPem());
  response->set_crl_number(record->crl_number);
  response->set_next_update_unix_s(record->next_update);
  return grpc::Status::OK;
}

grpc::Status CaGrpcService::GetCertificateStatus(grpc::ServerContext* ctx,
                                                 const v1::GetCertificateStatusRequest* request,
                                                 v1::CertificateStatus* response) {
  if (absl::StatusOr<Caller> caller = Authorize(*ctx, "GetCertificateStatus"); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  absl::StatusOr<CertificateRecord> record = core_->GetCertificateStatus(request->serial_hex());
  if (!record.ok()) return ToGrpcStatus(record.status());
  FillStatus(*record, response);
  return grpc::Status::OK;
}

}  // namespace rkl::ca
