#include "rkl/rpc/identity.h"

#include <grpc/grpc_security_constants.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include "absl/strings/str_cat.h"

namespace rkl::rpc {
namespace {

std::vector<std::string> Values(const grpc::AuthContext& auth, const char* property) {
  std::vector<std::string> out;
  for (const grpc::string_ref& v : auth.FindPropertyValues(property)) {
    out.emplace_back(v.data(), v.size());
  }
  return out;
}

bool Matches(std::string_view pattern, std::string_view identity) {
  if (!pattern.empty() && pattern.back() == '*') {
    std::string_view prefix = pattern.substr(0, pattern.size() - 1);
    return identity.size() > prefix.size() && identity.starts_with(prefix);
  }
  return pattern == identity;
}

}  // namespace

CallerIdentity IdentityFromAuthContext(const grpc::AuthContext& auth) {
  CallerIdentity id;
  // Only a certificate the TLS layer verified against our CA counts; a server-authenticated
  // connection has no peer identity at all.
  if (!auth.IsPeerAuthenticated()) return id;
  id.dns_sans = Values(auth, GRPC_PEER_DNS_PROPERTY_NAME);
  std::vector<std::string> cns = Values(auth, GRPC_X509_CN_PROPERTY_NAME);
  std::string cn = cns.size() == 1 ? cns.front() : std::string();
  if (!cn.empty()) {
    if (id.dns_sans.empty() ||
        std::find(id.dns_sans.begin(), id.dns_sans.end(), cn) != id.dns_sans.end()) {
      id.name = cn;
    }
  } else if (id.dns_sans.size() == 1) {
    id.name = id.dns_sans.front();
  }
  return id;
}

CallerIdentity GetCallerIdentity(const grpc::ServerContextBase& ctx) {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth == nullptr) return {};
  return IdentityFromAuthContext(*auth);
}

absl::StatusOr<std::string> RequireCaller(const grpc::ServerContextBase& ctx) {
  CallerIdentity id = GetCallerIdentity(ctx);
  if (!id.authenticated()) {
    return absl::UnauthenticatedError("no verified client certificate");
  }
  return id.name;
}

bool IsAdmin(std::string_view identity) {
  constexpr std::string_view kPrefix = "admin:";
  return identity.size() > kPrefix.size() && identity.starts_with(kPrefix);
}

bool IsCustodian(std::string_view identity) {
  constexpr std::string_view kPrefix = "custodian:";
  return identity.size() > kPrefix.size() && identity.starts_with(kPrefix);
}

std::string PeerCertificateSerialHex(const grpc::ServerContextBase& ctx) {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return "";
  std::vector<grpc::string_ref> pem = auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pem.empty()) return "";
  BIO* bio = BIO_new_mem_buf(pem.front().data(), static_cast<int>(pem.front().size()));
  X509* cert = bio != nullptr ? PEM_read_bio_X509(bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free_all(bio);
  std::string out;
  if (cert != nullptr) {
    BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
    char* hex = bn != nullptr ? BN_bn2hex(bn) : nullptr;
    if (hex != nullptr) out = hex;
    OPENSSL_free(hex);
    BN_free(bn);
    X509_free(cert);
  }
  ERR_clear_error();
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (out.size() % 2 == 1) out.insert(out.begin(), '0');
  return out;
}

Authorizer& Authorizer::Allow(std::string method, std::vector<std::string> identities) {
  for (const std::string& i : identities) {
    if (i.empty() || i == "*") {
      throw std::invalid_argument(
          absl::StrCat("Authorizer: ", method, ": identity pattern must not be empty or '*'"));
    }
  }
  auto& list = allowed_[method];
  list.insert(list.end(), identities.begin(), identities.end());
  return *this;
}

absl::Status Authorizer::Check(std::string_view method, std::string_view identity) const {
  if (!identity.empty()) {
    if (auto it = allowed_.find(method); it != allowed_.end()) {
      for (const std::string& pattern : it->second) {
        if (Matches(pattern, identity)) return absl::OkStatus();
      }
    }
  }
  return absl::PermissionDeniedError(
      absl::StrCat("caller '", identity.empty() ? "(unauthenticated)" : std::string(identity),
                   "' may not call ", std::string(method)));
}

absl::Status Authorizer::Check(const grpc::ServerContextBase& ctx, std::string_view method) const {
  return Check(method, GetCallerIdentity(ctx).name);
}

}  // namespace rkl::rpc
