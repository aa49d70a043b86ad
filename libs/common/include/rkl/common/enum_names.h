#pragma once
// Name tables for enums: one {value, name} array per enum serves both directions, so the name
// a value is printed as and the name it is parsed from cannot drift apart.
//
//   constexpr EnumName<Color> kColorNames[] = {{Color::kRed, "red"}, {Color::kBlue, "blue"}};
//   NameOf(kColorNames, Color::kRed)      // "red"
//   ValueNamed(kColorNames, "blue")       // Color::kBlue; nullopt for an unlisted name

#include <cstddef>
#include <optional>
#include <string_view>

namespace rkl {

template <typename E>
struct EnumName {
  E value;
  std::string_view name;
};

// The name of `value` in `table`; `unknown` when the table does not list it (a value cast
// from an out-of-range integer).
template <typename E, size_t N>
constexpr std::string_view NameOf(const EnumName<E> (&table)[N], E value,
                                  std::string_view unknown = "unknown") {
  for (const EnumName<E>& entry : table) {
    if (entry.value == value) return entry.name;
  }
  return unknown;
}

// The value whose name is exactly `name`; nullopt when there is none.
template <typename E, size_t N>
constexpr std::optional<E> ValueNamed(const EnumName<E> (&table)[N], std::string_view name) {
  for (const EnumName<E>& entry : table) {
    if (entry.name == name) return entry.value;
  }
  return std::nullopt;
}

}  // namespace rkl
