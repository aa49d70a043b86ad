#pragma once
// ReadColumns: a result row into the fields of a record, column by column in the order of
// the query's select list, for the repositories' row-to-struct readers (which otherwise
// spell out every column's index and conversion).
//
// Conversions: bytea into Bytes (NULL: empty); an enum from its underlying integer; an integer
// narrower than int (a smallint code) through int; anything else as pqxx converts it (field::as<T>,
// which throws on NULL or a value out of range, as a reader did by hand). Stateless; the row is
// only read.

#include <pqxx/pqxx>
#include <type_traits>

#include "rkl/common/hex.h"

namespace rkl::db {

inline void ReadField(const pqxx::field& field, Bytes& out) {
  out.clear();
  if (field.is_null()) return;
  pqxx::binarystring bytes(field);
  out.assign(bytes.begin(), bytes.end());
}

template <typename T>
void ReadField(const pqxx::field& field, T& out) {
  if constexpr (std::is_enum_v<T>) {
    std::underlying_type_t<T> value{};
    ReadField(field, value);
    out = static_cast<T>(value);
  } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                       sizeof(T) < sizeof(int)) {
    out = static_cast<T>(field.as<int>());
  } else {
    out = field.as<T>();
  }
}

// Column i of `row` into the i-th of `out`; `row` has at least as many columns.
template <typename... Out>
void ReadColumns(const pqxx::row& row, Out&... out) {
  pqxx::row::size_type i = 0;
  (ReadField(row[i++], out), ...);
}

}  // namespace rkl::db
