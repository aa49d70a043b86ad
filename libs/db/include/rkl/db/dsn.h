#pragma once
// Helpers that let errors and logs name a database without ever showing its password.
//
// A DSN (libpq key=value string or postgresql:// URI) may carry a password, so rkl never
// prints one as given: use RedactDsn() or DescribeDsnTarget() instead. Stateless; safe
// from any thread.

#include <string>
#include <string_view>

namespace rkl::db {

// The DSN in key=value form with the password replaced by "[redacted]"; a DSN libpq
// cannot parse yields "[unparsable DSN]" (the parse error itself could echo the input).
std::string RedactDsn(std::string_view dsn);

// "host=... port=... dbname=... user=..." — what an operator needs to find the server.
std::string DescribeDsnTarget(std::string_view dsn);

// `text` with every occurrence of the DSN's password replaced by "[redacted]", for
// messages that come from libpq and so were not written by us.
std::string ScrubPassword(std::string_view text, std::string_view dsn);

}  // namespace rkl::db
