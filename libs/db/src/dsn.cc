#include "rkl/db/dsn.h"

#include <libpq-fe.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace rkl::db {
namespace {

constexpr char kRedacted[] = "[redacted]";

struct ConninfoFree {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};
using Conninfo = std::unique_ptr<PQconninfoOption, ConninfoFree>;

// libpq's own parser, so both the key=value and the URI forms (and their quoting rules)
// are understood exactly as the connection will understand them.
Conninfo Parse(std::string_view dsn) {
  char* error = nullptr;
  Conninfo options(PQconninfoParse(std::string(dsn).c_str(), &error));
  // The error text may quote the DSN, password included: dropped.
  if (error != nullptr) PQfreemem(error);
  return options;
}

// Single-quoted as key=value syntax wants, so a value with spaces survives.
std::string Quote(std::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  out += '\'';
  return out;
}

bool NeedsQuotes(std::string_view value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c == ' ' || c == '\'' || c == '\\' || c == '\t') return true;
  }
  return false;
}

}  // namespace

std::string RedactDsn(std::string_view dsn) {
  Conninfo options = Parse(dsn);
  if (options == nullptr) return "[unparsable DSN]";
  std::string out;
  for (const PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    std::string_view keyword = o->keyword;
    std::string value = keyword == "password" ? kRedacted : o->val;
    if (!out.empty()) out += ' ';
    absl::StrAppend(&out, std::string(keyword), "=", NeedsQuotes(value) ? Quote(value) : value);
  }
  return out;
}

std::string DescribeDsnTarget(std::string_view dsn) {
  Conninfo options = Parse(dsn);
  if (options == nullptr) return "[unparsable DSN]";
  std::string out;
  // In a fixed order, the way an operator reads an address.
  for (std::string_view wanted : {"host", "hostaddr", "port", "dbname", "user"}) {
    for (const PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
      if (o->val == nullptr || std::string_view(o->keyword) != wanted) continue;
      if (!out.empty()) out += ' ';
      absl::StrAppend(&out, std::string(wanted), "=", o->val);
    }
  }
  return out.empty() ? "[libpq defaults]" : out;
}

std::string ScrubPassword(std::string_view text, std::string_view dsn) {
  Conninfo options = Parse(dsn);
  if (options == nullptr) {
    // Without a parse we cannot know the password; an unparsable DSN never reaches the
    // server, so the text cannot contain it from there, but be strict anyway.
    return "[message withheld: unparsable DSN]";
  }
  std::string out(text);
  for (const PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val != nullptr && std::string_view(o->keyword) == "password" && *o->val != '\0') {
      out = absl::StrReplaceAll(out, {{o->val, kRedacted}});
    }
  }
  return out;
}

}  // namespace rkl::db
