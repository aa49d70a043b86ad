#include "rkl/common/logging.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "spdlog/spdlog.h"

namespace rkl {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

std::string CaptureOneLine(const LoggingOptions& options, const std::string& message) {
  InitLogging(options);
  ::testing::internal::CaptureStderr();
  spdlog::info("{}", message);
  spdlog::default_logger()->flush();
  return ::testing::internal::GetCapturedStderr();
}

TEST(Logging, JsonLineHasTsLevelProgramMsg) {
  std::string line =
      CaptureOneLine({.format = LogFormat::kJson, .program = "rkl-hsm"}, "hello world");
  EXPECT_THAT(line, MatchesRegex(R"(\{"ts":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{3}Z",)"
                                 R"("level":"info","program":"rkl-hsm","msg":"hello world"\})"
                                 "\n"));
}

TEST(Logging, JsonEscapesQuotesControlsAndInvalidUtf8) {
  std::string line =
      CaptureOneLine({.format = LogFormat::kJson, .program = "p\"q"}, "a\"b\\c\nd\x01 \xff é");
  EXPECT_THAT(line, HasSubstr(R"("program":"p\"q")"));
  EXPECT_THAT(line, HasSubstr(R"("msg":"a\"b\\c\nd\u0001 \ufffd é"})"));
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1);
}

TEST(Logging, TextFormatCannotForgeLines) {
  std::string line =
      CaptureOneLine({.format = LogFormat::kText, .program = "rkl-kms"}, "x\nfake line");
  EXPECT_THAT(line, MatchesRegex(R"([0-9T:.-]+Z info rkl-kms: x\\x0afake line)"
                                 "\n"));
}

TEST(Logging, LevelFiltersBelowThreshold) {
  InitLogging({.format = LogFormat::kText, .level = spdlog::level::warn, .program = "t"});
  ::testing::internal::CaptureStderr();
  spdlog::info("dropped");
  spdlog::warn("kept");
  spdlog::default_logger()->flush();
  std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(out, HasSubstr("kept"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("dropped")));
}

TEST(Logging, ParseFormatAndLevel) {
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_FALSE(ParseLogFormat("xml").ok());
  EXPECT_EQ(*ParseLogLevel("debug"), spdlog::level::debug);
  EXPECT_EQ(*ParseLogLevel("error"), spdlog::level::err);
  EXPECT_FALSE(ParseLogLevel("loud").ok());
}

}  // namespace
}  // namespace rkl
