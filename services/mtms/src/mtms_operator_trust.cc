#include "mtms_operator_trust.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/x509_verify.h"
#include "spdlog/spdlog.h"

namespace rkl::mtms {

OperatorTrust::OperatorTrust(CaPort& ca, const Clock& clock, absl::Duration refresh_interval)
    : ca_(ca), clock_(clock), refresh_interval_ms_(absl::ToInt64Milliseconds(refresh_interval)) {}

absl::Status OperatorTrust::Refresh() {
  absl::MutexLock refresh_lock(&refresh_mu_);
  auto fail = [&](absl::Status status) {
    absl::MutexLock lock(&mu_);
    last_failed_refresh_ms_ = NowUnixMs(clock_);
    spdlog::warn("operator-ca refresh failed: {}", status.ToString());
    return status;
  };
  absl::StatusOr<std::string> issuer_pem = ca_.GetIssuerCertificate(CaIssuer::kOperatorCa);
  if (!issuer_pem.ok()) {
    return fail(absl::UnavailableError(absl::StrCat(
        "operator-ca certificate could not be fetched: ", issuer_pem.status().message())));
  }
  absl::StatusOr<crypto::Certificate> issuer = crypto::Certificate::FromPem(*issuer_pem);
  if (!issuer.ok() || !issuer->IsCa() || !issuer->IsSelfSigned()) {
    return fail(absl::UnavailableError("operator-ca certificate from the CA is not a CA root"));
  }
  absl::StatusOr<std::string> crl_pem = ca_.GetCrl(CaIssuer::kOperatorCa);
  if (!crl_pem.ok()) {
    return fail(absl::UnavailableError(
        absl::StrCat("operator-ca CRL could not be fetched: ", crl_pem.status().message())));
  }
  absl::StatusOr<crypto::Crl> crl = crypto::Crl::FromPem(*crl_pem);
  if (!crl.ok()) return fail(absl::UnavailableError("operator-ca CRL from the CA does not parse"));
  if (absl::Status s = crl->VerifySignature(*issuer); !s.ok()) {
    return fail(absl::UnavailableError("operator-ca CRL from the CA is not signed by operator-ca"));
  }
  absl::MutexLock lock(&mu_);
  if (snapshot_.has_value() && snapshot_->issuer == *issuer && crl->CrlNumber().has_value() &&
      snapshot_->crl.CrlNumber().has_value() && *crl->CrlNumber() < *snapshot_->crl.CrlNumber()) {
    // An older CRL than the one we hold (a lagging CA replica): keep ours.
    snapshot_->fetched_at_ms = NowUnixMs(clock_);
    return absl::OkStatus();
  }
  snapshot_ = Snapshot{*std::move(issuer), *std::move(crl), NowUnixMs(clock_)};
  return absl::OkStatus();
}

absl::StatusOr<OperatorTrust::Snapshot> OperatorTrust::Current(bool need_crl) {
  const int64_t now_ms = NowUnixMs(clock_);
  bool refresh = false;
  {
    absl::MutexLock lock(&mu_);
    bool stale =
        !snapshot_.has_value() || now_ms - snapshot_->fetched_at_ms >= refresh_interval_ms_;
    refresh = stale && (!last_failed_refresh_ms_.has_value() ||
                        now_ms - *last_failed_refresh_ms_ >= kRefreshRetryMs);
  }
  if (refresh) (void)Refresh();  // failures are logged; judge the cache below

  absl::MutexLock lock(&mu_);
  if (!snapshot_.has_value()) {
    return absl::UnavailableError(
        "operator-ca certificate and CRL are not available yet (CA unreachable); retry later");
  }
  if (need_crl) {
    const std::optional<int64_t> next_update = snapshot_->crl.NextUpdate();
    const bool current = next_update.has_value() ? now_ms / 1000 < *next_update
                                                 : now_ms - snapshot_->fetched_at_ms <
                                                       refresh_interval_ms_;  // no nextUpdate
    if (!current) {
      return absl::UnavailableError(
          "operator-ca CRL is past its next update and no fresh one could be fetched; retry "
          "later");
    }
  }
  return *snapshot_;
}

absl::StatusOr<std::shared_ptr<const OperatorTrust::ParsedCertificate>> OperatorTrust::Parse(
    const std::string& pem) {
  {
    absl::MutexLock lock(&cache_mu_);
    auto it = parsed_.find(pem);
    if (it != parsed_.end()) return it->second;
  }
  absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromPem(pem);
  if (!cert.ok()) {
    return absl::InvalidArgumentError("not exactly one PEM X.509 certificate");
  }
  absl::StatusOr<crypto::PublicKey> key = cert->GetPublicKey();
  auto parsed = std::make_shared<const ParsedCertificate>(
      ParsedCertificate{*std::move(cert), std::move(key)});
  absl::MutexLock lock(&cache_mu_);
  if (parsed_.size() >= kMaxCached) parsed_.clear();
  parsed_.emplace(pem, parsed);
  return parsed;
}

absl::StatusOr<std::string> OperatorTrust::CheckChainAndProfile(const crypto::Certificate& issuer,
                                                                const crypto::Certificate& cert,
                                                                int64_t at_unix_s) {
  const Bytes der_bytes = cert.ToDer();
  std::string der(der_bytes.begin(), der_bytes.end());
  {
    absl::MutexLock lock(&cache_mu_);
    auto it = checked_.find(der);
    if (it != checked_.end() && it->second.issuer == issuer &&
        at_unix_s >= it->second.valid_from_s && at_unix_s <= it->second.valid_until_s) {
      return it->second.operator_id;
    }
  }
  const crypto::Certificate roots[] = {issuer};
  absl::Status chain = crypto::VerifyChain(cert, {}, roots, {}, at_unix_s);
  if (!chain.ok()) {
    if (chain.code() == absl::StatusCode::kFailedPrecondition) {
      return absl::FailedPreconditionError(
          absl::StrCat("operator_certificate: not valid now (", chain.message(), ")"));
    }
    return absl::UnauthenticatedError(absl::StrCat(
        "operator_certificate: does not chain to operator-ca (", chain.message(), ")"));
  }
  const std::string cn = cert.SubjectCommonName();
  if (!absl::StartsWith(cn, kOperatorCnPrefix) || cn.size() == sizeof(kOperatorCnPrefix) - 1) {
    return absl::UnauthenticatedError("operator_certificate: subject CN must be \"operator:<id>\"");
  }
  if (cert.IsCa() || !crypto::HasAll(cert.KeyUsageBits(), crypto::KeyUsage::kDigitalSignature)) {
    return absl::UnauthenticatedError(
        "operator_certificate: must be an end-entity certificate with keyUsage "
        "digitalSignature");
  }
  absl::StatusOr<crypto::PublicKey> key = cert.GetPublicKey();
  if (!key.ok() || key->Type() != crypto::KeyType::kEcP256) {
    return absl::UnauthenticatedError("operator_certificate: key must be ECDSA P-256");
  }
  std::string operator_id = cn.substr(sizeof(kOperatorCnPrefix) - 1);
  CheckedChain checked{issuer, operator_id, std::max(cert.NotBefore(), issuer.NotBefore()),
                       std::min(cert.NotAfter(), issuer.NotAfter())};
  absl::MutexLock lock(&cache_mu_);
  if (checked_.size() >= kMaxCached) checked_.clear();
  checked_.insert_or_assign(std::move(der), std::move(checked));
  return operator_id;
}

absl::StatusOr<std::string> OperatorTrust::VerifyForIntake(const crypto::Certificate& cert) {
  RKL_ASSIGN_OR_RETURN(Snapshot snapshot, Current(/*need_crl=*/true));
  RKL_ASSIGN_OR_RETURN(std::string operator_id,
                       CheckChainAndProfile(snapshot.issuer, cert, NowUnixSeconds(clock_)));
  if (snapshot.crl.IsRevoked(cert)) {
    return absl::FailedPreconditionError("operator_certificate: revoked by operator-ca");
  }
  return operator_id;
}

absl::StatusOr<std::string> OperatorTrust::VerifyChainAt(const crypto::Certificate& cert,
                                                         int64_t at_unix_s) {
  RKL_ASSIGN_OR_RETURN(Snapshot snapshot, Current(/*need_crl=*/false));
  return CheckChainAndProfile(snapshot.issuer, cert, at_unix_s);
}

}  // namespace rkl::mtms
