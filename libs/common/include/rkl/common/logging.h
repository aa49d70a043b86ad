#pragma once
// Process-wide logging set-up over spdlog. Every rkl program calls InitLogging once, early
// in main() and before it starts threads; afterwards it logs with spdlog::info(...) etc.,
// which is thread-safe. Output goes to stderr (the container runtime collects it), as either
//   text: 2024-05-01T12:00:00.123Z info rkl-hsm: message
//   json: {"ts":"2024-05-01T12:00:00.123Z","level":"info","program":"rkl-hsm","msg":"message"}
// one event per line. While the logging thread serves a request (rkl/common/request_id.h)
// each line carries its id: text lines end in ` request_id=<id>`, JSON lines have a
// "request_id" field after "msg". JSON strings are fully escaped (quotes, backslashes, control
// characters, invalid UTF-8), so a message can never break or forge a line.
//
// What must never be logged: key material of any kind (TK, TEK, AUK, TMK, PK, MAK, Pr, LMK,
// components, TLS private keys), plaintexts, RPC request/response bodies, or which internal
// check of a decryption failed. SecretBytes has no formatter, so `spdlog::info("{}", secret)`
// does not compile; for everything else (e.g. a std::string that once held a key), the rule
// is on the author: log identifiers, key indexes, KCVs and lengths — never the bytes.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "spdlog/common.h"

namespace rkl {

enum class LogFormat { kText, kJson };

struct LoggingOptions {
  LogFormat format = LogFormat::kText;
  spdlog::level::level_enum level = spdlog::level::info;
  std::string program;  // e.g. "rkl-hsm"; appears on every line
};

// Replaces spdlog's default logger with one writing to stderr in the chosen format.
// Calling it again (tests) replaces the previous set-up.
void InitLogging(const LoggingOptions& options);

// "text" | "json"; for the `log.format` configuration key.
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text);
// "trace" | "debug" | "info" | "warn" | "error" | "critical" | "off".
absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view text);

// Appends `text` to `out` as the body of a JSON string (no surrounding quotes). Exposed for
// other JSON emitters (audit lines) that must escape the same way.
void AppendJsonEscaped(std::string_view text, std::string& out);

}  // namespace rkl
