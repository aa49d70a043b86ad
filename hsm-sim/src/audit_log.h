#pragma once
// The HSM's audit log: rkl::audit's chain (libs/audit, which states its guarantees) over the
// tables hsm_audit and hsm_audit_pending, with the audit key derived from the LMK:
// audit_key = KDF(LMK, "RKL-HSM-AUDIT", hsm_id, 256) (PROTOCOL §7 KDF). Records, MACs and
// anchors keep the HSM's formats ("RKL-HSM-AUDIT-PENDING-1", "rkl-hsm-audit-anchor v1
// hsm=..."; docs/hsm.md, Audit). The names below let the HSM's code and tests speak of its
// own chain without naming the spec each time.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "rkl/audit/audit_chain.h"

namespace rkl::hsm {

using audit::AuditAnchor;
using audit::AuditEvent;
using audit::AuditLog;
using audit::AuditVerification;
using audit::CanonicalAuditRecord;
using audit::HmacSha256;

// The HSM's chain: its tables, and "hsm" as the domain of its MACs and anchors.
const audit::ChainSpec& HsmAuditChain();

// The key the chain is MACed with, derived from the LMK.
absl::StatusOr<crypto::SecretBytes> DeriveAuditKey(const crypto::SecretBytes& lmk,
                                                   const std::string& hsm_id);

inline std::string FormatAuditAnchor(const AuditAnchor& anchor) {
  return audit::FormatAuditAnchor(HsmAuditChain(), anchor);
}
inline absl::StatusOr<AuditAnchor> ParseAuditAnchor(std::string_view text) {
  return audit::ParseAuditAnchor(HsmAuditChain(), text);
}
inline absl::StatusOr<Bytes> AuditAnchorMac(const crypto::SecretBytes& key,
                                            const AuditAnchor& anchor) {
  return audit::AuditAnchorMac(HsmAuditChain(), key, anchor);
}
inline absl::StatusOr<Bytes> PendingAuditMac(const crypto::SecretBytes& key, uint64_t id,
                                             const AuditEvent& event) {
  return audit::PendingAuditMac(HsmAuditChain(), key, id, event);
}

}  // namespace rkl::hsm
