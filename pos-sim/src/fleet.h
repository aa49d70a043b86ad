#pragma once
// The fleet runner: N terminals through a flow with C workers, live progress, and a summary
// (succeeded, failures by reason, terminals per second, p50/p95/p99 latency of each step).
//
// The flow is injected (TerminalFlow), so the runner, its progress output and its
// statistics are unit-tested without any service; `rkl-pos fleet` plugs in the real
// provision flow (provision.h). Statistics are pure functions of the recorded outcomes.
// Thread safety: RunFleet calls the flow concurrently from `concurrency` threads, each with
// its own StepRecorder; the flow must be safe to call concurrently for distinct indexes.

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace rkl::pos {

// Times the steps of one terminal's flow.
class StepRecorder {
 public:
  // Runs `fn` as step `step`; records its duration when it succeeds, and remembers the step
  // that failed otherwise. Returns fn's status.
  absl::Status Run(std::string_view step, const std::function<absl::Status()>& fn);
  // Marks `step` as the one that failed (for steps timed by the caller).
  void MarkFailed(std::string_view step) { failed_step_ = std::string(step); }
  // Records an already measured step.
  void Record(std::string_view step, absl::Duration duration);
  // The terminal's SN: failure reasons replace it with "<sn>" so equal failures group.
  void SetSubject(std::string subject) { subject_ = std::move(subject); }
  // Counts BeginAuthentication calls (every attempt of the flow's).
  void AddBeginCalls(int n) { begin_calls_ += n; }

  const std::vector<std::pair<std::string, absl::Duration>>& steps() const { return steps_; }
  const std::string& failed_step() const { return failed_step_; }
  const std::string& subject() const { return subject_; }
  int begin_calls() const { return begin_calls_; }

 private:
  std::vector<std::pair<std::string, absl::Duration>> steps_;
  std::string failed_step_;
  std::string subject_;
  int begin_calls_ = 0;
};

using TerminalFlow = std::function<absl::Status(int index, StepRecorder& steps)>;

struct TerminalOutcome {
  int index = 0;
  absl::Status status;
  std::string failed_step;
  std::string subject;
  std::vector<std::pair<std::string, absl::Duration>> steps;
  absl::Duration total;
  int begin_calls = 0;  // BeginAuthentication calls (patent terminals)
};

struct LatencyStats {
  size_t count = 0;
  absl::Duration p50, p95, p99, max;
};

struct FleetSummary {
  int total = 0;
  int succeeded = 0;
  int failed = 0;
  std::map<std::string, int> failures_by_reason;
  absl::Duration elapsed;
  double terminals_per_second = 0;  // succeeded terminals per second of wall time
  // Per step, in the order steps first appear; "total" (whole flow) comes last.
  std::vector<std::pair<std::string, LatencyStats>> step_latency;
  // BeginAuthentication calls of the terminals that made any, and how many made any: about
  // one each when KMS waits for the TK (wait_ms), more when terminals had to poll.
  int64_t begin_calls = 0;
  int begin_terminals = 0;
  // Terminals of this fleet that KMS itself reports INSTALLED (admin RPC); -1: not checked.
  int kms_verified_installed = -1;
};

struct FleetOptions {
  int count = 1;
  int concurrency = 1;
  std::ostream* progress = nullptr;                     // nullptr: no progress output
  bool progress_is_tty = false;                         // redraw one bar line, else plain lines
  absl::Duration progress_interval = absl::Seconds(5);  // plain lines; the bar uses 200 ms
};

// Nearest-rank percentile (p in (0, 100]) of `values`; zero for an empty set.
absl::Duration Percentile(std::vector<absl::Duration> values, double p);

// "<step>: <CODE>: <message>" with the subject replaced by "<sn>" and the message cut to a
// bounded length, so a summary groups equal failures.
std::string FailureReason(const absl::Status& status, const std::string& step,
                          const std::string& subject);

FleetSummary Summarize(const std::vector<TerminalOutcome>& outcomes, absl::Duration elapsed);

// Runs the fleet; every terminal's outcome is in the summary (none is dropped).
FleetSummary RunFleet(const FleetOptions& options, const TerminalFlow& flow);

std::string FormatSummaryText(const FleetSummary& summary);
std::string FormatSummaryJson(const FleetSummary& summary);

}  // namespace rkl::pos
