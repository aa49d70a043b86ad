#pragma once
// HsmGrpcService: the gRPC face of HsmCore (proto/rkl/v1/hsm.proto). It only authorizes the
// caller by its mTLS identity, translates messages and converts statuses (rpc::ToGrpcStatus);
// every rule lives in the core.
//
// Authorization: operational RPCs admit the configured operational identities (HSM #1:
// "mtms", HSM #2: "kms") and admins ("admin:*"); ceremony, delete and audit RPCs admit admins
// only. A refused call is PERMISSION_DENIED and is audited.
// Thread-safe; the core must outlive the service.

#include <string>
#include <vector>

#include "hsm_core.h"
#include "rkl/rpc/identity.h"
#include "rkl/v1/hsm.grpc.pb.h"

namespace rkl::hsm {

class HsmGrpcService final : public rkl::v1::Hsm::Service {
 public:
  HsmGrpcService(HsmCore& core, const std::vector<std::string>& operational_identities);

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
  grpc::Status ImportTransportKey(grpc::ServerContext* ctx,
                                  const v1::ImportTransportKeyRequest* req,
                                  v1::ImportTransportKeyResponse* resp) override;
  grpc::Status ImportAndChallenge(grpc::ServerContext* ctx,
                                  const v1::ImportAndChallengeRequest* req,
                                  v1::ImportAndChallengeResponse* resp) override;
  grpc::Status AuthenticateAndDeliver(grpc::ServerContext* ctx,
                                      const v1::AuthenticateAndDeliverRequest* req,
                                      v1::AuthenticateAndDeliverResponse* resp) override;
  grpc::Status GenerateTmk(grpc::ServerContext* ctx, const v1::GenerateTmkRequest* req,
                           v1::GenerateTmkResponse* resp) override;
  grpc::Status AuthChallenge(grpc::ServerContext* ctx, const v1::AuthChallengeRequest* req,
                             v1::AuthChallengeResponse* resp) override;
  grpc::Status AuthVerify(grpc::ServerContext* ctx, const v1::AuthVerifyRequest* req,
                          v1::Empty* resp) override;
  grpc::Status ExportKeyBlock(grpc::ServerContext* ctx, const v1::ExportKeyBlockRequest* req,
                              v1::ExportKeyBlockResponse* resp) override;
  grpc::Status VerifyInstallProof(grpc::ServerContext* ctx,
                                  const v1::VerifyInstallProofRequest* req,
                                  v1::Empty* resp) override;
  grpc::Status GetKeyInfo(grpc::ServerContext* ctx, const v1::GetKeyInfoRequest* req,
                          v1::KeyInfo* resp) override;
  grpc::Status DeleteKey(grpc::ServerContext* ctx, const v1::DeleteKeyRequest* req,
                         v1::Empty* resp) override;
  grpc::Status GenerateRandom(grpc::ServerContext* ctx, const v1::GenerateRandomRequest* req,
                              v1::GenerateRandomResponse* resp) override;
  grpc::Status VerifyAuditChain(grpc::ServerContext* ctx, const v1::Empty* req,
                                v1::VerifyAuditChainResponse* resp) override;

 private:
  // The caller's identity if it may call `method`; otherwise the refusal (audited).
  absl::StatusOr<std::string> Authorize(const grpc::ServerContext& ctx, const char* method);

  HsmCore& core_;
  rpc::Authorizer authorizer_;
};

}  // namespace rkl::hsm
