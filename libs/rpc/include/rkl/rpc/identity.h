#pragma once
// Who is calling, and may they call this RPC?
//
// Identity comes only from the TLS layer: the verified peer certificate's x509 CN and DNS
// SANs as gRPC's AuthContext reports them. rkl's service certificates carry CN = DNS SAN =
// the service name (`mtms`, `kms`, ...) or `admin:<name>` (PROTOCOL.md §2). A certificate
// whose CN is not among its DNS SANs is treated as having no identity rather than guessing
// which name counts. Without a verified client certificate (the terminal-facing,
// server-authenticated endpoint) the identity is empty; nothing a client sends in metadata
// ever influences it.
//
// Authorizer is built once at start-up, then only read: Check() is thread-safe and cheap.
// It is default-deny: a method with no Allow() entry admits nobody.

#include <grpcpp/security/auth_context.h>
#include <grpcpp/server_context.h>

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rkl::rpc {

struct CallerIdentity {
  std::string name;                   // e.g. "mtms" or "admin:alice"; empty if none
  std::vector<std::string> dns_sans;  // as presented, for diagnostics
  bool authenticated() const { return !name.empty(); }
};

CallerIdentity IdentityFromAuthContext(const grpc::AuthContext& auth);
// Works for both the synchronous and the callback server APIs.
CallerIdentity GetCallerIdentity(const grpc::ServerContextBase& ctx);

// The caller's identity, or UNAUTHENTICATED when the call carries no verified client
// certificate.
absl::StatusOr<std::string> RequireCaller(const grpc::ServerContextBase& ctx);

// Upper-case hex serial (no leading zeros) of the verified client certificate of the call;
// empty without one. For services that check the presented certificate against their own
// records (rkl-ca's dual control).
std::string PeerCertificateSerialHex(const grpc::ServerContextBase& ctx);

// True for operator/administrator identities (`admin:<name>`, with a non-empty name).
bool IsAdmin(std::string_view identity);
// True for key custodian identities (`custodian:<name>`, with a non-empty name).
bool IsCustodian(std::string_view identity);

class Authorizer {
 public:
  // Lets `identities` call `method`. An entry is an exact identity ("mtms") or a prefix
  // followed by '*' ("admin:*"). A lone "*" is refused (std::invalid_argument): every
  // RPC must name who may call it. `method` is whatever the server passes to Check(),
  // conventionally the short RPC name ("StoreTransportKey"). Repeated calls accumulate.
  Authorizer& Allow(std::string method, std::vector<std::string> identities);

  // OK, or PERMISSION_DENIED "caller '<id>' may not call <method>". An empty identity is
  // never admitted.
  absl::Status Check(std::string_view method, std::string_view identity) const;
  // The same, with the identity taken from the call's client certificate.
  absl::Status Check(const grpc::ServerContextBase& ctx, std::string_view method) const;

 private:
  std::map<std::string, std::vector<std::string>, std::less<>> allowed_;
};

}  // namespace rkl::rpc
