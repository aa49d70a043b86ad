#pragma once
// Exec: run a parameterised statement as a named prepared statement of the connection, so
// PostgreSQL parses and plans it once per connection instead of on every call (an unnamed
// exec_params statement is parsed, analyzed and planned again each time it runs).
//
// Guarantees:
//  - the statement's name is derived from its text ("rkl_" + 16 hex digits of a hash), so
//    the same text always reuses the same prepared statement and callers keep their SQL
//    next to the call, as with exec_params;
//  - libpqxx prepares lazily, on first use on each connection (also after a reconnect), and
//    refuses (pqxx::argument_error) a name reused for different text — a hash collision
//    fails loudly instead of running the wrong statement;
//  - parameters travel exactly as with exec_params (never spliced into the text).
// Use it for statements with a fixed text; text built from values must not be prepared.

#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <utility>

namespace rkl::db {

// "rkl_" + 16 lowercase hex digits of a 64-bit FNV-1a hash of `sql`.
std::string PreparedName(std::string_view sql);

template <typename... Args>
pqxx::result Exec(pqxx::transaction_base& tx, std::string_view sql, Args&&... args) {
  std::string name = PreparedName(sql);
  tx.conn().prepare(name, std::string(sql));  // a no-op once defined with this text
  return tx.exec_prepared(name, std::forward<Args>(args)...);
}

template <typename... Args>
pqxx::row Exec1(pqxx::transaction_base& tx, std::string_view sql, Args&&... args) {
  pqxx::result r = Exec(tx, sql, std::forward<Args>(args)...);
  if (r.size() != 1) {
    throw pqxx::unexpected_rows("expected 1 row from a prepared statement, got " +
                                std::to_string(r.size()));
  }
  return r[0];
}

}  // namespace rkl::db
