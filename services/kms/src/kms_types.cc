#include "kms_types.h"

#include <array>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

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

// The name of `value` in `table`, or "UNKNOWN".
template <typename Enum, size_t N>
std::string NameIn(const std::array<std::pair<Enum, std::string_view>, N>& table, Enum value) {
  for (const auto& [v, name] : table) {
    if (v == value) return std::string(name);
  }
  return "UNKNOWN";
}

// The value named `name` in `table`; a name outside it is a database row no version wrote.
template <typename Enum, size_t N>
absl::StatusOr<Enum> ValueIn(const std::array<std::pair<Enum, std::string_view>, N>& table,
                             std::string_view name, const char* what) {
  for (const auto& [v, n] : table) {
    if (n == name) return v;
  }
  return absl::InternalError(absl::StrCat(what, ": unknown value in the database"));
}

}  // namespace

std::string TerminalStateName(TerminalState state) { return NameIn(kTerminalStates, state); }

absl::StatusOr<TerminalState> TerminalStateFromName(std::string_view name) {
  return ValueIn(kTerminalStates, name, "terminal state");
}

std::string SessionStateName(SessionState state) { return NameIn(kSessionStates, state); }

absl::StatusOr<SessionState> SessionStateFromName(std::string_view name) {
  return ValueIn(kSessionStates, name, "session state");
}

std::string TerminalProtocolName(TerminalProtocol protocol) {
  return protocol == TerminalProtocol::kTr34 ? "TR34" : "PATENT";
}

}  // namespace rkl::kms
