#pragma once
// EnumPairs: a one-to-one correspondence between two enums (a wire enum and the domain's,
// absl's status codes and gRPC's), written once as a table and read both ways, so the two
// directions cannot drift apart. A value the table does not list maps to nothing
// (std::nullopt): the caller decides whether that is an invalid argument or a default.
//
//   constexpr rpc::EnumPairs<v1::Issuer, IssuerId, 2> kIssuers{{{
//       {v1::ISSUER_TERMINAL_ROOT, IssuerId::kTerminalRoot},
//       {v1::ISSUER_OPERATOR_CA, IssuerId::kOperatorCa},
//   }}};
//   kIssuers.Forward(v1::ISSUER_OPERATOR_CA);   // IssuerId::kOperatorCa
//   kIssuers.Backward(IssuerId::kTerminalRoot);  // v1::ISSUER_TERMINAL_ROOT
//
// Constant tables; thread-safe.

#include <array>
#include <cstddef>
#include <optional>
#include <utility>

namespace rkl::rpc {

template <typename First, typename Second, std::size_t N>
struct EnumPairs {
  std::array<std::pair<First, Second>, N> pairs;

  constexpr std::optional<Second> Forward(First value) const {
    for (const auto& [first, second] : pairs) {
      if (first == value) return second;
    }
    return std::nullopt;
  }

  constexpr std::optional<First> Backward(Second value) const {
    for (const auto& [first, second] : pairs) {
      if (second == value) return first;
    }
    return std::nullopt;
  }
};

}  // namespace rkl::rpc
