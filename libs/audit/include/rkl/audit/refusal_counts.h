#pragma once
// The table refusal_counts, where KMS and MTMS write what their RefusalTally counted
// (refusal_tally.h).

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/audit/refusal_tally.h"
#include "rkl/db/connection_pool.h"

namespace rkl::audit {

// The table refusal_counts (the same columns in each service's database; its migration
// states the CHECKs). One statement each.
absl::Status AddRefusalCounts(db::ConnectionPool& pool, const std::vector<RefusalCount>& counts);
absl::StatusOr<std::vector<RefusalCount>> ListRefusalCounts(db::ConnectionPool& pool);
// Deletes the counts of minutes that began before `before_ms`; returns how many rows.
absl::StatusOr<int64_t> PurgeRefusalCounts(db::ConnectionPool& pool, int64_t before_ms);

}  // namespace rkl::audit
