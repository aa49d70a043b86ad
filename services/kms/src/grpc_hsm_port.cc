#include "grpc_hsm_port.h"

#include "rkl/common/status_macros.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
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

absl::StatusOr<GeneratedKdhKey> GrpcHsmPort::GenerateKdhKey(uint32_t bits,
                                                            const std::string& label) {
  rkl::v1::GenerateKdhKeyRequest req;
  req.set_bits(bits);
  req.set_label(label);
  RKL_ASSIGN_OR_RETURN(rkl::v1::GenerateRsaKeyPairResponse resp,
                       hsm_.Call(&rkl::v1::Hsm::Stub::GenerateKdhKey, req));
  return GeneratedKdhKey{resp.key_index(), FromBytesField(resp.public_key_der())};
}

absl::StatusOr<BuiltKeyToken> GrpcHsmPort::BuildKeyToken(const KeyTokenOrder& order) {
  rkl::v1::BuildKeyTokenRequest req;
  req.set_sn(order.sn);
  req.set_algorithm(ToProto(order.algorithm));
  req.set_krd_certificate_der(ToBytesField(order.krd_certificate_der));
  req.set_krd_nonce(ToBytesField(order.krd_nonce));
  req.set_kdh_key_index(order.kdh_key_index);
  req.set_kdh_certificate_der(ToBytesField(order.kdh_certificate_der));
  for (const Bytes& crl : order.crls) req.add_crls(ToBytesField(crl));
  req.set_replace_existing(order.replace_existing);
  RKL_ASSIGN_OR_RETURN(rkl::v1::BuildKeyTokenResponse resp,
                       hsm_.Call(&rkl::v1::Hsm::Stub::BuildKeyToken, req));
  return BuiltKeyToken{FromBytesField(resp.key_token()), resp.tmk_index(), resp.tmk_kcv(),
                       resp.created(), resp.krd_id()};
}

absl::Status GrpcHsmPort::VerifyKeyTokenInstallProof(uint64_t tmk_index, const std::string& sn,
                                                     std::span<const uint8_t> krd_nonce,
                                                     std::span<const uint8_t> proof) {
  rkl::v1::VerifyKeyTokenInstallProofRequest req;
  req.set_tmk_index(tmk_index);
  req.set_sn(sn);
  req.set_krd_nonce(ToBytesField(krd_nonce));
  req.set_proof(ToBytesField(proof));
  return hsm_.Call(&rkl::v1::Hsm::Stub::VerifyKeyTokenInstallProof, req).status();
}

GrpcCaPort::GrpcCaPort(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : ca_(std::move(channel), timeout, "CA") {}

absl::StatusOr<IssuedKdhCertificate> GrpcCaPort::IssueKdhCertificate(
    std::span<const uint8_t> public_key_der, const std::string& hsm_id, uint64_t key_index) {
  rkl::v1::IssueKdhCertificateRequest req;
  req.set_public_key_der(ToBytesField(public_key_der));
  req.set_hsm_id(hsm_id);
  req.set_key_index(key_index);
  RKL_ASSIGN_OR_RETURN(rkl::v1::IssuedCertificate resp,
                       ca_.Call(&rkl::v1::CertificateAuthority::Stub::IssueKdhCertificate, req));
  absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromPem(resp.certificate_pem());
  if (!cert.ok()) return absl::InternalError("CA returned a KDH certificate that does not parse");
  return IssuedKdhCertificate{cert->ToDer(), resp.serial_hex(), resp.not_after_unix_s()};
}

absl::StatusOr<KdhCrl> GrpcCaPort::GetKdhCrl() {
  rkl::v1::GetCrlRequest req;
  req.set_issuer(rkl::v1::ISSUER_KDH_CA);
  RKL_ASSIGN_OR_RETURN(rkl::v1::GetCrlResponse resp,
                       ca_.Call(&rkl::v1::CertificateAuthority::Stub::GetCrl, req));
  absl::StatusOr<crypto::Crl> crl = crypto::Crl::FromPem(resp.crl_pem());
  if (!crl.ok()) return absl::InternalError("CA returned a kdh-ca CRL that does not parse");
  return KdhCrl{crl->ToDer(), resp.next_update_unix_s()};
}

}  // namespace rkl::kms
