#include "ca_core.h"

#include <openssl/evp.h>

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/x509_csr.h"
#include "spdlog/spdlog.h"

namespace rkl::ca {
namespace {

constexpr int64_t kSecondsPerDay = 86'400;
constexpr size_t kSerialSize = 16;
// A random 126-bit serial colliding is practically impossible; retrying a few times turns
// even a broken RNG into an error instead of a loop.
constexpr int kMaxSerialAttempts = 3;
constexpr size_t kMaxSerialHexLength = 40;
constexpr char kLocalhost[] = "localhost";

absl::Status NotInitialised() {
  return absl::FailedPreconditionError(
      "ca: not initialised; run `rklctl pki init` against this database first");
}

absl::Status CheckDays(int days, std::string_view name, int max = 36500) {
  if (days < 1 || days > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(name), ": must be between 1 and ", max, " days, got ", days));
  }
  return absl::OkStatus();
}

// Reads and checks a CSR: parses, verifies its self-signature. A signature that does not
// match the key is malformed input as far as the CA is concerned (PROTOCOL §10).
absl::StatusOr<crypto::PublicKey> CsrPublicKey(const std::string& csr_pem) {
  absl::StatusOr<crypto::Csr> csr = crypto::Csr::FromPem(csr_pem);
  if (!csr.ok()) {
    return absl::InvalidArgumentError("csr_pem: must be one PEM PKCS#10 certificate request");
  }
  absl::Status sig = csr->VerifySelfSignature();
  if (!sig.ok()) {
    return absl::InvalidArgumentError(
        "csr_pem: signature does not verify under the request's public key");
  }
  absl::StatusOr<crypto::PublicKey> key = csr->GetPublicKey();
  if (!key.ok()) {
    return absl::InvalidArgumentError("csr_pem: public key must be RSA or EC P-256");
  }
  return key;
}

constexpr size_t kRequestIdSize = 16;

bool ValidRequestId(const std::string& id) {
  if (id.size() != 2 * kRequestIdSize) return false;
  for (char c : id) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)) && (c < 'A' || c > 'F')) return false;
  }
  return true;
}

std::string AuditResult(const absl::Status& status) {
  if (status.ok()) return "OK";
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
}

// validity_days beyond the profile's ceiling is refused when the request is made, not only
// when it is signed.
absl::Status CheckRequestedDays(uint32_t days, int max_days, Profile profile) {
  if (days > static_cast<uint32_t>(max_days)) {
    return absl::InvalidArgumentError(absl::StrCat("validity_days: must be at most ", max_days,
                                                   " for ", std::string(ProfileName(profile)),
                                                   " certificates"));
  }
  return absl::OkStatus();
}

crypto::CrlReason AllowedReasonOrUnspecified(crypto::CrlReason reason) {
  switch (reason) {
    case crypto::CrlReason::kKeyCompromise:
    case crypto::CrlReason::kAffiliationChanged:
    case crypto::CrlReason::kSuperseded:
    case crypto::CrlReason::kCessationOfOperation:
      return reason;
    default:
      return crypto::CrlReason::kUnspecified;
  }
}

}  // namespace

absl::Status ValidatePolicy(const CaPolicy& p) {
  if (p.terminal_root_key == KeySpec::kEcP256) {
    return absl::InvalidArgumentError(
        "terminal_root key: must be RSA (terminals verify RSA, PROTOCOL §1)");
  }
  if (p.kdh_ca_key == KeySpec::kEcP256) {
    return absl::InvalidArgumentError(
        "kdh_ca key: must be RSA (terminals verify the KDH certificate with RSA, TR-34)");
  }
  if (p.organization.size() > 64) {
    return absl::InvalidArgumentError("organization: must be at most 64 characters");
  }
  RKL_RETURN_IF_ERROR(CheckDays(p.terminal_root_validity_days, "terminal_root validity"));
  RKL_RETURN_IF_ERROR(CheckDays(p.operator_ca_validity_days, "operator_ca validity"));
  RKL_RETURN_IF_ERROR(CheckDays(p.service_ca_validity_days, "service_ca validity"));
  RKL_RETURN_IF_ERROR(CheckDays(p.kdh_ca_validity_days, "kdh_ca validity"));
  RKL_RETURN_IF_ERROR(CheckDays(p.work_validity_days, "work certificate validity"));
  RKL_RETURN_IF_ERROR(CheckDays(p.kdh_validity_days, "kdh certificate validity"));
  RKL_RETURN_IF_ERROR(CheckDays(p.operator_validity_days, "operator certificate validity"));
  RKL_RETURN_IF_ERROR(CheckDays(p.service_validity_days, "service certificate validity"));
  if (p.crl_validity < absl::Hours(1) || p.crl_validity > absl::Hours(24 * 366)) {
    return absl::InvalidArgumentError("crl validity: must be between 1h and 366 days");
  }
  if (p.backdate < absl::ZeroDuration() || p.backdate > absl::Hours(24)) {
    return absl::InvalidArgumentError("backdate: must be between 0 and 24h");
  }
  if (p.request_ttl < absl::Minutes(1) || p.request_ttl > absl::Hours(24 * 30)) {
    return absl::InvalidArgumentError("request ttl: must be between 1m and 30 days");
  }
  return absl::OkStatus();
}

std::string CsrKeySha256Hex(const std::string& csr_pem) {
  absl::StatusOr<crypto::Csr> csr = crypto::Csr::FromPem(csr_pem);
  if (!csr.ok()) return "";
  absl::StatusOr<crypto::PublicKey> key = csr->GetPublicKey();
  if (!key.ok()) return "";
  Bytes der = key->ToDer();
  Bytes digest(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (EVP_Digest(der.data(), der.size(), digest.data(), &len, EVP_sha256(), nullptr) != 1) {
    return "";
  }
  digest.resize(len);
  return ToHex(digest);
}

CertificateRecord RecordOf(const crypto::Certificate& cert, IssuerId issuer, Profile profile) {
  CertificateRecord r;
  r.serial_hex = cert.SerialHex();
  r.issuer = issuer;
  r.profile = profile;
  r.subject_cn = cert.SubjectCommonName();
  r.not_before = cert.NotBefore();
  r.not_after = cert.NotAfter();
  r.certificate_der = cert.ToDer();
  return r;
}

absl::StatusOr<std::string> NormalizeSerialHex(std::string_view serial_hex) {
  std::string s = absl::AsciiStrToUpper(std::string(serial_hex));
  bool ok = s.size() >= 2 && s.size() <= kMaxSerialHexLength && s.size() % 2 == 0;
  for (char c : s) ok = ok && absl::ascii_isxdigit(static_cast<unsigned char>(c));
  if (!ok) {
    return absl::InvalidArgumentError("serial_hex: must be 2-40 hex digits, even length");
  }
  return s;
}

CaCore::CaCore(CaRepository* repository, const MasterKey* master_key, CaPolicy policy, Clock clock,
               crypto::RandomSource serial_source, HsmKeySource* hsm_keys)
    : repository_(repository),
      master_key_(master_key),
      policy_(std::move(policy)),
      clock_(std::move(clock)),
      serial_source_(std::move(serial_source)),
      hsm_keys_(hsm_keys) {}

int64_t CaCore::NowUnix() const { return absl::ToUnixSeconds(clock_()); }

Bytes CaCore::NewSerial() {
  Bytes serial(kSerialSize);
  serial_source_(serial);
  // Positive in 16 DER octets, and never shorter, so every serial prints as 32 hex digits.
  serial[0] = static_cast<uint8_t>((serial[0] & 0x7F) | 0x40);
  return serial;
}

int CaCore::DefaultValidityDays(Profile profile) const {
  switch (profile) {
    case Profile::kWork:
      return policy_.work_validity_days;
    case Profile::kKdh:
      return policy_.kdh_validity_days;
    case Profile::kOperator:
      return policy_.operator_validity_days;
    case Profile::kService:
      return policy_.service_validity_days;
    case Profile::kIssuer:
      break;
  }
  return 1;
}

absl::Status CaCore::CheckReady() {
  RKL_ASSIGN_OR_RETURN(std::optional<std::string> kcv, repository_->GetMasterKeyKcv());
  if (!kcv.has_value()) return NotInitialised();
  if (*kcv != master_key_->KcvHex()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "master key: KCV ", master_key_->KcvHex(),
        " does not match the KCV recorded in the CA database (", *kcv, "); wrong master_key_file"));
  }
  return absl::OkStatus();
}

absl::Status CaCore::MissingIssuer(IssuerId issuer, const absl::Status& lookup) {
  if (!absl::IsNotFound(lookup)) return lookup;
  absl::StatusOr<std::optional<std::string>> kcv = repository_->GetMasterKeyKcv();
  if (!kcv.ok()) return kcv.status();
  if (!kcv->has_value()) return NotInitialised();
  // Only an issuer added to rkl after this CA was bootstrapped can be missing.
  const std::string name(IssuerName(issuer));
  return absl::FailedPreconditionError(
      absl::StrCat(name,
                   ": not bootstrapped (this CA was initialised before it existed); run "
                   "`rklctl pki add-issuer ",
                   name, "` against this database"));
}

absl::StatusOr<CaCore::Issuer> CaCore::LoadIssuer(IssuerId issuer) {
  absl::StatusOr<IssuerRecord> record = repository_->GetIssuer(issuer);
  if (!record.ok()) return MissingIssuer(issuer, record.status());
  RKL_ASSIGN_OR_RETURN(crypto::Certificate cert,
                       crypto::Certificate::FromDer(record->certificate_der));
  RKL_ASSIGN_OR_RETURN(
      crypto::PrivateKey key,
      master_key_->OpenIssuerKey(IssuerName(issuer), cert, record->sealed_private_key));
  return Issuer{std::move(cert), std::move(key)};
}

absl::StatusOr<crypto::Certificate> CaCore::SignLeaf(const LeafSpec& spec, const Issuer& issuer,
                                                     int64_t now) {
  int max_days = DefaultValidityDays(spec.profile);
  int days = spec.validity_days == 0
                 ? max_days
                 : static_cast<int>(std::min<uint32_t>(spec.validity_days, 1u << 20));
  if (days > max_days) {
    return absl::InvalidArgumentError(absl::StrCat("validity_days: must be at most ", max_days,
                                                   " for ", std::string(ProfileName(spec.profile)),
                                                   " certificates"));
  }
  if (now >= issuer.certificate.NotAfter()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "issuer ", issuer.certificate.SubjectCommonName(), ": has expired; re-initialise the CA"));
  }
  int64_t not_before = now - absl::ToInt64Seconds(policy_.backdate);
  int64_t not_after = std::min(now + days * kSecondsPerDay, issuer.certificate.NotAfter());
  ExtensionProfile ext = ExtensionsOf(spec.profile);
  crypto::CertificateBuilder b;
  b.SetSubjectCommonName(spec.common_name)
      .SetSerial(NewSerial())
      .SetValidity(not_before, not_after)
      .SetPublicKey(spec.public_key)
      .SetBasicConstraints(ext.is_ca, ext.path_len, /*critical=*/true)
      .SetKeyUsage(ext.key_usage, /*critical=*/true);
  if (!policy_.organization.empty()) b.SetSubjectOrganization(policy_.organization);
  if (ext.extended_key_usage != crypto::ExtendedKeyUsage::kNone) {
    b.SetExtendedKeyUsage(ext.extended_key_usage, /*critical=*/false);
  }
  for (const std::string& name : spec.dns_names) b.AddDnsName(name);
  return b.Sign(issuer.certificate, issuer.key);
}

absl::StatusOr<crypto::Certificate> CaCore::IssueAndRecord(const LeafSpec& spec) {
  IssuerId issuer_id = IssuerOf(spec.profile);
  RKL_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(issuer_id));
  absl::Status last;
  for (int attempt = 0; attempt < kMaxSerialAttempts; ++attempt) {
    RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, SignLeaf(spec, issuer, NowUnix()));
    last = repository_->InsertCertificate(RecordOf(cert, issuer_id, spec.profile));
    if (last.ok()) return cert;
    if (!absl::IsAlreadyExists(last)) return last;
  }
  return absl::InternalError("serial: random serial numbers kept colliding; check the RNG");
}

absl::StatusOr<crypto::Certificate> CaCore::GetIssuerCertificate(IssuerId issuer) {
  absl::StatusOr<IssuerRecord> record = repository_->GetIssuer(issuer);
  if (!record.ok()) return MissingIssuer(issuer, record.status());
  return crypto::Certificate::FromDer(record->certificate_der);
}

absl::StatusOr<crypto::Certificate> CaCore::IssueWorkCertificate(
    const WorkCertificateRequest& request) {
  return IssueHsmKeyCertificate(Profile::kWork, request);
}

absl::StatusOr<crypto::Certificate> CaCore::IssueKdhCertificate(
    const KdhCertificateRequest& request) {
  return IssueHsmKeyCertificate(Profile::kKdh, request);
}

absl::StatusOr<crypto::Certificate> CaCore::IssueHsmKeyCertificate(
    Profile profile, const HsmKeyCertificateRequest& request) {
  RKL_RETURN_IF_ERROR(ValidateHsmId(request.hsm_id));
  absl::StatusOr<crypto::PublicKey> key = crypto::PublicKey::FromDer(request.public_key_der);
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        "public_key_der: must be one DER SubjectPublicKeyInfo of an RSA key");
  }
  RKL_RETURN_IF_ERROR(ValidateHsmPublicKey(*key));
  if (profile == Profile::kKdh) {
    // Every rule of the request first; then the HSM is asked about the key.
    RKL_RETURN_IF_ERROR(
        CheckRequestedDays(request.validity_days, DefaultValidityDays(profile), profile));
    RKL_RETURN_IF_ERROR(CheckKdhKeyInHsm(request, *key));
  }
  std::string common_name = profile == Profile::kKdh
                                ? KdhCommonName(request.hsm_id, request.key_index)
                                : WorkCommonName(request.hsm_id, request.key_index);
  return IssueAndRecord({profile, std::move(common_name), *key, {}, request.validity_days});
}

absl::Status CaCore::CheckKdhKeyInHsm(const HsmKeyCertificateRequest& request,
                                      const crypto::PublicKey& key) {
  const std::string& id = request.hsm_id;
  if (hsm_keys_ == nullptr || !hsm_keys_->Knows(id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("hsm_id: the CA has no endpoint for HSM ", id,
                     " (hsm.endpoints); it certifies only keys it can see in their HSM"));
  }
  const std::string not_it = absl::StrCat("public_key_der: is not the KDH signing key ",
                                          request.key_index, " of HSM ", id);
  absl::StatusOr<CertifiableKey> held = hsm_keys_->Get(id, request.key_index);
  if (!held.ok()) {
    const absl::Status& s = held.status();
    switch (s.code()) {
      case absl::StatusCode::kNotFound:
        return absl::NotFoundError(
            absl::StrCat("key_index: HSM ", id, " has no key ", request.key_index));
      case absl::StatusCode::kPermissionDenied:
        return absl::PermissionDeniedError(not_it);
      case absl::StatusCode::kFailedPrecondition:
        // A superseded key, or an HSM that failed its self-test: in the HSM's words.
        return absl::FailedPreconditionError(absl::StrCat("key_index: HSM ", id,
                                                          " will not have key ", request.key_index,
                                                          " certified: ", s.message()));
      case absl::StatusCode::kInvalidArgument:
        return absl::InvalidArgumentError(
            absl::StrCat("key_index: HSM ", id, " refused it: ", s.message()));
      default:
        return absl::UnavailableError(absl::StrCat("hsm_id: HSM ", id, " did not answer for key ",
                                                   request.key_index, ": ", s.message()));
    }
  }
  if (held->hsm_id != id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "hsm_id: the endpoint of HSM ", id, " answers as HSM ", held->hsm_id, " (hsm.endpoints)"));
  }
  absl::StatusOr<crypto::PublicKey> held_key = crypto::PublicKey::FromDer(held->public_key_der);
  if (held->usage != HsmKeyUsage::kKdhSign || !held_key.ok() || !(*held_key == key)) {
    return absl::PermissionDeniedError(not_it);
  }
  return absl::OkStatus();
}

absl::StatusOr<CaCore::LeafSpec> CaCore::OperatorLeaf(const OperatorCertificateRequest& request) {
  RKL_RETURN_IF_ERROR(ValidateOperatorId(request.operator_id));
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey key, CsrPublicKey(request.csr_pem));
  RKL_RETURN_IF_ERROR(ValidateOperatorPublicKey(key));
  RKL_RETURN_IF_ERROR(CheckRequestedDays(
      request.validity_days, DefaultValidityDays(Profile::kOperator), Profile::kOperator));
  return LeafSpec{
      Profile::kOperator, OperatorCommonName(request.operator_id), key, {}, request.validity_days};
}

absl::StatusOr<CaCore::LeafSpec> CaCore::ServiceLeaf(const ServiceCertificateRequest& request) {
  RKL_RETURN_IF_ERROR(ValidateServiceName(request.name));
  std::vector<std::string> dns_names = {request.name};
  if (IsPersonName(request.name)) {
    // An admin or custodian certificate identifies a person; it is never a server's name.
    if (!request.dns_names.empty()) {
      return absl::InvalidArgumentError(
          "dns_names: not allowed for admin and custodian certificates");
    }
  } else {
    // Clients reach a service by its name (compose) or on localhost (demo, tests).
    dns_names.push_back(kLocalhost);
    for (const std::string& name : request.dns_names) {
      RKL_RETURN_IF_ERROR(ValidateDnsName(name));
      if (std::find(dns_names.begin(), dns_names.end(), name) == dns_names.end()) {
        dns_names.push_back(name);
      }
    }
  }
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey key, CsrPublicKey(request.csr_pem));
  RKL_RETURN_IF_ERROR(ValidateServicePublicKey(key));
  RKL_RETURN_IF_ERROR(CheckRequestedDays(
      request.validity_days, DefaultValidityDays(Profile::kService), Profile::kService));
  return LeafSpec{Profile::kService, request.name, key, std::move(dns_names),
                  request.validity_days};
}

absl::StatusOr<crypto::Certificate> CaCore::IssueOperatorCertificate(
    const OperatorCertificateRequest& request) {
  RKL_ASSIGN_OR_RETURN(LeafSpec leaf, OperatorLeaf(request));
  return IssueAndRecord(leaf);
}

absl::StatusOr<crypto::Certificate> CaCore::IssueServiceCertificate(
    const ServiceCertificateRequest& request) {
  RKL_ASSIGN_OR_RETURN(LeafSpec leaf, ServiceLeaf(request));
  return IssueAndRecord(leaf);
}

// ---- Dual control -------------------------------------------------------------------------

void CaCore::Audit(AuditRecord record) {
  if (record.at_ms == 0) record.at_ms = NowUnix() * 1000;
  if (record.actor.empty()) record.actor = "(no identity)";
  if (absl::Status s = repository_->InsertAudit(record); !s.ok()) {
    spdlog::error("ca audit: could not record {} by {} ({}): {}", record.action, record.actor,
                  record.result, s.ToString());
  }
}

void CaCore::RecordRefusal(const std::string& caller, std::string_view method,
                           const absl::Status& status) {
  AuditRecord refused(caller, rkl::audit::action::kRpcRefused);
  refused.result = AuditResult(status);
  refused.detail = absl::StrCat("method=", std::string(method));
  Audit(std::move(refused));
}

absl::Status CaCore::CheckAdmin(const Caller& caller, const char* role) {
  if (!IsAdminName(caller.identity)) {
    return absl::PermissionDeniedError(
        absl::StrCat(role, ": '", caller.identity.empty() ? "(no identity)" : caller.identity,
                     "' is not an admin; only admin:* identities take part in dual control"));
  }
  absl::StatusOr<std::string> serial = NormalizeSerialHex(caller.certificate_serial_hex);
  if (!serial.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat(role, ": the caller's certificate serial is unknown"));
  }
  absl::StatusOr<CertificateRecord> cert = repository_->GetCertificate(*serial);
  if (absl::IsNotFound(cert.status())) {
    return absl::PermissionDeniedError(
        absl::StrCat(role, ": certificate ", *serial, " was not issued by this CA"));
  }
  if (!cert.ok()) return cert.status();
  if (cert->subject_cn != caller.identity || cert->issuer != IssuerId::kServiceCa) {
    return absl::PermissionDeniedError(absl::StrCat(role, ": certificate ", *serial,
                                                    " does not belong to '", caller.identity, "'"));
  }
  if (cert->state == CertificateState::kRevoked) {
    return absl::PermissionDeniedError(
        absl::StrCat(role, ": certificate ", *serial, " of '", caller.identity, "' is revoked"));
  }
  if (NowUnix() >= cert->not_after) {
    return absl::PermissionDeniedError(
        absl::StrCat(role, ": certificate ", *serial, " of '", caller.identity, "' has expired"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CertificateRequestRecord> CaCore::StoreRequest(
    const Caller& requester, CertificateRequestRecord request,
    const absl::StatusOr<LeafSpec>& leaf) {
  AuditRecord audit(requester.identity, rkl::audit::action::kRequestCreate);
  audit.subject = request.subject;
  audit.detail = absl::StrCat("profile=", std::string(ProfileName(request.profile)));
  absl::Status status = CheckAdmin(requester, "requester");
  if (status.ok()) status = leaf.status();
  if (status.ok()) status = CheckReady();
  if (!status.ok()) {
    audit.result = AuditResult(status);
    Audit(std::move(audit));
    return status;
  }
  request.requested_by = requester.identity;
  request.requested_at = NowUnix();
  request.expires_at = request.requested_at + absl::ToInt64Seconds(policy_.request_ttl);
  request.state = RequestState::kPending;
  absl::StrAppend(&audit.detail, " key_sha256=", CsrKeySha256Hex(request.csr_pem),
                  " expires_at=", request.expires_at);
  audit.at_ms = request.requested_at * 1000;
  for (int attempt = 0; attempt < kMaxSerialAttempts; ++attempt) {
    Bytes id(kRequestIdSize);
    serial_source_(id);
    request.id = ToHex(id);
    audit.request_id = request.id;
    status = repository_->InsertRequest(request, audit);
    if (status.ok()) return request;
    if (!absl::IsAlreadyExists(status)) break;
  }
  audit.request_id.clear();
  audit.result = AuditResult(status);
  Audit(std::move(audit));
  return status;
}

absl::StatusOr<CertificateRequestRecord> CaCore::RequestServiceCertificate(
    const Caller& requester, const ServiceCertificateRequest& request) {
  CertificateRequestRecord r{.profile = Profile::kService,
                             .subject = request.name,
                             .csr_pem = request.csr_pem,
                             .dns_names = request.dns_names,
                             .validity_days = request.validity_days};
  return StoreRequest(requester, std::move(r), ServiceLeaf(request));
}

absl::StatusOr<CertificateRequestRecord> CaCore::RequestOperatorCertificate(
    const Caller& requester, const OperatorCertificateRequest& request) {
  CertificateRequestRecord r{.profile = Profile::kOperator,
                             .subject = OperatorCommonName(request.operator_id),
                             .csr_pem = request.csr_pem,
                             .validity_days = request.validity_days};
  return StoreRequest(requester, std::move(r), OperatorLeaf(request));
}

bool CaCore::IsExpired(const CertificateRequestRecord& request) const {
  return request.state == RequestState::kPending && NowUnix() >= request.expires_at;
}

absl::StatusOr<ApprovedRequest> CaCore::ApproveRequest(const Caller& approver,
                                                       const std::string& request_id,
                                                       const std::string& subject) {
  AuditRecord audit(approver.identity, rkl::audit::action::kRequestApprove);
  audit.request_id = ValidRequestId(request_id) ? request_id : "";
  audit.subject = subject;
  const int64_t now = NowUnix();
  audit.at_ms = now * 1000;
  std::optional<crypto::Certificate> signed_cert;
  auto refuse = [&](absl::Status status) {
    audit.result = AuditResult(status);
    Audit(audit);
    return status;
  };
  if (!ValidRequestId(request_id)) {
    return refuse(absl::InvalidArgumentError("request_id: must be 32 upper-case hex digits"));
  }
  if (subject.empty()) {
    return refuse(absl::InvalidArgumentError(
        "subject: required: repeat the identity the request names (e.g. admin:bob)"));
  }
  if (absl::Status s = CheckAdmin(approver, "approver"); !s.ok()) return refuse(s);

  RequestSigner sign = [&](const CertificateRequestRecord& r) -> absl::StatusOr<CertificateRecord> {
    if (r.state != RequestState::kPending) {
      return absl::FailedPreconditionError(absl::StrCat("request_id: request ", r.id,
                                                        " was already approved by ", r.approved_by,
                                                        " (certificate ", r.serial_hex, ")"));
    }
    if (now >= r.expires_at) {
      return absl::FailedPreconditionError(
          absl::StrCat("request_id: request ", r.id, " expired at ",
                       absl::FormatTime(absl::FromUnixSeconds(r.expires_at), absl::UTCTimeZone()),
                       "; make a new request"));
    }
    if (r.requested_by == approver.identity) {
      return absl::PermissionDeniedError(
          absl::StrCat("approver: '", approver.identity, "' made request ", r.id,
                       "; a second, distinct admin must approve it (dual control)"));
    }
    if (r.subject != subject) {
      return absl::FailedPreconditionError(absl::StrCat("subject: request ", r.id, " is for '",
                                                        r.subject, "', not '", subject, "'"));
    }
    absl::StatusOr<LeafSpec> leaf =
        r.profile == Profile::kOperator
            ? OperatorLeaf({r.csr_pem, r.subject.substr(std::string_view("operator:").size()),
                            r.validity_days})
            : ServiceLeaf({r.csr_pem, r.subject, r.dns_names, r.validity_days});
    RKL_RETURN_IF_ERROR(leaf.status());
    IssuerId issuer_id = IssuerOf(leaf->profile);
    RKL_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(issuer_id));
    RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, SignLeaf(*leaf, issuer, now));
    signed_cert = cert;
    return RecordOf(cert, issuer_id, leaf->profile);
  };
  AuditRecord approved = audit;
  absl::StatusOr<CertificateRequestRecord> done;
  for (int attempt = 0; attempt < kMaxSerialAttempts; ++attempt) {
    done = repository_->ApproveRequest(request_id, approver.identity, now, sign, approved);
    if (!absl::IsAlreadyExists(done.status())) break;
  }
  if (!done.ok()) return refuse(done.status());
  return ApprovedRequest{*std::move(done), *std::move(signed_cert)};
}

absl::StatusOr<CertificateRequestRecord> CaCore::GetRequest(const std::string& request_id) {
  if (!ValidRequestId(request_id)) {
    return absl::InvalidArgumentError("request_id: must be 32 upper-case hex digits");
  }
  return repository_->GetRequest(request_id);
}

absl::StatusOr<std::vector<CertificateRequestRecord>> CaCore::ListRequests(bool pending_only) {
  return repository_->ListRequests(pending_only, kMaxListedRequests);
}

absl::StatusOr<CrlRecord> CaCore::SignCrl(IssuerId issuer_id, const Issuer& issuer,
                                          uint64_t crl_number,
                                          const std::vector<RevokedEntry>& revoked, int64_t now) {
  int64_t next_update = now + absl::ToInt64Seconds(policy_.crl_validity);
  crypto::CrlBuilder b;
  for (const RevokedEntry& e : revoked) {
    RKL_ASSIGN_OR_RETURN(Bytes serial, FromHex(e.serial_hex, "serial_hex"));
    b.AddRevoked(std::move(serial), e.revoked_at, e.reason);
  }
  b.SetLastUpdate(now).SetNextUpdate(next_update).SetCrlNumber(crl_number);
  RKL_ASSIGN_OR_RETURN(crypto::Crl crl, b.Sign(issuer.certificate, issuer.key));
  return CrlRecord{issuer_id, crl_number, now, next_update, crl.ToDer()};
}

absl::StatusOr<CertificateRecord> CaCore::Revoke(const std::string& serial_hex,
                                                 crypto::CrlReason reason,
                                                 const std::string& actor) {
  AuditRecord audit(actor, rkl::audit::action::kCertificateRevoke);
  audit.detail = absl::StrCat("reason=", static_cast<int>(reason));
  absl::StatusOr<CertificateRecord> revoked = RevokeUnaudited(serial_hex, reason);
  if (revoked.ok()) {
    audit.serial_hex = revoked->serial_hex;
    audit.subject = revoked->subject_cn;
  }
  audit.result = AuditResult(revoked.status());
  Audit(std::move(audit));
  return revoked;
}

absl::StatusOr<CertificateRecord> CaCore::RevokeUnaudited(const std::string& serial_hex,
                                                          crypto::CrlReason reason) {
  RKL_ASSIGN_OR_RETURN(std::string serial, NormalizeSerialHex(serial_hex));
  if (AllowedReasonOrUnspecified(reason) == crypto::CrlReason::kUnspecified) {
    return absl::InvalidArgumentError(
        "reason: must be key compromise, affiliation changed, superseded or cessation of "
        "operation");
  }
  RKL_ASSIGN_OR_RETURN(CertificateRecord record, repository_->GetCertificate(serial));
  if (record.profile == Profile::kIssuer) {
    return absl::FailedPreconditionError(
        "serial_hex: names an issuer certificate, which cannot be revoked; re-initialise the "
        "PKI instead");
  }
  RKL_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(record.issuer));
  int64_t now = NowUnix();
  IssuerId issuer_id = record.issuer;
  CrlPublisher publish =
      [&](const CrlRecord& current,
          const std::vector<RevokedEntry>& revoked) -> absl::StatusOr<std::optional<CrlRecord>> {
    RKL_ASSIGN_OR_RETURN(CrlRecord crl,
                         SignCrl(issuer_id, issuer, current.crl_number + 1, revoked, now));
    return std::optional<CrlRecord>(std::move(crl));
  };
  return repository_->Revoke(serial, now, reason, publish);
}

absl::StatusOr<CrlRecord> CaCore::GetCrl(IssuerId issuer_id) {
  absl::StatusOr<CrlRecord> current = repository_->GetCrl(issuer_id);
  if (!current.ok()) return MissingIssuer(issuer_id, current.status());
  int64_t now = NowUnix();
  // Past half its life: re-sign, so relying parties never hold a CRL close to expiry.
  auto stale = [now](const CrlRecord& crl) {
    return now >= crl.this_update + (crl.next_update - crl.this_update) / 2;
  };
  if (!stale(*current)) return current;
  RKL_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(issuer_id));
  CrlPublisher publish =
      [&](const CrlRecord& locked,
          const std::vector<RevokedEntry>& revoked) -> absl::StatusOr<std::optional<CrlRecord>> {
    // Another replica may have refreshed it while we waited for the lock.
    if (!stale(locked)) return std::optional<CrlRecord>();
    RKL_ASSIGN_OR_RETURN(CrlRecord crl,
                         SignCrl(issuer_id, issuer, locked.crl_number + 1, revoked, now));
    return std::optional<CrlRecord>(std::move(crl));
  };
  return repository_->PublishCrl(issuer_id, publish);
}

absl::StatusOr<CertificateRecord> CaCore::GetCertificateStatus(const std::string& serial_hex) {
  RKL_ASSIGN_OR_RETURN(std::string serial, NormalizeSerialHex(serial_hex));
  return repository_->GetCertificate(serial);
}

absl::StatusOr<CaCore::NewIssuer> CaCore::MakeIssuer(IssuerId id, Bytes serial, int64_t now) {
  KeySpec spec = policy_.terminal_root_key;
  int days = policy_.terminal_root_validity_days;
  switch (id) {
    case IssuerId::kTerminalRoot:
      break;
    case IssuerId::kKdhCa:
      spec = policy_.kdh_ca_key;
      days = policy_.kdh_ca_validity_days;
      break;
    case IssuerId::kOperatorCa:
      spec = policy_.operator_ca_key;
      days = policy_.operator_ca_validity_days;
      break;
    case IssuerId::kServiceCa:
      spec = policy_.service_ca_key;
      days = policy_.service_ca_validity_days;
      break;
  }
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey key, GenerateKey(spec));
  ExtensionProfile ext = ExtensionsOf(Profile::kIssuer);
  crypto::CertificateBuilder b;
  b.SetSubjectCommonName(std::string(IssuerName(id)))
      .SetSerial(std::move(serial))
      .SetValidity(now - absl::ToInt64Seconds(policy_.backdate), now + days * kSecondsPerDay)
      .SetBasicConstraints(ext.is_ca, ext.path_len, /*critical=*/true)
      .SetKeyUsage(ext.key_usage, /*critical=*/true);
  if (!policy_.organization.empty()) b.SetSubjectOrganization(policy_.organization);
  RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, b.SelfSign(key));
  RKL_ASSIGN_OR_RETURN(Bytes sealed, master_key_->SealIssuerKey(IssuerName(id), cert, key));
  IssuerRecord record{id, cert.ToDer(), std::move(sealed), std::string(KeySpecName(spec))};
  CertificateRecord cert_record = RecordOf(cert, id, Profile::kIssuer);
  Issuer issuer{std::move(cert), std::move(key)};
  RKL_ASSIGN_OR_RETURN(CrlRecord crl, SignCrl(id, issuer, 1, {}, now));
  return NewIssuer{std::move(issuer), std::move(record), std::move(cert_record), std::move(crl)};
}

absl::StatusOr<crypto::Certificate> CaCore::AddIssuer(IssuerId issuer_id,
                                                      const std::string& actor) {
  RKL_RETURN_IF_ERROR(ValidatePolicy(policy_));
  RKL_RETURN_IF_ERROR(CheckReady());
  const std::string name(IssuerName(issuer_id));
  auto exists = [&] {
    return absl::FailedPreconditionError(
        absl::StrCat(name, ": already exists in this CA; an issuer is never replaced"));
  };
  absl::StatusOr<IssuerRecord> current = repository_->GetIssuer(issuer_id);
  if (current.ok()) return exists();
  if (!absl::IsNotFound(current.status())) return current.status();
  const int64_t now = NowUnix();
  absl::Status added;
  for (int attempt = 0; attempt < kMaxSerialAttempts; ++attempt) {
    RKL_ASSIGN_OR_RETURN(NewIssuer made, MakeIssuer(issuer_id, NewSerial(), now));
    added = repository_->AddIssuer(made.record, made.certificate, made.crl);
    if (added.ok()) {
      AuditRecord record(actor, rkl::audit::action::kBootstrapIssue);
      record.at_ms = now * 1000;
      record.subject = name;
      record.serial_hex = made.certificate.serial_hex;
      record.detail = "issuer added";
      Audit(std::move(record));
      return std::move(made.issuer.certificate);
    }
    if (absl::IsFailedPrecondition(added)) return exists();
    if (!absl::IsAlreadyExists(added)) return added;
  }
  return absl::InternalError("serial: random serial numbers kept colliding; check the RNG");
}

absl::StatusOr<BootstrapResult> CaCore::Bootstrap(const BootstrapRequest& request) {
  // Check everything before generating a single key.
  RKL_RETURN_IF_ERROR(ValidatePolicy(policy_));
  RKL_ASSIGN_OR_RETURN(std::optional<std::string> recorded_kcv, repository_->GetMasterKeyKcv());
  if (recorded_kcv.has_value()) {
    return absl::FailedPreconditionError(
        "ca: already initialised; refusing to replace its issuers");
  }
  if (request.services.empty()) {
    return absl::InvalidArgumentError("services: at least one service is required");
  }
  std::set<std::string> seen;
  for (const std::string& s : request.services) {
    if (IsPersonName(s)) {
      return absl::InvalidArgumentError(
          "services: admin and custodian identities are set with admin_names / custodian_names");
    }
    RKL_RETURN_IF_ERROR(ValidateServiceName(s, "services"));
    if (!seen.insert(s).second) {
      return absl::InvalidArgumentError(absl::StrCat("services: ", s, " listed twice"));
    }
  }
  for (const std::string& h : request.extra_dns_names) {
    RKL_RETURN_IF_ERROR(ValidateDnsName(h, "hostnames"));
  }
  // Persons: at least two admins (nobody could ever approve a request otherwise), custodians
  // as listed; every name once across both roles' identities.
  auto person_identities =
      [&](const std::vector<std::string>& names, std::string_view prefix,
          const std::string& field) -> absl::StatusOr<std::vector<std::string>> {
    std::vector<std::string> out;
    for (const std::string& n : names) {
      std::string identity = std::string(prefix) + n;
      RKL_RETURN_IF_ERROR(ValidateServiceName(identity, field));
      if (!seen.insert(identity).second) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": ", n, " listed twice"));
      }
      out.push_back(std::move(identity));
    }
    return out;
  };
  RKL_ASSIGN_OR_RETURN(std::vector<std::string> admin_identities,
                       person_identities(request.admin_names, kAdminPrefix, "admin_names"));
  if (admin_identities.size() < 2) {
    return absl::InvalidArgumentError(
        "admin_names: at least two distinct admins are required (dual control: one requests, "
        "another approves every later admin, custodian, service or operator certificate)");
  }
  RKL_ASSIGN_OR_RETURN(
      std::vector<std::string> custodian_identities,
      person_identities(request.custodian_names, kCustodianPrefix, "custodian_names"));
  RKL_RETURN_IF_ERROR(ValidateOperatorId(request.operator_id));
  if (request.operator_pin.empty()) {
    return absl::InvalidArgumentError("operator_pin: required (1-128 bytes)");
  }

  const int64_t now = NowUnix();
  std::vector<IssuerRecord> issuer_records;
  std::vector<CertificateRecord> cert_records;
  std::vector<CrlRecord> crl_records;
  std::set<std::string> serials;  // the batch is inserted at once: keep it collision-free
  auto fresh_serial = [&]() {
    Bytes s = NewSerial();
    while (!serials.insert(ToHex(s)).second) s = NewSerial();
    return s;
  };

  auto make_issuer = [&](IssuerId id) -> absl::StatusOr<Issuer> {
    RKL_ASSIGN_OR_RETURN(NewIssuer made, MakeIssuer(id, fresh_serial(), now));
    issuer_records.push_back(std::move(made.record));
    cert_records.push_back(std::move(made.certificate));
    crl_records.push_back(std::move(made.crl));
    return std::move(made.issuer);
  };
  RKL_ASSIGN_OR_RETURN(Issuer root, make_issuer(IssuerId::kTerminalRoot));
  RKL_ASSIGN_OR_RETURN(Issuer operator_ca, make_issuer(IssuerId::kOperatorCa));
  RKL_ASSIGN_OR_RETURN(Issuer service_ca, make_issuer(IssuerId::kServiceCa));
  RKL_ASSIGN_OR_RETURN(Issuer kdh_ca, make_issuer(IssuerId::kKdhCa));

  auto make_leaf = [&](Profile profile, std::string cn, std::vector<std::string> dns, KeySpec spec,
                       const Issuer& issuer) -> absl::StatusOr<KeyAndCertificate> {
    RKL_ASSIGN_OR_RETURN(crypto::PrivateKey key, GenerateKey(spec));
    LeafSpec leaf{profile, cn, key.GetPublicKey(), std::move(dns), 0};
    absl::StatusOr<crypto::Certificate> cert;
    do {
      cert = SignLeaf(leaf, issuer, now);
      if (!cert.ok()) return cert.status();
    } while (!serials.insert(cert->SerialHex()).second);
    cert_records.push_back(RecordOf(*cert, IssuerOf(profile), profile));
    return KeyAndCertificate{std::move(cn), std::move(key), *std::move(cert)};
  };

  std::vector<KeyAndCertificate> services;
  for (const std::string& s : request.services) {
    std::vector<std::string> dns = {s, kLocalhost};
    for (const std::string& h : request.extra_dns_names) {
      if (std::find(dns.begin(), dns.end(), h) == dns.end()) dns.push_back(h);
    }
    RKL_ASSIGN_OR_RETURN(KeyAndCertificate kc, make_leaf(Profile::kService, s, std::move(dns),
                                                         policy_.bootstrap_leaf_key, service_ca));
    services.push_back(std::move(kc));
  }
  std::vector<KeyAndCertificate> admins;
  for (const std::string& identity : admin_identities) {
    RKL_ASSIGN_OR_RETURN(KeyAndCertificate kc, make_leaf(Profile::kService, identity, {identity},
                                                         policy_.bootstrap_leaf_key, service_ca));
    admins.push_back(std::move(kc));
  }
  std::vector<KeyAndCertificate> custodians;
  for (const std::string& identity : custodian_identities) {
    RKL_ASSIGN_OR_RETURN(KeyAndCertificate kc, make_leaf(Profile::kService, identity, {identity},
                                                         policy_.bootstrap_leaf_key, service_ca));
    custodians.push_back(std::move(kc));
  }
  // Operator cards are always P-256 (PROTOCOL §1).
  RKL_ASSIGN_OR_RETURN(KeyAndCertificate card,
                       make_leaf(Profile::kOperator, OperatorCommonName(request.operator_id), {},
                                 KeySpec::kEcP256, operator_ca));
  std::vector<crypto::Certificate> chain = {operator_ca.certificate};
  RKL_ASSIGN_OR_RETURN(
      Bytes pkcs12,
      crypto::WritePkcs12(card.key, card.certificate, chain, card.name, request.operator_pin,
                          {.iterations = request.pkcs12_iterations}));

  // Everything is signed: record it all at once, or nothing.
  RKL_RETURN_IF_ERROR(
      repository_->Initialize(master_key_->KcvHex(), issuer_records, cert_records, crl_records));
  auto issued = [&](const std::string& subject, const std::string& serial_hex) {
    AuditRecord record("rklctl pki init", rkl::audit::action::kBootstrapIssue);
    record.at_ms = now * 1000;
    record.subject = subject;
    record.serial_hex = serial_hex;
    Audit(std::move(record));
  };
  for (const auto* group : {&services, &admins, &custodians}) {
    for (const KeyAndCertificate& kc : *group) issued(kc.name, kc.certificate.SerialHex());
  }
  issued(card.name, card.certificate.SerialHex());
  return BootstrapResult{std::move(root.certificate),
                         std::move(kdh_ca.certificate),
                         std::move(operator_ca.certificate),
                         std::move(service_ca.certificate),
                         std::move(services),
                         std::move(admins),
                         std::move(custodians),
                         std::move(card),
                         std::move(pkcs12)};
}

}  // namespace rkl::ca
