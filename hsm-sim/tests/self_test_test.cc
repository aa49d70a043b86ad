#include "self_test.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace rkl::hsm {
namespace {

TEST(SelfTest, AllKnownAnswersPass) {
  SelfTestResult r = RunSelfTests();
  EXPECT_TRUE(r.passed) << ::testing::PrintToString(r.failures);
  EXPECT_TRUE(r.failures.empty());
}

TEST(SelfTest, ForcedFailureIsReportedByName) {
  SelfTestResult r = RunSelfTests(/*force_failure=*/true);
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(r.failures, ::testing::ElementsAre("AES-CMAC"));
}

}  // namespace
}  // namespace rkl::hsm
