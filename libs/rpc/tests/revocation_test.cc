// RevocationList, CrlRefresher and the server's per-call CRL check (rkl/rpc/revocation.h),
// over real TLS on loopback with the test PKI. CRLs are signed here with rkl::crypto under
// the test service-ca (and foreign-ca, which the servers do not trust). Time is injected.

#include "rkl/rpc/revocation.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/echo_service.h"
#include "rkl/rpc/server.h"
#include "rkl/testing/wait.h"
#include "rkl/v1/echo.grpc.pb.h"
#include "rkl/v1/revocation.grpc.pb.h"
#include "test_pki.h"

namespace rkl::rpc {
namespace {

using testing::TestPki;

constexpr int64_t kNow = 1'800'000'000;  // the injected clock's "now"
constexpr int64_t kDay = 86'400;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

crypto::Certificate LoadCert(const std::string& path) {
  auto cert = crypto::Certificate::FromPem(ReadFile(path));
  EXPECT_TRUE(cert.ok()) << path << ": " << cert.status();
  return *cert;
}

// Signs a CRL as `ca` ("service-ca" or "foreign-ca" of the test PKI).
std::string SignCrl(const std::string& ca, uint64_t number,
                    const std::vector<std::string>& revoked_cert_files, int64_t this_update = kNow,
                    int64_t next_update = kNow + 7 * kDay) {
  const std::string dir = TestPki::Get().dir();
  crypto::Certificate issuer = LoadCert(dir + "/" + ca + ".pem");
  std::string key_pem = ReadFile(dir + "/" + ca + ".key");
  auto key = crypto::PrivateKey::FromPemSecret(crypto::SecretBytes::CopyOf(AsBytes(key_pem)));
  EXPECT_TRUE(key.ok()) << key.status();
  crypto::CrlBuilder b;
  for (const std::string& f : revoked_cert_files) {
    b.AddRevoked(LoadCert(f).SerialBytes(), this_update, crypto::CrlReason::kKeyCompromise);
  }
  b.SetLastUpdate(this_update).SetNextUpdate(next_update).SetCrlNumber(number);
  auto crl = b.Sign(issuer, *key);
  EXPECT_TRUE(crl.ok()) << crl.status();
  return crl->ToPem();
}

class Clock {
 public:
  absl::Time Now() {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Set(int64_t unix_s) {
    absl::MutexLock lock(&mu_);
    now_ = absl::FromUnixSeconds(unix_s);
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(kNow);
};

class RevocationListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto list =
        RevocationList::Create(ReadFile(TestPki::Get().ca_file()), [this] { return clock_.Now(); });
    ASSERT_TRUE(list.ok()) << list.status();
    list_ = *std::move(list);
  }
  std::string Pem(const std::string& client) {
    return ReadFile(TestPki::Get().Client(client).cert_file);
  }
  std::string CertFile(const std::string& client) {
    return TestPki::Get().Client(client).cert_file;
  }

  Clock clock_;
  std::unique_ptr<RevocationList> list_;
};

TEST_F(RevocationListTest, RefusesEveryCertificateUntilACrlIsInForce) {
  absl::Status s = list_->Check(Pem("mtms"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(s.message(), "no service-ca CRL")) << s;
  EXPECT_FALSE(list_->crl_number().has_value());
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 1, {})).ok());
  EXPECT_TRUE(list_->Check(Pem("mtms")).ok());
  EXPECT_EQ(list_->crl_number(), 1u);
}

TEST_F(RevocationListTest, RefusesRevokedCertificatesOnly) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 2, {CertFile("mtms")})).ok());
  absl::Status s = list_->Check(Pem("mtms"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(s.message(), "revoked")) << s;
  EXPECT_TRUE(list_->Check(Pem("admin:alice")).ok());
}

TEST_F(RevocationListTest, RefusesACrlNoTrustedCertificateSigned) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 1, {CertFile("mtms")})).ok());
  // A foreign CRL that would "un-revoke" mtms is not installed.
  absl::Status s = list_->Install(SignCrl("foreign-ca", 9, {}));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_EQ(list_->crl_number(), 1u);
  EXPECT_FALSE(list_->Check(Pem("mtms")).ok());
  EXPECT_EQ(list_->Install("not a CRL").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RevocationListTest, AnOlderCrlCannotUndoARevocation) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 5, {CertFile("mtms")})).ok());
  absl::Status s = list_->Install(SignCrl("service-ca", 4, {}));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_FALSE(list_->Check(Pem("mtms")).ok());
  // The same CRL again is harmless; a newer one replaces it.
  EXPECT_TRUE(list_->Install(SignCrl("service-ca", 5, {CertFile("mtms")})).ok());
  EXPECT_TRUE(
      list_->Install(SignCrl("service-ca", 6, {CertFile("mtms"), CertFile("admin:alice")})).ok());
  EXPECT_FALSE(list_->Check(Pem("admin:alice")).ok());
}

TEST_F(RevocationListTest, FailsClosedOnceTheCrlPassesItsNextUpdate) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 1, {}, kNow, kNow + kDay)).ok());
  EXPECT_TRUE(list_->Check(Pem("mtms")).ok());
  clock_.Set(kNow + kDay);
  absl::Status s = list_->Check(Pem("mtms"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(s.message(), "expired")) << s;
  // An expired CRL is not installed either.
  EXPECT_EQ(list_->Install(SignCrl("service-ca", 2, {}, kNow, kNow + kDay)).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 3, {}, kNow + kDay, kNow + 3 * kDay)).ok());
  EXPECT_TRUE(list_->Check(Pem("mtms")).ok());
}

TEST_F(RevocationListTest, RefusesACertificateOfAnotherIssuer) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 1, {})).ok());
  absl::Status s = list_->Check(ReadFile(TestPki::Get().ForeignClient().cert_file));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
}

// ---- CrlRefresher ---------------------------------------------------------------------------

// A fetch from a CA that "comes up" at the third attempt: UNAVAILABLE twice, then `crl`.
// Counts its attempts in `fetches`.
CrlRefresher::Fetch UpAtTheThirdAttempt(std::atomic<int>& fetches, std::string crl) {
  return [&fetches, crl = std::move(crl)]() -> absl::StatusOr<std::string> {
    if (++fetches < 3) return absl::UnavailableError("ca not up yet");
    return crl;
  };
}

TEST_F(RevocationListTest, RefresherInstallsWhatItFetchesAndKeepsItOnFailure) {
  absl::Mutex mu;
  absl::StatusOr<std::string> next = SignCrl("service-ca", 1, {});
  int also = 0;
  CrlRefresher refresher(
      list_.get(),
      [&]() -> absl::StatusOr<std::string> {
        absl::MutexLock lock(&mu);
        return next;
      },
      absl::Hours(1),
      [&] {
        ++also;
        return absl::OkStatus();
      });
  EXPECT_EQ(refresher.RefreshNow().value_or(0), 1u);
  EXPECT_EQ(also, 1);
  {
    absl::MutexLock lock(&mu);
    next = absl::UnavailableError("ca down");
  }
  EXPECT_EQ(refresher.RefreshNow().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(list_->crl_number(), 1u);
  {
    absl::MutexLock lock(&mu);
    next = SignCrl("service-ca", 2, {CertFile("mtms")});
  }
  EXPECT_EQ(refresher.RefreshNow().value_or(0), 2u);
  EXPECT_FALSE(list_->Check(Pem("mtms")).ok());
}

TEST_F(RevocationListTest, RefresherRetriesOnItsOwnUntilACrlArrives) {
  std::atomic<int> fetches{0};
  CrlRefresher refresher(list_.get(), UpAtTheThirdAttempt(fetches, SignCrl("service-ca", 7, {})),
                         absl::Hours(1));
  refresher.Start();
  // The refresher retries every second: wait for the event, not for a time.
  EXPECT_TRUE(rkl::testing::WaitUntil([&] { return list_->crl_number().has_value(); }));
  refresher.Stop();
  EXPECT_EQ(list_->crl_number(), 7u);
  EXPECT_GE(fetches.load(), 3);
}

TEST_F(RevocationListTest, AwaitFirstWaitsForTheCaOrGivesUp) {
  std::atomic<int> fetches{0};
  CrlRefresher patient(list_.get(), UpAtTheThirdAttempt(fetches, SignCrl("service-ca", 4, {})),
                       absl::Hours(1));
  ASSERT_TRUE(patient.AwaitFirst(absl::Seconds(60)).ok());
  EXPECT_EQ(list_->crl_number(), 4u);
  EXPECT_EQ(fetches.load(), 3);

  auto other =
      RevocationList::Create(ReadFile(TestPki::Get().ca_file()), [this] { return clock_.Now(); });
  ASSERT_TRUE(other.ok());
  CrlRefresher hopeless(
      other->get(), []() -> absl::StatusOr<std::string> { return absl::UnavailableError("down"); },
      absl::Hours(1));
  absl::Status s = hopeless.AwaitFirst(absl::ZeroDuration());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(s.message(), "down")) << s;
}

// ---- The server: a per-call check, and rkl.v1.Revocation ------------------------------------

class RevokingServerTest : public RevocationListTest {
 protected:
  void Start(ClientCertMode mode) {
    echo_ = std::make_unique<EchoService>();
    auto server = Server::Start({.listen_address = "127.0.0.1:0",
                                 .tls = TestPki::Get().Server(),
                                 .client_cert_mode = mode,
                                 .revocation = list_.get(),
                                 .refresh_crl = [this]() -> absl::StatusOr<uint64_t> {
                                   ++refreshes_;
                                   RKL_RETURN_IF_ERROR(list_->Install(next_crl_));
                                   return *list_->crl_number();
                                 }},
                                {echo_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  std::shared_ptr<grpc::Channel> Channel(const TlsFiles& tls) {
    ChannelOptions options;
    options.tls = tls;
    options.authority = "kms";
    auto channel = MakeChannel(absl::StrCat("127.0.0.1:", server_->port()), options);
    EXPECT_TRUE(channel.ok());
    return *channel;
  }
  grpc::Status Echo(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = v1::Echo::NewStub(channel);
    auto ctx = MakeClientContext(absl::Seconds(10));
    v1::EchoRequest req;
    req.set_payload("ping");
    v1::EchoResponse resp;
    return stub->Echo(ctx.get(), req, &resp);
  }
  grpc::Status Refresh(const std::shared_ptr<grpc::Channel>& channel,
                       v1::RefreshCrlResponse* resp) {
    auto stub = v1::Revocation::NewStub(channel);
    auto ctx = MakeClientContext(absl::Seconds(10));
    return stub->RefreshCrl(ctx.get(), v1::RefreshCrlRequest(), resp);
  }

  std::unique_ptr<EchoService> echo_;
  std::unique_ptr<Server> server_;
  std::string next_crl_;
  int refreshes_ = 0;
};

TEST_F(RevokingServerTest, ARevocationStopsCallsOnAConnectionOpenedBeforeIt) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 1, {})).ok());
  Start(ClientCertMode::kRequireAndVerify);
  auto mtms = Channel(TestPki::Get().Client("mtms"));
  ASSERT_TRUE(Echo(mtms).ok());
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 2, {CertFile("mtms")})).ok());
  grpc::Status refused = Echo(mtms);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED) << refused.error_message();
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "revoked")) << refused.error_message();
  EXPECT_TRUE(Echo(Channel(TestPki::Get().Client("admin:alice"))).ok());
}

TEST_F(RevokingServerTest, ClientsWithoutACertificatePassTheCheck) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 1, {CertFile("mtms")})).ok());
  Start(ClientCertMode::kOptionalVerified);
  EXPECT_TRUE(Echo(Channel(TestPki::Get().AnonymousClient())).ok());
  EXPECT_EQ(Echo(Channel(TestPki::Get().Client("mtms"))).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(RevokingServerTest, NoCallIsServedBeforeTheFirstCrl) {
  Start(ClientCertMode::kRequireAndVerify);
  EXPECT_EQ(Echo(Channel(TestPki::Get().Client("admin:alice"))).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(RevokingServerTest, AdminsAskForARefreshOthersMayNot) {
  ASSERT_TRUE(list_->Install(SignCrl("service-ca", 1, {})).ok());
  Start(ClientCertMode::kRequireAndVerify);
  auto mtms = Channel(TestPki::Get().Client("mtms"));
  next_crl_ = SignCrl("service-ca", 3, {CertFile("mtms")});
  v1::RefreshCrlResponse resp;
  EXPECT_EQ(Refresh(mtms, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(refreshes_, 0);
  EXPECT_TRUE(Echo(mtms).ok());
  grpc::Status s = Refresh(Channel(TestPki::Get().Client("admin:alice")), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.crl_number(), 3u);
  EXPECT_EQ(resp.next_update_unix_s(), kNow + 7 * kDay);
  EXPECT_EQ(Echo(mtms).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

}  // namespace
}  // namespace rkl::rpc
