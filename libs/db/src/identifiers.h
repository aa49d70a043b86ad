#pragma once
// Internal to rkl::db (not installed): what migration.cc and schema_roles.cc share.

#include <string_view>

#include "absl/strings/ascii.h"

namespace rkl::db::internal {

// First key of the two-int advisory locks of the migration step ("rkl" in ASCII); the
// second key names what is locked.
inline constexpr int kAdvisoryLockClass = 0x726b6c;

// A lower-case SQL identifier, which can be spliced into a statement unquoted or quoted
// alike: [a-z_][a-z0-9_]*, at most 63 bytes (PostgreSQL's NAMEDATALEN - 1).
inline bool IsLowerIdentifier(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  if (!absl::ascii_islower(static_cast<unsigned char>(s[0])) && s[0] != '_') return false;
  for (char c : s) {
    if (!absl::ascii_islower(static_cast<unsigned char>(c)) &&
        !absl::ascii_isdigit(static_cast<unsigned char>(c)) && c != '_') {
      return false;
    }
  }
  return true;
}

}  // namespace rkl::db::internal
