#pragma once
// PgServiceRepository: the part of a service's PostgreSQL repository that lives in
// libs/audit's tables (KMS, MTMS) — the service's audit chain, and the refusal counts its
// repository interface declares (AddRefusalCounts, ListRefusalCounts, PurgeRefusalCounts,
// one statement each, refusal_counts.h). The service's repository derives from it and
// implements the rest of `Repository`. Thread-safe as the pool is; the pool is not owned
// and must outlive the repository.

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/audit/audit_log.h"
#include "rkl/audit/refusal_counts.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace rkl::audit {

template <typename Repository>
class PgServiceRepository : public Repository {
 public:
  // Every audit entry is written as a pending record of the chain `spec`, MACed under
  // `audit_key` (audit.mac_key_file).
  PgServiceRepository(db::ConnectionPool& pool, crypto::SecretBytes audit_key,
                      const ChainSpec& spec)
      : pool_(pool), audit_(pool, std::move(audit_key), spec) {}

  // The chain: its sealer, verification and anchors (main() starts and stops them).
  PgAuditLog& audit_log() { return audit_; }

  absl::Status AddRefusalCounts(const std::vector<RefusalCount>& counts) override {
    return audit::AddRefusalCounts(pool_, counts);
  }
  absl::StatusOr<std::vector<RefusalCount>> ListRefusalCounts() override {
    return audit::ListRefusalCounts(pool_);
  }
  absl::StatusOr<int64_t> PurgeRefusalCounts(int64_t before_ms) override {
    return audit::PurgeRefusalCounts(pool_, before_ms);
  }

 protected:
  db::ConnectionPool& pool_;
  PgAuditLog audit_;
};

}  // namespace rkl::audit
