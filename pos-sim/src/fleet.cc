#include "fleet.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "rkl/common/logging.h"

namespace rkl::pos {
namespace {

constexpr size_t kMaxReasonMessage = 120;
constexpr int kBarWidth = 30;
constexpr absl::Duration kBarInterval = absl::Milliseconds(200);
constexpr char kTotalStep[] = "total";

absl::Duration SteadyNow() {
  return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

std::string Json(std::string_view s) {
  std::string out = "\"";
  AppendJsonEscaped(s, out);
  out += "\"";
  return out;
}

}  // namespace

absl::Status StepRecorder::Run(std::string_view step, const std::function<absl::Status()>& fn) {
  const absl::Duration start = SteadyNow();
  absl::Status status = fn();
  if (status.ok()) {
    Record(step, SteadyNow() - start);
  } else {
    failed_step_ = std::string(step);
  }
  return status;
}

void StepRecorder::Record(std::string_view step, absl::Duration duration) {
  steps_.emplace_back(std::string(step), duration);
}

absl::Duration Percentile(std::vector<absl::Duration> values, double p) {
  if (values.empty()) return absl::ZeroDuration();
  std::sort(values.begin(), values.end());
  const double rank = std::ceil(p / 100.0 * static_cast<double>(values.size()));
  size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  index = std::min(index, values.size() - 1);
  return values[index];
}

std::string FailureReason(const absl::Status& status, const std::string& step,
                          const std::string& subject) {
  std::string message(status.message());
  if (!subject.empty()) message = absl::StrReplaceAll(message, {{subject, "<sn>"}});
  if (message.size() > kMaxReasonMessage) message = message.substr(0, kMaxReasonMessage) + "...";
  return absl::StrCat(step.empty() ? "flow" : step, ": ", absl::StatusCodeToString(status.code()),
                      ": ", message);
}

FleetSummary Summarize(const std::vector<TerminalOutcome>& outcomes, absl::Duration elapsed) {
  FleetSummary summary;
  summary.total = static_cast<int>(outcomes.size());
  summary.elapsed = elapsed;
  std::vector<std::string> order;
  std::map<std::string, std::vector<absl::Duration>> by_step;
  std::vector<absl::Duration> totals;
  for (const TerminalOutcome& o : outcomes) {
    if (o.status.ok()) {
      ++summary.succeeded;
      totals.push_back(o.total);
    } else {
      ++summary.failed;
      ++summary.failures_by_reason[FailureReason(o.status, o.failed_step, o.subject)];
    }
    if (o.begin_calls > 0) {
      summary.begin_calls += o.begin_calls;
      ++summary.begin_terminals;
    }
    for (const auto& [step, d] : o.steps) {
      auto [it, inserted] = by_step.try_emplace(step);
      if (inserted) order.push_back(step);
      it->second.push_back(d);
    }
  }
  auto stats = [](const std::vector<absl::Duration>& v) {
    LatencyStats s;
    s.count = v.size();
    s.p50 = Percentile(v, 50);
    s.p95 = Percentile(v, 95);
    s.p99 = Percentile(v, 99);
    s.max = v.empty() ? absl::ZeroDuration() : *std::max_element(v.begin(), v.end());
    return s;
  };
  for (const std::string& step : order)
    summary.step_latency.emplace_back(step, stats(by_step[step]));
  summary.step_latency.emplace_back(kTotalStep, stats(totals));
  const double seconds = absl::ToDoubleSeconds(elapsed);
  summary.terminals_per_second = seconds > 0 ? summary.succeeded / seconds : 0;
  return summary;
}

FleetSummary RunFleet(const FleetOptions& options, const TerminalFlow& flow) {
  const int count = std::max(0, options.count);
  const int workers = std::max(1, std::min(options.concurrency, std::max(count, 1)));
  std::vector<TerminalOutcome> outcomes(count);
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::atomic<int> failed{0};
  const absl::Duration start = SteadyNow();

  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;

  auto progress_line = [&](bool final) {
    const int d = done.load();
    const int f = failed.load();
    const double seconds = absl::ToDoubleSeconds(SteadyNow() - start);
    const double rate = seconds > 0 ? (d - f) / seconds : 0;
    if (options.progress_is_tty) {
      const int filled = count == 0 ? kBarWidth : d * kBarWidth / count;
      std::string bar(filled, '#');
      bar.resize(kBarWidth, '.');
      *options.progress << absl::StrFormat("\r[%s] %d/%d  ok %d  failed %d  %.1f/s", bar, d, count,
                                           d - f, f, rate)
                        << (final ? "\n" : "") << std::flush;
    } else {
      *options.progress << absl::StrFormat(
                               "fleet: %d/%d done (%d ok, %d failed), %.1f terminals/s\n", d, count,
                               d - f, f, rate)
                        << std::flush;
    }
  };

  std::thread reporter;
  if (options.progress != nullptr) {
    const absl::Duration interval =
        options.progress_is_tty ? kBarInterval : options.progress_interval;
    reporter = std::thread([&] {
      std::unique_lock<std::mutex> lock(mu);
      while (!cv.wait_for(lock, absl::ToChronoNanoseconds(interval), [&] { return finished; })) {
        progress_line(false);
      }
    });
  }

  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (int i = next.fetch_add(1); i < count; i = next.fetch_add(1)) {
        StepRecorder steps;
        const absl::Duration t0 = SteadyNow();
        absl::Status status = flow(i, steps);
        TerminalOutcome& o = outcomes[i];
        o.index = i;
        o.status = status;
        o.total = SteadyNow() - t0;
        o.failed_step = steps.failed_step();
        o.subject = steps.subject();
        o.steps = steps.steps();
        o.begin_calls = steps.begin_calls();
        if (!status.ok()) failed.fetch_add(1);
        done.fetch_add(1);
      }
    });
  }
  for (auto& t : pool) t.join();
  const absl::Duration elapsed = SteadyNow() - start;

  if (reporter.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu);
      finished = true;
    }
    cv.notify_all();
    reporter.join();
    progress_line(true);
  }
  return Summarize(outcomes, elapsed);
}

std::string FormatSummaryText(const FleetSummary& s) {
  std::string out = absl::StrFormat(
      "fleet summary: %d terminals, %d succeeded, %d failed in %.2f s (%.1f terminals/s)\n",
      s.total, s.succeeded, s.failed, absl::ToDoubleSeconds(s.elapsed), s.terminals_per_second);
  if (!s.failures_by_reason.empty()) {
    out += "failures by reason:\n";
    for (const auto& [reason, n] : s.failures_by_reason) {
      absl::StrAppendFormat(&out, "  %6d  %s\n", n, reason);
    }
  }
  if (s.kms_verified_installed >= 0) {
    absl::StrAppendFormat(&out, "verified at KMS (admin RPC): %d of %d terminals INSTALLED\n",
                          s.kms_verified_installed, s.total);
  }
  if (s.begin_terminals > 0) {
    absl::StrAppendFormat(
        &out, "BeginAuthentication calls per terminal: %.2f (%d calls, %d terminals)\n",
        static_cast<double>(s.begin_calls) / s.begin_terminals, s.begin_calls, s.begin_terminals);
  }
  absl::StrAppendFormat(&out, "%-16s %7s %10s %10s %10s %10s\n", "step latency", "count", "p50 ms",
                        "p95 ms", "p99 ms", "max ms");
  for (const auto& [step, l] : s.step_latency) {
    absl::StrAppendFormat(&out, "%-16s %7d %10.1f %10.1f %10.1f %10.1f\n", step, l.count, Ms(l.p50),
                          Ms(l.p95), Ms(l.p99), Ms(l.max));
  }
  return out;
}

std::string FormatSummaryJson(const FleetSummary& s) {
  std::string out = absl::StrFormat(
      "{\"total\":%d,\"succeeded\":%d,\"failed\":%d,\"elapsed_seconds\":%.3f,"
      "\"terminals_per_second\":%.3f,\"failures_by_reason\":{",
      s.total, s.succeeded, s.failed, absl::ToDoubleSeconds(s.elapsed), s.terminals_per_second);
  bool first = true;
  for (const auto& [reason, n] : s.failures_by_reason) {
    absl::StrAppend(&out, first ? "" : ",", Json(reason), ":", n);
    first = false;
  }
  out += "},";
  if (s.kms_verified_installed >= 0) {
    absl::StrAppendFormat(&out, "\"kms_verified_installed\":%d,", s.kms_verified_installed);
  }
  if (s.begin_terminals > 0) {
    absl::StrAppendFormat(&out, "\"begin_calls\":%d,\"begin_terminals\":%d,", s.begin_calls,
                          s.begin_terminals);
  }
  out += "\"steps\":{";
  first = true;
  for (const auto& [step, l] : s.step_latency) {
    absl::StrAppend(&out, first ? "" : ",", Json(step),
                    absl::StrFormat(":{\"count\":%d,\"p50_ms\":%.3f,\"p95_ms\":%.3f,"
                                    "\"p99_ms\":%.3f,\"max_ms\":%.3f}",
                                    l.count, Ms(l.p50), Ms(l.p95), Ms(l.p99), Ms(l.max)));
    first = false;
  }
  out += "}}\n";
  return out;
}

}  // namespace rkl::pos
