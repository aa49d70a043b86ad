#pragma once
// Terminal serial numbers (PROTOCOL §1): 1–32 characters of A–Z, 0–9 and '-'.
// Every RPC that takes an SN validates it with this one function, so the rule and its
// error text are the same everywhere.

#include <string_view>

#include "absl/status/status.h"

namespace rkl::protocol {

inline constexpr size_t kMaxSnLength = 32;

// INVALID_ARGUMENT "sn: ..." naming the broken rule; OK otherwise.
absl::Status ValidateSn(std::string_view sn);

}  // namespace rkl::protocol
