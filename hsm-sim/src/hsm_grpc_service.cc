#include "hsm_grpc_service.h"

#include <span>
#include <stdexcept>

#include "rkl/protocol/proto_enums.h"
#include "rkl/rpc/status.h"

namespace rkl::hsm {
namespace {

// KeyType, KeyUsage and KeyState share their numbers with rkl.v1's; GetKeyInfo casts them,
// so the build checks every value. (KeyRecord::algorithm is already the wire code,
// protocol/proto_enums.h.)
static_assert(v1::KEY_TYPE_RSA_PRIVATE == static_cast<int>(KeyType::kRsaPrivate));
static_assert(v1::KEY_TYPE_PK == static_cast<int>(KeyType::kPk));
static_assert(v1::KEY_TYPE_MAK == static_cast<int>(KeyType::kMak));
static_assert(v1::KEY_TYPE_TEK == static_cast<int>(KeyType::kTek));
static_assert(v1::KEY_TYPE_AUK == static_cast<int>(KeyType::kAuk));
static_assert(v1::KEY_TYPE_TMK == static_cast<int>(KeyType::kTmk));
static_assert(v1::KEY_USAGE_TRANSPORT_DECRYPT == static_cast<int>(KeyUsage::kTransportDecrypt));
static_assert(v1::KEY_USAGE_TK_WRAP == static_cast<int>(KeyUsage::kTkWrap));
static_assert(v1::KEY_USAGE_TK_MAC == static_cast<int>(KeyUsage::kTkMac));
static_assert(v1::KEY_USAGE_EXPORT_KEK == static_cast<int>(KeyUsage::kExportKek));
static_assert(v1::KEY_USAGE_TERMINAL_AUTH == static_cast<int>(KeyUsage::kTerminalAuth));
static_assert(v1::KEY_USAGE_TERMINAL_MASTER == static_cast<int>(KeyUsage::kTerminalMaster));
static_assert(v1::KEY_USAGE_CEREMONY_DECRYPT == static_cast<int>(KeyUsage::kCeremonyDecrypt));
static_assert(v1::KEY_STATE_ACTIVE == static_cast<int>(KeyState::kActive));
static_assert(v1::KEY_STATE_SUPERSEDED == static_cast<int>(KeyState::kSuperseded));
static_assert(v1::KEY_STATE_DELETED == static_cast<int>(KeyState::kDeleted));

// The core's enums carry the proto's numbers; keep them in step.
static_assert(static_cast<int>(KeyType::kTmk) == v1::KEY_TYPE_TMK);
static_assert(static_cast<int>(KeyUsage::kCeremonyDecrypt) == v1::KEY_USAGE_CEREMONY_DECRYPT);
static_assert(static_cast<int>(KeyState::kDeleted) == v1::KEY_STATE_DELETED);
static_assert(static_cast<int>(CeremonyState::kExpired) == v1::CEREMONY_STATE_EXPIRED);

constexpr char kAdmins[] = "admin:*";

// Who may call what (docs/hsm.md, "Who may call what"). Each operational command is served
// by one role, to that role's service only: what MTMS needs on HSM #1, what KMS needs on
// HSM #2. Key ceremonies are the custodians' (docs/hsm.md "Custody"): only custodian:*
// certificates, which the CA issues at `pki init` or under two admins' dual control; admins
// may watch. Admins manage keys — key state, deletion, audit — and never receive, export or
// re-wrap one. A method in no list (another role's) is refused to everyone.
const char* const kMtmsRoleMethods[] = {"GenerateRsaKeyPair", "GetPublicKey",
                                        "TranslateTransportKey", "TranslateTransportKeys",
                                        "GenerateRandom"};
const char* const kKmsRoleMethods[] = {"ImportAndChallenge",     "AuthChallenge",
                                       "AuthenticateAndDeliver", "VerifyInstallProof",
                                       "DestroyTerminalKeys",    "GenerateRandom"};
const char* const kAdminMethods[] = {"GetKeyInfo", "DeleteKey", "VerifyAuditChain",
                                     "AnchorAuditChain"};
constexpr char kCustodians[] = "custodian:*";
const char* const kCeremonyMethods[] = {"BeginCeremony", "AddComponent", "CompleteCeremony"};

Bytes ToBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string ToString(const Bytes& b) { return std::string(b.begin(), b.end()); }

std::optional<crypto::KeyAlgorithm> Algorithm(v1::KeyAlgorithm a) {
  if (a < 0 || a > 0xFF) return std::nullopt;
  auto algorithm = crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(a));
  if (!algorithm.ok()) return std::nullopt;
  return *algorithm;
}

grpc::Status Done(const absl::Status& s) { return rpc::ToGrpcStatus(s); }

}  // namespace

std::string_view HsmRoleName(HsmRole role) { return role == HsmRole::kMtms ? "mtms" : "kms"; }

std::span<const char* const> OperationalMethods(HsmRole role) {
  if (role == HsmRole::kMtms) return kMtmsRoleMethods;
  return kKmsRoleMethods;
}

HsmGrpcService::HsmGrpcService(HsmCore& core, HsmRole role,
                               const std::vector<std::string>& operational_identities)
    : core_(core) {
  for (const std::string& identity : operational_identities) {
    if (identity.starts_with("admin:") || identity.starts_with("custodian:") ||
        identity.ends_with("*")) {
      throw std::invalid_argument(
          "operational identities name services, not admins, custodians or patterns");
    }
  }
  for (const char* m : OperationalMethods(role)) authorizer_.Allow(m, operational_identities);
  for (const char* m : kAdminMethods) authorizer_.Allow(m, {kAdmins});
  for (const char* m : kCeremonyMethods) authorizer_.Allow(m, {kCustodians});
  authorizer_.Allow("GetCeremony", {kCustodians, kAdmins});
}

absl::StatusOr<std::string> HsmGrpcService::Authorize(const grpc::ServerContext& ctx,
                                                      const char* method) {
  std::string caller = rpc::GetCallerIdentity(ctx).name;
  if (absl::Status s = authorizer_.Check(method, caller); !s.ok()) {
    core_.RecordRefusal(caller.empty() ? "(no identity)" : caller, method, s);
    return s;
  }
  return caller;
}

grpc::Status HsmGrpcService::GenerateRsaKeyPair(grpc::ServerContext* ctx,
                                                const v1::GenerateRsaKeyPairRequest* req,
                                                v1::GenerateRsaKeyPairResponse* resp) {
  auto caller = Authorize(*ctx, "GenerateRsaKeyPair");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.GenerateRsaKeyPair(*caller, req->bits(), req->label());
  if (!r.ok()) return Done(r.status());
  resp->set_key_index(r->key_index);
  resp->set_public_key_der(ToString(r->public_key_der));
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::GetPublicKey(grpc::ServerContext* ctx,
                                          const v1::GetPublicKeyRequest* req,
                                          v1::GetPublicKeyResponse* resp) {
  auto caller = Authorize(*ctx, "GetPublicKey");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.GetPublicKey(*caller, req->key_index());
  if (!r.ok()) return Done(r.status());
  resp->set_public_key_der(ToString(*r));
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::BeginCeremony(grpc::ServerContext* ctx,
                                           const v1::BeginCeremonyRequest* req,
                                           v1::BeginCeremonyResponse* resp) {
  auto caller = Authorize(*ctx, "BeginCeremony");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.BeginCeremony(*caller, req->label(), static_cast<KeyType>(req->key_type()),
                               req->component_count(), req->ttl_seconds());
  if (!r.ok()) return Done(r.status());
  resp->set_ceremony_id(r->ceremony_id);
  resp->set_component_encryption_key_der(ToString(r->component_encryption_key_der));
  resp->set_expires_at_unix_ms(r->expires_at_ms);
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::GetCeremony(grpc::ServerContext* ctx,
                                         const v1::GetCeremonyRequest* req,
                                         v1::GetCeremonyResponse* resp) {
  auto caller = Authorize(*ctx, "GetCeremony");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.GetCeremony(*caller, req->ceremony_id());
  if (!r.ok()) return Done(r.status());
  const Ceremony& c = r->ceremony;
  resp->set_ceremony_id(c.id);
  resp->set_label(c.label);
  resp->set_key_type(static_cast<v1::KeyType>(c.key_type));
  resp->set_component_count(c.component_count);
  resp->set_components_added(static_cast<uint32_t>(c.custodians.size()));
  for (const std::string& custodian : c.custodians) resp->add_custodians(custodian);
  resp->set_state(static_cast<v1::CeremonyState>(c.state));
  resp->set_expires_at_unix_ms(c.expires_at_ms);
  resp->set_component_encryption_key_der(ToString(r->component_encryption_key_der));
  resp->set_result_key_index(c.result_key_index);
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::AddComponent(grpc::ServerContext* ctx,
                                          const v1::AddComponentRequest* req,
                                          v1::AddComponentResponse* resp) {
  auto caller = Authorize(*ctx, "AddComponent");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.AddComponent(*caller, req->ceremony_id(), ToBytes(req->encrypted_component()));
  if (!r.ok()) return Done(r.status());
  resp->set_component_kcv(r->component_kcv);
  resp->set_components_added(r->components_added);
  resp->set_components_required(r->components_required);
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::CompleteCeremony(grpc::ServerContext* ctx,
                                              const v1::CompleteCeremonyRequest* req,
                                              v1::CompleteCeremonyResponse* resp) {
  auto caller = Authorize(*ctx, "CompleteCeremony");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.CompleteCeremony(*caller, req->ceremony_id());
  if (!r.ok()) return Done(r.status());
  resp->set_key_index(r->key_index);
  resp->set_kcv(r->kcv);
  return grpc::Status::OK;
}

namespace {

TranslateCommand TranslateCommandFrom(const v1::TranslateTransportKeyRequest& req) {
  return TranslateCommand{.pr_index = req.pr_index(),
                          .ctk_pu = ToBytes(req.ctk_pu()),
                          .sn = req.sn(),
                          .created_at_ms = req.created_at_unix_ms(),
                          .pk_index = req.pk_index(),
                          .mak_index = req.mak_index(),
                          .algorithm = Algorithm(req.algorithm()),
                          .evidence = TranslateEvidence{
                              .package = ToBytes(req.package()),
                              .package_signature = ToBytes(req.package_signature()),
                              .operator_certificate_der = ToBytes(req.operator_certificate_der())}};
}

}  // namespace

grpc::Status HsmGrpcService::TranslateTransportKey(grpc::ServerContext* ctx,
                                                   const v1::TranslateTransportKeyRequest* req,
                                                   v1::TranslateTransportKeyResponse* resp) {
  auto caller = Authorize(*ctx, "TranslateTransportKey");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.TranslateTransportKey(*caller, TranslateCommandFrom(*req));
  if (!r.ok()) return Done(r.status());
  resp->set_ctk_pk(ToString(*r));
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::TranslateTransportKeys(grpc::ServerContext* ctx,
                                                    const v1::TranslateTransportKeysRequest* req,
                                                    v1::TranslateTransportKeysResponse* resp) {
  auto caller = Authorize(*ctx, "TranslateTransportKeys");
  if (!caller.ok()) return Done(caller.status());
  std::vector<TranslateCommand> commands;
  commands.reserve(req->items_size());
  for (const auto& item : req->items()) commands.push_back(TranslateCommandFrom(item));
  auto results = core_.TranslateTransportKeys(*caller, commands);
  if (!results.ok()) return Done(results.status());
  for (const absl::StatusOr<Bytes>& result : *results) {
    v1::TranslateTransportKeyOutcome* outcome = resp->add_outcomes();
    if (result.ok()) {
      outcome->set_ctk_pk(ToString(*result));
    } else {
      const grpc::Status status = Done(result.status());
      outcome->set_code(static_cast<int32_t>(status.error_code()));
      outcome->set_message(status.error_message());
    }
  }
  return grpc::Status::OK;
}

namespace {

ImportCommand ImportCommandFrom(const v1::ImportTransportKeyRequest& req) {
  return ImportCommand{.pk_index = req.pk_index(),
                       .mak_index = req.mak_index(),
                       .sn = req.sn(),
                       .ctk_pk = ToBytes(req.ctk_pk())};
}

void SetImported(const ImportedTransportKey& r, v1::ImportTransportKeyResponse& resp) {
  resp.set_tek_index(r.tek_index);
  resp.set_tek_kcv(r.tek_kcv);
  resp.set_auk_index(r.auk_index);
  resp.set_auk_kcv(r.auk_kcv);
  resp.set_algorithm(protocol::ToProto(r.algorithm));
  resp.set_created_at_unix_ms(r.created_at_ms);
}

AuthVerifyCommand AuthVerifyCommandFrom(const v1::AuthVerifyRequest& req) {
  return AuthVerifyCommand{.auk_index = req.auk_index(),
                           .sn = req.sn(),
                           .rnd1 = ToBytes(req.rnd1()),
                           .rnd2 = ToBytes(req.rnd2()),
                           .crnd2 = ToBytes(req.crnd2())};
}

}  // namespace

grpc::Status HsmGrpcService::ImportAndChallenge(grpc::ServerContext* ctx,
                                                const v1::ImportAndChallengeRequest* req,
                                                v1::ImportAndChallengeResponse* resp) {
  auto caller = Authorize(*ctx, "ImportAndChallenge");
  if (!caller.ok()) return Done(caller.status());
  auto r =
      core_.ImportAndChallenge(*caller, ImportCommandFrom(req->import()), ToBytes(req->rnd1()));
  if (!r.ok()) return Done(r.status());
  SetImported(r->imported, *resp->mutable_imported());
  resp->mutable_challenge()->set_rnd2(ToString(r->challenge.rnd2));
  resp->mutable_challenge()->set_crnd1(ToString(r->challenge.crnd1));
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::AuthenticateAndDeliver(grpc::ServerContext* ctx,
                                                    const v1::AuthenticateAndDeliverRequest* req,
                                                    v1::AuthenticateAndDeliverResponse* resp) {
  auto caller = Authorize(*ctx, "AuthenticateAndDeliver");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.AuthenticateAndDeliver(*caller, AuthVerifyCommandFrom(req->verify()),
                                        Algorithm(req->algorithm()), req->replace_existing(),
                                        req->tek_index());
  if (!r.ok()) return Done(r.status());
  resp->mutable_tmk()->set_tmk_index(r->tmk.tmk_index);
  resp->mutable_tmk()->set_kcv(r->tmk.kcv);
  resp->mutable_tmk()->set_created(r->tmk.created);
  resp->mutable_block()->set_key_block(r->block.key_block);
  resp->mutable_block()->set_key_kcv(r->block.key_kcv);
  resp->mutable_block()->set_kek_kcv(r->block.kek_kcv);
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::AuthChallenge(grpc::ServerContext* ctx,
                                           const v1::AuthChallengeRequest* req,
                                           v1::AuthChallengeResponse* resp) {
  auto caller = Authorize(*ctx, "AuthChallenge");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.AuthChallenge(*caller, req->auk_index(), req->sn(), ToBytes(req->rnd1()));
  if (!r.ok()) return Done(r.status());
  resp->set_rnd2(ToString(r->rnd2));
  resp->set_crnd1(ToString(r->crnd1));
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::VerifyInstallProof(grpc::ServerContext* ctx,
                                                const v1::VerifyInstallProofRequest* req,
                                                v1::Empty*) {
  auto caller = Authorize(*ctx, "VerifyInstallProof");
  if (!caller.ok()) return Done(caller.status());
  return Done(
      core_.VerifyInstallProof(*caller, InstallProofCommand{.auk_index = req->auk_index(),
                                                            .sn = req->sn(),
                                                            .tmk_kcv = req->tmk_kcv(),
                                                            .rnd1 = ToBytes(req->rnd1()),
                                                            .rnd2 = ToBytes(req->rnd2()),
                                                            .proof = ToBytes(req->proof())}));
}

grpc::Status HsmGrpcService::DestroyTerminalKeys(grpc::ServerContext* ctx,
                                                 const v1::DestroyTerminalKeysRequest* req,
                                                 v1::DestroyTerminalKeysResponse* resp) {
  auto caller = Authorize(*ctx, "DestroyTerminalKeys");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.DestroyTerminalKeys(*caller, req->sn(), req->reason());
  if (!r.ok()) return Done(r.status());
  for (uint64_t index : *r) resp->add_destroyed_key_indexes(index);
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::GetKeyInfo(grpc::ServerContext* ctx, const v1::GetKeyInfoRequest* req,
                                        v1::KeyInfo* resp) {
  auto caller = Authorize(*ctx, "GetKeyInfo");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.GetKeyInfo(*caller, req->key_index());
  if (!r.ok()) return Done(r.status());
  resp->set_key_index(r->index);
  resp->set_type(static_cast<v1::KeyType>(r->type));
  resp->set_algorithm(static_cast<v1::KeyAlgorithm>(r->algorithm));
  resp->set_usage(static_cast<v1::KeyUsage>(r->usage));
  resp->set_bound_sn(r->bound_sn);
  resp->set_label(r->label);
  resp->set_kcv(r->kcv);
  resp->set_state(static_cast<v1::KeyState>(r->state));
  resp->set_created_at_unix_ms(r->created_at_ms);
  resp->set_rsa_bits(r->rsa_bits);
  resp->set_kek_index(r->kek_index);
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::DeleteKey(grpc::ServerContext* ctx, const v1::DeleteKeyRequest* req,
                                       v1::Empty*) {
  auto caller = Authorize(*ctx, "DeleteKey");
  if (!caller.ok()) return Done(caller.status());
  return Done(core_.DeleteKey(*caller, req->key_index()));
}

grpc::Status HsmGrpcService::GenerateRandom(grpc::ServerContext* ctx,
                                            const v1::GenerateRandomRequest* req,
                                            v1::GenerateRandomResponse* resp) {
  auto caller = Authorize(*ctx, "GenerateRandom");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.GenerateRandom(*caller, req->length());
  if (!r.ok()) return Done(r.status());
  resp->set_random(ToString(*r));
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::VerifyAuditChain(grpc::ServerContext* ctx,
                                              const v1::VerifyAuditChainRequest* req,
                                              v1::VerifyAuditChainResponse* resp) {
  auto caller = Authorize(*ctx, "VerifyAuditChain");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.VerifyAuditChain(*caller, req->anchor());
  if (!r.ok()) return Done(r.status());
  audit::ToProto(*r, resp);
  return grpc::Status::OK;
}

grpc::Status HsmGrpcService::AnchorAuditChain(grpc::ServerContext* ctx, const v1::Empty*,
                                              v1::AnchorAuditChainResponse* resp) {
  auto caller = Authorize(*ctx, "AnchorAuditChain");
  if (!caller.ok()) return Done(caller.status());
  auto r = core_.AnchorAuditChain(*caller);
  if (!r.ok()) return Done(r.status());
  resp->set_anchor(FormatAuditAnchor(*r));
  resp->set_seq(r->seq);
  return grpc::Status::OK;
}

}  // namespace rkl::hsm
