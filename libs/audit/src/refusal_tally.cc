#include "rkl/audit/refusal_tally.h"

#include <algorithm>

namespace rkl::audit {
namespace {

std::string OrAny(std::string_view v, size_t max) {
  return v.empty() || v.size() > max ? std::string(kAny) : std::string(v);
}

}  // namespace

void RefusalTally::Count(int64_t now_ms, std::string_view sn, std::string_view source,
                         std::string_view action, const absl::Status& refusal) {
  const int64_t minute =
      now_ms - (now_ms % kIntervalMs + kIntervalMs) % kIntervalMs;  // floor, also before 1970
  Identity id{OrAny(sn, 32), OrAny(source, kMaxSourceBytes), std::string(action),
              refusal.ok() ? "OK" : absl::StatusCodeToString(refusal.code())};
  absl::MutexLock lock(&mu_);
  if (minute != minute_) {
    minute_ = minute;
    seen_this_minute_.clear();
  }
  if (!seen_this_minute_.contains(id)) {
    if (seen_this_minute_.size() >= max_keys_) {
      std::get<0>(id) = kAny;
      std::get<1>(id) = kAny;
    }
    seen_this_minute_.insert(id);
  }
  auto& [id_sn, id_source, id_action, id_reason] = id;
  Key key{minute, id_sn, id_source, id_action, id_reason};
  auto it = pending_.find(key);
  if (it == pending_.end()) {
    it = pending_
             .try_emplace(std::move(key), RefusalCount{.interval_start_ms = minute,
                                                       .sn = id_sn,
                                                       .source = id_source,
                                                       .action = id_action,
                                                       .reason = id_reason,
                                                       .count = 0,
                                                       .last_detail = {}})
             .first;
  }
  ++it->second.count;
  const absl::string_view message = refusal.message();
  it->second.last_detail.assign(message.data(), std::min(message.size(), kMaxDetailBytes));
}

absl::StatusOr<int64_t> RefusalTally::Flush(const Writer& write) {
  std::map<Key, RefusalCount> taken;
  {
    absl::MutexLock lock(&mu_);
    taken.swap(pending_);
  }
  if (taken.empty()) return 0;
  std::vector<RefusalCount> counts;
  counts.reserve(taken.size());
  int64_t total = 0;
  for (const auto& [key, count] : taken) {
    total += count.count;
    counts.push_back(count);
  }
  if (absl::Status s = write(counts); !s.ok()) {
    absl::MutexLock lock(&mu_);
    for (auto& [key, count] : taken) {
      auto [it, inserted] = pending_.emplace(key, count);
      if (!inserted) it->second.count += count.count;
    }
    return s;
  }
  return total;
}

}  // namespace rkl::audit
