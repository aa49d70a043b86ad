#pragma once
// GrpcHsmKeySource: HsmKeySource over Hsm.GetCertifiableKey. One channel per configured HSM
// (hsm.endpoints), each presenting the CA's own TLS identity (`ca`, a clientAuth service
// certificate) and requiring the HSM's server certificate to name the HSM's id. Channels
// connect lazily, so the CA may start before its HSMs. Thread-safe.

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "hsm_key_source.h"
#include "rkl/rpc/peer_client.h"
#include "rkl/rpc/tls.h"
#include "rkl/v1/hsm.grpc.pb.h"

namespace rkl::ca {

class GrpcHsmKeySource final : public HsmKeySource {
 public:
  // `endpoints`: HSM id → gRPC target. TLS file errors are reported now, naming the file.
  static absl::StatusOr<std::unique_ptr<GrpcHsmKeySource>> Create(
      const std::map<std::string, std::string, std::less<>>& endpoints, const rpc::TlsFiles& tls,
      absl::Duration timeout);

  bool Knows(std::string_view hsm_id) const override;
  absl::StatusOr<CertifiableKey> Get(const std::string& hsm_id, uint64_t key_index) override;

 private:
  GrpcHsmKeySource() = default;
  std::map<std::string, std::unique_ptr<rpc::PeerClient<v1::Hsm>>, std::less<>> clients_;
};

}  // namespace rkl::ca
