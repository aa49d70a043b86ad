// rkl-mtms over real gRPC with mTLS (TestPki service certificates) and real PostgreSQL:
// the MTMS service in-process on 127.0.0.1:0, its peers (HSM #1, CA, KMS) as in-process gRPC
// test servers, so the gRPC ports, the adapter's authorization and status mapping, and the
// KMS-outage recovery across an MTMS restart are all exercised end to end.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "mtms_batchers.h"
#include "mtms_core.h"
#include "mtms_db_roles.h"
#include "mtms_forwarder.h"
#include "mtms_grpc_ports.h"
#include "mtms_grpc_service.h"
#include "mtms_operator_trust.h"
#include "mtms_pg_repository.h"
#include "mtms_process.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/migration.h"
#include "rkl/mtms/migrations.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/test_pki.h"
#include "rkl/v1/mtms.grpc.pb.h"
#include "test_support.h"

namespace rkl::mtms::testing {
namespace {

using rkl::testing::LoopbackChannel;
using ::testing::HasSubstr;

constexpr absl::Duration kRpcTimeout = absl::Seconds(20);

std::unique_ptr<rpc::Server> StartServer(
    const std::string& address, const rpc::TlsFiles& tls, grpc::Service* service,
    rpc::ClientCertMode mode = rpc::ClientCertMode::kRequireAndVerify) {
  auto server = rpc::Server::Start(
      {.listen_address = address, .tls = tls, .client_cert_mode = mode}, {service});
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

class MtmsGrpcTest : public rkl::testing::PgFixture {
 protected:
  MtmsGrpcTest()
      : PgFixture({.migrations = rkl::mtms::Migrations(), .grants = kMtmsRuntimeGrants}) {}

  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    auto pki = rkl::testing::TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    for (const char* id : {"mtms", "admin:alice", "hsm-mtms", "ca", "kms"}) {
      auto files = pki_->Issue(id);
      ASSERT_TRUE(files.ok()) << files.status();
      tls_[id] = *files;
    }
    hsm_service_ = std::make_unique<TestHsmService>(fakes_.hsm, "mtms");
    ca_service_ = std::make_unique<TestCaService>(fakes_.ca);
    kms_service_ = std::make_unique<TestKmsService>(fakes_.kms);
    hsm_server_ = StartServer("127.0.0.1:0", tls_["hsm-mtms"], hsm_service_.get());
    ca_server_ = StartServer("127.0.0.1:0", tls_["ca"], ca_service_.get());
    kms_server_ = StartServer("127.0.0.1:0", tls_["kms"], kms_service_.get());
    ASSERT_TRUE(hsm_server_ && ca_server_ && kms_server_);
    kms_port_ = kms_server_->port();
    mtms_ = StartMtms("replica-0");
    operator_.emplace(fakes_.authority->IssueOperator("alice"));
  }

  std::unique_ptr<MtmsProcess> StartMtms(const std::string& replica,
                                         rpc::PublicCallLimits limits = {}) {
    return std::make_unique<MtmsProcess>(
        fakes_.clock, MtmsProcessOptions{.dsn = database().runtime_dsn(),
                                         .tls = tls_["mtms"],
                                         .hsm_port = hsm_server_->port(),
                                         .ca_port = ca_server_->port(),
                                         .kms_port = kms_port_,
                                         .forwarder = {.replica_id = replica,
                                                       .pk_index = fakes_.hsm.pk_index(),
                                                       .mak_index = fakes_.hsm.mak_index(),
                                                       .batch_size = 2,
                                                       .interval = absl::Milliseconds(20)},
                                         .limits = std::move(limits)});
  }

  std::unique_ptr<v1::Mtms::Stub> Stub(const rpc::TlsFiles& tls, MtmsProcess* mtms = nullptr) {
    return v1::Mtms::NewStub(
        LoopbackChannel((mtms ? mtms : mtms_.get())->port(), tls, "localhost"));
  }
  std::unique_ptr<v1::Mtms::Stub> Admin(MtmsProcess* mtms = nullptr) {
    return Stub(tls_["admin:alice"], mtms);
  }
  std::unique_ptr<v1::Mtms::Stub> Anonymous() { return Stub(pki_->Anonymous()); }

  absl::StatusOr<v1::WorkKey> Provision(bool rotate = false) {
    v1::ProvisionWorkKeyRequest req;
    req.set_rotate(rotate);
    v1::WorkKey resp;
    auto ctx = rpc::MakeClientContext(kRpcTimeout);
    grpc::Status s = Admin()->ProvisionWorkKey(ctx.get(), req, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<WorkCertificateBundle> FetchWorkCertificate(MtmsProcess* mtms = nullptr) {
    v1::GetWorkCertificateResponse resp;
    auto ctx = rpc::MakeClientContext(kRpcTimeout);
    grpc::Status s = Stub(pki_->Anonymous(), mtms)->GetWorkCertificate(ctx.get(), {}, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return WorkCertificateBundle{resp.work_certificate_pem(), resp.terminal_root_pem(),
                                 resp.serial_hex()};
  }

  // The gRPC status as received, for the details a converted status would drop; the
  // response goes to `resp` when given.
  grpc::Status SubmitOverGrpc(const SubmitRequest& r, MtmsProcess* mtms,
                              v1::SubmitTransportKeyResponse* resp = nullptr) {
    v1::SubmitTransportKeyRequest req;
    req.set_package(r.package);
    req.set_signature(r.signature);
    req.set_operator_certificate_pem(r.operator_certificate_pem);
    v1::SubmitTransportKeyResponse unused;
    auto ctx = rpc::MakeClientContext(kRpcTimeout);
    return Stub(pki_->Anonymous(), mtms)
        ->SubmitTransportKey(ctx.get(), req, resp != nullptr ? resp : &unused);
  }

  absl::StatusOr<v1::SubmitTransportKeyResponse> SubmitOverGrpc(const SubmitRequest& r) {
    v1::SubmitTransportKeyResponse resp;
    grpc::Status s = SubmitOverGrpc(r, nullptr, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::ForceForwardResponse> ForceForward(MtmsProcess* mtms = nullptr) {
    v1::ForceForwardResponse resp;
    auto ctx = rpc::MakeClientContext(kRpcTimeout);
    grpc::Status s = Admin(mtms)->ForceForward(ctx.get(), {}, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::ListQueueResponse> ListQueue(v1::SubmissionState state,
                                                  MtmsProcess* mtms = nullptr) {
    v1::ListQueueRequest req;
    req.set_state(state);
    v1::ListQueueResponse resp;
    auto ctx = rpc::MakeClientContext(kRpcTimeout);
    grpc::Status s = Admin(mtms)->ListQueue(ctx.get(), req, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }

  FakePeers fakes_;
  std::unique_ptr<rkl::testing::TestPki> pki_;
  std::map<std::string, rpc::TlsFiles> tls_;
  std::unique_ptr<TestHsmService> hsm_service_;
  std::unique_ptr<TestCaService> ca_service_;
  std::unique_ptr<TestKmsService> kms_service_;
  std::unique_ptr<rpc::Server> hsm_server_, ca_server_, kms_server_;
  int kms_port_ = 0;
  std::unique_ptr<MtmsProcess> mtms_;
  std::optional<OperatorCard> operator_;
};

TEST_F(MtmsGrpcTest, OperatorTerminalSubmitsWithoutClientCertificateAndPackageIsForwarded) {
  // Before provisioning, there is no work certificate to hand out.
  EXPECT_EQ(FetchWorkCertificate().status().code(), absl::StatusCode::kFailedPrecondition);
  auto key = Provision();
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->state(), v1::WorkKey::STATE_CURRENT);
  auto again = Provision();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->serial_hex(), key->serial_hex());

  auto work = FetchWorkCertificate();
  ASSERT_TRUE(work.ok()) << work.status();
  EXPECT_EQ(work->serial_hex, key->serial_hex());
  auto receipt =
      SubmitOverGrpc(MakeSubmission({.sn = "SN-GRPC-1"}, *operator_, *work, fakes_.clock));
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  EXPECT_EQ(receipt->state(), v1::SUBMISSION_STATE_RECEIVED);

  auto forced = ForceForward();
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->forwarded(), 1u);
  ASSERT_TRUE(fakes_.kms.Get("SN-GRPC-1").has_value());
  EXPECT_TRUE(fakes_.hsm.OpenedAlgorithmName(*fakes_.kms.Get("SN-GRPC-1")).ok());
  // Forwarded through an HSM without the batch RPC: found out over the wire, remembered.
  EXPECT_TRUE(mtms_->hsm.batch_unsupported());

  v1::GetSubmissionRequest get;
  get.set_submission_id(receipt->submission_id());
  v1::Submission submission;
  auto ctx = rpc::MakeClientContext(kRpcTimeout);
  ASSERT_TRUE(Admin()->GetSubmission(ctx.get(), get, &submission).ok());
  EXPECT_EQ(submission.state(), v1::SUBMISSION_STATE_FORWARDED);
  EXPECT_EQ(submission.sn(), "SN-GRPC-1");
  EXPECT_EQ(submission.attempts(), 1u);
}

TEST_F(MtmsGrpcTest, RefusalsKeepTheirCodesOverTheWire) {
  ASSERT_TRUE(Provision().ok());
  auto work = FetchWorkCertificate();
  ASSERT_TRUE(work.ok());
  SubmitRequest req = MakeSubmission({}, *operator_, *work, fakes_.clock);
  ASSERT_TRUE(SubmitOverGrpc(req).ok());
  EXPECT_EQ(SubmitOverGrpc(req).status().code(), absl::StatusCode::kAlreadyExists);
  SubmitRequest stale = MakeSubmission({.created_at_ms = fakes_.clock.NowUnixMs() - 10 * 60 * 1000},
                                       *operator_, *work, fakes_.clock);
  EXPECT_EQ(SubmitOverGrpc(stale).status().code(), absl::StatusCode::kFailedPrecondition);
  v1::TransportKeyPackage p = MakePackage({}, *operator_, *work, fakes_.clock);
  SubmitRequest modified = SignPackage(p.SerializeAsString(), *operator_);
  p.set_sn("SN-OTHER");
  modified.package = p.SerializeAsString();
  auto unauth = SubmitOverGrpc(modified);
  EXPECT_EQ(unauth.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(unauth.status().message(), HasSubstr("signature"));
  OperatorCard revoked = fakes_.authority->IssueOperator("eve");
  fakes_.authority->Revoke(revoked.certificate);
  ASSERT_TRUE(mtms_->trust.Refresh().ok());
  EXPECT_EQ(SubmitOverGrpc(MakeSubmission({}, revoked, *work, fakes_.clock)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Issue 21, finding 1: over budget, a public RPC is RESOURCE_EXHAUSTED with
// google.rpc.RetryInfo before the core sees it: no row, no refusal count, no HSM call.
TEST_F(MtmsGrpcTest, PublicCallsOverBudgetAreResourceExhaustedAndWriteNothing) {
  auto limited = StartMtms(
      "limited", {.per_source = {.per_second = 1, .burst = 5},
                  .per_subject = {.per_second = 0.5, .burst = 2},
                  .clock = [this] { return absl::FromUnixMillis(fakes_.clock.NowUnixMs()); }});
  ASSERT_TRUE(limited->server);
  ASSERT_TRUE(Provision().ok());                    // an admin RPC: not budgeted
  auto work = FetchWorkCertificate(limited.get());  // the address's 1st token
  ASSERT_TRUE(work.ok()) << work.status();

  // Two packages for one SN pass (burst 2); the third is refused before intake.
  for (int i = 0; i < 2; ++i) {
    grpc::Status s = SubmitOverGrpc(
        MakeSubmission({.sn = "SN-RATE"}, *operator_, *work, fakes_.clock), limited.get());
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  grpc::Status refused = SubmitOverGrpc(
      MakeSubmission({.sn = "SN-RATE"}, *operator_, *work, fakes_.clock), limited.get());
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(), HasSubstr("too many calls for this sn; retry in 2000 ms"));
  EXPECT_EQ(rpc::RetryDelayFromDetails(refused), absl::Seconds(2));
  auto queue = ListQueue(v1::SUBMISSION_STATE_UNSPECIFIED);
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_EQ(queue->received(), 2u);
  EXPECT_EQ(*limited->core.FlushRefusalCounts(), 0);  // not even counted as a refusal

  // The address has spent 1 + 3 of its 5: one more call of any kind, then every public RPC
  // is refused, whatever the SN.
  ASSERT_TRUE(FetchWorkCertificate(limited.get()).ok());
  absl::StatusOr<WorkCertificateBundle> over = FetchWorkCertificate(limited.get());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("too many calls from this address"));
  grpc::Status other = SubmitOverGrpc(
      MakeSubmission({.sn = "SN-OTHER"}, *operator_, *work, fakes_.clock), limited.get());
  EXPECT_EQ(other.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(limited->service.rate_limited(), 3u);

  // A second later the address has a token again.
  fakes_.clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(FetchWorkCertificate(limited.get()).ok());
}

TEST_F(MtmsGrpcTest, AdminRpcsRefuseAnonymousAndServiceCallers) {
  v1::ListWorkKeysResponse resp;
  auto ctx = rpc::MakeClientContext(kRpcTimeout);
  grpc::Status anonymous = Anonymous()->ListWorkKeys(ctx.get(), {}, &resp);
  EXPECT_EQ(anonymous.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ctx = rpc::MakeClientContext(kRpcTimeout);
  v1::WorkKey key;
  grpc::Status service = Stub(tls_["kms"])->ProvisionWorkKey(ctx.get(), {}, &key);
  EXPECT_EQ(service.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(fakes_.hsm.translate_calls.load(), 0);
  ctx = rpc::MakeClientContext(kRpcTimeout);
  EXPECT_TRUE(Admin()->ListWorkKeys(ctx.get(), {}, &resp).ok());
}

TEST_F(MtmsGrpcTest, WithKmsStoppedPackagesStayReceivedAndAreForwardedOnceAfterRestart) {
  ASSERT_TRUE(Provision().ok());
  auto work = FetchWorkCertificate();
  ASSERT_TRUE(work.ok());
  kms_server_->Shutdown(absl::ZeroDuration());
  kms_server_.reset();

  constexpr int kPackages = 5;
  for (int i = 0; i < kPackages; ++i) {
    ASSERT_TRUE(SubmitOverGrpc(MakeSubmission({.sn = absl::StrCat("SN-OUTAGE-", i)}, *operator_,
                                              *work, fakes_.clock))
                    .ok());
  }
  auto forced = ForceForward();
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->forwarded(), 0u);
  EXPECT_EQ(forced->retry_later(), static_cast<uint32_t>(kPackages));
  auto queue = ListQueue(v1::SUBMISSION_STATE_RECEIVED);
  ASSERT_TRUE(queue.ok());
  ASSERT_EQ(queue->submissions_size(), kPackages);
  EXPECT_EQ(queue->received(), static_cast<uint64_t>(kPackages));
  for (const v1::Submission& s : queue->submissions()) {
    EXPECT_EQ(s.attempts(), 1u);
    EXPECT_THAT(s.last_error(), HasSubstr("UNAVAILABLE"));
    EXPECT_THAT(s.last_error(), HasSubstr("kms"));
  }

  // MTMS restarts (new pool, new forwarder) while KMS is still down...
  mtms_.reset();
  mtms_ = StartMtms("replica-restarted");
  EXPECT_EQ(ForceForward()->retry_later(), static_cast<uint32_t>(kPackages));
  // ... then KMS comes back on its address.
  kms_server_ = StartServer(absl::StrCat("127.0.0.1:", kms_port_), tls_["kms"], kms_service_.get());
  ASSERT_NE(kms_server_, nullptr);
  EXPECT_EQ(fakes_.kms.calls(), 0);
  // The channel reconnects with gRPC's own backoff, so the first passes after the restart
  // may still meet UNAVAILABLE; wait for the outcome, not for a duration.
  uint32_t forwarded = 0, rejected = 0;
  EXPECT_TRUE(rkl::testing::WaitUntil(
      [&] {
        forced = ForceForward();
        if (!forced.ok()) return true;  // reported below
        rejected += forced->rejected();
        forwarded += forced->forwarded();
        return rejected > 0 || forwarded >= static_cast<uint32_t>(kPackages);
      },
      rkl::testing::kEventDeadline, absl::Milliseconds(50)));
  ASSERT_TRUE(forced.ok()) << forced.status();
  ASSERT_EQ(rejected, 0u);
  EXPECT_EQ(forwarded, static_cast<uint32_t>(kPackages));
  EXPECT_EQ(fakes_.kms.calls(), kPackages);
  EXPECT_EQ(fakes_.kms.stored(), kPackages);
  EXPECT_EQ(fakes_.kms.duplicates(), 0);
  // Each exactly once: nothing more is ever sent.
  EXPECT_EQ(ForceForward()->forwarded(), 0u);
  EXPECT_EQ(fakes_.kms.calls(), kPackages);
  queue = ListQueue(v1::SUBMISSION_STATE_FORWARDED);
  ASSERT_TRUE(queue.ok());
  EXPECT_EQ(queue->forwarded(), static_cast<uint64_t>(kPackages));
  for (const v1::Submission& s : queue->submissions()) EXPECT_GE(s.attempts(), 3u);
}

TEST_F(MtmsGrpcTest, TwoReplicasWithBackgroundForwardersForwardEachRowExactlyOnce) {
  ASSERT_TRUE(Provision().ok());
  auto work = FetchWorkCertificate();
  ASSERT_TRUE(work.ok());
  constexpr int kPackages = 16;
  for (int i = 0; i < kPackages; ++i) {
    ASSERT_TRUE(SubmitOverGrpc(MakeSubmission({.sn = absl::StrCat("SN-TWO-", i)}, *operator_, *work,
                                              fakes_.clock))
                    .ok());
  }
  auto second = StartMtms("replica-1");
  mtms_->forwarder.Start();
  second->forwarder.Start();
  // Wait for the outcome, not for a duration (the clock is frozen, so no lease expires).
  absl::StatusOr<v1::ListQueueResponse> seen;
  EXPECT_TRUE(rkl::testing::WaitUntil(
      [&] {
        seen = ListQueue(v1::SUBMISSION_STATE_UNSPECIFIED);
        return !seen.ok() || seen->rejected() > 0 ||
               seen->forwarded() == static_cast<uint64_t>(kPackages);
      },
      rkl::testing::kEventDeadline, absl::Milliseconds(20)));
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_EQ(seen->rejected(), 0u);
  mtms_->forwarder.Stop();
  second->forwarder.Stop();
  EXPECT_EQ(fakes_.kms.calls(), kPackages);
  EXPECT_EQ(fakes_.kms.stored(), kPackages);
  EXPECT_EQ(fakes_.kms.duplicates(), 0);
  auto queue = ListQueue(v1::SUBMISSION_STATE_FORWARDED);
  ASSERT_TRUE(queue.ok());
  for (const v1::Submission& s : queue->submissions()) EXPECT_EQ(s.attempts(), 1u);
}

}  // namespace
}  // namespace rkl::mtms::testing
