#include "rkl/db/errors.h"

#include <pqxx/except>
#include <string>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace rkl::db {
namespace {

// The constraint name from a server message such as
//   duplicate key value violates unique constraint "widgets_pkey"
// Constraint names are schema, not data, and they tell an operator which rule failed. The
// name is accepted only if it looks like an identifier, so a message of another shape
// (a RAISE with a custom text, a translated server) contributes nothing.
std::string ConstraintName(absl::string_view message) {
  constexpr absl::string_view kMarker = "constraint \"";
  size_t start = message.find(kMarker);
  if (start == absl::string_view::npos) return "";
  start += kMarker.size();
  size_t end = message.find('"', start);
  if (end == absl::string_view::npos || end == start || end - start > 63) return "";
  absl::string_view name = message.substr(start, end - start);
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '$') return "";
  }
  return std::string(name);
}

// libpq's text for a lost connection ("server closed the connection unexpectedly"); it
// never quotes query parameters, and its first line is enough.
std::string FirstLine(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  size_t eol = text.find('\n');
  return std::string(absl::StripAsciiWhitespace(text.substr(0, eol)));
}

absl::Status WithSqlState(absl::StatusCode code, std::string_view what, std::string_view sqlstate,
                          std::string_view constraint = "") {
  std::string message = absl::StrCat(std::string(what), " (SQLSTATE ",
                                     std::string(sqlstate.empty() ? "?????" : sqlstate), ")");
  if (!constraint.empty()) absl::StrAppend(&message, " on constraint ", std::string(constraint));
  return absl::Status(code, message);
}

DbError ConnectionLost(std::string_view detail) {
  std::string message = "database connection lost";
  if (!detail.empty()) absl::StrAppend(&message, ": ", std::string(detail));
  return {absl::UnavailableError(message), /*retryable=*/true, /*connection_lost=*/true};
}

// sql_error subclasses not covered by a dedicated pqxx type, by SQLSTATE.
DbError FromSqlState(const pqxx::sql_error& e) {
  const std::string& state = e.sqlstate();
  if (state == "40001") {
    return {WithSqlState(absl::StatusCode::kAborted, "serialization failure", state), true};
  }
  if (state == "40P01") {
    return {WithSqlState(absl::StatusCode::kAborted, "deadlock detected", state), true};
  }
  if (absl::StartsWith(state, "08") || state == "57P01" || state == "57P02" || state == "57P03") {
    // Connection exception class, admin/crash shutdown, server starting up.
    DbError err = ConnectionLost("");
    err.status = WithSqlState(absl::StatusCode::kUnavailable, "database connection lost", state);
    return err;
  }
  if (state == "53300") {
    return {WithSqlState(absl::StatusCode::kUnavailable, "too many database connections", state),
            false, true};
  }
  if (state == "57014") {
    return {WithSqlState(absl::StatusCode::kDeadlineExceeded, "statement cancelled", state)};
  }
  if (state == "55P03") {
    return {WithSqlState(absl::StatusCode::kAborted, "lock not available", state)};
  }
  if (state == "23505") {
    return {WithSqlState(absl::StatusCode::kAlreadyExists, "unique violation", state,
                         ConstraintName(e.what()))};
  }
  if (state == "23503" || state == "23514" || state == "23001") {
    return {WithSqlState(absl::StatusCode::kFailedPrecondition, "integrity violation", state,
                         ConstraintName(e.what()))};
  }
  return {WithSqlState(absl::StatusCode::kInternal, "database error", state)};
}

}  // namespace

DbError ClassifyException(const std::exception& e) {
  // Most derived first: in libpqxx 6.4 in_doubt_error and transaction_rollback are not
  // sql_errors, and the integrity violations are sql_errors with their own types.
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
    return {absl::UnknownError(
                "database connection lost during COMMIT: the transaction may have committed"),
            false, true};
  }
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
    return ConnectionLost(FirstLine(e.what()));
  }
  if (dynamic_cast<const pqxx::serialization_failure*>(&e) != nullptr) {
    return {WithSqlState(absl::StatusCode::kAborted, "serialization failure", "40001"), true};
  }
  if (dynamic_cast<const pqxx::deadlock_detected*>(&e) != nullptr) {
    return {WithSqlState(absl::StatusCode::kAborted, "deadlock detected", "40P01"), true};
  }
  if (dynamic_cast<const pqxx::statement_completion_unknown*>(&e) != nullptr) {
    return {WithSqlState(absl::StatusCode::kUnknown, "statement completion unknown", "40003")};
  }
  if (dynamic_cast<const pqxx::transaction_rollback*>(&e) != nullptr) {
    return {WithSqlState(absl::StatusCode::kAborted, "transaction rolled back", "40000")};
  }
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e); sql != nullptr) {
    // The specific pqxx types carry the same SQLSTATE, so one table serves them all.
    if (dynamic_cast<const pqxx::unique_violation*>(&e) != nullptr && sql->sqlstate().empty()) {
      return {WithSqlState(absl::StatusCode::kAlreadyExists, "unique violation", "23505",
                           ConstraintName(e.what()))};
    }
    if ((dynamic_cast<const pqxx::foreign_key_violation*>(&e) != nullptr ||
         dynamic_cast<const pqxx::check_violation*>(&e) != nullptr ||
         dynamic_cast<const pqxx::restrict_violation*>(&e) != nullptr) &&
        sql->sqlstate().empty()) {
      return {WithSqlState(absl::StatusCode::kFailedPrecondition, "integrity violation", "",
                           ConstraintName(e.what()))};
    }
    return FromSqlState(*sql);
  }
  if (dynamic_cast<const pqxx::conversion_error*>(&e) != nullptr) {
    // Its text quotes the value that failed to convert: not repeated.
    return {absl::InternalError("database result conversion error")};
  }
  if (dynamic_cast<const pqxx::usage_error*>(&e) != nullptr) {
    return {absl::InternalError(absl::StrCat("libpqxx usage error: ", FirstLine(e.what())))};
  }
  return {absl::InternalError("unexpected error in database code")};
}

}  // namespace rkl::db
