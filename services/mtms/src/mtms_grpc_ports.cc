#include "mtms_grpc_ports.h"

#include "rkl/common/status_macros.h"
#include "rkl/protocol/proto_enums.h"
#include "rkl/rpc/status.h"

namespace rkl::mtms {
namespace {

v1::Issuer ToProto(CaIssuer issuer) {
  return issuer == CaIssuer::kTerminalRoot ? v1::ISSUER_TERMINAL_ROOT : v1::ISSUER_OPERATOR_CA;
}

}  // namespace

GrpcHsmPort::GrpcHsmPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : hsm_(std::move(channel), timeout, "hsm") {}

absl::StatusOr<HsmPort::RsaKeyPair> GrpcHsmPort::GenerateRsaKeyPair(uint32_t bits,
                                                                    const std::string& label) {
  v1::GenerateRsaKeyPairRequest req;
  req.set_bits(bits);
  req.set_label(label);
  RKL_ASSIGN_OR_RETURN(v1::GenerateRsaKeyPairResponse resp,
                       hsm_.Call(&v1::Hsm::Stub::GenerateRsaKeyPair, req));
  return RsaKeyPair{
      .key_index = resp.key_index(),
      .public_key_der = Bytes(resp.public_key_der().begin(), resp.public_key_der().end())};
}

namespace {

void ToProto(const HsmPort::TranslateRequest& request, v1::TranslateTransportKeyRequest& req) {
  req.set_pr_index(request.pr_index);
  req.set_ctk_pu(std::string(AsString(request.ctk_pu)));
  req.set_sn(request.sn);
  req.set_created_at_unix_ms(request.created_at_unix_ms);
  req.set_pk_index(request.pk_index);
  req.set_mak_index(request.mak_index);
  req.set_algorithm(protocol::ToProto(request.algorithm));
  req.set_package(std::string(AsString(request.package)));
  req.set_package_signature(std::string(AsString(request.package_signature)));
  req.set_operator_certificate_der(std::string(AsString(request.operator_certificate_der)));
}

}  // namespace

absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> GrpcHsmPort::TranslateTransportKeys(
    std::span<const TranslateRequest> requests) {
  v1::TranslateTransportKeysRequest req;
  for (const TranslateRequest& request : requests) {
    ToProto(request, *req.add_items());
    req.add_request_ids(request.request_id);
  }
  RKL_ASSIGN_OR_RETURN(v1::TranslateTransportKeysResponse resp,
                       hsm_.Call(&v1::Hsm::Stub::TranslateTransportKeys, req));
  std::vector<absl::StatusOr<Bytes>> out;
  out.reserve(resp.outcomes_size());
  for (const v1::TranslateTransportKeyOutcome& outcome : resp.outcomes()) {
    if (outcome.code() == 0 && outcome.ctk_pk().empty()) {
      out.push_back(absl::InternalError("hsm: an OK translate outcome without ctk_pk"));
    } else if (outcome.code() == 0) {
      out.push_back(Bytes(outcome.ctk_pk().begin(), outcome.ctk_pk().end()));
    } else {
      // The item's own answer, exactly as the single call would have returned it.
      out.push_back(rpc::FromPeerStatus(outcome.code(), outcome.message(), "hsm"));
    }
  }
  return out;
}

absl::StatusOr<Bytes> GrpcHsmPort::TranslateTransportKey(const TranslateRequest& request) {
  v1::TranslateTransportKeyRequest req;
  ToProto(request, req);
  RKL_ASSIGN_OR_RETURN(v1::TranslateTransportKeyResponse resp,
                       hsm_.Call(&v1::Hsm::Stub::TranslateTransportKey, req));
  return Bytes(resp.ctk_pk().begin(), resp.ctk_pk().end());
}

GrpcCaPort::GrpcCaPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : ca_(std::move(channel), timeout, "ca") {}

absl::StatusOr<CaPort::IssuedCertificate> GrpcCaPort::IssueWorkCertificate(
    const Bytes& public_key_der, const std::string& hsm_id, uint64_t key_index) {
  v1::IssueWorkCertificateRequest req;
  req.set_public_key_der(std::string(AsString(public_key_der)));
  req.set_hsm_id(hsm_id);
  req.set_key_index(key_index);
  RKL_ASSIGN_OR_RETURN(v1::IssuedCertificate resp,
                       ca_.Call(&v1::CertificateAuthority::Stub::IssueWorkCertificate, req));
  return IssuedCertificate{.certificate_pem = resp.certificate_pem(),
                           .serial_hex = resp.serial_hex()};
}

namespace {

// GetIssuerCertificate and GetCrl: a request naming an issuer, a PEM in the answer.
template <typename Request, typename Response>
absl::StatusOr<std::string> IssuerPem(const rpc::PeerClient<v1::CertificateAuthority>& ca,
                                      grpc::Status (v1::CertificateAuthority::Stub::*rpc)(
                                          grpc::ClientContext*, const Request&, Response*),
                                      const std::string& (Response::*pem)() const,
                                      CaIssuer issuer) {
  Request req;
  req.set_issuer(ToProto(issuer));
  RKL_ASSIGN_OR_RETURN(Response resp, ca.Call(rpc, req));
  return (resp.*pem)();
}

}  // namespace

absl::StatusOr<std::string> GrpcCaPort::GetIssuerCertificate(CaIssuer issuer) {
  return IssuerPem(ca_, &v1::CertificateAuthority::Stub::GetIssuerCertificate,
                   &v1::GetIssuerCertificateResponse::certificate_pem, issuer);
}

absl::StatusOr<std::string> GrpcCaPort::GetCrl(CaIssuer issuer) {
  return IssuerPem(ca_, &v1::CertificateAuthority::Stub::GetCrl, &v1::GetCrlResponse::crl_pem,
                   issuer);
}

GrpcKmsPort::GrpcKmsPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : kms_(std::move(channel), timeout, "kms") {}

absl::StatusOr<KmsPort::Receipt> GrpcKmsPort::SubmitTransportKey(const std::string& sn,
                                                                 const Bytes& ctk_pk,
                                                                 const std::string& submission_id) {
  v1::KmsSubmitTransportKeyRequest req;
  req.set_sn(sn);
  req.set_ctk_pk(std::string(AsString(ctk_pk)));
  req.set_mtms_submission_id(submission_id);
  RKL_ASSIGN_OR_RETURN(v1::KmsSubmitTransportKeyResponse resp,
                       kms_.Call(&v1::Kms::Stub::SubmitTransportKey, req));
  return Receipt{.duplicate = resp.duplicate()};
}

absl::StatusOr<std::vector<absl::StatusOr<KmsPort::Receipt>>> GrpcKmsPort::SubmitTransportKeys(
    std::span<const Submission> submissions) {
  v1::KmsSubmitTransportKeysRequest req;
  for (const Submission& s : submissions) {
    v1::KmsSubmitTransportKeyRequest* item = req.add_items();
    item->set_sn(s.sn);
    item->set_ctk_pk(std::string(AsString(s.ctk_pk)));
    item->set_mtms_submission_id(s.submission_id);
    req.add_request_ids(s.request_id);
  }
  RKL_ASSIGN_OR_RETURN(v1::KmsSubmitTransportKeysResponse resp,
                       kms_.Call(&v1::Kms::Stub::SubmitTransportKeys, req));
  std::vector<absl::StatusOr<Receipt>> out;
  out.reserve(resp.outcomes_size());
  for (const v1::KmsSubmitTransportKeyOutcome& outcome : resp.outcomes()) {
    if (outcome.code() == 0) {
      out.push_back(Receipt{.duplicate = outcome.duplicate()});
    } else {
      // The item's own answer, exactly as the single call would have returned it.
      out.push_back(rpc::FromPeerStatus(outcome.code(), outcome.message(), "kms"));
    }
  }
  return out;
}

}  // namespace rkl::mtms
