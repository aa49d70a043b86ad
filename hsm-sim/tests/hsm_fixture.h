#pragma once
// Test support for the PostgreSQL/gRPC suites: a real rkl-hsm instance (HsmDaemon) on a
// fresh database, with its own LMK file (mode 0600), serving mTLS on 127.0.0.1:0 with a
// TestPki certificate; clients for any identity; and helpers that run raw SQL against the
// instance's database (to tamper, or to dump it).

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "fake_key_store.h"
#include "hsm_daemon.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/test_database.h"
#include "rkl/testing/test_pki.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "test_operator.h"

namespace rkl::hsm::testing {

inline constexpr absl::Duration kRpcTimeout = absl::Seconds(120);

struct InstanceOptions {
  std::string hsm_id = "hsm-kms";
  HsmRole role = HsmRole::kKms;
  std::string operational_identity = "kms";
  bool fail_self_test = false;
  size_t key_cache_size = 256;
  // The daemon's background sealer. Off by default: it moves records from
  // hsm_audit_pending into the chain whenever the scheduler lets it, so a test that counts
  // either table would depend on timing. Tests seal where they mean to (VerifyAuditChain,
  // daemon().audit_log().Seal()); a test of the sealer itself sets an interval.
  absl::Duration audit_seal_interval = absl::ZeroDuration();
  // The daemon's audit anchor file (empty: none) and interval (by clock()).
  std::string anchor_file = "";
  absl::Duration anchor_interval = absl::ZeroDuration();
  // TR-34: the daemon's tr34.krd_ca_files (none: TR-34 not configured).
  std::vector<std::string> krd_ca_files = {};
};

class HsmInstance {
 public:
  // A new database and LMK.
  static absl::StatusOr<std::unique_ptr<HsmInstance>> Create(rkl::testing::TestPki& pki,
                                                             InstanceOptions options = {});
  ~HsmInstance();

  // Starts (or restarts) the daemon on this instance's database with `lmk_file`
  // (default: its own), returning the start-up error if any.
  absl::Status Start(const std::string& lmk_file = "");
  void Stop();

  // Thread-safe.
  std::unique_ptr<v1::Hsm::Stub> Stub(const std::string& identity);
  std::shared_ptr<grpc::Channel> Channel(const std::string& identity);

  HsmDaemon& daemon() { return *daemon_; }
  // The operator-ca this instance trusts (role mtms) and one of its operator cards.
  const TestOperator& operator_card() const { return operator_; }
  FakeClock& clock() { return clock_; }
  // The database as the cluster superuser (for tampering and inspection), and as the role
  // the daemon runs as.
  const std::string& dsn() const { return db_.dsn(); }
  const std::string& runtime_dsn() const { return db_.runtime_dsn(); }
  const std::string& lmk_file() const { return lmk_file_; }
  const crypto::SecretBytes& lmk() const { return lmk_; }
  // Writes another LMK file (mode 0600) next to the real one and returns its path.
  std::string WriteOtherLmkFile(const crypto::SecretBytes& lmk);

  // Runs SQL outside the daemon (superuser); for tampering and inspection.
  void Sql(const std::string& statement);
  // Every table of the database as pg_dump --data-only text, followed by the raw bytes of
  // every bytea value (so raw forms can be searched too).
  std::string DumpDatabase();

 private:
  HsmInstance(rkl::testing::TestPki& pki, rkl::testing::TestDatabase db, InstanceOptions options)
      : pki_(pki), db_(std::move(db)), options_(std::move(options)) {}

  rkl::testing::TestPki& pki_;
  rkl::testing::TestDatabase db_;
  InstanceOptions options_;
  std::string dir_;
  std::string lmk_file_;
  crypto::SecretBytes lmk_;
  TestOperator operator_ = TestOperator::Create();
  FakeClock clock_{absl::ToUnixMillis(absl::Now())};
  absl::Mutex tls_mu_;  // TestPki is single-threaded; tests open channels from threads
  std::map<std::string, rpc::TlsFiles> tls_ ABSL_GUARDED_BY(tls_mu_);
  std::unique_ptr<HsmDaemon> daemon_;
};

// A test with an HsmInstance of its own (default options) and the TestPki it trusts.
class HsmInstanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = rkl::testing::TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    auto hsm = HsmInstance::Create(*pki_);
    ASSERT_TRUE(hsm.ok()) << hsm.status();
    hsm_ = *std::move(hsm);
  }

  std::unique_ptr<rkl::testing::TestPki> pki_;
  std::unique_ptr<HsmInstance> hsm_;
};

// A unary call with a deadline, as absl::StatusOr.
template <typename Req, typename Resp>
absl::StatusOr<Resp> Call(v1::Hsm::Stub& stub,
                          grpc::Status (v1::Hsm::Stub::*method)(grpc::ClientContext*, const Req&,
                                                                Resp*),
                          const Req& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoSeconds(kRpcTimeout));
  Resp response;
  grpc::Status s = (stub.*method)(&ctx, request, &response);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return response;
}

// What the first custodian sends to open a ceremony for a key of `type` labelled `label`,
// of `component_count` components.
v1::BeginCeremonyRequest BeginRequest(const std::string& label, v1::KeyType type,
                                      uint32_t component_count = 2);

// What a custodian sends to the ceremony `begun` opened: `component`, encrypted to the
// ceremony key as rklctl does.
v1::AddComponentRequest ComponentRequest(const v1::BeginCeremonyResponse& begun,
                                         const crypto::SecretBytes& component);

// What the first custodian sends to complete the ceremony `begun` opened.
v1::CompleteCeremonyRequest CompleteRequest(const v1::BeginCeremonyResponse& begun);

struct CeremonyResult {
  uint64_t key_index = 0;
  std::string kcv;
};
// Runs a whole ceremony over gRPC: begin as the first custodian, each custodian adds its
// component (encrypted to the ceremony key, as rklctl does), the first completes.
absl::StatusOr<CeremonyResult> RunCeremony(
    HsmInstance& hsm, v1::KeyType type, const std::string& label,
    const std::vector<std::pair<std::string, crypto::SecretBytes>>& custodian_components);

// Inserts a key record straight into the instance's key store (no HSM command): random
// material of `algorithm`, bound to `sn`, for tests of the store itself. Returns its index.
// `material` defaults to a fresh random key.
uint64_t InsertTestKey(HsmInstance& hsm, KeyType type, const std::string& sn,
                       crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128,
                       uint64_t kek_index = 0, const crypto::SecretBytes* material = nullptr);
struct TerminalKeys {
  uint64_t tek = 0, auk = 0;
};
struct TestTerminal;
// A terminal's TEK and AUK as an import would have stored them (straight into the store).
TerminalKeys InsertTerminalKeys(HsmInstance& hsm, const TestTerminal& t);

// Every base64 and hex spelling of `secret` that can appear in a longer encoded text, plus
// its raw bytes.
std::vector<std::string> LeakPatterns(std::span<const uint8_t> secret);

}  // namespace rkl::hsm::testing
