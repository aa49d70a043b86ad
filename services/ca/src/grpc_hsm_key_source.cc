#include "grpc_hsm_key_source.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/rpc/channel.h"

namespace rkl::ca {

absl::StatusOr<std::unique_ptr<GrpcHsmKeySource>> GrpcHsmKeySource::Create(
    const std::map<std::string, std::string, std::less<>>& endpoints, const rpc::TlsFiles& tls,
    absl::Duration timeout) {
  std::unique_ptr<GrpcHsmKeySource> source(new GrpcHsmKeySource());
  for (const auto& [hsm_id, target] : endpoints) {
    RKL_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                         rpc::MakeChannel(target, {.tls = tls, .authority = hsm_id}));
    source->clients_.emplace(
        hsm_id, std::make_unique<rpc::PeerClient<v1::Hsm>>(std::move(channel), timeout, hsm_id));
  }
  return source;
}

bool GrpcHsmKeySource::Knows(std::string_view hsm_id) const {
  return clients_.find(hsm_id) != clients_.end();
}

absl::StatusOr<CertifiableKey> GrpcHsmKeySource::Get(const std::string& hsm_id,
                                                     uint64_t key_index) {
  auto it = clients_.find(hsm_id);
  if (it == clients_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("hsm_id: the CA has no endpoint for HSM ", hsm_id));
  }
  v1::GetPublicKeyRequest request;
  request.set_key_index(key_index);
  RKL_ASSIGN_OR_RETURN(v1::CertifiableKey answer,
                       it->second->Call(&v1::Hsm::Stub::GetCertifiableKey, request));
  CertifiableKey key;
  key.public_key_der.assign(answer.public_key_der().begin(), answer.public_key_der().end());
  switch (answer.usage()) {
    case v1::KEY_USAGE_KDH_SIGN:
      key.usage = HsmKeyUsage::kKdhSign;
      break;
    case v1::KEY_USAGE_TRANSPORT_DECRYPT:
      key.usage = HsmKeyUsage::kTransportDecrypt;
      break;
    default:
      key.usage = HsmKeyUsage::kOther;
  }
  key.hsm_id = answer.hsm_id();
  return key;
}

}  // namespace rkl::ca
