#include "clients.h"

#include "absl/strings/str_cat.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/status.h"
#include "spdlog/spdlog.h"

namespace rkl::pos {
namespace {

std::string ToString(const Bytes& b) { return std::string(b.begin(), b.end()); }
Bytes ToBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

// The service's status, its message prefixed with the RPC; its payloads (a retry hint) kept.
absl::Status Failed(std::string_view rpc, const grpc::Status& status) {
  absl::Status s = rpc::FromGrpcStatus(status);
  absl::Status out(s.code(), absl::StrCat(std::string(rpc), ": ", s.message()));
  s.ForEachPayload([&](absl::string_view type_url, const absl::Cord& payload) {
    out.SetPayload(type_url, payload);
  });
  return out;
}

KmsTerminalView ToView(const rkl::v1::Terminal& t) {
  return KmsTerminalView{t.sn(), rkl::v1::TerminalState_Name(t.state()), t.tmk_kcv(), t.tek_kcv(),
                         t.auk_kcv()};
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakePosChannel(const Endpoint& endpoint) {
  if (endpoint.target.empty()) {
    return absl::InvalidArgumentError("endpoint: a host:port target is required");
  }
  rpc::ChannelOptions options;
  options.tls = endpoint.tls;
  options.authority = endpoint.authority;
  // A dns:/// target names scaled-out replicas (compose: kms-1 and kms-2 behind the alias
  // kms): spread the terminals' calls over all of them, as rkl-mtms does.
  options.round_robin = endpoint.target.rfind("dns:", 0) == 0;
  return rpc::MakeChannel(endpoint.target, options);
}

GrpcMtmsClient::GrpcMtmsClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : stub_(rkl::v1::Mtms::NewStub(std::move(channel))), timeout_(timeout) {}

absl::StatusOr<WorkCertificateBundle> GrpcMtmsClient::GetWorkCertificate() {
  auto ctx = rpc::MakeClientContext(timeout_);
  rkl::v1::GetWorkCertificateRequest req;
  rkl::v1::GetWorkCertificateResponse resp;
  grpc::Status status = stub_->GetWorkCertificate(ctx.get(), req, &resp);
  if (!status.ok()) return Failed("mtms GetWorkCertificate", status);
  return WorkCertificateBundle{resp.work_certificate_pem(), resp.terminal_root_pem(),
                               resp.serial_hex()};
}

absl::StatusOr<SubmissionReceipt> GrpcMtmsClient::SubmitTransportKey(
    const Bytes& package, const Bytes& signature, const std::string& operator_certificate_pem) {
  auto ctx = rpc::MakeClientContext(timeout_);
  rkl::v1::SubmitTransportKeyRequest req;
  req.set_package(ToString(package));
  req.set_signature(ToString(signature));
  req.set_operator_certificate_pem(operator_certificate_pem);
  rkl::v1::SubmitTransportKeyResponse resp;
  grpc::Status status = stub_->SubmitTransportKey(ctx.get(), req, &resp);
  if (!status.ok()) return Failed("mtms SubmitTransportKey", status);
  return SubmissionReceipt{resp.submission_id(), rkl::v1::SubmissionState_Name(resp.state())};
}

absl::StatusOr<SubmissionView> GrpcMtmsClient::GetOwnSubmission(
    const Bytes& query, const Bytes& signature, const std::string& operator_certificate_pem) {
  auto ctx = rpc::MakeClientContext(timeout_);
  rkl::v1::GetOwnSubmissionRequest req;
  req.set_query(ToString(query));
  req.set_signature(ToString(signature));
  req.set_operator_certificate_pem(operator_certificate_pem);
  rkl::v1::Submission resp;
  grpc::Status status = stub_->GetOwnSubmission(ctx.get(), req, &resp);
  if (!status.ok()) return Failed("mtms GetOwnSubmission", status);
  return SubmissionView{resp.submission_id(), resp.sn(),
                        rkl::v1::SubmissionState_Name(resp.state()), resp.reason(),
                        resp.attempts()};
}

GrpcKmsClient::GrpcKmsClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : stub_(rkl::v1::Kms::NewStub(std::move(channel))), timeout_(timeout) {}

absl::StatusOr<AuthChallenge> GrpcKmsClient::BeginAuthentication(const std::string& sn,
                                                                 const Bytes& rnd1) {
  auto ctx = rpc::MakeClientContext(timeout_);
  rkl::v1::BeginAuthenticationRequest req;
  req.set_sn(sn);
  req.set_rnd1(ToString(rnd1));
  rkl::v1::BeginAuthenticationResponse resp;
  grpc::Status status = stub_->BeginAuthentication(ctx.get(), req, &resp);
  if (!status.ok()) return rpc::FromGrpcStatus(status);  // NOT_FOUND is examined by callers
  return AuthChallenge{resp.session_id(), ToBytes(resp.crnd1()), ToBytes(resp.rnd2())};
}

absl::StatusOr<KeyDelivery> GrpcKmsClient::CompleteAuthentication(const std::string& session_id,
                                                                  const std::string& sn,
                                                                  const Bytes& crnd2) {
  auto ctx = rpc::MakeClientContext(timeout_);
  rkl::v1::CompleteAuthenticationRequest req;
  req.set_session_id(session_id);
  req.set_sn(sn);
  req.set_crnd2(ToString(crnd2));
  rkl::v1::CompleteAuthenticationResponse resp;
  grpc::Status status = stub_->CompleteAuthentication(ctx.get(), req, &resp);
  if (!status.ok()) return rpc::FromGrpcStatus(status);
  return KeyDelivery{resp.key_block(), resp.tmk_kcv()};
}

absl::StatusOr<std::string> GrpcKmsClient::ConfirmInstallation(const std::string& session_id,
                                                               const std::string& sn,
                                                               const Bytes& proof) {
  auto ctx = rpc::MakeClientContext(timeout_);
  rkl::v1::ConfirmInstallationRequest req;
  req.set_session_id(session_id);
  req.set_sn(sn);
  req.set_proof(ToString(proof));
  rkl::v1::ConfirmInstallationResponse resp;
  grpc::Status status = stub_->ConfirmInstallation(ctx.get(), req, &resp);
  if (!status.ok()) return rpc::FromGrpcStatus(status);
  return rkl::v1::TerminalState_Name(resp.state());
}

absl::StatusOr<KmsTerminalView> GrpcKmsClient::GetTerminal(const std::string& sn) {
  auto ctx = rpc::MakeClientContext(timeout_);
  rkl::v1::GetTerminalRequest req;
  req.set_sn(sn);
  rkl::v1::Terminal resp;
  grpc::Status status = stub_->GetTerminal(ctx.get(), req, &resp);
  if (!status.ok()) return Failed("kms GetTerminal", status);
  return ToView(resp);
}

absl::StatusOr<std::vector<KmsTerminalView>> GrpcKmsClient::ListTerminals(
    const std::string& sn_prefix) {
  constexpr uint32_t kPageSize = 1000;
  std::vector<KmsTerminalView> out;
  std::string token;
  do {
    auto ctx = rpc::MakeClientContext(timeout_);
    rkl::v1::ListTerminalsRequest req;
    req.set_sn_prefix(sn_prefix);
    req.mutable_page()->set_page_size(kPageSize);
    req.mutable_page()->set_page_token(token);
    rkl::v1::ListTerminalsResponse resp;
    grpc::Status status = stub_->ListTerminals(ctx.get(), req, &resp);
    if (!status.ok()) return Failed("kms ListTerminals", status);
    for (const auto& t : resp.terminals()) out.push_back(ToView(t));
    token = resp.next_page_token();
  } while (!token.empty());
  return out;
}

absl::StatusOr<std::string> ConfirmReplyDropper::ConfirmInstallation(const std::string& session_id,
                                                                     const std::string& sn,
                                                                     const Bytes& proof) {
  absl::StatusOr<std::string> answer = kms_.ConfirmInstallation(session_id, sn, proof);
  if (remaining_.fetch_sub(1) <= 0) {
    remaining_.fetch_add(1);
    return answer;
  }
  dropped_.fetch_add(1);
  spdlog::warn("terminal {}: test switch {}: the answer to ConfirmInstallation ({}) is dropped", sn,
               kDropConfirmRepliesEnv,
               answer.ok() ? *answer : absl::StatusCodeToString(answer.status().code()));
  return absl::UnavailableError("kms: ConfirmInstallation: reply lost (test switch)");
}

}  // namespace rkl::pos
