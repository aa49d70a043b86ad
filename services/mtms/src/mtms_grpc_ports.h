#pragma once
// The gRPC implementations of HsmPort, CaPort and KmsPort over rkl::rpc channels (mTLS with
// MTMS's service certificate, a deadline on every call, an x-request-id per call).
// Errors follow the peer-error policy, rpc::FromPeerStatus: gRPC UNAVAILABLE and
// DEADLINE_EXCEEDED become UNAVAILABLE (retryable, mtms_ports.h), naming the peer; every
// other status is the peer's answer, code and message kept.
// Thread-safe: stubs and channels are shared.

#include <grpcpp/channel.h>

#include <memory>

#include "absl/time/time.h"
#include "mtms_ports.h"
#include "rkl/rpc/peer_client.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "rkl/v1/kms.grpc.pb.h"

namespace rkl::mtms {

class GrpcHsmPort final : public HsmPort {
 public:
  GrpcHsmPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout);
  absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t bits, const std::string& label) override;
  absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) override;
  // One TranslateTransportKeys call (1–64 requests).
  absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateTransportKeys(
      std::span<const TranslateRequest> requests) override;

 private:
  const rpc::PeerClient<v1::Hsm> hsm_;
};

class GrpcCaPort final : public CaPort {
 public:
  GrpcCaPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout);
  absl::StatusOr<IssuedCertificate> IssueWorkCertificate(const Bytes& public_key_der,
                                                         const std::string& hsm_id,
                                                         uint64_t key_index) override;
  absl::StatusOr<std::string> GetIssuerCertificate(CaIssuer issuer) override;
  absl::StatusOr<std::string> GetCrl(CaIssuer issuer) override;

 private:
  const rpc::PeerClient<v1::CertificateAuthority> ca_;
};

class GrpcKmsPort final : public KmsPort {
 public:
  GrpcKmsPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout);
  absl::StatusOr<Receipt> SubmitTransportKey(const std::string& sn, const Bytes& ctk_pk,
                                             const std::string& submission_id) override;
  // One SubmitTransportKeys call (1–64 submissions).
  absl::StatusOr<std::vector<absl::StatusOr<Receipt>>> SubmitTransportKeys(
      std::span<const Submission> submissions) override;

 private:
  const rpc::PeerClient<v1::Kms> kms_;
};

}  // namespace rkl::mtms
