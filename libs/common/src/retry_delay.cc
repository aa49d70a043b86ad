#include "rkl/common/retry_delay.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace rkl {
namespace {

// Internal payload: decimal milliseconds. Never leaves the process as such (the gRPC
// adapter sends google.rpc.RetryInfo).
constexpr char kRetryPayload[] = "rkl.retry_delay_ms";

int64_t CeilMillis(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
}

}  // namespace

absl::Status WithRetryDelay(absl::Status status, absl::Duration delay) {
  if (status.ok()) return status;
  status.SetPayload(kRetryPayload, absl::Cord(std::to_string(CeilMillis(delay))));
  return status;
}

std::optional<absl::Duration> RetryDelay(const absl::Status& status) {
  auto p = status.GetPayload(kRetryPayload);  // absl::optional in Debian's Abseil
  if (!p) return std::nullopt;
  int64_t ms = 0;
  if (!absl::SimpleAtoi(std::string(*p), &ms) || ms < 0) return std::nullopt;
  return absl::Milliseconds(ms);
}

absl::Status RateLimitedError(std::string_view what, absl::Duration delay) {
  const int64_t ms = CeilMillis(delay);
  return WithRetryDelay(absl::ResourceExhaustedError(absl::StrCat(
                            absl::string_view(what.data(), what.size()), "; retry in ", ms, " ms")),
                        absl::Milliseconds(ms));
}

}  // namespace rkl
