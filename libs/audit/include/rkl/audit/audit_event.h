#pragma once
// One audit record of any service (CA, HSM, KMS, MTMS), as a service writes it and a listing
// returns it. Header only, without the database: service cores include it (rkl::audit_tally
// carries the include path), and rkl::audit's chain seals and verifies it.

#include <cstdint>
#include <string>

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
  // The record's place in its chain, set by a listing; 0 in what a service writes (the
  // chain assigns it when it seals) and outside the MACs.
  uint64_t seq = 0;
};

}  // namespace rkl::audit
