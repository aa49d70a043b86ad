#pragma once
// The KmsCore conformance suite (rkl/testing/conformance.h): KmsCore against FakeHsm (real
// rkl crypto) and an independent test terminal, run once per KmsRepository implementation.
// The cases are in kms_core_suite.cc; kms_core_memory_test.cc instantiates them over the
// in-memory repository (kms_test), kms_core_pgtest.cc over PostgreSQL (kms_pgtest).

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "fake_hsm.h"
#include "kms_core.h"
#include "kms_repository.h"
#include "rkl/common/retry_delay.h"
#include "rkl/metrics/metrics.h"
#include "rkl/testing/conformance.h"
#include "test_terminal.h"
#include "tr34_fixtures.h"

namespace rkl::kms::testing {

// One repository for one test, with whatever keeps it alive (a database, a pool).
class RepositoryUnderTest {
 public:
  virtual ~RepositoryUnderTest() = default;
  virtual KmsRepository& repository() = 0;
};

inline constexpr char kMtms[] = "mtms";

class KmsCoreSuite : public rkl::testing::ConformanceTest<RepositoryUnderTest> {
 protected:
  void SetUp() override {
    repository_ = MakeImplementation();
    ASSERT_NE(repository_, nullptr);
    hsm_ = std::make_unique<FakeHsm>(keys_);
    core_ = std::make_unique<KmsCore>(
        repository_->repository(), *hsm_,
        [this] {
          absl::MutexLock lock(&clock_mu_);
          return now_;
        },
        crypto::FillRandom,
        KmsCoreOptions{.pk_index = FakeHsm::kPkIndex, .mak_index = FakeHsm::kMakIndex});
  }

  // A core on the same repository, HSM and clock with other options.
  void UseOptions(KmsCoreOptions options) {
    options.pk_index = FakeHsm::kPkIndex;
    options.mak_index = FakeHsm::kMakIndex;
    core_ = std::make_unique<KmsCore>(
        repo(), *hsm_,
        [this] {
          absl::MutexLock lock(&clock_mu_);
          return now_;
        },
        crypto::FillRandom, options);
  }

  // ---- TR-34 (kms_core_tr34_suite.cc) ----
  // A core with TR-34 configured: FakeCa as kdh-ca, KrdCa() trusted by KMS and the HSM.
  void UseTr34(KmsCoreOptions options = {}) {
    if (ca_ == nullptr) {
      ca_ = std::make_unique<FakeCa>([this] {
        absl::MutexLock lock(&clock_mu_);
        return now_;
      });
    }
    options.pk_index = FakeHsm::kPkIndex;
    options.mak_index = FakeHsm::kMakIndex;
    options.krd_cas = {KrdCa().cert};
    hsm_->SetTrustedKrdCas({KrdCa().cert});
    core_ = std::make_unique<KmsCore>(
        repo(), *hsm_,
        [this] {
          absl::MutexLock lock(&clock_mu_);
          return now_;
        },
        crypto::FillRandom, options, ca_.get());
  }
  int64_t NowS() {
    absl::MutexLock lock(&clock_mu_);
    return absl::ToUnixSeconds(now_);
  }
  // The KRD CA KMS trusts, and one it does not (made once per process).
  static const Tr34Party& KrdCa() {
    static const Tr34Party* ca = new Tr34Party(NewTr34Ca("rkl test KRD CA", 1'750'000'000));
    return *ca;
  }
  static const Tr34Party& UntrustedKrdCa() {
    static const Tr34Party* ca = new Tr34Party(NewTr34Ca("rkl test KRD CA", 1'750'000'000));
    return *ca;
  }
  static TestKrd NewKrd(const std::string& sn, const Tr34Party& ca = KrdCa(),
                        crypto::KeyUsage usage = crypto::KeyUsage::kKeyEncipherment) {
    return TestKrd{NewTr34EndEntity(sn, usage, ca, 1'750'000'000), {}};
  }

  void Advance(absl::Duration d) {
    absl::MutexLock lock(&clock_mu_);
    now_ += d;
  }

  KmsRepository& repo() { return repository_->repository(); }

  absl::StatusOr<SubmitResult> Submit(const TestTerminal& t) {
    absl::StatusOr<Bytes> ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
    EXPECT_TRUE(ctk.ok()) << ctk.status();
    return core_->SubmitTransportKey(kMtms, t.sn(), *ctk, "sub-" + t.sn());
  }

  // Steps 1–3 from the terminal's side; returns the session and Crnd2.
  struct Opened {
    std::string session_id;
    Bytes crnd2;
  };
  absl::StatusOr<Opened> Open(TestTerminal& t) {
    Bytes rnd1 = t.NewRnd1();
    absl::StatusOr<BeginResult> begun = core_->BeginAuthentication(t.sn(), rnd1);
    if (!begun.ok()) return begun.status();
    EXPECT_EQ(begun->expires_at_ms, absl::ToUnixMillis(now_ + absl::Seconds(60)));
    absl::StatusOr<Bytes> crnd2 = t.AnswerChallenge(begun->crnd1, begun->rnd2);
    if (!crnd2.ok()) return crnd2.status();
    return Opened{begun->session_id, *crnd2};
  }

  // Authenticate and take delivery; returns the session id.
  std::string Deliver(TestTerminal& t) {
    absl::StatusOr<Opened> opened = Open(t);
    EXPECT_TRUE(opened.ok()) << opened.status();
    if (!opened.ok()) return "";
    absl::StatusOr<DeliveryResult> d =
        core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
    EXPECT_TRUE(d.ok()) << d.status();
    if (!d.ok()) return "";
    absl::Status accepted = t.AcceptKeyBlock(d->key_block, d->tmk_kcv);
    EXPECT_TRUE(accepted.ok()) << accepted;
    return opened->session_id;
  }

  void Install(TestTerminal& t) {
    ASSERT_TRUE(Submit(t).ok());
    std::string session = Deliver(t);
    ASSERT_FALSE(session.empty());
    absl::StatusOr<Bytes> proof = t.InstallProof();
    ASSERT_TRUE(proof.ok());
    absl::StatusOr<TerminalState> state = core_->ConfirmInstallation(session, t.sn(), *proof);
    ASSERT_TRUE(state.ok()) << state.status();
    ASSERT_EQ(*state, TerminalState::kInstalled);
  }

  TerminalRecord Terminal(const std::string& sn) {
    absl::StatusOr<TerminalRecord> t = core_->GetTerminal(sn);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : TerminalRecord{};
  }

  std::vector<AuditEntry> AuditOf(const std::string& sn) {
    auto page = core_->ListAudit(sn, 1000, "");
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? page->records : std::vector<AuditEntry>{};
  }

  int CountAudit(const std::string& sn, const std::string& action, const std::string& result) {
    int n = 0;
    for (const AuditEntry& e : AuditOf(sn)) {
      if (e.action == action && e.result == result) ++n;
    }
    return n;
  }

  // Wrong Crnd2 for a fresh session: one failure; then the clock waits out the back-off
  // the refusal names.
  absl::Status FailOnce(TestTerminal& t) {
    absl::StatusOr<Opened> opened = Open(t);
    if (!opened.ok()) return opened.status();
    opened->crnd2[0] ^= 0x01;
    absl::Status s =
        core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).status();
    if (std::optional<absl::Duration> wait = RetryDelay(s)) Advance(*wait);
    return s;
  }

  // The value of a counter of metrics_ (the cores a test makes with
  // .metrics = KmsMetrics::Register(metrics_) count there).
  double Counted(std::string_view name, const std::map<std::string, std::string>& labels = {}) {
    return metrics::SampleValue(metrics_.Collect(), name, labels).value_or(-1);
  }

  metrics::Metrics metrics_;  // before the cores that count in it
  TransportKeys keys_ = TransportKeys::Generate();
  std::unique_ptr<RepositoryUnderTest> repository_;
  std::unique_ptr<FakeHsm> hsm_;
  std::unique_ptr<KmsCore> core_;
  std::unique_ptr<FakeCa> ca_;
  absl::Mutex clock_mu_;
  absl::Time now_ = absl::FromUnixSeconds(1'750'000'000);
};

}  // namespace rkl::kms::testing
