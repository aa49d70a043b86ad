#pragma once
// MtmsCore: the business logic of rkl-mtms apart from gRPC — work key provisioning
// (S201–S203), the work certificate for operator terminals (S204), package intake
// (S104–S105, S301–S303) and the queue views. The forwarder (claim 4, S106–S108) is
// mtms_forwarder.h.
//
// Intake checks, in this order, each with its own status (docs/mtms.md lists them):
//   1. sizes, the package parses, its fields are well formed ........ INVALID_ARGUMENT
//   2. the operator certificate parses .............................. INVALID_ARGUMENT
//   3. operator-ca and a current CRL are available .................. UNAVAILABLE
//   4. the certificate chains to operator-ca, has the operator profile UNAUTHENTICATED
//      (expired / not yet valid: FAILED_PRECONDITION)
//   5. it is not revoked ............................................ FAILED_PRECONDITION
//   6. package.operator_id equals the certificate's "operator:<id>" . PERMISSION_DENIED
//   7. the signature verifies over the byte-exact package ........... UNAUTHENTICATED
//      (not canonical DER: INVALID_ARGUMENT)
//   8. created_at within ±clock_skew of MTMS time ................... FAILED_PRECONDITION
//   9. the work certificate serial is known and not retired ......... FAILED_PRECONDITION
//  10. (operator_id, nonce) never seen (database constraint) ........ ALREADY_EXISTS
// Messages name the field and the rule and never contain key material or plaintext.
// Refusals (other than UNAVAILABLE, an outage) are counted per minute, SN, source address,
// action and code (rkl::audit::RefusalTally) and written to refusal_counts at
// FlushRefusalCounts, not audited one by one (docs/mtms.md "Bounded state"); the SN is the
// package's only once the operator's signature verified, else "*".
//
// Thread-safe: every method may run concurrently; state lives in the repository.
// Dependencies are not owned and must outlive the core.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mtms_hand_off.h"
#include "mtms_operator_trust.h"
#include "mtms_ports.h"
#include "mtms_repository.h"
#include "rkl/audit/actions.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/random.h"

namespace rkl::mtms {

inline constexpr size_t kMaxPackageBytes = 4096;
inline constexpr size_t kMaxSignatureBytes = 128;
inline constexpr size_t kMaxCertificatePemBytes = 16384;
inline constexpr size_t kNonceBytes = 16;
inline constexpr uint32_t kDefaultPageSize = 100;
inline constexpr uint32_t kMaxPageSize = 1000;

struct MtmsCoreOptions {
  std::string hsm_id = "hsm-mtms";  // goes into the work certificate CN
  uint32_t default_rsa_bits = 2048;
  absl::Duration clock_skew = absl::Minutes(5);
  // PurgeRefusalCounts deletes the counts of minutes that began longer ago than this.
  absl::Duration refusal_retention = absl::Hours(24);
  // Submission ids and work-key label suffixes (tests may inject a deterministic source).
  crypto::RandomSource random = crypto::FillRandom;
  // The forwarder intake hands stored packages to (mtms_hand_off.h; not owned). Null: rows
  // are stored unclaimed, for the forwarder's claim.
  IntakeHandOff* hand_off = nullptr;
};

struct SubmitRequest {
  std::string package;  // B, serialized TransportKeyPackage
  std::string signature;
  std::string operator_certificate_pem;
};

// GetOwnSubmission: a SubmissionQuery signed by the operator card (proto/rkl/v1/mtms.proto).
inline constexpr std::string_view kSubmissionQueryContext = "RKL-SUBMISSION-QUERY:";
struct OwnSubmissionQuery {
  std::string query;      // serialized SubmissionQuery
  std::string signature;  // over kSubmissionQueryContext ‖ query
  std::string operator_certificate_pem;
};

struct SubmitReceipt {
  std::string submission_id;
  SubmissionState state = SubmissionState::kReceived;
  // The package went to the forwarder with intake's claim; false: it waits for the
  // forwarder's own claim (the caller Wake()s the forwarder).
  bool handed_off = false;
};

struct WorkCertificateBundle {
  std::string certificate_pem;
  std::string terminal_root_pem;
  std::string serial_hex;
};

struct QueuePage {
  std::vector<SubmissionRecord> submissions;
  std::string next_page_token;  // empty on the last page
  QueueCounts counts;
};

class MtmsCore {
 public:
  MtmsCore(MtmsRepository& repository, HsmPort& hsm, CaPort& ca, OperatorTrust& trust,
           const Clock& clock, MtmsCoreOptions options);

  // FAILED_PRECONDITION until a work key was provisioned.
  absl::StatusOr<WorkCertificateBundle> GetWorkCertificate();

  // `actor`: the caller's identity for the audit ("" for an anonymous operator terminal);
  // `source`: the caller's address, which only labels refusal counts.
  absl::StatusOr<SubmitReceipt> SubmitTransportKey(const SubmitRequest& request,
                                                   const std::string& actor,
                                                   std::string_view source = {});
  absl::StatusOr<SubmissionRecord> GetSubmission(const std::string& submission_id);
  // The submitting operator's view of its own submission (docs/mtms.md "Reading a submission
  // back"). Checks, in order: shapes (INVALID_ARGUMENT), the certificate as at intake (steps
  // 2–5), query.operator_id is the certificate's (PERMISSION_DENIED), the signature over
  // kSubmissionQueryContext ‖ query (UNAUTHENTICATED), created_at within ±clock_skew
  // (FAILED_PRECONDITION); then an unknown id and another operator's submission are the same
  // NOT_FOUND. The record has no last_error or next attempt (those are for admins). Reads
  // only: nothing is written but, for a refusal, a count.
  absl::StatusOr<SubmissionRecord> GetOwnSubmission(const OwnSubmissionQuery& request,
                                                    std::string_view source = {});

  // Adds the refusals counted since the last flush to refusal_counts (one statement) and
  // returns how many refusals that was; on failure they are kept for the next flush.
  // rkl-mtms flushes every `refusals.flush_interval` and at shutdown.
  absl::StatusOr<int64_t> FlushRefusalCounts();
  // Deletes the counts of minutes that began more than `refusal_retention` ago.
  absl::StatusOr<int64_t> PurgeRefusalCounts();

  // Idempotent unless `rotate`: returns the CURRENT key if there is one. `rsa_bits` 0 means
  // the default; otherwise 2048 or 3072.
  absl::StatusOr<WorkKeyRecord> ProvisionWorkKey(bool rotate, uint32_t rsa_bits,
                                                 const std::string& actor);
  absl::StatusOr<WorkKeyRecord> RetireWorkKey(const std::string& serial_hex, bool force,
                                              const std::string& actor);
  absl::StatusOr<std::vector<WorkKeyRecord>> ListWorkKeys();

  absl::StatusOr<QueuePage> ListQueue(std::optional<SubmissionState> state, uint32_t page_size,
                                      const std::string& page_token);

 private:
  absl::StatusOr<SubmitReceipt> Intake(const SubmitRequest& request, const std::string& actor,
                                       std::string& signed_sn);
  absl::StatusOr<SubmissionRecord> QueryOwnSubmission(const OwnSubmissionQuery& request);
  // Counts a refusal unless it is UNAVAILABLE (an outage, not the caller's doing).
  void CountRefusal(const char* action, const std::string& sn, std::string_view source,
                    const absl::Status& refusal);
  // Intake steps 2–7 for any message an operator card signs (a package, a query): the
  // certificate, `operator_id` is the certificate's, the signature over context ‖ message.
  // `field` names the message in errors. Returns the certificate's serial.
  absl::StatusOr<std::string> VerifyOperatorSigned(
      std::string_view field, const std::string& operator_id, std::string_view context,
      const std::string& message, const std::string& signature, const std::string& certificate_pem);
  // Step 8: `created_at_ms` within ±clock_skew of `now_ms`.
  absl::Status CheckFresh(std::string_view field, int64_t created_at_ms, int64_t now_ms) const;
  absl::StatusOr<WorkKeyRecord> CheckIssuedWorkKey(uint64_t key_index, const Bytes& public_key_der,
                                                   const CaPort::IssuedCertificate& issued,
                                                   const std::string& terminal_root_pem);
  void Audit(const std::string& actor, const std::string& action, const std::string& sn,
             const std::string& detail, const absl::Status& result);

  MtmsRepository& repository_;
  HsmPort& hsm_;
  CaPort& ca_;
  OperatorTrust& trust_;
  const Clock clock_;
  const MtmsCoreOptions options_;
  audit::RefusalTally refusals_;
};

}  // namespace rkl::mtms
