#include "rkl/common/logging.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "rkl/common/request_id.h"
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

TEST(RequestId, ScopesNestAndRestore) {
  EXPECT_EQ(CurrentRequestId(), "");
  {
    ScopedRequestId outer("outer-1");
    EXPECT_EQ(CurrentRequestId(), "outer-1");
    {
      ScopedRequestId inner("inner-2");
      EXPECT_EQ(CurrentRequestId(), "inner-2");
      ScopedRequestId cleared("");
      EXPECT_EQ(CurrentRequestId(), "");
    }
    EXPECT_EQ(CurrentRequestId(), "outer-1");
  }
  EXPECT_EQ(CurrentRequestId(), "");
}

TEST(RequestId, IsPerThread) {
  ScopedRequestId mine("main-thread");
  std::string seen = "unset";
  std::thread([&] { seen = std::string(CurrentRequestId()); }).join();
  EXPECT_EQ(seen, "");
  EXPECT_EQ(CurrentRequestId(), "main-thread");
}

TEST(Logging, TextLineEndsWithCurrentRequestId) {
  ScopedRequestId scope("abc123");
  std::string line = CaptureOneLine({.format = LogFormat::kText, .program = "rkl-kms"}, "served");
  EXPECT_THAT(line, MatchesRegex(R"([0-9T:.-]+Z info rkl-kms: served request_id=abc123)"
                                 "\n"));
}

TEST(Logging, TextLineNamesTheIdOnceWhenTheMessageDoes) {
  ScopedRequestId scope("abc123");
  std::string line = CaptureOneLine({.format = LogFormat::kText, .program = "rkl-kms"},
                                    "rpc /rkl.v1.Kms/GetTerminal request_id=abc123 code=OK");
  EXPECT_THAT(line, MatchesRegex(R"([0-9T:.-]+Z info rkl-kms: rpc /rkl.v1.Kms/GetTerminal )"
                                 R"(request_id=abc123 code=OK)"
                                 "\n"));
}

TEST(Logging, LinesWithoutARequestHaveNoId) {
  std::string text = CaptureOneLine({.format = LogFormat::kText, .program = "rkl-kms"}, "idle");
  EXPECT_THAT(text, ::testing::Not(HasSubstr("request_id")));
  std::string json = CaptureOneLine({.format = LogFormat::kJson, .program = "rkl-kms"}, "idle");
  EXPECT_THAT(json, ::testing::Not(HasSubstr("request_id")));
}

TEST(Logging, JsonLineIsValidJsonWithRequestId) {
  ScopedRequestId scope("0123456789abcdef0123456789abcdef");
  std::string line =
      CaptureOneLine({.format = LogFormat::kJson, .program = "rkl-mtms"}, "forwarded \"x\"\n");
  ASSERT_EQ(std::count(line.begin(), line.end(), '\n'), 1);
  line.pop_back();
  // A JSON parser of its own, not this file's expectations, judges the line.
  const nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(parsed.is_discarded()) << line;
  EXPECT_EQ(parsed.value("request_id", ""), "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(parsed.value("msg", ""), "forwarded \"x\"\n");
  EXPECT_EQ(parsed.value("program", ""), "rkl-mtms");
  EXPECT_THAT(line, HasSubstr(R"("msg":"forwarded \"x\"\n","request_id":")"
                              R"(0123456789abcdef0123456789abcdef"})"));
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
