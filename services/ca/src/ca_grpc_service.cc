#include "ca_grpc_service.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"

namespace rkl::ca {
namespace {

// The authorized caller as the core's dual-control rules need it: identity and the serial of
// the certificate it presented.
Caller CallerOf(const grpc::ServerContext& ctx, const std::string& identity) {
  return Caller{identity, rpc::PeerCertificateSerialHex(ctx)};
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

CaGrpcService::CaGrpcService(CaCore* core, std::function<void()> on_revoked)
    : core_(core),
      adapter_(rpc::ServiceAdapter::DescriptorOf<v1::CertificateAuthority>(),
               {.role_bindings = {{"service", std::vector<std::string>(std::begin(kServiceNames),
                                                                       std::end(kServiceNames))}},
                .on_refused =
                    [core](std::string_view caller, std::string_view method,
                           const absl::Status& refusal) {
                      core->RecordRefusal(std::string(caller), std::string(method), refusal);
                    }}),
      on_revoked_(std::move(on_revoked)) {}

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
  return adapter_.Serve(*ctx, [&](const std::string&) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(IssuerId issuer, IssuerFromProto(request->issuer()));
    RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, core_->GetIssuerCertificate(issuer));
    response->set_certificate_pem(cert.ToPem());
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::IssueWorkCertificate(grpc::ServerContext* ctx,
                                                 const v1::IssueWorkCertificateRequest* request,
                                                 v1::IssuedCertificate* response) {
  return adapter_.Serve(*ctx, [&](const std::string&) -> absl::Status {
    WorkCertificateRequest req;
    req.public_key_der.assign(request->public_key_der().begin(), request->public_key_der().end());
    req.hsm_id = request->hsm_id();
    req.key_index = request->key_index();
    req.validity_days = request->validity_days();
    RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, core_->IssueWorkCertificate(req));
    FillIssued(cert, response);
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::RequestCertificate(grpc::ServerContext* ctx,
                                               const v1::RequestCertificateRequest* request,
                                               v1::CertificateRequestInfo* response) {
  return adapter_.Serve(*ctx, [&](const std::string& identity) -> absl::Status {
    const Caller caller = CallerOf(*ctx, identity);
    absl::StatusOr<CertificateRequestRecord> record;
    if (request->has_service()) {
      const v1::IssueServiceCertificateRequest& svc = request->service();
      ServiceCertificateRequest req;
      req.csr_pem = svc.csr_pem();
      req.name = svc.name();
      req.dns_names.assign(svc.dns_names().begin(), svc.dns_names().end());
      req.validity_days = svc.validity_days();
      record = core_->RequestServiceCertificate(caller, req);
    } else if (request->has_operator_()) {
      const v1::IssueOperatorCertificateRequest& op = request->operator_();
      record = core_->RequestOperatorCertificate(
          caller, {op.csr_pem(), op.operator_id(), op.validity_days()});
    } else {
      return absl::InvalidArgumentError("certificate: set either service or operator");
    }
    if (!record.ok()) return record.status();
    FillRequest(*record, response);
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::ApproveCertificateRequest(
    grpc::ServerContext* ctx, const v1::ApproveCertificateRequestRequest* request,
    v1::CertificateRequestInfo* response) {
  return adapter_.Serve(*ctx, [&](const std::string& identity) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(
        ApprovedRequest approved,
        core_->ApproveRequest(CallerOf(*ctx, identity), request->request_id(), request->subject()));
    FillRequest(approved.request, response);
    FillIssued(approved.certificate, response->mutable_certificate());
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::GetCertificateRequest(grpc::ServerContext* ctx,
                                                  const v1::GetCertificateRequestRequest* request,
                                                  v1::CertificateRequestInfo* response) {
  return adapter_.Serve(*ctx, [&](const std::string&) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(CertificateRequestRecord record, core_->GetRequest(request->request_id()));
    FillRequest(record, response);
    if (record.state == RequestState::kIssued) {
      RKL_ASSIGN_OR_RETURN(CertificateRecord cert, core_->GetCertificateStatus(record.serial_hex));
      RKL_ASSIGN_OR_RETURN(crypto::Certificate parsed,
                           crypto::Certificate::FromDer(cert.certificate_der));
      FillIssued(parsed, response->mutable_certificate());
    }
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::ListCertificateRequests(
    grpc::ServerContext* ctx, const v1::ListCertificateRequestsRequest* request,
    v1::ListCertificateRequestsResponse* response) {
  return adapter_.Serve(*ctx, [&](const std::string&) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::vector<CertificateRequestRecord> records,
                         core_->ListRequests(!request->include_decided()));
    for (const CertificateRequestRecord& r : records) FillRequest(r, response->add_requests());
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::RevokeCertificate(grpc::ServerContext* ctx,
                                              const v1::RevokeCertificateRequest* request,
                                              v1::CertificateStatus* response) {
  return adapter_.Serve(*ctx, [&](const std::string& identity) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(crypto::CrlReason reason, ReasonFromProto(request->reason()));
    RKL_ASSIGN_OR_RETURN(CertificateRecord record,
                         core_->Revoke(request->serial_hex(), reason, identity));
    if (on_revoked_) on_revoked_();
    FillStatus(record, response);
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::GetCrl(grpc::ServerContext* ctx, const v1::GetCrlRequest* request,
                                   v1::GetCrlResponse* response) {
  return adapter_.Serve(*ctx, [&](const std::string&) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(IssuerId issuer, IssuerFromProto(request->issuer()));
    RKL_ASSIGN_OR_RETURN(CrlRecord record, core_->GetCrl(issuer));
    RKL_ASSIGN_OR_RETURN(crypto::Crl crl, crypto::Crl::FromDer(record.crl_der));
    response->set_crl_pem(crl.ToPem());
    response->set_crl_number(record.crl_number);
    response->set_next_update_unix_s(record.next_update);
    return absl::OkStatus();
  });
}

grpc::Status CaGrpcService::GetCertificateStatus(grpc::ServerContext* ctx,
                                                 const v1::GetCertificateStatusRequest* request,
                                                 v1::CertificateStatus* response) {
  return adapter_.Serve(*ctx, [&](const std::string&) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(CertificateRecord record,
                         core_->GetCertificateStatus(request->serial_hex()));
    FillStatus(record, response);
    return absl::OkStatus();
  });
}

}  // namespace rkl::ca
