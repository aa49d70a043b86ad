#include "kms_grpc_service.h"

#include <chrono>

#include "rkl/common/status_macros.h"
#include "rkl/crypto/x509.h"
#include "rkl/protocol/proto_enums.h"
#include "rkl/protocol/sn.h"
#include "rkl/rpc/call_context.h"
#include "spdlog/spdlog.h"

namespace rkl::kms {
namespace {

std::span<const uint8_t> Span(const std::string& s) { return AsBytes(s); }

std::string Field(std::span<const uint8_t> b) { return std::string(AsString(b)); }

std::string Source(const grpc::ServerContextBase& ctx) {
  return rpc::PublicCallGate::PeerAddress(ctx.peer());
}

// The call's deadline, for KmsCore's TK wait (which ends before it).
absl::Time CallDeadline(const grpc::ServerContextBase& ctx) {
  return ctx.deadline() == std::chrono::system_clock::time_point::max()
             ? absl::InfiniteFuture()
             : absl::FromChrono(ctx.deadline());
}

// TerminalState and rkl.v1.TerminalState share their numbers; the build checks each.
static_assert(rkl::v1::TERMINAL_STATE_TK_RECEIVED == static_cast<int>(TerminalState::kTkReceived));
static_assert(rkl::v1::TERMINAL_STATE_AUTHENTICATED ==
              static_cast<int>(TerminalState::kAuthenticated));
static_assert(rkl::v1::TERMINAL_STATE_TMK_DELIVERED ==
              static_cast<int>(TerminalState::kTmkDelivered));
static_assert(rkl::v1::TERMINAL_STATE_INSTALLED == static_cast<int>(TerminalState::kInstalled));
static_assert(rkl::v1::TERMINAL_STATE_LOCKED == static_cast<int>(TerminalState::kLocked));
static_assert(rkl::v1::TERMINAL_STATE_REVOKED == static_cast<int>(TerminalState::kRevoked));
static_assert(rkl::v1::TERMINAL_STATE_REKEY_PENDING ==
              static_cast<int>(TerminalState::kRekeyPending));

static_assert(rkl::v1::TERMINAL_PROTOCOL_PATENT == static_cast<int>(TerminalProtocol::kPatent));
static_assert(rkl::v1::TERMINAL_PROTOCOL_TR34 == static_cast<int>(TerminalProtocol::kTr34));

void ToProto(const KdhKeyRecord& k, rkl::v1::KdhKey* out) {
  out->set_key_index(k.key_index);
  absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromDer(k.certificate_der);
  if (cert.ok()) out->set_certificate_pem(cert->ToPem());
  out->set_serial_hex(k.serial_hex);
  out->set_not_after_unix_s(k.not_after_s);
  out->set_created_at_unix_ms(k.created_at_ms);
  out->set_active(k.active);
}

rkl::v1::TerminalState ToProto(TerminalState s) {
  return static_cast<rkl::v1::TerminalState>(static_cast<int>(s));
}

}  // namespace

void ToProto(const TerminalRecord& t, rkl::v1::Terminal* out) {
  out->set_sn(t.sn);
  out->set_state(ToProto(t.state));
  out->set_algorithm(protocol::ToProto(t.algorithm));
  out->set_tmk_kcv(t.tmk_kcv);
  out->set_tek_kcv(t.tek_kcv);
  out->set_auk_kcv(t.auk_kcv);
  out->set_consecutive_failures(t.consecutive_failures);
  out->set_tk_received_at_unix_ms(t.tk_received_at_ms);
  out->set_installed_at_unix_ms(t.installed_at_ms);
  out->set_updated_at_unix_ms(t.updated_at_ms);
  out->set_rekey_requested(t.rekey_requested);
  out->set_tmk_generation(t.tmk_generation);
  out->set_protocol(static_cast<rkl::v1::TerminalProtocol>(static_cast<int>(t.protocol)));
  out->set_krd_id(t.krd_id);
}

absl::Status KmsGrpcService::AdmitTerminalCall(const grpc::ServerContextBase& ctx,
                                               const std::string& sn) {
  // An invalid SN spends only the address's budget: the core refuses it before any
  // database access.
  absl::Status admitted =
      gate_.Admit(ctx, protocol::ValidateSn(sn).ok() ? std::string_view(sn) : "");
  if (!admitted.ok()) Count(core_.metrics().rate_limited);
  return admitted;
}

KmsGrpcService::KmsGrpcService(KmsCore& core, audit::PgAuditLog& audit, TerminalRateLimits limits)
    : UnaryService(rpc::ServiceAdapter::DescriptorOf<rkl::v1::Kms>()),
      core_(core),
      audit_(audit),
      gate_("kms", "sn", limits) {
  Bind("SubmitTransportKey",
       [this](const rpc::UnaryCall& call, const rkl::v1::KmsSubmitTransportKeyRequest* req,
              rkl::v1::KmsSubmitTransportKeyResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(SubmitResult r,
                              core_.SubmitTransportKey(call.caller, req->sn(), Span(req->ctk_pk()),
                                                       req->mtms_submission_id()));
         resp->set_state(ToProto(r.state));
         resp->set_duplicate(r.duplicate);
         return absl::OkStatus();
       });

  Bind("SubmitTransportKeys",
       [this](const rpc::UnaryCall& call, const rkl::v1::KmsSubmitTransportKeysRequest* req,
              rkl::v1::KmsSubmitTransportKeysResponse* resp) -> absl::Status {
         std::vector<TkSubmission> items;
         items.reserve(req->items_size());
         for (int i = 0; i < req->items_size(); ++i) {
           const rkl::v1::KmsSubmitTransportKeyRequest& item = req->items(i);
           // An item's flow id, checked as the call's own is where it enters; else the call's.
           std::string request_id;
           if (i < req->request_ids_size() && rpc::IsWellFormedRequestId(req->request_ids(i))) {
             request_id = req->request_ids(i);
           }
           items.push_back({.sn = item.sn(),
                            .ctk_pk = Bytes(item.ctk_pk().begin(), item.ctk_pk().end()),
                            .mtms_submission_id = item.mtms_submission_id(),
                            .request_id = std::move(request_id)});
         }
         RKL_ASSIGN_OR_RETURN(auto results, core_.SubmitTransportKeys(call.caller, items));
         for (const absl::StatusOr<SubmitResult>& result : results) {
           rkl::v1::KmsSubmitTransportKeyOutcome* outcome = resp->add_outcomes();
           if (result.ok()) {
             outcome->set_state(ToProto(result->state));
             outcome->set_duplicate(result->duplicate);
           } else {
             const grpc::Status status = rpc::ToGrpcStatus(result.status());
             outcome->set_code(static_cast<int32_t>(status.error_code()));
             outcome->set_message(status.error_message());
           }
         }
         return absl::OkStatus();
       });

  // Terminal RPCs (public): the terminal proves itself with AUK.
  Bind("BeginAuthentication",
       [this](const rpc::UnaryCall& call, const rkl::v1::BeginAuthenticationRequest* req,
              rkl::v1::BeginAuthenticationResponse* resp) -> absl::Status {
         RKL_RETURN_IF_ERROR(AdmitTerminalCall(call.ctx, req->sn()));
         RKL_ASSIGN_OR_RETURN(
             BeginResult r,
             core_.BeginAuthentication(req->sn(), Span(req->rnd1()), Source(call.ctx),
                                       absl::Milliseconds(req->wait_ms()), CallDeadline(call.ctx)));
         resp->set_session_id(r.session_id);
         resp->set_crnd1(Field(r.crnd1));
         resp->set_rnd2(Field(r.rnd2));
         resp->set_expires_at_unix_ms(r.expires_at_ms);
         return absl::OkStatus();
       });

  Bind("CompleteAuthentication",
       [this](const rpc::UnaryCall& call, const rkl::v1::CompleteAuthenticationRequest* req,
              rkl::v1::CompleteAuthenticationResponse* resp) -> absl::Status {
         RKL_RETURN_IF_ERROR(AdmitTerminalCall(call.ctx, req->sn()));
         RKL_ASSIGN_OR_RETURN(DeliveryResult r,
                              core_.CompleteAuthentication(req->session_id(), req->sn(),
                                                           Span(req->crnd2()), Source(call.ctx)));
         resp->set_key_block(r.key_block);
         resp->set_tmk_kcv(r.tmk_kcv);
         return absl::OkStatus();
       });

  Bind("ConfirmInstallation",
       [this](const rpc::UnaryCall& call, const rkl::v1::ConfirmInstallationRequest* req,
              rkl::v1::ConfirmInstallationResponse* resp) -> absl::Status {
         RKL_RETURN_IF_ERROR(AdmitTerminalCall(call.ctx, req->sn()));
         RKL_ASSIGN_OR_RETURN(TerminalState r,
                              core_.ConfirmInstallation(req->session_id(), req->sn(),
                                                        Span(req->proof()), Source(call.ctx)));
         resp->set_state(ToProto(r));
         return absl::OkStatus();
       });

  // TR-34 terminals (public), limited as the patent terminal calls are.
  Bind("GetKdhCredential",
       [this](const rpc::UnaryCall& call, const rkl::v1::GetKdhCredentialRequest* req,
              rkl::v1::GetKdhCredentialResponse* resp) -> absl::Status {
         RKL_RETURN_IF_ERROR(AdmitTerminalCall(call.ctx, req->sn()));
         RKL_ASSIGN_OR_RETURN(Bytes ct_kdh, core_.GetKdhCredential(req->sn(), Source(call.ctx)));
         resp->set_ct_kdh(Field(ct_kdh));
         return absl::OkStatus();
       });

  Bind("RequestKeyToken",
       [this](const rpc::UnaryCall& call, const rkl::v1::RequestKeyTokenRequest* req,
              rkl::v1::RequestKeyTokenResponse* resp) -> absl::Status {
         RKL_RETURN_IF_ERROR(AdmitTerminalCall(call.ctx, req->sn()));
         crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
         if (req->algorithm() != rkl::v1::KEY_ALGORITHM_UNSPECIFIED) {
           absl::StatusOr<crypto::KeyAlgorithm> a =
               crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(req->algorithm()));
           if (!a.ok()) return absl::InvalidArgumentError("algorithm: AES128, AES256 or TDES2");
           algorithm = *a;
         }
         RKL_ASSIGN_OR_RETURN(
             KeyTokenResult r,
             core_.RequestKeyToken(req->sn(), Span(req->ct_krd()), Span(req->rt_krd()), algorithm,
                                   Source(call.ctx)));
         resp->set_key_token(Field(r.key_token));
         resp->set_tmk_kcv(r.tmk_kcv);
         resp->set_state(ToProto(r.state));
         return absl::OkStatus();
       });

  Bind("ConfirmKeyToken",
       [this](const rpc::UnaryCall& call, const rkl::v1::ConfirmKeyTokenRequest* req,
              rkl::v1::ConfirmInstallationResponse* resp) -> absl::Status {
         RKL_RETURN_IF_ERROR(AdmitTerminalCall(call.ctx, req->sn()));
         RKL_ASSIGN_OR_RETURN(TerminalState r, core_.ConfirmKeyToken(req->sn(), Span(req->proof()),
                                                                     Source(call.ctx)));
         resp->set_state(ToProto(r));
         return absl::OkStatus();
       });

  Bind("ProvisionKdhKey",
       [this](const rpc::UnaryCall& call, const rkl::v1::ProvisionKdhKeyRequest* req,
              rkl::v1::KdhKey* resp) -> absl::Status {
         return rpc::Answer(core_.ProvisionKdhKey(call.caller, req->label(), req->bits()), resp,
                            ToProto);
       });

  Bind("ListKdhKeys",
       [this](const rpc::UnaryCall&, const rkl::v1::Empty*,
              rkl::v1::ListKdhKeysResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(std::vector<KdhKeyRecord> keys, core_.ListKdhKeys());
         for (const KdhKeyRecord& k : keys) ToProto(k, resp->add_keys());
         return absl::OkStatus();
       });

  Bind("RegisterKrdCredentials",
       [this](const rpc::UnaryCall& call, const rkl::v1::RegisterKrdCredentialsRequest* req,
              rkl::v1::RegisterKrdCredentialsResponse* resp) -> absl::Status {
         std::vector<Bytes> cts;
         cts.reserve(req->ct_krd_size());
         for (const std::string& ct : req->ct_krd()) cts.emplace_back(ct.begin(), ct.end());
         RKL_ASSIGN_OR_RETURN(std::vector<KrdRegistrationResult> results,
                              core_.RegisterKrdCredentials(call.caller, cts));
         for (const KrdRegistrationResult& r : results) {
           rkl::v1::KrdRegistration* out = resp->add_results();
           out->set_sn(r.sn);
           out->set_krd_id(r.krd_id);
           out->set_code(static_cast<int32_t>(r.status.code()));
           out->set_message(std::string(r.status.message()));
           out->set_duplicate(r.duplicate);
         }
         return absl::OkStatus();
       });

  Bind("GetTerminal",
       [this](const rpc::UnaryCall&, const rkl::v1::GetTerminalRequest* req,
              rkl::v1::Terminal* resp) -> absl::Status {
         return rpc::Answer(core_.GetTerminal(req->sn()), resp, ToProto);
       });

  Bind("ListTerminals",
       [this](const rpc::UnaryCall&, const rkl::v1::ListTerminalsRequest* req,
              rkl::v1::ListTerminalsResponse* resp) -> absl::Status {
         std::optional<TerminalState> state;
         if (req->state() != rkl::v1::TERMINAL_STATE_UNSPECIFIED) {
           if (!rkl::v1::TerminalState_IsValid(req->state())) {
             return absl::InvalidArgumentError("state: unknown terminal state");
           }
           state = static_cast<TerminalState>(req->state());
         }
         RKL_ASSIGN_OR_RETURN(TerminalPage page,
                              core_.ListTerminals(state, req->sn_prefix(), req->page().page_size(),
                                                  req->page().page_token()));
         for (const TerminalRecord& t : page.terminals) ToProto(t, resp->add_terminals());
         resp->set_next_page_token(page.next_page_token);
         return absl::OkStatus();
       });

  // Unlock, revoke, mark for rekey: an admin's action on one terminal, answered with its record.
  using TerminalAction = absl::StatusOr<TerminalRecord> (KmsCore::*)(
      const std::string& actor, const std::string& sn, const std::string& reason);
  for (const auto& [method, action] :
       {std::pair<const char*, TerminalAction>{"UnlockTerminal", &KmsCore::UnlockTerminal},
        {"RevokeTerminal", &KmsCore::RevokeTerminal},
        {"MarkForRekey", &KmsCore::MarkForRekey}}) {
    Bind(method,
         [this, action](const rpc::UnaryCall& call, const rkl::v1::TerminalAdminRequest* req,
                        rkl::v1::Terminal* resp) -> absl::Status {
           return rpc::Answer((core_.*action)(call.caller, req->sn(), req->reason()), resp,
                              ToProto);
         });
  }

  Bind("GetStatistics",
       [this](const rpc::UnaryCall&, const rkl::v1::Empty*,
              rkl::v1::Statistics* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(Statistics st, core_.GetStatistics());
         for (const auto& [state, count] : st.terminals_by_state) {
           (*resp->mutable_terminals_by_state())[state] = count;
         }
         for (const auto& [protocol, count] : st.terminals_by_protocol) {
           (*resp->mutable_terminals_by_protocol())[protocol] = count;
         }
         resp->set_terminals_total(st.terminals_total);
         resp->set_distinct_tmk_kcvs(st.distinct_tmk_kcvs);
         resp->set_auth_failures_total(st.auth_failures_total);
         return absl::OkStatus();
       });

  Bind("ListAudit",
       [this](const rpc::UnaryCall&, const rkl::v1::ListAuditRequest* req,
              rkl::v1::ListAuditResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(AuditPage page, core_.ListAudit(req->sn(), req->page().page_size(),
                                                              req->page().page_token()));
         for (const AuditEntry& e : page.records) {
           rkl::v1::AuditRecord* r = resp->add_records();
           r->set_seq(e.seq);
           r->set_at_unix_ms(e.at_ms);
           r->set_actor(e.actor);
           r->set_action(e.action);
           r->set_sn(e.sn);
           r->set_detail(e.detail);
           r->set_result(e.result);
           r->set_request_id(e.request_id);
         }
         resp->set_next_page_token(page.next_page_token);
         return absl::OkStatus();
       });

  Bind("VerifyAuditChain",
       [this](const rpc::UnaryCall&, const rkl::v1::VerifyAuditChainRequest* req,
              rkl::v1::VerifyAuditChainResponse* resp) -> absl::Status {
         return rpc::Answer(audit_.VerifyWithAnchorText(req->anchor()), resp, audit::ToProto);
       });
}

}  // namespace rkl::kms
