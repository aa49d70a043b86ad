#include "rkl/common/logging.h"

#include <ctime>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/request_id.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace rkl {
namespace {

// RFC 3339 UTC with milliseconds; the same in both formats so logs sort and join.
void AppendTimestamp(spdlog::log_clock::time_point tp, std::string& out) {
  auto since_epoch = tp.time_since_epoch();
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - secs);
  std::time_t t = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  out.append(buf, n);
  char ms[8];
  std::snprintf(ms, sizeof(ms), ".%03dZ", static_cast<int>(millis.count()));
  out.append(ms);
}

std::string_view LevelName(spdlog::level::level_enum level) {
  auto sv = spdlog::level::to_string_view(level);
  return {sv.data(), sv.size()};
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not valid.
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  size_t len;
  uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  // Reject overlong forms, surrogates and out-of-range code points.
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

// One JSON object per line: {"ts":...,"level":...,"program":...,"msg":...}, then
// "request_id":... while the thread serves a request (rkl/common/request_id.h).
void RenderJsonLine(std::string_view program, const spdlog::details::log_msg& msg,
                    std::string& line) {
  const std::string_view request_id = CurrentRequestId();
  line.reserve(96 + msg.payload.size() + request_id.size());
  line.append("{\"ts\":\"");
  AppendTimestamp(msg.time, line);
  line.append("\",\"level\":\"");
  line.append(LevelName(msg.level));
  line.append("\",\"program\":\"");
  AppendJsonEscaped(program, line);
  line.append("\",\"msg\":\"");
  AppendJsonEscaped(std::string_view(msg.payload.data(), msg.payload.size()), line);
  if (!request_id.empty()) {
    line.append("\",\"request_id\":\"");
    AppendJsonEscaped(request_id, line);
  }
  line.append("\"}\n");
}

// "<ts> <level> <program>: <message>", then " request_id=<id>" while the thread serves a
// request (rkl/common/request_id.h) unless the message already carries
// "request_id=<id>" (the RPC interceptor's line).
void RenderTextLine(std::string_view program, const spdlog::details::log_msg& msg,
                    std::string& line) {
  const std::string_view payload(msg.payload.data(), msg.payload.size());
  AppendTimestamp(msg.time, line);
  absl::StrAppend(&line, " ", std::string(LevelName(msg.level)), " ", std::string(program), ": ");
  // Control characters would let a message fake further lines; show them escaped.
  auto append_escaped = [&line](std::string_view text) {
    for (char c : text) {
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
        line.append(buf);
      } else {
        line.push_back(c);
      }
    }
  };
  append_escaped(payload);
  if (const std::string_view request_id = CurrentRequestId();
      !request_id.empty() &&
      payload.find("request_id=" + std::string(request_id)) == std::string_view::npos) {
    line.append(" request_id=");
    append_escaped(request_id);
  }
  line.push_back('\n');
}

// Writes each message as the one line `render` makes of it.
class LineFormatter final : public spdlog::formatter {
 public:
  using Render = void (*)(std::string_view program, const spdlog::details::log_msg& msg,
                          std::string& line);
  LineFormatter(std::string program, Render render)
      : program_(std::move(program)), render_(render) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string line;
    render_(program_, msg, line);
    dest.append(line.data(), line.data() + line.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<LineFormatter>(program_, render_);
  }

 private:
  std::string program_;
  Render render_;
};

}  // namespace

void AppendJsonEscaped(std::string_view text, std::string& out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    switch (c) {
      case '"':
        out.append("\\\"");
        ++i;
        continue;
      case '\\':
        out.append("\\\\");
        ++i;
        continue;
      case '\n':
        out.append("\\n");
        ++i;
        continue;
      case '\r':
        out.append("\\r");
        ++i;
        continue;
      case '\t':
        out.append("\\t");
        ++i;
        continue;
      default:
        break;
    }
    if (c < 0x20 || c == 0x7F) {
      out.append("\\u00");
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
      ++i;
      continue;
    }
    size_t len = Utf8SequenceLength(text, i);
    if (len == 0) {
      out.append("\\ufffd");  // invalid UTF-8 byte: JSON must stay valid UTF-8
      ++i;
      continue;
    }
    out.append(text.substr(i, len));
    i += len;
  }
}

void InitLogging(const LoggingOptions& options) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  if (options.format == LogFormat::kJson) {
    sink->set_formatter(std::make_unique<LineFormatter>(options.program, RenderJsonLine));
  } else {
    sink->set_formatter(std::make_unique<LineFormatter>(options.program, RenderTextLine));
  }
  auto logger = std::make_shared<spdlog::logger>(options.program, std::move(sink));
  logger->set_level(options.level);
  // Warnings and errors usually precede a crash or exit; do not lose them in a buffer.
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
}

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text) {
  if (text == "text") return LogFormat::kText;
  if (text == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format must be text or json, got '", std::string(text), "'"));
}

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view text) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace},       {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},         {"warn", spdlog::level::warn},
      {"warning", spdlog::level::warn},      {"error", spdlog::level::err},
      {"critical", spdlog::level::critical}, {"off", spdlog::level::off},
  };
  for (const auto& [name, level] : kLevels) {
    if (text == name) return level;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("log level must be one of trace, debug, info, warn, error, critical, off; got '",
                   std::string(text), "'"));
}

}  // namespace rkl
