#pragma once
// HsmGrpcService: the gRPC face of HsmCore (proto/rkl/v1/hsm.proto). It only authorizes the
// caller by its mTLS identity (rpc::ServiceAdapter, by the roles hsm.proto declares on each
// RPC), translates messages and converts statuses once; every rule lives in the core.
//
// Authorization, by the instance's role and the caller's identity (docs/hsm.md, "Who may
// call what"; hsm.proto's "mtms" and "kms" roles are bound to this instance's operational
// identities or to nobody):
//  - role mtms (HSM #1): GenerateRsaKeyPair, GetPublicKey, TranslateTransportKey(s) and
//    GenerateRandom, to the operational identities (mtms) only;
//  - role kms (HSM #2): ImportAndChallenge, AuthChallenge, AuthenticateAndDeliver,
//    VerifyInstallProof, DestroyTerminalKeys and GenerateRandom, to the operational
//    identities (kms) only;
//  - both roles: ceremony steps to key custodians ("custodian:*") only; GetCeremony to
//    custodians and admins; GetKeyInfo, DeleteKey and VerifyAuditChain to admins
//    ("admin:*") only — none of them returns, exports or re-wraps a key.
// Every other call (another role's command, another identity) is PERMISSION_DENIED and is
// audited.
// Thread-safe; the core must outlive the service.

#include <string>
#include <string_view>
#include <vector>

#include "hsm_core.h"
#include "rkl/rpc/adapter.h"
#include "rkl/v1/hsm.grpc.pb.h"

namespace rkl::hsm {

// What one rkl-hsm instance is for: HSM #1 serves MTMS, HSM #2 serves KMS.
enum class HsmRole { kMtms, kKms };
std::string_view HsmRoleName(HsmRole role);  // "mtms", "kms"

class HsmGrpcService final : public rkl::v1::Hsm::Service {
 public:
  // `operational_identities`: the services given the role's commands (admins and patterns
  // are refused: std::invalid_argument).
  HsmGrpcService(HsmCore& core, HsmRole role,
                 const std::vector<std::string>& operational_identities);

  grpc::Status GenerateRsaKeyPair(grpc::ServerContext* ctx,
                                  const v1::GenerateRsaKeyPairRequest* req,
                                  v1::GenerateRsaKeyPairResponse* resp) override;
  grpc::Status GetPublicKey(grpc::ServerContext* ctx, const v1::GetPublicKeyRequest* req,
                            v1::GetPublicKeyResponse* resp) override;
  grpc::Status BeginCeremony(grpc::ServerContext* ctx, const v1::BeginCeremonyRequest* req,
                             v1::BeginCeremonyResponse* resp) override;
  grpc::Status GetCeremony(grpc::ServerContext* ctx, const v1::GetCeremonyRequest* req,
                           v1::GetCeremonyResponse* resp) override;
  grpc::Status AddComponent(grpc::ServerContext* ctx, const v1::AddComponentRequest* req,
                            v1::AddComponentResponse* resp) override;
  grpc::Status CompleteCeremony(grpc::ServerContext* ctx, const v1::CompleteCeremonyRequest* req,
                                v1::CompleteCeremonyResponse* resp) override;
  grpc::Status TranslateTransportKey(grpc::ServerContext* ctx,
                                     const v1::TranslateTransportKeyRequest* req,
                                     v1::TranslateTransportKeyResponse* resp) override;
  grpc::Status TranslateTransportKeys(grpc::ServerContext* ctx,
                                      const v1::TranslateTransportKeysRequest* req,
                                      v1::TranslateTransportKeysResponse* resp) override;
  grpc::Status ImportAndChallenge(grpc::ServerContext* ctx,
                                  const v1::ImportAndChallengeRequest* req,
                                  v1::ImportAndChallengeResponse* resp) override;
  grpc::Status AuthenticateAndDeliver(grpc::ServerContext* ctx,
                                      const v1::AuthenticateAndDeliverRequest* req,
                                      v1::AuthenticateAndDeliverResponse* resp) override;
  grpc::Status AuthChallenge(grpc::ServerContext* ctx, const v1::AuthChallengeRequest* req,
                             v1::AuthChallengeResponse* resp) override;
  grpc::Status VerifyInstallProof(grpc::ServerContext* ctx,
                                  const v1::VerifyInstallProofRequest* req,
                                  v1::Empty* resp) override;
  grpc::Status DestroyTerminalKeys(grpc::ServerContext* ctx,
                                   const v1::DestroyTerminalKeysRequest* req,
                                   v1::DestroyTerminalKeysResponse* resp) override;
  grpc::Status GetKeyInfo(grpc::ServerContext* ctx, const v1::GetKeyInfoRequest* req,
                          v1::KeyInfo* resp) override;
  grpc::Status DeleteKey(grpc::ServerContext* ctx, const v1::DeleteKeyRequest* req,
                         v1::Empty* resp) override;
  grpc::Status GenerateRandom(grpc::ServerContext* ctx, const v1::GenerateRandomRequest* req,
                              v1::GenerateRandomResponse* resp) override;
  grpc::Status VerifyAuditChain(grpc::ServerContext* ctx, const v1::VerifyAuditChainRequest* req,
                                v1::VerifyAuditChainResponse* resp) override;
  grpc::Status AnchorAuditChain(grpc::ServerContext* ctx, const v1::Empty* req,
                                v1::AnchorAuditChainResponse* resp) override;

 private:
  HsmCore& core_;
  const rpc::ServiceAdapter adapter_;
};

}  // namespace rkl::hsm
