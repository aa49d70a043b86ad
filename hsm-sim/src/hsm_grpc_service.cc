#include "hsm_grpc_service.h"

#include <span>
#include <stdexcept>

#include "rkl/audit/audit_log.h"
#include "rkl/common/status_macros.h"
#include "rkl/protocol/proto_enums.h"
#include "rkl/rpc/call_context.h"
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
static_assert(v1::KEY_USAGE_KDH_SIGN == static_cast<int>(KeyUsage::kKdhSign));
static_assert(v1::KEY_STATE_ACTIVE == static_cast<int>(KeyState::kActive));
static_assert(v1::KEY_STATE_SUPERSEDED == static_cast<int>(KeyState::kSuperseded));
static_assert(v1::KEY_STATE_DELETED == static_cast<int>(KeyState::kDeleted));

// The core's enums carry the proto's numbers; keep them in step.
static_assert(static_cast<int>(KeyType::kTmk) == v1::KEY_TYPE_TMK);
static_assert(static_cast<int>(KeyUsage::kCeremonyDecrypt) == v1::KEY_USAGE_CEREMONY_DECRYPT);
static_assert(static_cast<int>(KeyState::kDeleted) == v1::KEY_STATE_DELETED);
static_assert(static_cast<int>(CeremonyState::kExpired) == v1::CEREMONY_STATE_EXPIRED);

Bytes ToBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string ToString(const Bytes& b) { return std::string(b.begin(), b.end()); }

std::optional<crypto::KeyAlgorithm> Algorithm(v1::KeyAlgorithm a) {
  if (a < 0 || a > 0xFF) return std::nullopt;
  auto algorithm = crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(a));
  if (!algorithm.ok()) return std::nullopt;
  return *algorithm;
}

}  // namespace

std::string_view HsmRoleName(HsmRole role) { return role == HsmRole::kMtms ? "mtms" : "kms"; }

namespace {

// hsm.proto declares the operational RPCs for the roles "mtms" (HSM #1) and "kms" (HSM #2).
// This instance's role names its operational identities; the other role names nobody, so
// another role's command is refused to everyone. Refusals are audited.
rpc::ServiceAdapter::Options AdapterOptions(HsmCore& core, HsmRole role,
                                            const std::vector<std::string>& operational,
                                            HsmGrpcService::CommandCounters* commands) {
  for (const std::string& identity : operational) {
    if (identity.starts_with("admin:") || identity.starts_with("custodian:") ||
        identity.ends_with("*")) {
      throw std::invalid_argument(
          "operational identities name services, not admins, custodians or patterns");
    }
  }
  rpc::ServiceAdapter::Options options;
  for (HsmRole r : {HsmRole::kMtms, HsmRole::kKms}) {
    options.role_bindings.emplace(std::string(HsmRoleName(r)),
                                  r == role ? operational : std::vector<std::string>{});
  }
  options.on_refused = [&core, commands](std::string_view caller, std::string_view method,
                                         const absl::Status& refusal) {
    core.RecordRefusal(caller.empty() ? "(no identity)" : std::string(caller), std::string(method),
                       refusal);
    // Only the service's own method names become label values ("unknown" for anything else).
    const bool known = rpc::ServiceAdapter::DescriptorOf<v1::Hsm>().FindMethodByName(
                           std::string(method)) != nullptr;
    HsmGrpcService::Count(commands, known ? std::string(method) : "unknown", refusal.code());
  };
  return options;
}

}  // namespace

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

HsmGrpcService::CommandCounters* HsmGrpcService::CommandFamily(metrics::Metrics* metrics) {
  if (metrics == nullptr) return nullptr;
  return &prometheus::BuildCounter()
              .Name("rkl_hsm_commands_total")
              .Help("HSM commands by short RPC name and the status code they answered")
              .Register(metrics->registry());
}

void HsmGrpcService::Count(CommandCounters* family, const std::string& command,
                           absl::StatusCode code) {
  if (family == nullptr) return;
  family->Add({{"command", command}, {"result", absl::StatusCodeToString(code)}}).Increment();
}

HsmGrpcService::HsmGrpcService(HsmCore& core, HsmRole role,
                               const std::vector<std::string>& operational_identities,
                               metrics::Metrics* metrics)
    : UnaryService(rpc::ServiceAdapter::DescriptorOf<v1::Hsm>(),
                   AdapterOptions(core, role, operational_identities, CommandFamily(metrics))),
      core_(core),
      commands_(CommandFamily(metrics)) {
  Bind("GenerateRsaKeyPair",
       [this](const rpc::UnaryCall& call, const v1::GenerateRsaKeyPairRequest* req,
              v1::GenerateRsaKeyPairResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r,
                              core_.GenerateRsaKeyPair(call.caller, req->bits(), req->label()));
         resp->set_key_index(r.key_index);
         resp->set_public_key_der(ToString(r.public_key_der));
         return absl::OkStatus();
       });

  Bind("GetCertifiableKey",
       [this](const rpc::UnaryCall& call, const v1::GetPublicKeyRequest* req,
              v1::CertifiableKey* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.GetCertifiableKey(call.caller, req->key_index()));
         resp->set_public_key_der(ToString(r.public_key_der));
         resp->set_usage(static_cast<v1::KeyUsage>(r.usage));
         resp->set_hsm_id(r.hsm_id);
         return absl::OkStatus();
       });
  Bind("GetPublicKey",
       [this](const rpc::UnaryCall& call, const v1::GetPublicKeyRequest* req,
              v1::GetPublicKeyResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.GetPublicKey(call.caller, req->key_index()));
         resp->set_public_key_der(ToString(r));
         return absl::OkStatus();
       });

  Bind("BeginCeremony",
       [this](const rpc::UnaryCall& call, const v1::BeginCeremonyRequest* req,
              v1::BeginCeremonyResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(
             auto r,
             core_.BeginCeremony(call.caller, req->label(), static_cast<KeyType>(req->key_type()),
                                 req->component_count(), req->ttl_seconds()));
         resp->set_ceremony_id(r.ceremony_id);
         resp->set_component_encryption_key_der(ToString(r.component_encryption_key_der));
         resp->set_expires_at_unix_ms(r.expires_at_ms);
         return absl::OkStatus();
       });

  Bind("GetCeremony",
       [this](const rpc::UnaryCall& call, const v1::GetCeremonyRequest* req,
              v1::GetCeremonyResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.GetCeremony(call.caller, req->ceremony_id()));
         const Ceremony& c = r.ceremony;
         resp->set_ceremony_id(c.id);
         resp->set_label(c.label);
         resp->set_key_type(static_cast<v1::KeyType>(c.key_type));
         resp->set_component_count(c.component_count);
         resp->set_components_added(static_cast<uint32_t>(c.custodians.size()));
         for (const std::string& custodian : c.custodians) resp->add_custodians(custodian);
         resp->set_state(static_cast<v1::CeremonyState>(c.state));
         resp->set_expires_at_unix_ms(c.expires_at_ms);
         resp->set_component_encryption_key_der(ToString(r.component_encryption_key_der));
         resp->set_result_key_index(c.result_key_index);
         return absl::OkStatus();
       });

  Bind("AddComponent",
       [this](const rpc::UnaryCall& call, const v1::AddComponentRequest* req,
              v1::AddComponentResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.AddComponent(call.caller, req->ceremony_id(),
                                                         ToBytes(req->encrypted_component())));
         resp->set_component_kcv(r.component_kcv);
         resp->set_components_added(r.components_added);
         resp->set_components_required(r.components_required);
         return absl::OkStatus();
       });

  Bind("CompleteCeremony",
       [this](const rpc::UnaryCall& call, const v1::CompleteCeremonyRequest* req,
              v1::CompleteCeremonyResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.CompleteCeremony(call.caller, req->ceremony_id()));
         resp->set_key_index(r.key_index);
         resp->set_kcv(r.kcv);
         return absl::OkStatus();
       });

  Bind("TranslateTransportKey",
       [this](const rpc::UnaryCall& call, const v1::TranslateTransportKeyRequest* req,
              v1::TranslateTransportKeyResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r,
                              core_.TranslateTransportKey(call.caller, TranslateCommandFrom(*req)));
         resp->set_ctk_pk(ToString(r));
         return absl::OkStatus();
       });

  Bind("TranslateTransportKeys",
       [this](const rpc::UnaryCall& call, const v1::TranslateTransportKeysRequest* req,
              v1::TranslateTransportKeysResponse* resp) -> absl::Status {
         std::vector<TranslateCommand> commands;
         commands.reserve(req->items_size());
         for (int i = 0; i < req->items_size(); ++i) {
           commands.push_back(TranslateCommandFrom(req->items(i)));
           // An item's flow id, checked as the call's own is where it enters; else the call's.
           if (i < req->request_ids_size() && rpc::IsWellFormedRequestId(req->request_ids(i))) {
             commands.back().request_id = req->request_ids(i);
           }
         }
         RKL_ASSIGN_OR_RETURN(auto results, core_.TranslateTransportKeys(call.caller, commands));
         for (const absl::StatusOr<Bytes>& result : results) {
           v1::TranslateTransportKeyOutcome* outcome = resp->add_outcomes();
           if (result.ok()) {
             outcome->set_ctk_pk(ToString(*result));
           } else {
             const grpc::Status status = rpc::ToGrpcStatus(result.status());
             outcome->set_code(static_cast<int32_t>(status.error_code()));
             outcome->set_message(status.error_message());
           }
         }
         return absl::OkStatus();
       });

  Bind("ImportAndChallenge",
       [this](const rpc::UnaryCall& call, const v1::ImportAndChallengeRequest* req,
              v1::ImportAndChallengeResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(
             auto r, core_.ImportAndChallenge(call.caller, ImportCommandFrom(req->import()),
                                              ToBytes(req->rnd1())));
         SetImported(r.imported, *resp->mutable_imported());
         resp->mutable_challenge()->set_rnd2(ToString(r.challenge.rnd2));
         resp->mutable_challenge()->set_crnd1(ToString(r.challenge.crnd1));
         return absl::OkStatus();
       });

  Bind("AuthenticateAndDeliver",
       [this](const rpc::UnaryCall& call, const v1::AuthenticateAndDeliverRequest* req,
              v1::AuthenticateAndDeliverResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(
             auto r, core_.AuthenticateAndDeliver(call.caller, AuthVerifyCommandFrom(req->verify()),
                                                  Algorithm(req->algorithm()),
                                                  req->replace_existing(), req->tek_index()));
         resp->mutable_tmk()->set_tmk_index(r.tmk.tmk_index);
         resp->mutable_tmk()->set_kcv(r.tmk.kcv);
         resp->mutable_tmk()->set_created(r.tmk.created);
         resp->mutable_block()->set_key_block(r.block.key_block);
         resp->mutable_block()->set_key_kcv(r.block.key_kcv);
         resp->mutable_block()->set_kek_kcv(r.block.kek_kcv);
         return absl::OkStatus();
       });

  Bind("AuthChallenge",
       [this](const rpc::UnaryCall& call, const v1::AuthChallengeRequest* req,
              v1::AuthChallengeResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.AuthChallenge(call.caller, req->auk_index(), req->sn(),
                                                          ToBytes(req->rnd1())));
         resp->set_rnd2(ToString(r.rnd2));
         resp->set_crnd1(ToString(r.crnd1));
         return absl::OkStatus();
       });

  Bind("VerifyInstallProof",
       [this](const rpc::UnaryCall& call, const v1::VerifyInstallProofRequest* req,
              v1::Empty*) -> absl::Status {
         return core_.VerifyInstallProof(call.caller,
                                         InstallProofCommand{.auk_index = req->auk_index(),
                                                             .sn = req->sn(),
                                                             .tmk_kcv = req->tmk_kcv(),
                                                             .rnd1 = ToBytes(req->rnd1()),
                                                             .rnd2 = ToBytes(req->rnd2()),
                                                             .proof = ToBytes(req->proof())});
       });

  Bind("GenerateKdhKey",
       [this](const rpc::UnaryCall& call, const v1::GenerateKdhKeyRequest* req,
              v1::GenerateRsaKeyPairResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.GenerateKdhKey(call.caller, req->bits(), req->label()));
         resp->set_key_index(r.key_index);
         resp->set_public_key_der(ToString(r.public_key_der));
         return absl::OkStatus();
       });

  Bind("BuildKeyToken",
       [this](const rpc::UnaryCall& call, const v1::BuildKeyTokenRequest* req,
              v1::BuildKeyTokenResponse* resp) -> absl::Status {
         KeyTokenCommand cmd{.sn = req->sn(),
                             .algorithm = Algorithm(req->algorithm()),
                             .krd_certificate_der = ToBytes(req->krd_certificate_der()),
                             .krd_nonce = ToBytes(req->krd_nonce()),
                             .kdh_key_index = req->kdh_key_index(),
                             .kdh_certificate_der = ToBytes(req->kdh_certificate_der()),
                             .replace_existing = req->replace_existing()};
         for (const std::string& crl : req->crls()) cmd.crls.push_back(ToBytes(crl));
         RKL_ASSIGN_OR_RETURN(auto r, core_.BuildKeyToken(call.caller, cmd));
         resp->set_key_token(ToString(r.key_token));
         resp->set_tmk_index(r.tmk_index);
         resp->set_tmk_kcv(r.tmk_kcv);
         resp->set_created(r.created);
         resp->set_krd_id(r.krd_id);
         return absl::OkStatus();
       });

  Bind("VerifyKeyTokenInstallProof",
       [this](const rpc::UnaryCall& call, const v1::VerifyKeyTokenInstallProofRequest* req,
              v1::Empty*) -> absl::Status {
         return core_.VerifyKeyTokenInstallProof(
             call.caller, KeyTokenProofCommand{.tmk_index = req->tmk_index(),
                                               .sn = req->sn(),
                                               .krd_nonce = ToBytes(req->krd_nonce()),
                                               .proof = ToBytes(req->proof())});
       });

  Bind("DestroyTerminalKeys",
       [this](const rpc::UnaryCall& call, const v1::DestroyTerminalKeysRequest* req,
              v1::DestroyTerminalKeysResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r,
                              core_.DestroyTerminalKeys(call.caller, req->sn(), req->reason()));
         for (uint64_t index : r) resp->add_destroyed_key_indexes(index);
         return absl::OkStatus();
       });

  Bind("GetKeyInfo",
       [this](const rpc::UnaryCall& call, const v1::GetKeyInfoRequest* req,
              v1::KeyInfo* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.GetKeyInfo(call.caller, req->key_index()));
         resp->set_key_index(r.index);
         resp->set_type(static_cast<v1::KeyType>(r.type));
         resp->set_algorithm(static_cast<v1::KeyAlgorithm>(r.algorithm));
         resp->set_usage(static_cast<v1::KeyUsage>(r.usage));
         resp->set_bound_sn(r.bound_sn);
         resp->set_label(r.label);
         resp->set_kcv(r.kcv);
         resp->set_state(static_cast<v1::KeyState>(r.state));
         resp->set_created_at_unix_ms(r.created_at_ms);
         resp->set_rsa_bits(r.rsa_bits);
         resp->set_kek_index(r.kek_index);
         resp->set_bound_krd(r.bound_krd);
         return absl::OkStatus();
       });

  Bind("DeleteKey",
       [this](const rpc::UnaryCall& call, const v1::DeleteKeyRequest* req, v1::Empty*)
           -> absl::Status { return core_.DeleteKey(call.caller, req->key_index()); });

  Bind("GenerateRandom",
       [this](const rpc::UnaryCall& call, const v1::GenerateRandomRequest* req,
              v1::GenerateRandomResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.GenerateRandom(call.caller, req->length()));
         resp->set_random(ToString(r));
         return absl::OkStatus();
       });

  Bind("VerifyAuditChain",
       [this](const rpc::UnaryCall& call, const v1::VerifyAuditChainRequest* req,
              v1::VerifyAuditChainResponse* resp) -> absl::Status {
         return rpc::Answer(core_.VerifyAuditChain(call.caller, req->anchor()), resp,
                            audit::ToProto);
       });

  Bind("AnchorAuditChain",
       [this](const rpc::UnaryCall& call, const v1::Empty*,
              v1::AnchorAuditChainResponse* resp) -> absl::Status {
         RKL_ASSIGN_OR_RETURN(auto r, core_.AnchorAuditChain(call.caller));
         resp->set_anchor(FormatAuditAnchor(r));
         resp->set_seq(r.seq);
         return absl::OkStatus();
       });
}

}  // namespace rkl::hsm
