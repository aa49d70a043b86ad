#include "rkl/rpc/public_call_gate.h"

#include "absl/strings/str_cat.h"
#include "rkl/common/retry_delay.h"
#include "spdlog/spdlog.h"

namespace rkl::rpc {

PublicCallGate::PublicCallGate(std::string service, std::string subject_name,
                               PublicCallLimits limits)
    : service_(std::move(service)),
      subject_name_(std::move(subject_name)),
      by_source_(limits.per_source, limits.clock, limits.max_tracked),
      by_subject_(limits.per_subject, limits.clock, limits.max_tracked) {}

absl::Status PublicCallGate::Admit(std::string_view source, std::string_view subject) {
  absl::Status refusal;
  if (absl::Duration wait = by_source_.Acquire(source); wait > absl::ZeroDuration()) {
    refusal = RateLimitedError("rate limit: too many calls from this address", wait);
  } else if (subject.empty()) {
    return absl::OkStatus();
  } else if (absl::Duration wait = by_subject_.Acquire(subject); wait > absl::ZeroDuration()) {
    refusal =
        RateLimitedError(absl::StrCat("rate limit: too many calls for this ", subject_name_), wait);
  } else {
    return absl::OkStatus();
  }
  const uint64_t n = ++refused_;
  if ((n & (n - 1)) == 0) {
    spdlog::warn("{}: {} public calls refused for volume so far (latest: {})", service_, n,
                 std::string(refusal.message()));
  }
  return refusal;
}

void DeclarePublicCallLimitsConfig(ConfigSchema& schema, std::string_view calls) {
  const std::string what(calls);
  schema
      .Int(
          "limits.per_source.per_minute",
          absl::StrCat(what, " per minute one source IP address may make on average (0: no limit)"))
      .Default("6000")
      .Range(0, 60'000'000);
  schema
      .Int("limits.per_source.burst", absl::StrCat(what, " one source IP address may make at once"))
      .Default("200")
      .Range(1, 1'000'000);
  schema
      .Int("limits.per_sn.per_minute",
           absl::StrCat(what, " per minute for one SN on average (0: no limit)"))
      .Default("60")
      .Range(0, 60'000'000);
  schema.Int("limits.per_sn.burst", absl::StrCat(what, " for one SN at once"))
      .Default("20")
      .Range(1, 1'000'000);
}

PublicCallLimits PublicCallLimitsFromConfig(const Config& config) {
  auto limit = [&](const char* prefix) {
    return RateLimit{
        .per_second = static_cast<double>(config.GetInt(absl::StrCat(prefix, ".per_minute"))) / 60,
        .burst = static_cast<double>(config.GetInt(absl::StrCat(prefix, ".burst")))};
  };
  PublicCallLimits limits;
  limits.per_source = limit("limits.per_source");
  limits.per_subject = limit("limits.per_sn");
  return limits;
}

std::string PublicCallGate::PeerAddress(const std::string& peer) {
  std::string_view p = peer;
  if (p.starts_with("ipv4:")) {
    p.remove_prefix(5);
    return std::string(p.substr(0, p.rfind(':')));
  }
  if (p.starts_with("ipv6:")) {
    p.remove_prefix(5);
    if (!p.empty() && p.front() == '[') {
      const size_t close = p.find(']');
      if (close != std::string_view::npos) return std::string(p.substr(1, close - 1));
    }
    return std::string(p.substr(0, p.rfind(':')));
  }
  return peer;
}

}  // namespace rkl::rpc
