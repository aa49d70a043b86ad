#pragma once
// In-memory KeyRecordStore, AuditLog and Clock for unit tests of HsmCore. Transact() runs one
// unit of work at a time under a mutex and restores the previous state when fn fails, so it
// has the all-or-nothing behaviour of the PostgreSQL store; the live-key and label uniqueness
// rules of the schema are enforced as ALREADY_EXISTS. Like PgKeyRecordStore it holds rows
// only: keys and components are sealed by the KeyBarrier above it, so tests can tamper with
// the rows (state()) exactly as with the tables.

#include <atomic>
#include <map>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "audit_log.h"
#include "hsm_core.h"
#include "key_barrier.h"
#include "key_record_store.h"
#include "rkl/testing/fake_clock.h"

namespace rkl::hsm::testing {

class FakeAuditLog : public AuditLog {
 public:
  absl::Status Append(const AuditEvent& event) override;
  absl::StatusOr<AuditVerification> Verify(const AuditAnchor* anchor) override;
  // An anchor of the number of records so far (no MAC: nothing checks it here).
  absl::StatusOr<AuditAnchor> Anchor() override;
  std::vector<AuditEvent> events() const;
  void AppendCommitted(const std::vector<AuditEvent>& events);

 private:
  mutable absl::Mutex mu_;
  std::vector<AuditEvent> events_ ABSL_GUARDED_BY(mu_);
};

class FakeKeyRecordStore : public KeyRecordStore {
 public:
  explicit FakeKeyRecordStore(FakeAuditLog& audit) : audit_(audit) {}
  absl::Status Transact(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) override;

  struct StoredComponent {
    SealedComponent sealed;
    std::string kcv;
  };
  struct State {
    uint64_t next_index = 1;
    std::map<uint64_t, KeyRecord> keys;
    std::map<std::string, Ceremony> ceremonies;
    std::map<std::string, std::vector<StoredComponent>> components;
  };

  // Direct access for assertions (and for simulating tampering).
  State& state() { return state_; }
  size_t component_rows() const;

 private:
  friend class FakeKeyRecordTransaction;
  absl::Mutex mu_;
  FakeAuditLog& audit_;
  State state_;
};

using FakeClock = rkl::testing::FakeClock;

// A fixed LMK for the unit tests' KeyBarrier (and `seed` for another one).
crypto::SecretBytes TestLmk(uint8_t seed = 1);

// A deterministic RandomSource (a counter-driven stream), so tests are reproducible.
crypto::RandomSource DeterministicRandom(uint64_t seed);

}  // namespace rkl::hsm::testing
