#pragma once
// MemoryRefusalCounts: refusal_counts kept in memory, with the table's semantics (rows of
// one key add up; the purge deletes minutes that began before a time), for the in-memory
// repositories of KMS and MTMS. Thread-safe.

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "rkl/audit/refusal_tally.h"

namespace rkl::testing {

class MemoryRefusalCounts {
 public:
  void Add(const std::vector<audit::RefusalCount>& counts) {
    absl::MutexLock lock(&mu_);
    for (const audit::RefusalCount& c : counts) {
      audit::RefusalCount& row = rows_[{c.interval_start_ms, c.sn, c.source, c.action, c.reason}];
      const int64_t before = row.count;
      row = c;
      row.count += before;
    }
  }

  std::vector<audit::RefusalCount> List() const {
    absl::MutexLock lock(&mu_);
    std::vector<audit::RefusalCount> out;
    for (const auto& [key, row] : rows_) out.push_back(row);
    return out;
  }

  int64_t Purge(int64_t before_ms) {
    absl::MutexLock lock(&mu_);
    return static_cast<int64_t>(std::erase_if(
        rows_, [&](const auto& r) { return r.second.interval_start_ms < before_ms; }));
  }

 private:
  using Key = std::tuple<int64_t, std::string, std::string, std::string, std::string>;
  mutable absl::Mutex mu_;
  std::map<Key, audit::RefusalCount> rows_ ABSL_GUARDED_BY(mu_);
};

}  // namespace rkl::testing
