// HsmCore's administration commands (hsm_core.h): key info and deletion, random bytes,
// audit-chain verification and anchoring.
#include "absl/strings/str_cat.h"
#include "hsm_core_internal.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"

namespace rkl::hsm {

namespace action = audit::action;
namespace {

constexpr uint32_t kMaxRandomLength = 1024;

}  // namespace

// ---- Administration ----------------------------------------------------------------------

absl::StatusOr<KeyRecord> HsmCore::GetKeyInfo(const std::string& caller, uint64_t key_index) {
  AuditEvent event{
      .actor = caller, .action = action::kKeyGetInfo, .detail = absl::StrCat("key=", key_index)};
  return RunUnit(
      event, {.kind = UnitKind::kReadOnly, .uses_crypto = false},
      [&](KeyTransaction& tx, AuditEvent&) -> absl::StatusOr<KeyRecord> {
        if (key_index == 0) return absl::InvalidArgumentError("key_index: a key index is required");
        RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(key_index));
        if (!record)
          return absl::NotFoundError(absl::StrCat("key_index: key ", key_index, " not found"));
        record->nonce.clear();
        record->sealed.clear();
        return *std::move(record);
      });
}

absl::Status HsmCore::DeleteKey(const std::string& caller, uint64_t key_index) {
  AuditEvent event{
      .actor = caller, .action = action::kKeyDelete, .detail = absl::StrCat("key=", key_index)};
  return RunUnit(
      event, {.uses_crypto = false}, [&](KeyTransaction& tx, AuditEvent& audit) -> absl::Status {
        if (key_index == 0) return absl::InvalidArgumentError("key_index: a key index is required");
        RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(key_index));
        if (!record)
          return absl::NotFoundError(absl::StrCat("key_index: key ", key_index, " not found"));
        absl::StrAppend(&audit.detail, " type=", KeyTypeName(record->type),
                        " label=", record->label, " kcv=", record->kcv);
        if (record->state == KeyState::kDeleted) {
          absl::StrAppend(&audit.detail, " (already deleted)");
          return absl::OkStatus();
        }
        return tx.SetKeyState(key_index, KeyState::kDeleted, NowUnixMs(clock_));
      });
}

absl::StatusOr<Bytes> HsmCore::GenerateRandom(const std::string& caller, uint32_t length) {
  AuditEvent event{.actor = caller,
                   .action = action::kRandomGenerate,
                   .detail = absl::StrCat("length=", length)};
  return RunUnit(event, {.kind = UnitKind::kReadOnly},
                 [&](KeyTransaction&, AuditEvent&) -> absl::StatusOr<Bytes> {
                   if (length == 0 || length > kMaxRandomLength) {
                     return absl::InvalidArgumentError("length: must be between 1 and 1024");
                   }
                   Bytes out(length);
                   rng_(out);
                   return out;
                 });
}

absl::StatusOr<AuditVerification> HsmCore::VerifyAuditChain(const std::string& caller,
                                                            std::string_view anchor_text) {
  AuditEvent event{.actor = caller, .action = action::kAuditVerify};
  std::optional<AuditAnchor> anchor;
  if (!anchor_text.empty()) {
    absl::StatusOr<AuditAnchor> parsed = ParseAuditAnchor(anchor_text);
    if (!parsed.ok()) {
      RecordFailure(event, parsed.status());
      return parsed.status();
    }
    anchor = *std::move(parsed);
  }
  absl::StatusOr<AuditVerification> verification = audit_.Verify(anchor ? &*anchor : nullptr);
  if (!verification.ok()) {
    RecordFailure(event, verification.status());
    return verification.status();
  }
  return RunUnit(event, {.uses_crypto = false},
                 [&](KeyTransaction&, AuditEvent& audit) -> absl::StatusOr<AuditVerification> {
                   absl::StrAppend(
                       &audit.detail, "records=", verification->records_checked,
                       verification->intact
                           ? " intact"
                           : absl::StrCat(" first_broken_seq=", verification->first_broken_seq));
                   if (anchor) absl::StrAppend(&audit.detail, " anchor_seq=", anchor->seq);
                   return *verification;
                 });
}

absl::StatusOr<AuditAnchor> HsmCore::AnchorAuditChain(const std::string& caller) {
  AuditEvent event{.actor = caller, .action = action::kAuditAnchor};
  absl::StatusOr<AuditAnchor> anchor = audit_.Anchor();
  if (!anchor.ok()) {
    RecordFailure(event, anchor.status());
    return anchor.status();
  }
  return RunUnit(event, {.uses_crypto = false},
                 [&](KeyTransaction&, AuditEvent& audit) -> absl::StatusOr<AuditAnchor> {
                   absl::StrAppend(&audit.detail, "anchor_seq=", anchor->seq);
                   return *anchor;
                 });
}

}  // namespace rkl::hsm
