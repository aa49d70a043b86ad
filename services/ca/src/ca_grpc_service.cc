#include "ca_grpc_service.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/rpc/enum_pairs.h"

namespace rkl::ca {
namespace {

// The authorized caller as the core's dual-control rules need it: identity and the serial of
// the certificate it presented.
Caller CallerOf(const grpc::ServerContextBase& ctx, const std::string& identity) {
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

// IssueWorkCertificate and IssueKdhCertificate carry the same fields.
template <typename Request>
HsmKeyCertificateRequest HsmKeyRequestOf(const Request& request) {
  HsmKeyCertificateRequest req;
  req.public_key_der.assign(request.public_key_der().begin(), request.public_key_der().end());
  req.hsm_id = request.hsm_id();
  req.key_index = request.key_index();
  req.validity_days = request.validity_days();
  return req;
}

constexpr rpc::EnumPairs<v1::Issuer, IssuerId, 4> kIssuers{{{
    {v1::ISSUER_TERMINAL_ROOT, IssuerId::kTerminalRoot},
    {v1::ISSUER_OPERATOR_CA, IssuerId::kOperatorCa},
    {v1::ISSUER_SERVICE_CA, IssuerId::kServiceCa},
    {v1::ISSUER_KDH_CA, IssuerId::kKdhCa},
}}};

constexpr rpc::EnumPairs<v1::RevocationReason, crypto::CrlReason, 4> kReasons{{{
    {v1::REVOCATION_REASON_KEY_COMPROMISE, crypto::CrlReason::kKeyCompromise},
    {v1::REVOCATION_REASON_AFFILIATION_CHANGED, crypto::CrlReason::kAffiliationChanged},
    {v1::REVOCATION_REASON_SUPERSEDED, crypto::CrlReason::kSuperseded},
    {v1::REVOCATION_REASON_CESSATION_OF_OPERATION, crypto::CrlReason::kCessationOfOperation},
}}};

}  // namespace

absl::StatusOr<IssuerId> IssuerFromProto(v1::Issuer issuer) {
  if (std::optional<IssuerId> id = kIssuers.Forward(issuer)) return *id;
  return absl::InvalidArgumentError(
      "issuer: must be ISSUER_TERMINAL_ROOT, ISSUER_OPERATOR_CA, ISSUER_SERVICE_CA or "
      "ISSUER_KDH_CA");
}

v1::Issuer IssuerToProto(IssuerId issuer) {
  return kIssuers.Backward(issuer).value_or(v1::ISSUER_UNSPECIFIED);
}

absl::StatusOr<crypto::CrlReason> ReasonFromProto(v1::RevocationReason reason) {
  if (std::optional<crypto::CrlReason> r = kReasons.Forward(reason)) return *r;
  return absl::InvalidArgumentError(
      "reason: must be KEY_COMPROMISE, AFFILIATION_CHANGED, SUPERSEDED or "
      "CESSATION_OF_OPERATION");
}

v1::RevocationReason ReasonToProto(crypto::CrlReason reason) {
  return kReasons.Backward(reason).value_or(v1::REVOCATION_REASON_UNSPECIFIED);
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

CaGrpcService::CaGrpcService(CaCore* core, std::function<void()> on_revoked)
    : UnaryService(
          rpc::ServiceAdapter::DescriptorOf<v1::CertificateAuthority>(),
          {.role_bindings = {{"service", std::vector<std::string>(std::begin(kServiceNames),
                                                                  std::end(kServiceNames))}},
           .on_refused =
               [core](std::string_view caller, std::string_view method,
                      const absl::Status& refusal) {
                 core->RecordRefusal(std::string(caller), std::string(method), refusal);
               }}),
      core_(core),
      on_revoked_(std::move(on_revoked)) {
  Bind("GetIssuerCertificate",
       [this](const rpc::UnaryCall&, const v1::GetIssuerCertificateRequest* request,
              v1::GetIssuerCertificateResponse* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(IssuerId issuer, IssuerFromProto(request->issuer()));
         RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, core_->GetIssuerCertificate(issuer));
         response->set_certificate_pem(cert.ToPem());
         return absl::OkStatus();
       });

  Bind("IssueWorkCertificate",
       [this](const rpc::UnaryCall&, const v1::IssueWorkCertificateRequest* request,
              v1::IssuedCertificate* response) -> absl::Status {
         return rpc::Answer(core_->IssueWorkCertificate(HsmKeyRequestOf(*request)), response,
                            FillIssued);
       });

  Bind("IssueKdhCertificate",
       [this](const rpc::UnaryCall&, const v1::IssueKdhCertificateRequest* request,
              v1::IssuedCertificate* response) -> absl::Status {
         return rpc::Answer(core_->IssueKdhCertificate(HsmKeyRequestOf(*request)), response,
                            FillIssued);
       });

  Bind("RequestCertificate",
       [this](const rpc::UnaryCall& call, const v1::RequestCertificateRequest* request,
              v1::CertificateRequestInfo* response) -> absl::Status {
         const Caller caller = CallerOf(call.ctx, call.caller);
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

  Bind("ApproveCertificateRequest",
       [this](const rpc::UnaryCall& call, const v1::ApproveCertificateRequestRequest* request,
              v1::CertificateRequestInfo* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(ApprovedRequest approved,
                              core_->ApproveRequest(CallerOf(call.ctx, call.caller),
                                                    request->request_id(), request->subject()));
         FillRequest(approved.request, response);
         FillIssued(approved.certificate, response->mutable_certificate());
         return absl::OkStatus();
       });

  Bind("GetCertificateRequest",
       [this](const rpc::UnaryCall&, const v1::GetCertificateRequestRequest* request,
              v1::CertificateRequestInfo* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(CertificateRequestRecord record,
                              core_->GetRequest(request->request_id()));
         FillRequest(record, response);
         if (record.state == RequestState::kIssued) {
           RKL_ASSIGN_OR_RETURN(CertificateRecord cert,
                                core_->GetCertificateStatus(record.serial_hex));
           RKL_ASSIGN_OR_RETURN(crypto::Certificate parsed,
                                crypto::Certificate::FromDer(cert.certificate_der));
           FillIssued(parsed, response->mutable_certificate());
         }
         return absl::OkStatus();
       });

  Bind("ListCertificateRequests",
       [this](const rpc::UnaryCall&, const v1::ListCertificateRequestsRequest* request,
              v1::ListCertificateRequestsResponse* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(std::vector<CertificateRequestRecord> records,
                              core_->ListRequests(!request->include_decided()));
         for (const CertificateRequestRecord& r : records) FillRequest(r, response->add_requests());
         return absl::OkStatus();
       });

  Bind("RevokeCertificate",
       [this](const rpc::UnaryCall& call, const v1::RevokeCertificateRequest* request,
              v1::CertificateStatus* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(crypto::CrlReason reason, ReasonFromProto(request->reason()));
         RKL_ASSIGN_OR_RETURN(CertificateRecord record,
                              core_->Revoke(request->serial_hex(), reason, call.caller));
         if (on_revoked_) on_revoked_();
         FillStatus(record, response);
         return absl::OkStatus();
       });

  Bind("GetCrl",
       [this](const rpc::UnaryCall&, const v1::GetCrlRequest* request,
              v1::GetCrlResponse* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(IssuerId issuer, IssuerFromProto(request->issuer()));
         RKL_ASSIGN_OR_RETURN(CrlRecord record, core_->GetCrl(issuer));
         RKL_ASSIGN_OR_RETURN(crypto::Crl crl, crypto::Crl::FromDer(record.crl_der));
         response->set_crl_pem(crl.ToPem());
         response->set_crl_number(record.crl_number);
         response->set_next_update_unix_s(record.next_update);
         return absl::OkStatus();
       });

  Bind("GetCertificateStatus",
       [this](const rpc::UnaryCall&, const v1::GetCertificateStatusRequest* request,
              v1::CertificateStatus* response) -> absl::Status {
         return rpc::Answer(core_->GetCertificateStatus(request->serial_hex()), response,
                            FillStatus);
       });
}

}  // namespace rkl::ca
