#pragma once
// AppendJsonString: `value` as a JSON string literal (quotes included), for handing a batch
// of rows to PostgreSQL as one jsonb parameter (jsonb_to_recordset) instead of one statement
// per row.
//
// Guarantees: quotation marks, backslashes and every control character (U+0000–U+001F and
// DEL) are escaped, so the literal always parses and decodes to exactly `value`'s bytes.
// Other bytes pass through unchanged; the caller passes UTF-8 (PostgreSQL rejects anything
// else, as it would a text parameter).

#include <string>
#include <string_view>

namespace rkl {

void AppendJsonString(std::string& out, std::string_view value);

}  // namespace rkl
