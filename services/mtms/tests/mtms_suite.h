#pragma once
// The conformance suite of MtmsCore + Forwarder (rkl/testing/conformance.h), run against
// every MtmsRepository. The cases are in mtms_suite.cc; mtms_core_test.cc instantiates them
// over the in-memory repository (mtms_test), mtms_core_pgtest.cc over PostgreSQL
// (mtms_pgtest).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "mtms_batchers.h"
#include "mtms_core.h"
#include "mtms_forwarder.h"
#include "mtms_operator_trust.h"
#include "rkl/crypto/random.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/testing/conformance.h"
#include "test_support.h"

namespace rkl::mtms::testing {

using ::testing::HasSubstr;
using ::testing::Not;

#define RKL_ASSERT_OK(expr)                      \
  do {                                           \
    auto rkl_s_ = (expr);                        \
    ASSERT_TRUE(rkl_s_.ok()) << rkl_s_.status(); \
  } while (0)

inline absl::Status StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// The storage of one test.
class MtmsBackend {
 public:
  virtual ~MtmsBackend() = default;
  // i = 0 is the main one; others share its storage (PostgreSQL: separate pools, as
  // replicas or a restarted process would have).
  virtual MtmsRepository& Replica(int i) = 0;
  // Replaces the stored package of a submission, bypassing the repository's rules.
  virtual void OverwritePackage(const std::string& submission_id, const Bytes& package) = 0;
};

class MtmsSuite : public rkl::testing::ConformanceTest<MtmsBackend> {
 protected:
  void SetUp() override {
    backend_ = MakeImplementation();
    ASSERT_NE(backend_, nullptr);
    authority_ = TestAuthority::Create(clock_);
    ca_ = std::make_unique<FakeCa>(*authority_);
    trust_ = std::make_unique<OperatorTrust>(*ca_, clock_, absl::Minutes(5));
    core_ = MakeCore(backend_->Replica(0));
    forwarder_ = MakeForwarder(backend_->Replica(0), "replica-0");
    alice_.emplace(authority_->IssueOperator("alice"));
    auto key = core_->ProvisionWorkKey(false, 0, "admin:test");
    ASSERT_TRUE(key.ok()) << key.status();
    auto work = core_->GetWorkCertificate();
    ASSERT_TRUE(work.ok()) << work.status();
    work_ = *work;
  }

  std::unique_ptr<MtmsCore> MakeCore(MtmsRepository& repository) {
    return std::make_unique<MtmsCore>(repository, hsm_, *ca_, *trust_, clock_, MtmsCoreOptions{});
  }
  std::unique_ptr<Forwarder> MakeForwarder(MtmsRepository& repository, std::string replica) {
    return std::make_unique<Forwarder>(repository, hsm_, kms_, *trust_, clock_,
                                       ForwarderOptions{.replica_id = std::move(replica),
                                                        .pk_index = hsm_.pk_index(),
                                                        .mak_index = hsm_.mak_index(),
                                                        .batch_size = 4,
                                                        .initial_backoff = absl::Seconds(1),
                                                        .max_backoff = absl::Seconds(8),
                                                        .lease = absl::Minutes(2)});
  }

  // A forwarder on replica 0 with its own peers, batch size and workers; its background
  // workers (if started) claim once at start and then only when woken or after a full claim.
  std::unique_ptr<Forwarder> MakeForwarderWith(HsmPort& hsm, KmsPort& kms, int batch_size,
                                               int workers) {
    return std::make_unique<Forwarder>(backend_->Replica(0), hsm, kms, *trust_, clock_,
                                       ForwarderOptions{.replica_id = "replica-w",
                                                        .pk_index = hsm_.pk_index(),
                                                        .mak_index = hsm_.mak_index(),
                                                        .batch_size = batch_size,
                                                        .workers = workers,
                                                        .interval = absl::Hours(1),
                                                        .initial_backoff = absl::Seconds(1),
                                                        .max_backoff = absl::Seconds(8),
                                                        .lease = absl::Minutes(2)});
  }

  // Claims the due rows on replica 0 as a replica that then crashes (the claim token
  // kCrashedReplica, leased for a minute from now).
  static constexpr char kCrashedReplica[] = "crashed-replica";
  absl::StatusOr<std::vector<SubmissionRecord>> ClaimAsCrashedReplica() {
    const int64_t now = clock_.NowUnixMs();
    return backend_->Replica(0).ClaimDue(kCrashedReplica, now, now + 60000, 10);
  }

  // Submits `n` packages with SNs prefix0, prefix1, ...; returns their submission ids.
  std::vector<std::string> SubmitMany(const std::string& prefix, int n) {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) {
      auto r = Submit({.sn = absl::StrCat(prefix, i)});
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) ids.push_back(r->submission_id);
    }
    return ids;
  }

  // Replaces the stored package of `id` by one with another created_at, so its signature no
  // longer verifies (claim 4).
  void TamperWith(const std::string& id) {
    v1::TransportKeyPackage p;
    ASSERT_TRUE(p.ParseFromString(std::string(AsString(Row(id).package))));
    p.set_created_at_unix_ms(p.created_at_unix_ms() + 1);
    const std::string tampered = p.SerializeAsString();
    backend_->OverwritePackage(id, Bytes(tampered.begin(), tampered.end()));
  }

  absl::StatusOr<SubmitReceipt> Submit(const PackageSpec& spec = {},
                                       const OperatorCard* card = nullptr) {
    return core_->SubmitTransportKey(MakeSubmission(spec, card ? *card : *alice_, work_, clock_),
                                     "");
  }

  SubmissionRecord Row(const std::string& id) {
    auto row = backend_->Replica(0).GetSubmission(id);
    EXPECT_TRUE(row.ok() && row->has_value());
    return row.ok() && row->has_value() ? **row : SubmissionRecord{};
  }

  PassResult Pass(Forwarder* forwarder = nullptr) {
    auto pass = (forwarder ? forwarder : forwarder_.get())->RunPass();
    EXPECT_TRUE(pass.ok()) << pass.status();
    return pass.ok() ? *pass : PassResult{};
  }

  std::unique_ptr<MtmsBackend> backend_;
  FakeClock clock_;
  std::unique_ptr<TestAuthority> authority_;
  std::unique_ptr<FakeCa> ca_;
  FakeHsm hsm_;
  FakeKms kms_;
  std::unique_ptr<OperatorTrust> trust_;
  std::unique_ptr<MtmsCore> core_;
  std::unique_ptr<Forwarder> forwarder_;
  std::optional<OperatorCard> alice_;
  WorkCertificateBundle work_;
};

}  // namespace rkl::mtms::testing
