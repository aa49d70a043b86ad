#pragma once
// GrpcHsmPort: HsmPort over rkl.v1.Hsm on HSM #2, through an mTLS channel (rkl::rpc).
// Each call has a deadline; errors follow the peer-error policy (rpc::FromPeerStatus):
// UNAVAILABLE and DEADLINE_EXCEEDED come back as UNAVAILABLE, so the core can tell a
// retryable outage from a refusal, and HSM #2's refusals keep their code and message. Requests
// carry indexes, public nonces/tokens and wrapped keys only. Thread-safe (gRPC stubs are).

#include <grpcpp/channel.h>

#include <memory>

#include "absl/time/time.h"
#include "ca_port.h"
#include "hsm_port.h"
#include "rkl/rpc/peer_client.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"

namespace rkl::kms {

class GrpcHsmPort final : public HsmPort {
 public:
  GrpcHsmPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout);

  absl::StatusOr<ImportedAndChallenged> ImportAndChallenge(uint64_t pk_index, uint64_t mak_index,
                                                           const std::string& sn,
                                                           std::span<const uint8_t> ctk_pk,
                                                           std::span<const uint8_t> rnd1) override;
  absl::StatusOr<AuthenticatedDelivery> AuthenticateAndDeliver(
      uint64_t auk_index, const std::string& sn, std::span<const uint8_t> rnd1,
      std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2, crypto::KeyAlgorithm algorithm,
      bool replace_existing, uint64_t tek_index) override;
  absl::StatusOr<AuthChallengeResult> AuthChallenge(uint64_t auk_index, const std::string& sn,
                                                    std::span<const uint8_t> rnd1) override;
  absl::Status VerifyInstallProof(uint64_t auk_index, const std::string& sn,
                                  const std::string& tmk_kcv, std::span<const uint8_t> rnd1,
                                  std::span<const uint8_t> rnd2,
                                  std::span<const uint8_t> proof) override;
  absl::StatusOr<std::vector<uint64_t>> DestroyTerminalKeys(const std::string& sn,
                                                            const std::string& reason) override;
  absl::StatusOr<GeneratedKdhKey> GenerateKdhKey(uint32_t bits, const std::string& label) override;
  absl::StatusOr<BuiltKeyToken> BuildKeyToken(const KeyTokenOrder& order) override;
  absl::Status VerifyKeyTokenInstallProof(uint64_t tmk_index, const std::string& sn,
                                          std::span<const uint8_t> krd_nonce,
                                          std::span<const uint8_t> proof) override;

 private:
  const rpc::PeerClient<rkl::v1::Hsm> hsm_;
};

// GrpcCaPort: CaPort over rkl.v1.CertificateAuthority (role kms), through an mTLS channel
// (config ca.*, with KMS's own client identity hsm.tls). Errors as GrpcHsmPort's.
class GrpcCaPort final : public CaPort {
 public:
  GrpcCaPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout);

  absl::StatusOr<IssuedKdhCertificate> IssueKdhCertificate(std::span<const uint8_t> public_key_der,
                                                           const std::string& hsm_id,
                                                           uint64_t key_index) override;
  absl::StatusOr<KdhCrl> GetKdhCrl() override;

 private:
  const rpc::PeerClient<rkl::v1::CertificateAuthority> ca_;
};

}  // namespace rkl::kms
