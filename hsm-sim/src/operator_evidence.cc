#include "operator_evidence.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/x509_verify.h"
#include "rkl/v1/mtms.pb.h"

namespace rkl::hsm {
namespace {

constexpr char kOperatorCnPrefix[] = "operator:";

}  // namespace

OperatorEvidence::OperatorEvidence(std::vector<crypto::Certificate> operator_cas)
    : operator_cas_(std::move(operator_cas)) {}

absl::StatusOr<OperatorEvidence::Checked> OperatorEvidence::CheckCertificate(const Bytes& der,
                                                                             int64_t at_s) const {
  const std::string key(der.begin(), der.end());
  {
    absl::MutexLock lock(&mu_);
    auto it = checked_.find(key);
    if (it != checked_.end() && at_s >= it->second.valid_from_s &&
        at_s <= it->second.valid_until_s) {
      return it->second;
    }
  }
  absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromDer(der);
  if (!cert.ok()) {
    return absl::UnauthenticatedError("operator_certificate_der: not a DER X.509 certificate");
  }
  absl::Status chain = crypto::VerifyChain(*cert, {}, operator_cas_, {}, at_s);
  if (!chain.ok()) {
    if (chain.code() == absl::StatusCode::kFailedPrecondition) {
      return absl::FailedPreconditionError(
          absl::StrCat("operator_certificate_der: not valid at the package's created_at (",
                       chain.message(), ")"));
    }
    return absl::UnauthenticatedError(absl::StrCat(
        "operator_certificate_der: does not chain to operator-ca (", chain.message(), ")"));
  }
  const std::string cn = cert->SubjectCommonName();
  if (!absl::StartsWith(cn, kOperatorCnPrefix) || cn.size() == sizeof(kOperatorCnPrefix) - 1) {
    return absl::UnauthenticatedError(
        "operator_certificate_der: subject CN must be \"operator:<id>\"");
  }
  if (cert->IsCa() || !crypto::HasAll(cert->KeyUsageBits(), crypto::KeyUsage::kDigitalSignature)) {
    return absl::UnauthenticatedError(
        "operator_certificate_der: must be an end-entity certificate with keyUsage "
        "digitalSignature");
  }
  absl::StatusOr<crypto::PublicKey> public_key = cert->GetPublicKey();
  if (!public_key.ok() || public_key->Type() != crypto::KeyType::kEcP256) {
    return absl::UnauthenticatedError("operator_certificate_der: key must be ECDSA P-256");
  }
  // The validity window over which this outcome holds: the certificate's and its issuer's.
  int64_t from = cert->NotBefore(), until = cert->NotAfter();
  for (const crypto::Certificate& ca : operator_cas_) {
    if (ca.SubjectDn() == cert->IssuerDn()) {
      from = std::max(from, ca.NotBefore());
      until = std::min(until, ca.NotAfter());
    }
  }
  Checked checked{cn.substr(sizeof(kOperatorCnPrefix) - 1), *std::move(public_key), from, until};
  absl::MutexLock lock(&mu_);
  if (checked_.size() >= kMaxCached) checked_.clear();
  checked_.insert_or_assign(key, checked);
  return checked;
}

absl::StatusOr<std::string> OperatorEvidence::Verify(const TranslateEvidence& evidence,
                                                     const TranslateSubject& subject) const {
  if (operator_cas_.empty()) {
    return absl::FailedPreconditionError(
        "this HSM trusts no operator-ca (translation.operator_ca_file): it translates nothing");
  }
  if (evidence.package.empty() || evidence.package_signature.empty() ||
      evidence.operator_certificate_der.empty()) {
    return absl::UnauthenticatedError(
        "package, package_signature, operator_certificate_der: required — HSM #1 translates "
        "only a transport key an operator signed (PROTOCOL 4)");
  }
  // The window is in whole seconds; floor division keeps negative times ordered.
  const int64_t at_s = subject.created_at_ms >= 0 ? subject.created_at_ms / 1000
                                                  : -((-subject.created_at_ms + 999) / 1000);
  RKL_ASSIGN_OR_RETURN(Checked signer, CheckCertificate(evidence.operator_certificate_der, at_s));
  if (!crypto::EcdsaVerify(signer.key, evidence.package, evidence.package_signature).ok()) {
    return absl::UnauthenticatedError(
        "package_signature: does not verify over package under the operator certificate");
  }
  v1::TransportKeyPackage package;
  if (!package.ParseFromArray(evidence.package.data(), static_cast<int>(evidence.package.size()))) {
    return absl::InvalidArgumentError("package: not a TransportKeyPackage");
  }
  if (package.operator_id() != signer.operator_id) {
    return absl::PermissionDeniedError(
        "package: operator_id differs from the operator certificate's");
  }
  if (package.sn() != subject.sn) {
    return absl::PermissionDeniedError("package: signed for another sn than the one requested");
  }
  if (package.ctk_pu() != AsString(subject.ctk_pu)) {
    return absl::PermissionDeniedError("package: signed for another ctk_pu than the one requested");
  }
  if (package.algorithm() != static_cast<int>(crypto::KeyAlgorithmCode(subject.algorithm))) {
    return absl::PermissionDeniedError(
        "package: signed for another algorithm than the one requested");
  }
  if (package.created_at_unix_ms() != subject.created_at_ms) {
    return absl::PermissionDeniedError(
        "package: signed with another created_at than the one requested");
  }
  return signer.operator_id;
}

}  // namespace rkl::hsm
