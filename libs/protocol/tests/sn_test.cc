#include "rkl/protocol/sn.h"

#include <gtest/gtest.h>

#include <string>

namespace rkl::protocol {
namespace {

TEST(Sn, AcceptsTheAlphabetUpTo32) {
  EXPECT_TRUE(ValidateSn("A").ok());
  EXPECT_TRUE(ValidateSn("POS-0001-XYZ").ok());
  EXPECT_TRUE(ValidateSn(std::string(32, '9')).ok());
}

TEST(Sn, RejectsEverythingElseAsInvalidArgument) {
  for (std::string bad :
       {std::string(), std::string(33, 'A'), std::string("pos-1"), std::string("POS_1"),
        std::string("POS 1"), std::string("POS\n"), std::string("P\0S", 3), std::string("ÄBC")}) {
    absl::Status s = ValidateSn(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message().substr(0, 3), "sn:");
  }
}

}  // namespace
}  // namespace rkl::protocol
