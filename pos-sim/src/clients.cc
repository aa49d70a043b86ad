#include "clients.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/protocol/proto_enums.h"
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

// One unary RPC, `method` of `stub` (&Stub::GetTerminal, ...), under a `timeout` deadline.
// A failure is the service's status with its message prefixed by `rpc` (Failed); an empty
// `rpc` leaves it as the service sent it, for callers that examine the message.
template <typename Stub, typename Req, typename Resp>
absl::StatusOr<Resp> Call(Stub& stub,
                          grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                          const Req& req, absl::Duration timeout, std::string_view rpc = {}) {
  auto ctx = rpc::MakeClientContext(timeout);
  Resp resp;
  grpc::Status status = (stub.*method)(ctx.get(), req, &resp);
  if (status.ok()) return resp;
  if (rpc.empty()) return rpc::FromGrpcStatus(status);
  return Failed(rpc, status);
}

// A request the operator card signed: `signature` over its payload, and the signer's
// certificate.
template <typename Req>
Req OperatorSigned(const Bytes& signature, const std::string& operator_certificate_pem) {
  Req req;
  req.set_signature(ToString(signature));
  req.set_operator_certificate_pem(operator_certificate_pem);
  return req;
}

// A request within an authentication session: the session and the terminal's SN.
template <typename Req>
Req InSession(const std::string& session_id, const std::string& sn) {
  Req req;
  req.set_session_id(session_id);
  req.set_sn(sn);
  return req;
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
  RKL_ASSIGN_OR_RETURN(
      rkl::v1::GetWorkCertificateResponse resp,
      Call(*stub_, &rkl::v1::Mtms::Stub::GetWorkCertificate, rkl::v1::GetWorkCertificateRequest(),
           timeout_, "mtms GetWorkCertificate"));
  return WorkCertificateBundle{resp.work_certificate_pem(), resp.terminal_root_pem(),
                               resp.serial_hex()};
}

absl::StatusOr<SubmissionReceipt> GrpcMtmsClient::SubmitTransportKey(
    const Bytes& package, const Bytes& signature, const std::string& operator_certificate_pem) {
  auto req =
      OperatorSigned<rkl::v1::SubmitTransportKeyRequest>(signature, operator_certificate_pem);
  req.set_package(ToString(package));
  RKL_ASSIGN_OR_RETURN(rkl::v1::SubmitTransportKeyResponse resp,
                       Call(*stub_, &rkl::v1::Mtms::Stub::SubmitTransportKey, req, timeout_,
                            "mtms SubmitTransportKey"));
  return SubmissionReceipt{resp.submission_id(), rkl::v1::SubmissionState_Name(resp.state())};
}

absl::StatusOr<SubmissionView> GrpcMtmsClient::GetOwnSubmission(
    const Bytes& query, const Bytes& signature, const std::string& operator_certificate_pem) {
  auto req = OperatorSigned<rkl::v1::GetOwnSubmissionRequest>(signature, operator_certificate_pem);
  req.set_query(ToString(query));
  RKL_ASSIGN_OR_RETURN(
      rkl::v1::Submission resp,
      Call(*stub_, &rkl::v1::Mtms::Stub::GetOwnSubmission, req, timeout_, "mtms GetOwnSubmission"));
  return SubmissionView{resp.submission_id(), resp.sn(),
                        rkl::v1::SubmissionState_Name(resp.state()), resp.reason(),
                        resp.attempts()};
}

GrpcKmsClient::GrpcKmsClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : stub_(rkl::v1::Kms::NewStub(std::move(channel))), timeout_(timeout) {}

absl::StatusOr<AuthChallenge> GrpcKmsClient::BeginAuthentication(const std::string& sn,
                                                                 const Bytes& rnd1,
                                                                 absl::Duration wait) {
  rkl::v1::BeginAuthenticationRequest req;
  req.set_sn(sn);
  req.set_rnd1(ToString(rnd1));
  wait = std::clamp(wait, absl::ZeroDuration(), absl::Milliseconds(UINT32_MAX));
  req.set_wait_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(wait)));
  // The call's own timeout on top of the wait: KMS answers after waiting, with time to spare.
  // NOT_FOUND is examined by callers.
  RKL_ASSIGN_OR_RETURN(
      rkl::v1::BeginAuthenticationResponse resp,
      Call(*stub_, &rkl::v1::Kms::Stub::BeginAuthentication, req, timeout_ + wait));
  return AuthChallenge{resp.session_id(), ToBytes(resp.crnd1()), ToBytes(resp.rnd2())};
}

absl::StatusOr<KeyDelivery> GrpcKmsClient::CompleteAuthentication(const std::string& session_id,
                                                                  const std::string& sn,
                                                                  const Bytes& crnd2) {
  auto req = InSession<rkl::v1::CompleteAuthenticationRequest>(session_id, sn);
  req.set_crnd2(ToString(crnd2));
  RKL_ASSIGN_OR_RETURN(rkl::v1::CompleteAuthenticationResponse resp,
                       Call(*stub_, &rkl::v1::Kms::Stub::CompleteAuthentication, req, timeout_));
  return KeyDelivery{resp.key_block(), resp.tmk_kcv()};
}

absl::StatusOr<std::string> GrpcKmsClient::ConfirmInstallation(const std::string& session_id,
                                                               const std::string& sn,
                                                               const Bytes& proof) {
  auto req = InSession<rkl::v1::ConfirmInstallationRequest>(session_id, sn);
  req.set_proof(ToString(proof));
  RKL_ASSIGN_OR_RETURN(rkl::v1::ConfirmInstallationResponse resp,
                       Call(*stub_, &rkl::v1::Kms::Stub::ConfirmInstallation, req, timeout_));
  return rkl::v1::TerminalState_Name(resp.state());
}

absl::StatusOr<Bytes> GrpcKmsClient::GetKdhCredential(const std::string& sn) {
  rkl::v1::GetKdhCredentialRequest req;
  req.set_sn(sn);
  RKL_ASSIGN_OR_RETURN(rkl::v1::GetKdhCredentialResponse resp,
                       Call(*stub_, &rkl::v1::Kms::Stub::GetKdhCredential, req, timeout_));
  return ToBytes(resp.ct_kdh());
}

absl::StatusOr<KeyTokenDelivery> GrpcKmsClient::RequestKeyToken(const std::string& sn,
                                                                const Bytes& ct_krd,
                                                                const Bytes& rt_krd,
                                                                crypto::KeyAlgorithm algorithm) {
  rkl::v1::RequestKeyTokenRequest req;
  req.set_sn(sn);
  req.set_ct_krd(ToString(ct_krd));
  req.set_rt_krd(ToString(rt_krd));
  req.set_algorithm(protocol::ToProto(algorithm));
  RKL_ASSIGN_OR_RETURN(rkl::v1::RequestKeyTokenResponse resp,
                       Call(*stub_, &rkl::v1::Kms::Stub::RequestKeyToken, req, timeout_));
  return KeyTokenDelivery{ToBytes(resp.key_token()), resp.tmk_kcv(),
                          rkl::v1::TerminalState_Name(resp.state())};
}

absl::StatusOr<std::string> GrpcKmsClient::ConfirmKeyToken(const std::string& sn,
                                                           const Bytes& proof) {
  rkl::v1::ConfirmKeyTokenRequest req;
  req.set_sn(sn);
  req.set_proof(ToString(proof));
  RKL_ASSIGN_OR_RETURN(rkl::v1::ConfirmInstallationResponse resp,
                       Call(*stub_, &rkl::v1::Kms::Stub::ConfirmKeyToken, req, timeout_));
  return rkl::v1::TerminalState_Name(resp.state());
}

absl::StatusOr<KmsTerminalView> GrpcKmsClient::GetTerminal(const std::string& sn) {
  rkl::v1::GetTerminalRequest req;
  req.set_sn(sn);
  RKL_ASSIGN_OR_RETURN(rkl::v1::Terminal resp, Call(*stub_, &rkl::v1::Kms::Stub::GetTerminal, req,
                                                    timeout_, "kms GetTerminal"));
  return ToView(resp);
}

absl::StatusOr<std::vector<KmsTerminalView>> GrpcKmsClient::ListTerminals(
    const std::string& sn_prefix) {
  constexpr uint32_t kPageSize = 1000;
  std::vector<KmsTerminalView> out;
  std::string token;
  do {
    rkl::v1::ListTerminalsRequest req;
    req.set_sn_prefix(sn_prefix);
    req.mutable_page()->set_page_size(kPageSize);
    req.mutable_page()->set_page_token(token);
    RKL_ASSIGN_OR_RETURN(
        rkl::v1::ListTerminalsResponse resp,
        Call(*stub_, &rkl::v1::Kms::Stub::ListTerminals, req, timeout_, "kms ListTerminals"));
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

absl::StatusOr<std::string> KeyTokenConfirmReplyDropper::ConfirmKeyToken(const std::string& sn,
                                                                         const Bytes& proof) {
  absl::StatusOr<std::string> answer = kms_.ConfirmKeyToken(sn, proof);
  if (remaining_.fetch_sub(1) <= 0) {
    remaining_.fetch_add(1);
    return answer;
  }
  dropped_.fetch_add(1);
  spdlog::warn("terminal {}: test switch {}: the answer to ConfirmKeyToken ({}) is dropped", sn,
               kDropConfirmRepliesEnv,
               answer.ok() ? *answer : absl::StatusCodeToString(answer.status().code()));
  return absl::UnavailableError("kms: ConfirmKeyToken: reply lost (test switch)");
}

}  // namespace rkl::pos
