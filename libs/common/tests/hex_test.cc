#include "rkl/common/hex.h"

#include <gtest/gtest.h>

namespace rkl {
namespace {

TEST(Hex, RoundTripIsUpperCase) {
  Bytes b = {0x00, 0x9a, 0x42, 0xff};
  EXPECT_EQ(ToHex(b), "009A42FF");
  auto back = FromHex("009a42FF");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, b);
}

TEST(Hex, RejectsOddLengthAndNamesTheField) {
  auto r = FromHex("ABC", "component");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("component"), std::string_view::npos);
}

TEST(Hex, RejectsNonHexDigit) {
  auto r = FromHex("0G");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl
