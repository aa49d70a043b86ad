#include "kms_types.h"

#include <array>
#include <utility>

#include "absl/status/status.h"

namespace rkl::kms {
namespace {

constexpr std::array<std::pair<TerminalState, std::string_view>, 7> kTerminalStates{{
    {TerminalState::kTkReceived, "TK_RECEIVED"},
    {TerminalState::kAuthenticated, "AUTHENTICATED"},
    {TerminalState::kTmkDelivered, "TMK_DELIVERED"},
    {TerminalState::kInstalled, "INSTALLED"},
    {TerminalState::kLocked, "LOCKED"},
    {TerminalState::kRevoked, "REVOKED"},
    {TerminalState::kRekeyPending, "REKEY_PENDING"},
}};

constexpr std::array<std::pair<SessionState, std::string_view>, 7> kSessionStates{{
    {SessionState::kOpen, "OPEN"},
    {SessionState::kVerifying, "VERIFYING"},
    {SessionState::kAuthenticated, "AUTHENTICATED"},
    {SessionState::kConfirming, "CONFIRMING"},
    {SessionState::kConfirmed, "CONFIRMED"},
    {SessionState::kFailed, "FAILED"},
    {SessionState::kCancelled, "CANCELLED"},
}};

}  // namespace

std::string TerminalStateName(TerminalState state) {
  for (const auto& [s, name] : kTerminalStates) {
    if (s == state) return std::string(name);
  }
  return "UNKNOWN";
}

absl::StatusOr<TerminalState> TerminalStateFromName(std::string_view name) {
  for (const auto& [s, n] : kTerminalStates) {
    if (n == name) return s;
  }
  return absl::InternalError("terminal state: unknown value in the database");
}

std::string SessionStateName(SessionState state) {
  for (const auto& [s, name] : kSessionStates) {
    if (s == state) return std::string(name);
  }
  return "UNKNOWN";
}

absl::StatusOr<SessionState> SessionStateFromName(std::string_view name) {
  for (const auto& [s, n] : kSessionStates) {
    if (n == name) return s;
  }
  return absl::InternalError("session state: unknown value in the database");
}

}  // namespace rkl::kms
