#pragma once
// The audit chain without its storage: which tables a chain lives in, the canonical record
// and the MACs over it, anchors and their text form, verification results, and the AuditLog
// interface a service writes through. No database and no proto: a service core (the HSM's)
// includes this and links rkl::audit_chain; PgAuditLog (audit_log.h, rkl::audit) is the
// PostgreSQL chain behind the interface.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/audit/audit_event.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::audit {

// Every MAC of a chain is HMAC-SHA256: 32 bytes.
inline constexpr size_t kAuditMacSize = 32;
// Far longer than any anchor; longer text is refused before it is looked at.
inline constexpr size_t kMaxAuditAnchorText = 512;

// Which tables a chain lives in and the name its MACs and anchors are bound to, so that a
// record or anchor of one service never verifies as another's (their keys differ too).
// Names are identifiers this code controls, spliced into the statements.
struct ChainSpec {
  std::string name;                 // "hsm", "kms", "mtms": lower case letters
  std::string chain_table;          // e.g. "hsm_audit"
  std::string pending_table;        // e.g. "hsm_audit_pending"
  std::string pending_id_sequence;  // e.g. "hsm_audit_pending_id_seq"
  int lock_class = 0;               // pg_advisory_xact_lock(lock_class, 1) orders the sealers
  int pending_id_block = 16;        // pending ids fetched per nextval() round trip
};

struct AuditVerification {
  bool intact = true;
  uint64_t records_checked = 0;   // chained records plus pending ones
  uint64_t first_broken_seq = 0;  // 0 when intact; a pending record counts as last seq + 1
  uint64_t anchor_seq = 0;        // the anchored record checked; 0 without an anchor
  std::string finding{};          // when not intact: what is wrong, for an operator
};

// The chain's head as its service saw it at at_ms, MACed under the audit key so that nobody
// without that key can make one (docs/hsm.md, Audit). Kept outside the service's database,
// it shows whether the chain there still holds everything up to `seq`.
struct AuditAnchor {
  std::string instance_id{};  // the service instance, e.g. the HSM's hsm_id
  uint64_t seq = 0;           // the newest chained record; 0 for an empty chain
  Bytes head_mac{};           // its chain MAC (32 zero bytes for an empty chain)
  int64_t at_ms = 0;          // when the anchor was made, by the service's clock
  Bytes mac{};                // AuditAnchorMac()
};

// One line of text: "rkl-<name>-audit-anchor v1 <name>=<id> seq=<n> head=<64 hex> at_ms=<n>
// mac=<64 hex>" (name from the spec: "rkl-hsm-audit-anchor v1 hsm=...").
std::string FormatAuditAnchor(const ChainSpec& spec, const AuditAnchor& anchor);
// INVALID_ARGUMENT naming the field for anything that is not such a line (surrounding
// whitespace aside); the message never repeats the input. Does not check the MAC.
absl::StatusOr<AuditAnchor> ParseAuditAnchor(const ChainSpec& spec, std::string_view text);
// HMAC-SHA256(key, "RKL-<NAME>-AUDIT-ANCHOR-1" ‖ [len]_4 ‖ instance_id ‖ [seq]_8 ‖ head_mac ‖
// [at_ms]_8), NAME the spec's name in upper case.
absl::StatusOr<Bytes> AuditAnchorMac(const ChainSpec& spec, const crypto::SecretBytes& key,
                                     const AuditAnchor& anchor);

class AuditLog {
 public:
  virtual ~AuditLog() = default;
  // Appends in a transaction of its own (records of failed commands, whose own transaction
  // rolled back).
  virtual absl::Status Append(const AuditEvent& event) = 0;
  // Checks the chain, and with `anchor` (may be null) that it still holds the anchored
  // record: UNAUTHENTICATED if the anchor's MAC does not verify.
  virtual absl::StatusOr<AuditVerification> Verify(const AuditAnchor* anchor) = 0;
  // Anchors the chain's head (see PgAuditLog) and returns the anchor.
  virtual absl::StatusOr<AuditAnchor> Anchor() = 0;
};

// The MAC a pending record carries: HMAC-SHA256(key, "RKL-<NAME>-AUDIT-PENDING-1" ‖ [id]_8 ‖
// CanonicalAuditRecord(0, event)).
absl::StatusOr<Bytes> PendingAuditMac(const ChainSpec& spec, const crypto::SecretBytes& key,
                                      uint64_t id, const AuditEvent& event);

// HMAC-SHA256; exposed for the self-test.
absl::StatusOr<Bytes> HmacSha256(const crypto::SecretBytes& key, std::span<const uint8_t> data);

// The canonical encoding a record's MAC covers: [seq]_8 ‖ [at_ms]_8 ‖ each text field as
// [len]_4 ‖ bytes, in the order actor, action, sn, detail, result, then request_id only when
// it is not empty — so a record without one (every record written before request ids) keeps
// the encoding, and the MAC, it always had.
Bytes CanonicalAuditRecord(uint64_t seq, const AuditEvent& event);

// `event` with its request_id set to the thread's current request id
// (rkl/common/request_id.h) when it has none.
AuditEvent WithCurrentRequestId(AuditEvent event);

}  // namespace rkl::audit
