#pragma once
// One audit record of any service (CA, HSM, KMS, MTMS), as a service writes it and a listing
// returns it. Header only, without the database: service cores include it (rkl::audit_tally
// carries the include path), and rkl::audit's chain seals and verifies it.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace rkl::audit {

// The one audit entry type of every service: what a service writes (seq 0) and what a
// listing of its chain reads back (with seq). CA, HSM, KMS and MTMS use it as it is.
struct AuditEvent {
  int64_t at_ms = 0;
  std::string actor{};   // caller identity
  std::string action{};  // one of rkl/audit/actions.h, e.g. "tk.import"
  std::string sn{};      // empty when not about one terminal
  std::string detail{};  // indexes, KCVs, error text; never key material
  std::string result{};  // "OK" or a status code name
  // The request id of the flow the record was written for (rkl/common/request_id.h); empty
  // when none was current. Covered by the MACs only when not empty (docs/hsm.md, "Audit").
  std::string request_id{};
  // The record's place in its chain, set by a listing; 0 in what a service writes (the
  // chain assigns it when it seals) and outside the MACs.
  uint64_t seq = 0;
};

// The longest free-text reason an operator may give for an audited change.
inline constexpr size_t kMaxAuditReasonLength = 256;

// INVALID_ARGUMENT unless `reason` fits an audit record's detail: at most
// kMaxAuditReasonLength bytes, and no control characters (it becomes part of one line).
inline absl::Status CheckAuditReason(std::string_view reason) {
  if (reason.size() > kMaxAuditReasonLength) {
    return absl::InvalidArgumentError("reason: at most 256 characters");
  }
  for (char c : reason) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      return absl::InvalidArgumentError("reason: control characters are not allowed");
    }
  }
  return absl::OkStatus();
}

}  // namespace rkl::audit
