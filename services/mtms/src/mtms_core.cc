#include "mtms_core.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "rkl/common/request_id.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_verify.h"
#include "rkl/protocol/sn.h"
#include "rkl/v1/mtms.pb.h"
#include "spdlog/spdlog.h"

namespace rkl::mtms {
namespace {

constexpr char kWorkCnPrefix[] = "hsm-work:";

bool IsOperatorId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

bool IsSerialHex(const std::string& s) {
  if (s.empty() || s.size() > 40) return false;
  for (char c : s) {
    if (!(absl::ascii_isdigit(c) || (c >= 'A' && c <= 'F'))) return false;
  }
  return true;
}

// Step 1's sizes of what an operator card signed: the message (`field`), the signature and
// the card's certificate.
absl::Status CheckSignedShapes(std::string_view field, const std::string& message,
                               const std::string& signature, const std::string& certificate_pem) {
  if (message.empty() || message.size() > kMaxPackageBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": must be 1..", kMaxPackageBytes, " bytes"));
  }
  if (signature.empty() || signature.size() > kMaxSignatureBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("signature: must be 1..", kMaxSignatureBytes, " bytes of DER"));
  }
  if (certificate_pem.empty() || certificate_pem.size() > kMaxCertificatePemBytes) {
    return absl::InvalidArgumentError(absl::StrCat("operator_certificate_pem: must be 1..",
                                                   kMaxCertificatePemBytes, " bytes of PEM"));
  }
  return absl::OkStatus();
}

std::string EncodePageToken(const SubmissionRecord& last) {
  return ToHex(AsBytes(absl::StrCat(last.received_at_ms, "/", last.submission_id)));
}

absl::StatusOr<QueueCursor> DecodePageToken(const std::string& token) {
  absl::Status bad = absl::InvalidArgumentError("page.page_token: not a token this server issued");
  absl::StatusOr<Bytes> raw = FromHex(token, "page.page_token");
  if (!raw.ok()) return bad;
  std::vector<std::string> parts = absl::StrSplit(std::string(AsString(*raw)), '/');
  QueueCursor cursor;
  if (parts.size() != 2 || parts[1].empty() ||
      !absl::SimpleAtoi(parts[0], &cursor.received_at_ms)) {
    return bad;
  }
  cursor.submission_id = parts[1];
  return cursor;
}

}  // namespace

MtmsCore::MtmsCore(MtmsRepository& repository, HsmPort& hsm, CaPort& ca, OperatorTrust& trust,
                   const Clock& clock, MtmsCoreOptions options)
    : repository_(repository),
      hsm_(hsm),
      ca_(ca),
      trust_(trust),
      clock_(clock),
      options_(std::move(options)) {}

void MtmsCore::Audit(const std::string& actor, const std::string& action, const std::string& sn,
                     const std::string& detail, const absl::Status& result) {
  AuditEntry entry{.at_ms = NowUnixMs(clock_),
                   .actor = actor.empty() ? "anonymous" : actor,
                   .action = action,
                   .sn = sn,
                   .detail = detail,
                   .result = result.ok() ? "OK" : absl::StatusCodeToString(result.code())};
  if (absl::Status s = repository_.AppendAudit(entry); !s.ok()) {
    spdlog::warn("audit record for {} could not be written: {}", action, s.ToString());
  }
}

absl::StatusOr<WorkCertificateBundle> MtmsCore::GetWorkCertificate() {
  RKL_ASSIGN_OR_RETURN(std::optional<WorkKeyRecord> current, repository_.CurrentWorkKey());
  if (!current.has_value()) {
    return absl::FailedPreconditionError(
        "work key: none provisioned yet (an administrator runs `rklctl mtms work-key "
        "provision`)");
  }
  return WorkCertificateBundle{.certificate_pem = current->certificate_pem,
                               .terminal_root_pem = current->terminal_root_pem,
                               .serial_hex = current->serial_hex};
}

absl::StatusOr<SubmitReceipt> MtmsCore::SubmitTransportKey(const SubmitRequest& request,
                                                           const std::string& actor,
                                                           std::string_view source) {
  std::string sn;
  absl::StatusOr<SubmitReceipt> receipt = Intake(request, actor, sn);
  if (!receipt.ok()) {
    CountRefusal(rkl::audit::action::kPackageRefuse, sn, source, receipt.status());
    spdlog::debug("package refused: sn={} code={}", sn.empty() ? "*" : sn,
                  absl::StatusCodeToString(receipt.status().code()));
  }
  return receipt;
}

void MtmsCore::CountRefusal(const char* action, const std::string& sn, std::string_view source,
                            const absl::Status& refusal) {
  if (refusal.code() == absl::StatusCode::kUnavailable) return;
  refusals_.Count(NowUnixMs(clock_), sn, source, action, refusal);
}

absl::StatusOr<int64_t> MtmsCore::FlushRefusalCounts() {
  return refusals_.Flush([&](const std::vector<audit::RefusalCount>& counts) {
    return repository_.AddRefusalCounts(counts);
  });
}

absl::StatusOr<int64_t> MtmsCore::PurgeRefusalCounts() {
  return repository_.PurgeRefusalCounts(NowUnixMs(clock_) -
                                        absl::ToInt64Milliseconds(options_.refusal_retention));
}

absl::StatusOr<SubmitReceipt> MtmsCore::Intake(const SubmitRequest& request,
                                               const std::string& actor, std::string& signed_sn) {
  // 1. Shape of the request and of the package.
  RKL_RETURN_IF_ERROR(CheckSignedShapes("package", request.package, request.signature,
                                        request.operator_certificate_pem));
  v1::TransportKeyPackage package;
  if (!package.ParseFromString(request.package)) {
    return absl::InvalidArgumentError("package: not a serialized TransportKeyPackage");
  }
  // The signature covers every byte; a field we do not understand would be signed but
  // ignored, so refuse it rather than guess.
  if (!package.GetReflection()->GetUnknownFields(package).empty()) {
    return absl::InvalidArgumentError("package: contains fields unknown to TransportKeyPackage");
  }
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(package.sn()));
  if (package.ctk_pu().size() != 256 && package.ctk_pu().size() != 384) {
    return absl::InvalidArgumentError(
        "package.ctk_pu: must be 256 or 384 bytes (an RSA-2048/3072 OAEP ciphertext)");
  }
  if (!IsSerialHex(package.work_certificate_serial())) {
    return absl::InvalidArgumentError(
        "package.work_certificate_serial: must be 1-40 upper-case hex digits");
  }
  absl::StatusOr<crypto::KeyAlgorithm> algorithm =
      package.algorithm() >= 0 && package.algorithm() <= 0xFF
          ? crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(package.algorithm()))
          : absl::InvalidArgumentError("");
  if (!algorithm.ok()) {
    return absl::InvalidArgumentError(
        "package.algorithm: must be KEY_ALGORITHM_TDES2, _AES128 or _AES256");
  }
  if (package.created_at_unix_ms() <= 0) {
    return absl::InvalidArgumentError("package.created_at_unix_ms: must be positive");
  }
  if (package.nonce().size() != kNonceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("package.nonce: must be exactly ", kNonceBytes, " bytes"));
  }
  if (!IsOperatorId(package.operator_id())) {
    return absl::InvalidArgumentError(
        "package.operator_id: must be 1-64 characters of [a-z0-9._-]");
  }

  // 2–7. The operator certificate, the operator it names, the signature.
  RKL_ASSIGN_OR_RETURN(std::string certificate_serial,
                       VerifyOperatorSigned("package", package.operator_id(), "", request.package,
                                            request.signature, request.operator_certificate_pem));
  // From here on the SN is one a certified operator signed for: refusals count under it.
  signed_sn = package.sn();

  // 8. Freshness.
  const int64_t now_ms = NowUnixMs(clock_);
  RKL_RETURN_IF_ERROR(CheckFresh("package", package.created_at_unix_ms(), now_ms));

  // 9–10. Work key and replay, atomically with the insert.
  SubmissionRecord row;
  row.submission_id = ToHex(crypto::RandomBytes(options_.random, 16));
  row.sn = package.sn();
  row.operator_id = package.operator_id();
  row.nonce = Bytes(package.nonce().begin(), package.nonce().end());
  row.package = Bytes(request.package.begin(), request.package.end());
  row.signature = Bytes(request.signature.begin(), request.signature.end());
  row.operator_certificate_pem = request.operator_certificate_pem;
  row.operator_certificate_serial = certificate_serial;
  row.work_certificate_serial = package.work_certificate_serial();
  row.ctk_pu = Bytes(package.ctk_pu().begin(), package.ctk_pu().end());
  row.algorithm_code = crypto::KeyAlgorithmCode(*algorithm);
  row.created_at_ms = package.created_at_unix_ms();
  row.received_at_ms = now_ms;
  row.state = SubmissionState::kReceived;
  row.next_attempt_at_ms = now_ms;
  AuditEntry audit{
      .at_ms = now_ms,
      .actor = actor.empty() ? absl::StrCat("operator:", row.operator_id) : actor,
      .action = rkl::audit::action::kPackageReceive,
      .sn = row.sn,
      .detail = absl::StrCat("submission ", row.submission_id, " operator ", row.operator_id,
                             " certificate ", row.operator_certificate_serial, " work certificate ",
                             row.work_certificate_serial),
      .result = "OK"};
  // Stored already claimed by the forwarder when it takes rows now: it gets the row from here.
  const std::optional<IntakeClaim> claim =
      options_.hand_off != nullptr ? options_.hand_off->ClaimForIntake() : std::nullopt;
  RKL_ASSIGN_OR_RETURN(IntakeResult result, repository_.Intake(row, audit, claim));
  switch (result.outcome) {
    case InsertOutcome::kInserted:
      spdlog::info("package received: submission={} sn={} operator={}", row.submission_id, row.sn,
                   row.operator_id);
      if (claim.has_value()) {
        row.claim = result.facts;
        row.request_id = std::string(CurrentRequestId());  // as the repository stored it
        options_.hand_off->HandOff(row, *claim);
      }
      return SubmitReceipt{.submission_id = row.submission_id,
                           .state = SubmissionState::kReceived,
                           .handed_off = claim.has_value()};
    case InsertOutcome::kUnknownWorkKey:
      return absl::FailedPreconditionError(
          "package.work_certificate_serial: not a work certificate this MTMS issued");
    case InsertOutcome::kRetiredWorkKey:
      return absl::FailedPreconditionError(
          "package.work_certificate_serial: that work certificate is retired; fetch the "
          "current one");
    case InsertOutcome::kReplay:
      return absl::AlreadyExistsError(
          "package: (operator_id, nonce) was already used; a package is accepted once");
  }
  return absl::InternalError("package: unexpected intake outcome");
}

absl::StatusOr<SubmissionRecord> MtmsCore::GetSubmission(const std::string& submission_id) {
  if (submission_id.empty() || submission_id.size() > 64) {
    return absl::InvalidArgumentError("submission_id: must be 1-64 characters");
  }
  RKL_ASSIGN_OR_RETURN(std::optional<SubmissionRecord> row,
                       repository_.GetSubmission(submission_id));
  if (!row.has_value()) return absl::NotFoundError("submission_id: no such submission");
  return *std::move(row);
}

absl::StatusOr<SubmissionRecord> MtmsCore::GetOwnSubmission(const OwnSubmissionQuery& request,
                                                            std::string_view source) {
  absl::StatusOr<SubmissionRecord> row = QueryOwnSubmission(request);
  if (!row.ok()) CountRefusal(rkl::audit::action::kSubmissionQuery, "", source, row.status());
  return row;
}

absl::StatusOr<SubmissionRecord> MtmsCore::QueryOwnSubmission(const OwnSubmissionQuery& request) {
  RKL_RETURN_IF_ERROR(CheckSignedShapes("query", request.query, request.signature,
                                        request.operator_certificate_pem));
  v1::SubmissionQuery query;
  if (!query.ParseFromString(request.query) ||
      !query.GetReflection()->GetUnknownFields(query).empty()) {
    return absl::InvalidArgumentError("query: not a serialized SubmissionQuery");
  }
  if (query.submission_id().empty() || query.submission_id().size() > 64) {
    return absl::InvalidArgumentError("query.submission_id: must be 1-64 characters");
  }
  if (!IsOperatorId(query.operator_id())) {
    return absl::InvalidArgumentError("query.operator_id: must be 1-64 characters of [a-z0-9._-]");
  }
  if (query.created_at_unix_ms() <= 0) {
    return absl::InvalidArgumentError("query.created_at_unix_ms: must be positive");
  }
  RKL_RETURN_IF_ERROR(VerifyOperatorSigned("query", query.operator_id(), kSubmissionQueryContext,
                                           request.query, request.signature,
                                           request.operator_certificate_pem)
                          .status());
  RKL_RETURN_IF_ERROR(CheckFresh("query", query.created_at_unix_ms(), NowUnixMs(clock_)));
  RKL_ASSIGN_OR_RETURN(std::optional<SubmissionRecord> row,
                       repository_.GetSubmission(query.submission_id()));
  if (!row.has_value() || row->operator_id != query.operator_id()) {
    return absl::NotFoundError("query.submission_id: no submission of this operator has that id");
  }
  row->last_error.clear();
  row->next_attempt_at_ms = 0;
  return *std::move(row);
}

absl::StatusOr<std::string> MtmsCore::VerifyOperatorSigned(
    std::string_view field, const std::string& operator_id, std::string_view context,
    const std::string& message, const std::string& signature, const std::string& certificate_pem) {
  // 2. The operator certificate parses.
  absl::StatusOr<std::shared_ptr<const OperatorTrust::ParsedCertificate>> cert =
      trust_.Parse(certificate_pem);
  if (!cert.ok()) {
    return absl::InvalidArgumentError(
        "operator_certificate_pem: not exactly one PEM X.509 certificate");
  }
  // 3–5. Chains to operator-ca, operator profile, not revoked (UNAVAILABLE without a CRL).
  RKL_ASSIGN_OR_RETURN(std::string certified_operator,
                       trust_.VerifyForIntake((*cert)->certificate));
  // 6. The message speaks for the operator whose card signed it.
  if (operator_id != certified_operator) {
    return absl::PermissionDeniedError(
        absl::StrCat(std::string(field),
                     ".operator_id: does not match the operator certificate's CN operator:<id>"));
  }
  // 7. The signature over the byte-exact message (after its context, if any).
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey operator_key, (*cert)->key);
  const std::string signed_bytes = absl::StrCat(std::string(context), message);
  if (absl::Status s = crypto::EcdsaVerify(operator_key, AsBytes(signed_bytes), AsBytes(signature));
      !s.ok()) {
    if (s.code() == absl::StatusCode::kInvalidArgument) {
      return absl::InvalidArgumentError("signature: not a canonical DER ECDSA signature");
    }
    return absl::UnauthenticatedError(absl::StrCat(
        "signature: does not verify over ", std::string(field), " under the operator certificate"));
  }
  return (*cert)->certificate.SerialHex();
}

absl::Status MtmsCore::CheckFresh(std::string_view field, int64_t created_at_ms,
                                  int64_t now_ms) const {
  if (std::llabs(now_ms - created_at_ms) > absl::ToInt64Milliseconds(options_.clock_skew)) {
    return absl::FailedPreconditionError(
        absl::StrCat(std::string(field), ".created_at_unix_ms: must be within ±",
                     absl::FormatDuration(options_.clock_skew), " of MTMS time"));
  }
  return absl::OkStatus();
}

absl::StatusOr<WorkKeyRecord> MtmsCore::CheckIssuedWorkKey(uint64_t key_index,
                                                           const Bytes& public_key_der,
                                                           const CaPort::IssuedCertificate& issued,
                                                           const std::string& terminal_root_pem) {
  auto refuse = [](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat("work certificate from the CA refused: ", why));
  };
  absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromPem(issued.certificate_pem);
  if (!cert.ok()) return refuse("not a PEM certificate");
  absl::StatusOr<crypto::Certificate> root = crypto::Certificate::FromPem(terminal_root_pem);
  if (!root.ok() || !root->IsCa() || !root->IsSelfSigned()) {
    return refuse("terminal-root is not a self-signed CA certificate");
  }
  const crypto::Certificate roots[] = {*root};
  if (absl::Status s = crypto::VerifyChain(*cert, {}, roots, {}, NowUnixSeconds(clock_)); !s.ok()) {
    return refuse(absl::StrCat("does not chain to terminal-root (", s.message(), ")"));
  }
  absl::StatusOr<crypto::PublicKey> key = cert->GetPublicKey();
  absl::StatusOr<crypto::PublicKey> generated = crypto::PublicKey::FromDer(public_key_der);
  if (!key.ok() || !generated.ok() || !(*key == *generated)) {
    return refuse("it does not certify the key HSM #1 generated");
  }
  const std::string expected_cn = absl::StrCat(kWorkCnPrefix, options_.hsm_id, ":", key_index);
  if (cert->SubjectCommonName() != expected_cn) {
    return refuse(absl::StrCat("subject CN must be ", expected_cn));
  }
  if (cert->IsCa() || !cert->KeyUsageCritical() ||
      cert->KeyUsageBits() != crypto::KeyUsage::kKeyEncipherment) {
    return refuse(
        "it must be an end-entity certificate with critical keyUsage "
        "keyEncipherment only");
  }
  WorkKeyRecord record;
  record.serial_hex = cert->SerialHex();
  record.hsm_id = options_.hsm_id;
  record.hsm_key_index = key_index;
  record.public_key_der = public_key_der;
  record.certificate_pem = cert->ToPem();
  record.terminal_root_pem = root->ToPem();
  record.state = WorkKeyState::kCurrent;
  record.created_at_ms = NowUnixMs(clock_);
  return record;
}

absl::StatusOr<WorkKeyRecord> MtmsCore::ProvisionWorkKey(bool rotate, uint32_t rsa_bits,
                                                         const std::string& actor) {
  const uint32_t bits = rsa_bits == 0 ? options_.default_rsa_bits : rsa_bits;
  if (bits != 2048 && bits != 3072) {
    return absl::InvalidArgumentError("rsa_bits: must be 0 (default), 2048 or 3072");
  }
  if (!rotate) {
    RKL_ASSIGN_OR_RETURN(std::optional<WorkKeyRecord> current, repository_.CurrentWorkKey());
    if (current.has_value()) return *std::move(current);
  }
  // S201: Pr stays in HSM #1; we only learn its index and Pu.
  RKL_ASSIGN_OR_RETURN(
      HsmPort::RsaKeyPair pair,
      // The HSM refuses two active keys with one label; a random suffix keeps two
      // provisionings in the same millisecond (replicas, a quick rotate) apart.
      hsm_.GenerateRsaKeyPair(bits, absl::StrCat("mtms-work-", NowUnixMs(clock_), "-",
                                                 ToHex(crypto::RandomBytes(options_.random, 4)))));
  // S202–S203.
  absl::StatusOr<CaPort::IssuedCertificate> issued =
      ca_.IssueWorkCertificate(pair.public_key_der, options_.hsm_id, pair.key_index);
  if (!issued.ok()) {
    spdlog::warn("work key: HSM #1 key index {} is left unused: the CA did not certify it",
                 pair.key_index);
    Audit(actor, "work_key.provision", "",
          absl::StrCat("hsm key index ", pair.key_index, " not certified"), issued.status());
    return issued.status();
  }
  RKL_ASSIGN_OR_RETURN(std::string terminal_root_pem,
                       ca_.GetIssuerCertificate(CaIssuer::kTerminalRoot));
  absl::StatusOr<WorkKeyRecord> record =
      CheckIssuedWorkKey(pair.key_index, pair.public_key_der, *issued, terminal_root_pem);
  if (!record.ok()) {
    Audit(actor, "work_key.provision", "",
          absl::StrCat("hsm key index ", pair.key_index, ": ", record.status().message()),
          record.status());
    return record.status();
  }
  AuditEntry audit{
      .at_ms = NowUnixMs(clock_),
      .actor = actor,
      .action = rotate ? rkl::audit::action::kWorkKeyRotate : rkl::audit::action::kWorkKeyProvision,
      .detail = absl::StrCat("serial ", record->serial_hex, " hsm ", options_.hsm_id, " key index ",
                             pair.key_index, " rsa ", bits),
      .result = "OK"};
  RKL_ASSIGN_OR_RETURN(MtmsRepository::InstallResult result,
                       repository_.InstallWorkKey(*record, rotate, audit));
  if (!result.installed) {
    spdlog::warn("work key: another provisioning won the race; HSM #1 key index {} is unused",
                 pair.key_index);
  } else {
    spdlog::info("work key {}: serial {} hsm key index {}", rotate ? "rotated" : "provisioned",
                 result.current.serial_hex, result.current.hsm_key_index);
  }
  return result.current;
}

absl::StatusOr<WorkKeyRecord> MtmsCore::RetireWorkKey(const std::string& serial_hex, bool force,
                                                      const std::string& actor) {
  const std::string serial = absl::AsciiStrToUpper(serial_hex);
  if (!IsSerialHex(serial)) {
    return absl::InvalidArgumentError("serial_hex: must be 1-40 hex digits");
  }
  AuditEntry audit{.at_ms = NowUnixMs(clock_),
                   .actor = actor,
                   .action = rkl::audit::action::kWorkKeyRetire,
                   .detail = absl::StrCat("serial ", serial, force ? " (forced)" : ""),
                   .result = "OK"};
  RKL_ASSIGN_OR_RETURN(MtmsRepository::RetireResult result,
                       repository_.RetireWorkKey(serial, force, NowUnixMs(clock_), audit));
  switch (result.outcome) {
    case MtmsRepository::RetireOutcome::kRetired:
      spdlog::info("work key retired: serial {}", serial);
      return result.key;
    case MtmsRepository::RetireOutcome::kNotFound:
      return absl::NotFoundError("serial_hex: no such work key");
    case MtmsRepository::RetireOutcome::kIsCurrent:
      return absl::FailedPreconditionError(
          "serial_hex: the CURRENT work key cannot be retired; rotate first");
    case MtmsRepository::RetireOutcome::kInFlight:
      return absl::FailedPreconditionError(absl::StrCat(
          "serial_hex: ", result.in_flight,
          " queued package(s) still name this work key; retire after they are forwarded, or "
          "force (they will be rejected)"));
  }
  return absl::InternalError("serial_hex: unexpected retire outcome");
}

absl::StatusOr<std::vector<WorkKeyRecord>> MtmsCore::ListWorkKeys() {
  return repository_.ListWorkKeys();
}

absl::StatusOr<QueuePage> MtmsCore::ListQueue(std::optional<SubmissionState> state,
                                              uint32_t page_size, const std::string& page_token) {
  if (page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page.page_size: must be at most ", kMaxPageSize));
  }
  const size_t limit = page_size == 0 ? kDefaultPageSize : page_size;
  std::optional<QueueCursor> after;
  if (!page_token.empty()) {
    RKL_ASSIGN_OR_RETURN(QueueCursor cursor, DecodePageToken(page_token));
    after = std::move(cursor);
  }
  QueuePage page;
  RKL_ASSIGN_OR_RETURN(page.submissions, repository_.ListSubmissions(state, limit + 1, after));
  if (page.submissions.size() > limit) {
    page.submissions.resize(limit);
    page.next_page_token = EncodePageToken(page.submissions.back());
  }
  RKL_ASSIGN_OR_RETURN(page.counts, repository_.CountSubmissions());
  return page;
}

}  // namespace rkl::mtms
