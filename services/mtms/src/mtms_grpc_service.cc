#include "mtms_grpc_service.h"

#include "rkl/common/status_macros.h"
#include "rkl/protocol/sn.h"
#include "rkl/rpc/enum_pairs.h"

namespace rkl::mtms {
namespace {

constexpr rpc::EnumPairs<SubmissionState, v1::SubmissionState, 3> kSubmissionStates{{{
    {SubmissionState::kReceived, v1::SUBMISSION_STATE_RECEIVED},
    {SubmissionState::kForwarded, v1::SUBMISSION_STATE_FORWARDED},
    {SubmissionState::kRejected, v1::SUBMISSION_STATE_REJECTED},
}}};

constexpr rpc::EnumPairs<WorkKeyState, v1::WorkKey::State, 3> kWorkKeyStates{{{
    {WorkKeyState::kCurrent, v1::WorkKey::STATE_CURRENT},
    {WorkKeyState::kPrevious, v1::WorkKey::STATE_PREVIOUS},
    {WorkKeyState::kRetired, v1::WorkKey::STATE_RETIRED},
}}};

v1::SubmissionState ToProto(SubmissionState state) {
  return kSubmissionStates.Forward(state).value_or(v1::SUBMISSION_STATE_UNSPECIFIED);
}

v1::WorkKey::State ToProto(WorkKeyState state) {
  return kWorkKeyStates.Forward(state).value_or(v1::WorkKey::STATE_UNSPECIFIED);
}

void ToProto(const SubmissionRecord& row, v1::Submission* out) {
  out->set_submission_id(row.submission_id);
  out->set_sn(row.sn);
  out->set_operator_id(row.operator_id);
  out->set_state(ToProto(row.state));
  out->set_reason(row.reason);
  out->set_received_at_unix_ms(row.received_at_ms);
  out->set_forwarded_at_unix_ms(row.forwarded_at_ms);
  out->set_attempts(row.attempts);
  out->set_work_certificate_serial(row.work_certificate_serial);
  out->set_last_error(row.last_error);
  out->set_next_attempt_at_unix_ms(row.state == SubmissionState::kReceived ? row.next_attempt_at_ms
                                                                           : 0);
}

void ToProto(const WorkKeyRecord& key, v1::WorkKey* out) {
  out->set_serial_hex(key.serial_hex);
  out->set_hsm_key_index(key.hsm_key_index);
  out->set_certificate_pem(key.certificate_pem);
  out->set_state(ToProto(key.state));
  out->set_created_at_unix_ms(key.created_at_ms);
}

// The SN a package names, for its budget; empty when the package does not parse or the SN
// is not valid (the core refuses those before any database access). Unverified: the
// signature is checked later, so a sender can spend only budgets, never gain anything.
std::string PackageSn(const std::string& package) {
  if (package.size() > kMaxPackageBytes) return "";
  v1::TransportKeyPackage parsed;
  if (!parsed.ParseFromString(package) || !protocol::ValidateSn(parsed.sn()).ok()) return "";
  return parsed.sn();
}

}  // namespace

MtmsGrpcService::MtmsGrpcService(MtmsCore& core, Forwarder& forwarder, audit::PgAuditLog& audit,
                                 rpc::PublicCallLimits limits)
    : UnaryService(rpc::ServiceAdapter::DescriptorOf<v1::Mtms>()),
      core_(core),
      forwarder_(forwarder),
      audit_(audit),
      gate_("mtms", "sn", std::move(limits)) {
  // Public: the operator terminal connects with server-authenticated TLS only.
  Bind("GetWorkCertificate",
       [this](const rpc::UnaryCall& call, const v1::GetWorkCertificateRequest* request,
              v1::GetWorkCertificateResponse* response) -> absl::Status {
         RKL_RETURN_IF_ERROR(gate_.Admit(call.ctx, ""));
         RKL_ASSIGN_OR_RETURN(WorkCertificateBundle bundle, core_.GetWorkCertificate());
         response->set_work_certificate_pem(bundle.certificate_pem);
         response->set_terminal_root_pem(bundle.terminal_root_pem);
         response->set_serial_hex(bundle.serial_hex);
         return absl::OkStatus();
       });

  // Public: the package is authenticated by the operator card's signature, not by TLS.
  Bind("SubmitTransportKey",
       [this](const rpc::UnaryCall& call, const v1::SubmitTransportKeyRequest* request,
              v1::SubmitTransportKeyResponse* response) -> absl::Status {
         RKL_RETURN_IF_ERROR(gate_.Admit(call.ctx, PackageSn(request->package())));
         RKL_ASSIGN_OR_RETURN(
             SubmitReceipt receipt,
             core_.SubmitTransportKey(
                 SubmitRequest{.package = request->package(),
                               .signature = request->signature(),
                               .operator_certificate_pem = request->operator_certificate_pem()},
                 call.caller, rpc::PublicCallGate::PeerAddress(call.ctx.peer())));
         // Unless intake handed the package to the forwarder, start forwarding now rather
         // than at the next timed pass: the terminal is waiting.
         if (!receipt.handed_off) forwarder_.Wake();
         response->set_submission_id(receipt.submission_id);
         response->set_state(ToProto(receipt.state));
         return absl::OkStatus();
       });

  Bind("GetSubmission",
       [this](const rpc::UnaryCall&, const v1::GetSubmissionRequest* request,
              v1::Submission* response) -> absl::Status {
         return rpc::Answer(core_.GetSubmission(request->submission_id()), response, ToProto);
       });

  // Public: the query is authenticated by the operator card's signature, not by TLS.
  Bind("GetOwnSubmission",
       [this](const rpc::UnaryCall& call, const v1::GetOwnSubmissionRequest* request,
              v1::Submission* response) -> absl::Status {
         RKL_RETURN_IF_ERROR(gate_.Admit(call.ctx, ""));
         return rpc::Answer(
             core_.GetOwnSubmission(OwnSubmissionQuery{.query = request->query(),
                                                       .signature = request->signature(),
                                                       .operator_certificate_pem =
                                                           request->operator_certificate_pem()},
                                    rpc::PublicCallGate::PeerAddress(call.ctx.peer())),
             response, ToProto);
       });

  Bind("ProvisionWorkKey",
       [this](const rpc::UnaryCall& call, const v1::ProvisionWorkKeyRequest* request,
              v1::WorkKey* response) -> absl::Status {
         return rpc::Answer(
             core_.ProvisionWorkKey(request->rotate(), request->rsa_bits(), call.caller), response,
             ToProto);
       });

  Bind("RetireWorkKey",
       [this](const rpc::UnaryCall& call, const v1::RetireWorkKeyRequest* request,
              v1::WorkKey* response) -> absl::Status {
         return rpc::Answer(
             core_.RetireWorkKey(request->serial_hex(), request->force(), call.caller), response,
             ToProto);
       });

  Bind("ListWorkKeys",
       [this](const rpc::UnaryCall&, const v1::Empty* request,
              v1::ListWorkKeysResponse* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(std::vector<WorkKeyRecord> keys, core_.ListWorkKeys());
         for (const WorkKeyRecord& key : keys) ToProto(key, response->add_work_keys());
         return absl::OkStatus();
       });

  Bind("ListQueue",
       [this](const rpc::UnaryCall&, const v1::ListQueueRequest* request,
              v1::ListQueueResponse* response) -> absl::Status {
         std::optional<SubmissionState> state;
         if (request->state() != v1::SUBMISSION_STATE_UNSPECIFIED) {
           state = kSubmissionStates.Backward(request->state());
           if (!state) return absl::InvalidArgumentError("state: unknown SubmissionState");
         }
         RKL_ASSIGN_OR_RETURN(QueuePage page, core_.ListQueue(state, request->page().page_size(),
                                                              request->page().page_token()));
         for (const SubmissionRecord& row : page.submissions)
           ToProto(row, response->add_submissions());
         response->set_next_page_token(page.next_page_token);
         response->set_received(page.counts.received);
         response->set_forwarded(page.counts.forwarded);
         response->set_rejected(page.counts.rejected);
         return absl::OkStatus();
       });

  Bind("ForceForward",
       [this](const rpc::UnaryCall&, const v1::Empty* request,
              v1::ForceForwardResponse* response) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(PassResult pass, forwarder_.ForceForward());
         response->set_forwarded(pass.forwarded);
         response->set_rejected(pass.rejected);
         response->set_retry_later(pass.retry_later);
         return absl::OkStatus();
       });

  Bind("VerifyAuditChain",
       [this](const rpc::UnaryCall&, const v1::VerifyAuditChainRequest* request,
              v1::VerifyAuditChainResponse* response) -> absl::Status {
         return rpc::Answer(audit_.VerifyWithAnchorText(request->anchor()), response,
                            audit::ToProto);
       });
}

}  // namespace rkl::mtms
