#pragma once
// JSON for handing a batch of rows to PostgreSQL as one jsonb parameter
// (jsonb_to_recordset) instead of one statement per row.
//
// AppendJsonString: `value` as a JSON string literal (quotes included), for handing a batch
// of rows to PostgreSQL as one jsonb parameter (jsonb_to_recordset) instead of one statement
// per row.
//
// Guarantees: quotation marks, backslashes and every control character (U+0000–U+001F and
// DEL) are escaped, so the literal always parses and decodes to exactly `value`'s bytes.
// Other bytes pass through unchanged; the caller passes UTF-8 (PostgreSQL rejects anything
// else, as it would a text parameter).

#include <cstdint>
#include <string>
#include <string_view>

namespace rkl {

void AppendJsonString(std::string& out, std::string_view value);

// A JSON array of flat objects, built row by row:
//   JsonRows rows;
//   rows.Row().Field("id", 7).Field("actor", "kms");
//   std::string json = rows.Finish();  // [{"id":7,"actor":"kms"}]
// Text goes through AppendJsonString. Not thread-safe.
class JsonRows {
 public:
  JsonRows& Row();  // starts the next object
  JsonRows& Field(std::string_view name, std::string_view value);
  JsonRows& Field(std::string_view name, int64_t value);
  std::string Finish();  // closes the array; the builder is spent

 private:
  void Name(std::string_view name);
  std::string out_ = "[";
  bool in_row_ = false;
  bool first_field_ = true;
};

}  // namespace rkl
