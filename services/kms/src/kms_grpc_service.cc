#include "kms_grpc_service.h"

#include "rkl/common/status_macros.h"
#include "rkl/protocol/proto_enums.h"
#include "rkl/protocol/sn.h"
#include "rkl/rpc/status.h"
#include "spdlog/spdlog.h"

namespace rkl::kms {
namespace {

constexpr char kMtms[] = "mtms";
constexpr char kAdmins[] = "admin:*";

std::span<const uint8_t> Span(const std::string& s) { return AsBytes(s); }

std::string Field(std::span<const uint8_t> b) { return std::string(AsString(b)); }

std::string Source(const grpc::ServerContext& ctx) {
  return rpc::PublicCallGate::PeerAddress(ctx.peer());
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
}

KmsGrpcService::KmsGrpcService(KmsCore& core, audit::PgAuditLog& audit, TerminalRateLimits limits)
    : core_(core), audit_(audit), authorizer_(MakeAuthorizer()), gate_("kms", "sn", limits) {}

absl::Status KmsGrpcService::AdmitTerminalCall(const grpc::ServerContext& ctx,
                                               const std::string& sn) {
  // An invalid SN spends only the address's budget: the core refuses it before any
  // database access.
  return gate_.Admit(ctx, protocol::ValidateSn(sn).ok() ? std::string_view(sn) : "");
}

rpc::Authorizer KmsGrpcService::MakeAuthorizer() {
  rpc::Authorizer a;
  a.Allow("SubmitTransportKey", {kMtms});
  for (const char* m : {"GetTerminal", "ListTerminals", "UnlockTerminal", "RevokeTerminal",
                        "MarkForRekey", "GetStatistics", "ListAudit", "VerifyAuditChain"}) {
    a.Allow(m, {kAdmins});
  }
  return a;
}

absl::StatusOr<std::string> KmsGrpcService::Authorize(const grpc::ServerContext& ctx,
                                                      const char* method) {
  std::string identity = rpc::GetCallerIdentity(ctx).name;
  RKL_RETURN_IF_ERROR(authorizer_.Check(method, identity));
  return identity;
}

grpc::Status KmsGrpcService::SubmitTransportKey(grpc::ServerContext* ctx,
                                                const rkl::v1::KmsSubmitTransportKeyRequest* req,
                                                rkl::v1::KmsSubmitTransportKeyResponse* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "SubmitTransportKey");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<SubmitResult> r =
      core_.SubmitTransportKey(*caller, req->sn(), Span(req->ctk_pk()), req->mtms_submission_id());
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  resp->set_state(ToProto(r->state));
  resp->set_duplicate(r->duplicate);
  return grpc::Status::OK;
}

// Terminal RPCs: open to any TLS client; the terminal proves itself with AUK.
grpc::Status KmsGrpcService::BeginAuthentication(grpc::ServerContext* ctx,
                                                 const rkl::v1::BeginAuthenticationRequest* req,
                                                 rkl::v1::BeginAuthenticationResponse* resp) {
  if (absl::Status s = AdmitTerminalCall(*ctx, req->sn()); !s.ok()) return rpc::ToGrpcStatus(s);
  absl::StatusOr<BeginResult> r =
      core_.BeginAuthentication(req->sn(), Span(req->rnd1()), Source(*ctx));
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  resp->set_session_id(r->session_id);
  resp->set_crnd1(Field(r->crnd1));
  resp->set_rnd2(Field(r->rnd2));
  resp->set_expires_at_unix_ms(r->expires_at_ms);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::CompleteAuthentication(
    grpc::ServerContext* ctx, const rkl::v1::CompleteAuthenticationRequest* req,
    rkl::v1::CompleteAuthenticationResponse* resp) {
  if (absl::Status s = AdmitTerminalCall(*ctx, req->sn()); !s.ok()) return rpc::ToGrpcStatus(s);
  absl::StatusOr<DeliveryResult> r =
      core_.CompleteAuthentication(req->session_id(), req->sn(), Span(req->crnd2()), Source(*ctx));
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  resp->set_key_block(r->key_block);
  resp->set_tmk_kcv(r->tmk_kcv);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::ConfirmInstallation(grpc::ServerContext* ctx,
                                                 const rkl::v1::ConfirmInstallationRequest* req,
                                                 rkl::v1::ConfirmInstallationResponse* resp) {
  if (absl::Status s = AdmitTerminalCall(*ctx, req->sn()); !s.ok()) return rpc::ToGrpcStatus(s);
  absl::StatusOr<TerminalState> r =
      core_.ConfirmInstallation(req->session_id(), req->sn(), Span(req->proof()), Source(*ctx));
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  resp->set_state(ToProto(*r));
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::GetTerminal(grpc::ServerContext* ctx,
                                         const rkl::v1::GetTerminalRequest* req,
                                         rkl::v1::Terminal* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "GetTerminal");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<TerminalRecord> t = core_.GetTerminal(req->sn());
  if (!t.ok()) return rpc::ToGrpcStatus(t.status());
  ToProto(*t, resp);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::ListTerminals(grpc::ServerContext* ctx,
                                           const rkl::v1::ListTerminalsRequest* req,
                                           rkl::v1::ListTerminalsResponse* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "ListTerminals");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  std::optional<TerminalState> state;
  if (req->state() != rkl::v1::TERMINAL_STATE_UNSPECIFIED) {
    if (!rkl::v1::TerminalState_IsValid(req->state())) {
      return rpc::ToGrpcStatus(absl::InvalidArgumentError("state: unknown terminal state"));
    }
    state = static_cast<TerminalState>(req->state());
  }
  absl::StatusOr<TerminalPage> page = core_.ListTerminals(
      state, req->sn_prefix(), req->page().page_size(), req->page().page_token());
  if (!page.ok()) return rpc::ToGrpcStatus(page.status());
  for (const TerminalRecord& t : page->terminals) ToProto(t, resp->add_terminals());
  resp->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::UnlockTerminal(grpc::ServerContext* ctx,
                                            const rkl::v1::TerminalAdminRequest* req,
                                            rkl::v1::Terminal* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "UnlockTerminal");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<TerminalRecord> t = core_.UnlockTerminal(*caller, req->sn(), req->reason());
  if (!t.ok()) return rpc::ToGrpcStatus(t.status());
  ToProto(*t, resp);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::RevokeTerminal(grpc::ServerContext* ctx,
                                            const rkl::v1::TerminalAdminRequest* req,
                                            rkl::v1::Terminal* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "RevokeTerminal");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<TerminalRecord> t = core_.RevokeTerminal(*caller, req->sn(), req->reason());
  if (!t.ok()) return rpc::ToGrpcStatus(t.status());
  ToProto(*t, resp);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::MarkForRekey(grpc::ServerContext* ctx,
                                          const rkl::v1::TerminalAdminRequest* req,
                                          rkl::v1::Terminal* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "MarkForRekey");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<TerminalRecord> t = core_.MarkForRekey(*caller, req->sn(), req->reason());
  if (!t.ok()) return rpc::ToGrpcStatus(t.status());
  ToProto(*t, resp);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::GetStatistics(grpc::ServerContext* ctx, const rkl::v1::Empty*,
                                           rkl::v1::Statistics* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "GetStatistics");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<Statistics> st = core_.GetStatistics();
  if (!st.ok()) return rpc::ToGrpcStatus(st.status());
  for (const auto& [state, count] : st->terminals_by_state) {
    (*resp->mutable_terminals_by_state())[state] = count;
  }
  resp->set_terminals_total(st->terminals_total);
  resp->set_distinct_tmk_kcvs(st->distinct_tmk_kcvs);
  resp->set_auth_failures_total(st->auth_failures_total);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::ListAudit(grpc::ServerContext* ctx,
                                       const rkl::v1::ListAuditRequest* req,
                                       rkl::v1::ListAuditResponse* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "ListAudit");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<AuditPage> page =
      core_.ListAudit(req->sn(), req->page().page_size(), req->page().page_token());
  if (!page.ok()) return rpc::ToGrpcStatus(page.status());
  for (const AuditEntry& e : page->records) {
    rkl::v1::AuditRecord* r = resp->add_records();
    r->set_seq(e.seq);
    r->set_at_unix_ms(e.at_ms);
    r->set_actor(e.actor);
    r->set_action(e.action);
    r->set_sn(e.sn);
    r->set_detail(e.detail);
    r->set_result(e.result);
  }
  resp->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status KmsGrpcService::VerifyAuditChain(grpc::ServerContext* ctx,
                                              const rkl::v1::VerifyAuditChainRequest* req,
                                              rkl::v1::VerifyAuditChainResponse* resp) {
  absl::StatusOr<std::string> caller = Authorize(*ctx, "VerifyAuditChain");
  if (!caller.ok()) return rpc::ToGrpcStatus(caller.status());
  absl::StatusOr<audit::AuditVerification> v = audit_.VerifyWithAnchorText(req->anchor());
  if (!v.ok()) return rpc::ToGrpcStatus(v.status());
  audit::ToProto(*v, resp);
  return grpc::Status::OK;
}

}  // namespace rkl::kms
