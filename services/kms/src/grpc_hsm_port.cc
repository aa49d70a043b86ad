#include "grpc_hsm_port.h"

#include "rkl/common/status_macros.h"
#include "rkl/protocol/proto_enums.h"

namespace rkl::kms {
namespace {

std::string ToBytesField(std::span<const uint8_t> b) { return std::string(AsString(b)); }

Bytes FromBytesField(const std::string& s) { return Bytes(s.begin(), s.end()); }

rkl::v1::KeyAlgorithm ToProto(crypto::KeyAlgorithm a) { return protocol::ToProto(a); }

// Peer errors follow rpc::FromPeerStatus: HSM #2's own answers keep their code (the core's
// decisions depend on it); an unreachable or late HSM #2 is UNAVAILABLE.
constexpr char kPeer[] = "HSM #2";

}  // namespace

GrpcHsmPort::GrpcHsmPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : hsm_(std::move(channel), timeout, kPeer) {}

absl::StatusOr<ImportedAndChallenged> GrpcHsmPort::ImportAndChallenge(
    uint64_t pk_index, uint64_t mak_index, const std::string& sn, std::span<const uint8_t> ctk_pk,
    std::span<const uint8_t> rnd1) {
  rkl::v1::ImportAndChallengeRequest req;
  req.mutable_import()->set_pk_index(pk_index);
  req.mutable_import()->set_mak_index(mak_index);
  req.mutable_import()->set_sn(sn);
  req.mutable_import()->set_ctk_pk(ToBytesField(ctk_pk));
  req.set_rnd1(ToBytesField(rnd1));
  RKL_ASSIGN_OR_RETURN(rkl::v1::ImportAndChallengeResponse resp,
                       hsm_.Call(&rkl::v1::Hsm::Stub::ImportAndChallenge, req));
  const auto& i = resp.imported();
  absl::StatusOr<crypto::KeyAlgorithm> algorithm =
      crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(i.algorithm()));
  if (!algorithm.ok()) return absl::InternalError("HSM #2 returned an unknown algorithm");
  return ImportedAndChallenged{
      ImportedTransportKey{i.tek_index(), i.tek_kcv(), i.auk_index(), i.auk_kcv(), *algorithm},
      AuthChallengeResult{FromBytesField(resp.challenge().rnd2()),
                          FromBytesField(resp.challenge().crnd1())}};
}

absl::StatusOr<AuthenticatedDelivery> GrpcHsmPort::AuthenticateAndDeliver(
    uint64_t auk_index, const std::string& sn, std::span<const uint8_t> rnd1,
    std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2, crypto::KeyAlgorithm algorithm,
    bool replace_existing, uint64_t tek_index) {
  rkl::v1::AuthenticateAndDeliverRequest req;
  auto* verify = req.mutable_verify();
  verify->set_auk_index(auk_index);
  verify->set_sn(sn);
  verify->set_rnd1(ToBytesField(rnd1));
  verify->set_rnd2(ToBytesField(rnd2));
  verify->set_crnd2(ToBytesField(crnd2));
  req.set_algorithm(ToProto(algorithm));
  req.set_replace_existing(replace_existing);
  req.set_tek_index(tek_index);
  RKL_ASSIGN_OR_RETURN(rkl::v1::AuthenticateAndDeliverResponse resp,
                       hsm_.Call(&rkl::v1::Hsm::Stub::AuthenticateAndDeliver, req));
  return AuthenticatedDelivery{
      GeneratedTmk{resp.tmk().tmk_index(), resp.tmk().kcv(), resp.tmk().created()},
      ExportedKeyBlock{resp.block().key_block(), resp.block().key_kcv(), resp.block().kek_kcv()}};
}

absl::StatusOr<AuthChallengeResult> GrpcHsmPort::AuthChallenge(uint64_t auk_index,
                                                               const std::string& sn,
                                                               std::span<const uint8_t> rnd1) {
  rkl::v1::AuthChallengeRequest req;
  req.set_auk_index(auk_index);
  req.set_sn(sn);
  req.set_rnd1(ToBytesField(rnd1));
  RKL_ASSIGN_OR_RETURN(rkl::v1::AuthChallengeResponse resp,
                       hsm_.Call(&rkl::v1::Hsm::Stub::AuthChallenge, req));
  return AuthChallengeResult{FromBytesField(resp.rnd2()), FromBytesField(resp.crnd1())};
}

absl::Status GrpcHsmPort::VerifyInstallProof(uint64_t auk_index, const std::string& sn,
                                             const std::string& tmk_kcv,
                                             std::span<const uint8_t> rnd1,
                                             std::span<const uint8_t> rnd2,
                                             std::span<const uint8_t> proof) {
  rkl::v1::VerifyInstallProofRequest req;
  req.set_auk_index(auk_index);
  req.set_sn(sn);
  req.set_tmk_kcv(tmk_kcv);
  req.set_rnd1(ToBytesField(rnd1));
  req.set_rnd2(ToBytesField(rnd2));
  req.set_proof(ToBytesField(proof));
  return hsm_.Call(&rkl::v1::Hsm::Stub::VerifyInstallProof, req).status();
}

absl::StatusOr<std::vector<uint64_t>> GrpcHsmPort::DestroyTerminalKeys(const std::string& sn,
                                                                       const std::string& reason) {
  rkl::v1::DestroyTerminalKeysRequest req;
  req.set_sn(sn);
  req.set_reason(reason);
  RKL_ASSIGN_OR_RETURN(rkl::v1::DestroyTerminalKeysResponse resp,
                       hsm_.Call(&rkl::v1::Hsm::Stub::DestroyTerminalKeys, req));
  return std::vector<uint64_t>(resp.destroyed_key_indexes().begin(),
                               resp.destroyed_key_indexes().end());
}

}  // namespace rkl::kms
