#include "rkl/common/json.h"

#include <gtest/gtest.h>

namespace rkl {
namespace {

std::string Json(std::string_view v) {
  std::string out;
  AppendJsonString(out, v);
  return out;
}

TEST(JsonStringTest, PlainTextIsQuotedAsIs) {
  EXPECT_EQ(Json(""), "\"\"");
  EXPECT_EQ(Json("tek_index 7, kcv 0A1B2C"), "\"tek_index 7, kcv 0A1B2C\"");
  EXPECT_EQ(Json("caf\xc3\xa9"), "\"caf\xc3\xa9\"");  // UTF-8 passes through
}

TEST(JsonStringTest, QuotesBackslashesAndControlCharactersAreEscaped) {
  EXPECT_EQ(Json("say \"hi\""), "\"say \\\"hi\\\"\"");
  EXPECT_EQ(Json("a\\b"), "\"a\\\\b\"");
  EXPECT_EQ(Json("l1\nl2\r\tx"), "\"l1\\nl2\\r\\tx\"");
  EXPECT_EQ(Json(std::string("\x00\x01\x1f\x7f", 4)), "\"\\u0000\\u0001\\u001f\\u007f\"");
  // An escape-looking sequence in the input is data, not an escape.
  EXPECT_EQ(Json("\\u0041"), "\"\\\\u0041\"");
}

TEST(JsonStringTest, AppendsToWhatIsThere) {
  std::string out = "[";
  AppendJsonString(out, "x");
  out += ",";
  AppendJsonString(out, "y");
  out += "]";
  EXPECT_EQ(out, "[\"x\",\"y\"]");
}

TEST(JsonRowsTest, BuildsAnArrayOfObjects) {
  JsonRows rows;
  rows.Row().Field("id", 7).Field("actor", "kms");
  rows.Row().Field("id", -1).Field("detail", "a \"b\"\n");
  EXPECT_EQ(rows.Finish(),
            "[{\"id\":7,\"actor\":\"kms\"},{\"id\":-1,\"detail\":\"a \\\"b\\\"\\n\"}]");
}

TEST(JsonRowsTest, NoRowsIsAnEmptyArray) {
  JsonRows rows;
  EXPECT_EQ(rows.Finish(), "[]");
}

}  // namespace
}  // namespace rkl
