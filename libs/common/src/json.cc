#include "rkl/common/json.h"

namespace rkl {

void AppendJsonString(std::string& out, std::string_view value) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (unsigned char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

JsonRows& JsonRows::Row() {
  if (in_row_) out_ += "},";
  out_ += '{';
  in_row_ = true;
  first_field_ = true;
  return *this;
}

void JsonRows::Name(std::string_view name) {
  if (!first_field_) out_ += ',';
  first_field_ = false;
  AppendJsonString(out_, name);
  out_ += ':';
}

JsonRows& JsonRows::Field(std::string_view name, std::string_view value) {
  Name(name);
  AppendJsonString(out_, value);
  return *this;
}

JsonRows& JsonRows::Field(std::string_view name, int64_t value) {
  Name(name);
  out_ += std::to_string(value);
  return *this;
}

std::string JsonRows::Finish() {
  if (in_row_) out_ += '}';
  out_ += ']';
  in_row_ = false;
  return std::move(out_);
}

}  // namespace rkl
