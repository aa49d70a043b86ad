#include "rkl/protocol/sn.h"

#include <string>

namespace rkl::protocol {

absl::Status ValidateSn(std::string_view sn) {
  if (sn.empty()) return absl::InvalidArgumentError("sn: must not be empty");
  if (sn.size() > kMaxSnLength) {
    return absl::InvalidArgumentError("sn: at most 32 characters, got " +
                                      std::to_string(sn.size()));
  }
  for (char c : sn) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) return absl::InvalidArgumentError("sn: only A-Z, 0-9 and '-' are allowed");
  }
  return absl::OkStatus();
}

}  // namespace rkl::protocol
