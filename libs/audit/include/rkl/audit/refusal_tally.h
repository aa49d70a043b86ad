#pragma once
// Refusal counts: the refusals of public calls (terminal and operator-terminal RPCs) that
// happen before any key operation are counted per minute instead of each being appended
// to a service's audit, so junk traffic cannot grow a table without bound (docs/kms.md and
// docs/mtms.md, "Bounded state"). KMS and MTMS share the tally; refusal_counts.h writes
// it to the table.
//
// Guarantees of RefusalTally:
//  - a count is keyed by (minute, sn, source, action, reason); `action` and `reason` come
//    from a service's short fixed lists, `sn` and `source` from the call;
//  - at most `max_keys_per_interval` distinct (sn, source, action, reason) keys per minute:
//    later keys of that minute are counted under sn = source = "*", so a minute adds at
//    most max_keys_per_interval + (actions × reasons) rows, however many SNs or addresses
//    the traffic uses;
//  - Flush hands every count taken since the last flush to a writer; if the writer fails,
//    the counts are kept (merged with newer ones) for the next flush. An UNKNOWN outcome may
//    then count some twice: counters are evidence of volume, not the audit;
//  - time comes from the caller (`now_ms`).
// Thread-safe.

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace rkl::audit {

// The sn or source of a count that stands for any (unknown or too many distinct ones).
inline constexpr char kAny[] = "*";

struct RefusalCount {
  int64_t interval_start_ms = 0;  // the minute's start, Unix ms
  std::string sn;                 // an SN, or kAny
  std::string source;             // the caller's address, or kAny
  std::string action;
  std::string reason;  // a status code name
  int64_t count = 0;
  std::string last_detail;  // the latest refusal's message, at most kMaxDetailBytes
};

class RefusalTally {
 public:
  static constexpr int64_t kIntervalMs = 60'000;
  static constexpr size_t kDefaultMaxKeysPerInterval = 1024;
  static constexpr size_t kMaxDetailBytes = 256;
  static constexpr size_t kMaxSourceBytes = 64;

  explicit RefusalTally(size_t max_keys_per_interval = kDefaultMaxKeysPerInterval)
      : max_keys_(max_keys_per_interval) {}

  // Counts one refusal. `sn` is a valid SN (protocol::ValidateSn) or empty; an empty `sn`
  // or an empty or over-long `source` is counted as kAny.
  void Count(int64_t now_ms, std::string_view sn, std::string_view source, std::string_view action,
             const absl::Status& refusal);

  using Writer = std::function<absl::Status(const std::vector<RefusalCount>&)>;
  // Writes the counts taken since the last flush (nothing when there are none) and returns
  // how many refusals they hold; on failure they are kept for the next flush.
  absl::StatusOr<int64_t> Flush(const Writer& write);

 private:
  using Key = std::tuple<int64_t, std::string, std::string, std::string, std::string>;
  using Identity = std::tuple<std::string, std::string, std::string, std::string>;

  const size_t max_keys_;
  absl::Mutex mu_;
  std::map<Key, RefusalCount> pending_ ABSL_GUARDED_BY(mu_);
  int64_t minute_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<Identity> seen_this_minute_ ABSL_GUARDED_BY(mu_);
};

}  // namespace rkl::audit
