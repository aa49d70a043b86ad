// rkl.v1.CertificateAuthority in-process over real gRPC with mTLS (TestPki identities), real
// PostgreSQL, and the openssl CLI as an independent judge of what the CA signs.

#include <grpcpp/grpcpp.h>

#include "bootstrap_output.h"
#include "ca_grpc_service.h"
#include "ca_pg_fixture.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_verify.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/health.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/test_pki.h"
#include "rkl/tr34/tokens.h"
#include "test_keys.h"

namespace rkl::ca {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr absl::Duration kTimeout = absl::Seconds(20);

// The extensions, in order, of a certificate without extended key usage or names (an
// issuer's, an HSM work certificate, an operator's), per ExtensionHeaders.
const std::vector<std::string> kPlainProfileExtensions = {
    "X509v3 Basic Constraints: critical", "X509v3 Key Usage: critical",
    "X509v3 Subject Key Identifier:", "X509v3 Authority Key Identifier:"};

class CaGrpcPgTest : public CaPgTest {
 protected:
  void SetUp() override {
    CaPgTest::SetUp();
    if (HasFatalFailure()) return;
    boot_.emplace(Bootstrap());
    auto pki = rkl::testing::TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    auto server_tls = pki_->Issue("ca");
    ASSERT_TRUE(server_tls.ok());
    // The server trusts the test PKI's identities and the ones the bootstrap issued (the
    // admins and custodians dual control knows).
    server_tls->ca_file =
        tmp_.Write("server-trust.pem", pki_->ca_certificate().ToPem() + boot_->service_ca.ToPem());
    service_ = std::make_unique<CaGrpcService>(&*core_);
    auto server =
        rpc::Server::Start({.listen_address = "127.0.0.1:0", .tls = *server_tls}, {service_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<v1::CertificateAuthority::Stub> Stub(const std::string& identity) {
    auto tls = pki_->Issue(identity);
    EXPECT_TRUE(tls.ok());
    return StubWith(*tls);
  }

  // A stub presenting an identity the bootstrap issued (this CA's own certificate).
  std::unique_ptr<v1::CertificateAuthority::Stub> BootStub(const KeyAndCertificate& kc) {
    const std::string name = IdentityDirName(kc.name);
    auto key_pem = kc.key.ExportPkcs8PemSecret();
    EXPECT_TRUE(key_pem.ok());
    std::span<const uint8_t> key = key_pem->RevealSecret();
    rpc::TlsFiles tls{tmp_.Write(name + "-cert.pem", kc.certificate.ToPem()),
                      tmp_.Write(name + "-key.pem", std::string(key.begin(), key.end())),
                      pki_->ca_file()};
    return StubWith(tls);
  }
  std::unique_ptr<v1::CertificateAuthority::Stub> Alice() { return BootStub(boot_->admins[0]); }
  std::unique_ptr<v1::CertificateAuthority::Stub> Bob() { return BootStub(boot_->admins[1]); }

  std::unique_ptr<v1::CertificateAuthority::Stub> StubWith(const rpc::TlsFiles& tls) {
    rpc::ChannelOptions options{.tls = tls, .authority = "localhost"};
    auto channel = rpc::MakeChannel("127.0.0.1:" + std::to_string(server_->port()), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    channels_.push_back(*channel);
    return v1::CertificateAuthority::NewStub(*channel);
  }

  template <typename Req, typename Resp, typename Method>
  absl::StatusOr<Resp> Call(v1::CertificateAuthority::Stub& stub, Method method, const Req& req) {
    auto ctx = rpc::MakeClientContext(kTimeout);
    Resp resp;
    grpc::Status s = (stub.*method)(ctx.get(), req, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::IssuedCertificate> IssueWork(v1::CertificateAuthority::Stub& stub,
                                                  const crypto::PublicKey& key) {
    v1::IssueWorkCertificateRequest req;
    Bytes der = key.ToDer();
    req.set_public_key_der(std::string(der.begin(), der.end()));
    req.set_hsm_id("hsm-mtms");
    req.set_key_index(42);
    return Call<v1::IssueWorkCertificateRequest, v1::IssuedCertificate>(
        stub, &v1::CertificateAuthority::Stub::IssueWorkCertificate, req);
  }

  absl::StatusOr<v1::IssuedCertificate> IssueKdh(v1::CertificateAuthority::Stub& stub,
                                                 const crypto::PublicKey& key,
                                                 const std::string& hsm_id = "hsm-kms",
                                                 uint32_t validity_days = 0) {
    // The HSM holds the key as its KDH signing key 5.
    hsm_keys_.Put(hsm_id, 5, key);
    v1::IssueKdhCertificateRequest req;
    Bytes der = key.ToDer();
    req.set_public_key_der(std::string(der.begin(), der.end()));
    req.set_hsm_id(hsm_id);
    req.set_key_index(5);
    req.set_validity_days(validity_days);
    return Call<v1::IssueKdhCertificateRequest, v1::IssuedCertificate>(
        stub, &v1::CertificateAuthority::Stub::IssueKdhCertificate, req);
  }

  absl::StatusOr<v1::CertificateRequestInfo> Request(v1::CertificateAuthority::Stub& stub,
                                                     const v1::RequestCertificateRequest& req) {
    return Call<v1::RequestCertificateRequest, v1::CertificateRequestInfo>(
        stub, &v1::CertificateAuthority::Stub::RequestCertificate, req);
  }

  absl::StatusOr<v1::CertificateRequestInfo> Approve(v1::CertificateAuthority::Stub& stub,
                                                     const std::string& id,
                                                     const std::string& subject) {
    v1::ApproveCertificateRequestRequest req;
    req.set_request_id(id);
    req.set_subject(subject);
    return Call<v1::ApproveCertificateRequestRequest, v1::CertificateRequestInfo>(
        stub, &v1::CertificateAuthority::Stub::ApproveCertificateRequest, req);
  }

  // Dual control: `requester` requests, bob (the bootstrap's second admin) approves.
  absl::StatusOr<v1::IssuedCertificate> RequestAndApprove(
      v1::CertificateAuthority::Stub& requester, const v1::RequestCertificateRequest& req) {
    auto requested = Request(requester, req);
    if (!requested.ok()) return requested.status();
    auto approved = Approve(*Bob(), requested->request_id(), requested->subject());
    if (!approved.ok()) return approved.status();
    return approved->certificate();
  }

  absl::StatusOr<v1::IssuedCertificate> IssueOperator(v1::CertificateAuthority::Stub& requester,
                                                      const std::string& csr,
                                                      const std::string& id = "alice") {
    v1::RequestCertificateRequest req;
    req.mutable_operator_()->set_csr_pem(csr);
    req.mutable_operator_()->set_operator_id(id);
    return RequestAndApprove(requester, req);
  }

  absl::StatusOr<v1::IssuedCertificate> IssueService(v1::CertificateAuthority::Stub& requester,
                                                     const std::string& csr,
                                                     const std::string& name) {
    v1::RequestCertificateRequest req;
    req.mutable_service()->set_csr_pem(csr);
    req.mutable_service()->set_name(name);
    return RequestAndApprove(requester, req);
  }

  absl::StatusOr<v1::CertificateStatus> Revoke(v1::CertificateAuthority::Stub& stub,
                                               const std::string& serial) {
    v1::RevokeCertificateRequest req;
    req.set_serial_hex(serial);
    req.set_reason(v1::REVOCATION_REASON_KEY_COMPROMISE);
    return Call<v1::RevokeCertificateRequest, v1::CertificateStatus>(
        stub, &v1::CertificateAuthority::Stub::RevokeCertificate, req);
  }

  absl::StatusOr<v1::CertificateStatus> Status(v1::CertificateAuthority::Stub& stub,
                                               const std::string& serial) {
    v1::GetCertificateStatusRequest req;
    req.set_serial_hex(serial);
    return Call<v1::GetCertificateStatusRequest, v1::CertificateStatus>(
        stub, &v1::CertificateAuthority::Stub::GetCertificateStatus, req);
  }

  absl::StatusOr<v1::GetCrlResponse> Crl(v1::CertificateAuthority::Stub& stub, v1::Issuer issuer) {
    v1::GetCrlRequest req;
    req.set_issuer(issuer);
    return Call<v1::GetCrlRequest, v1::GetCrlResponse>(
        stub, &v1::CertificateAuthority::Stub::GetCrl, req);
  }

  absl::StatusOr<std::string> IssuerPem(v1::CertificateAuthority::Stub& stub, v1::Issuer issuer) {
    v1::GetIssuerCertificateRequest req;
    req.set_issuer(issuer);
    auto resp = Call<v1::GetIssuerCertificateRequest, v1::GetIssuerCertificateResponse>(
        stub, &v1::CertificateAuthority::Stub::GetIssuerCertificate, req);
    if (!resp.ok()) return resp.status();
    return resp->certificate_pem();
  }

  std::optional<BootstrapResult> boot_;
  std::unique_ptr<rkl::testing::TestPki> pki_;
  std::unique_ptr<CaGrpcService> service_;
  std::unique_ptr<rpc::Server> server_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
};

TEST_F(CaGrpcPgTest, AnyRklIdentityReadsIssuerCertificatesOthersDoNot) {
  for (const char* who : {"mtms", "kms", "hsm-mtms", "admin:alice"}) {
    auto stub = Stub(who);
    auto root = IssuerPem(*stub, v1::ISSUER_TERMINAL_ROOT);
    ASSERT_TRUE(root.ok()) << who << ": " << root.status();
    EXPECT_EQ(*root, boot_->terminal_root.ToPem());
    EXPECT_EQ(*IssuerPem(*stub, v1::ISSUER_OPERATOR_CA), boot_->operator_ca.ToPem());
    EXPECT_EQ(*IssuerPem(*stub, v1::ISSUER_SERVICE_CA), boot_->service_ca.ToPem());
    EXPECT_EQ(*IssuerPem(*stub, v1::ISSUER_KDH_CA), boot_->kdh_ca.ToPem());
  }
  // A certificate from the right CA but for no rkl identity is turned away.
  auto stranger = Stub("pos");
  EXPECT_EQ(IssuerPem(*stranger, v1::ISSUER_TERMINAL_ROOT).status().code(),
            absl::StatusCode::kPermissionDenied);
  auto admin = Stub("admin:alice");
  EXPECT_EQ(IssuerPem(*admin, v1::ISSUER_UNSPECIFIED).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto health = rpc::CheckHealth(channels_.back(), "", kTimeout);
  ASSERT_TRUE(health.ok());
  EXPECT_TRUE(*health);
}

TEST_F(CaGrpcPgTest, OnlyMtmsMayRequestAWorkCertificate) {
  auto pu = crypto::GenerateRsaKey(2048).value().GetPublicKey();
  for (const char* who : {"kms", "hsm-mtms", "admin:alice", "ca"}) {
    auto stub = Stub(who);
    auto denied = IssueWork(*stub, pu);
    EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << who;
    EXPECT_EQ(denied.status().message(),
              absl::StrCat("caller '", who, "' may not call IssueWorkCertificate"));
  }
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates WHERE profile = 'work'")[0][0].as<int>(), 0);
  auto mtms = Stub("mtms");
  auto issued = IssueWork(*mtms, pu);
  ASSERT_TRUE(issued.ok()) << issued.status();
  EXPECT_EQ(issued->serial_hex().size(), 32u);
  // A wrong key is INVALID_ARGUMENT even for mtms.
  auto ec = IssueWork(*mtms, crypto::GenerateEcP256Key()->GetPublicKey());
  EXPECT_EQ(ec.status().code(), absl::StatusCode::kInvalidArgument);
  auto e3 = IssueWork(*mtms, testing::RsaKeyWithExponent(2048, 3).GetPublicKey());
  EXPECT_EQ(e3.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CaGrpcPgTest, WorkCertificateHasExactlyTheHsmWcrtExtensionsPerOpenssl) {
  auto mtms = Stub("mtms");
  auto issued = IssueWork(*mtms, crypto::GenerateRsaKey(2048).value().GetPublicKey());
  ASSERT_TRUE(issued.ok()) << issued.status();
  std::string root_pem = boot_->terminal_root.ToPem();

  auto verify = OpensslVerify(root_pem, issued->certificate_pem());
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_THAT(verify.output, HasSubstr(": OK"));

  std::string text = X509Text(issued->certificate_pem());
  EXPECT_THAT(ExtensionHeaders(text), ElementsAreArray(kPlainProfileExtensions));
  EXPECT_THAT(text, HasSubstr("X509v3 Basic Constraints: critical\n                CA:FALSE\n"));
  EXPECT_THAT(text, HasSubstr("X509v3 Key Usage: critical\n                Key Encipherment\n"));
  EXPECT_THAT(text, HasSubstr("Subject: O = rkl, CN = hsm-work:hsm-mtms:42"));
  EXPECT_THAT(text, HasSubstr("Issuer: O = rkl, CN = terminal-root"));
  EXPECT_THAT(text, HasSubstr("Public-Key: (2048 bit)"));
  EXPECT_THAT(text, HasSubstr("Signature Algorithm: sha256WithRSAEncryption"));

  // Against another issuer, openssl refuses it.
  auto wrong = OpensslVerify(boot_->operator_ca.ToPem(), issued->certificate_pem());
  EXPECT_NE(wrong.exit_code, 0) << wrong.output;

  // The same facts through rkl::crypto's accessors.
  auto cert = crypto::Certificate::FromPem(issued->certificate_pem()).value();
  EXPECT_FALSE(cert.IsCa());
  EXPECT_TRUE(cert.BasicConstraintsCritical());
  EXPECT_EQ(cert.KeyUsageBits(), crypto::KeyUsage::kKeyEncipherment);
  EXPECT_TRUE(cert.KeyUsageCritical());
  EXPECT_FALSE(cert.HasExtendedKeyUsage());
  EXPECT_FALSE(cert.SubjectKeyId().empty());
  EXPECT_EQ(cert.AuthorityKeyId(), boot_->terminal_root.SubjectKeyId());
}

TEST_F(CaGrpcPgTest, IssuerCertificatesHaveExactlyTheIssuerExtensionsPerOpenssl) {
  for (const crypto::Certificate* issuer :
       {&boot_->terminal_root, &boot_->kdh_ca, &boot_->operator_ca, &boot_->service_ca}) {
    std::string pem = issuer->ToPem();
    auto verify = OpensslVerify(pem, pem);
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
    std::string text = X509Text(pem);
    EXPECT_THAT(ExtensionHeaders(text), ElementsAreArray(kPlainProfileExtensions));
    EXPECT_THAT(text, HasSubstr("CA:TRUE, pathlen:0\n"));
    EXPECT_THAT(text, HasSubstr("X509v3 Key Usage: critical\n                Certificate Sign, "
                                "CRL Sign\n"));
  }
  EXPECT_THAT(X509Text(boot_->terminal_root.ToPem()),
              HasSubstr("Signature Algorithm: sha256WithRSAEncryption"));
  EXPECT_THAT(X509Text(boot_->operator_ca.ToPem()),
              HasSubstr("Signature Algorithm: ecdsa-with-SHA256"));
  std::string kdh_ca_text = X509Text(boot_->kdh_ca.ToPem());
  EXPECT_THAT(kdh_ca_text, HasSubstr("Signature Algorithm: sha256WithRSAEncryption"));
  EXPECT_THAT(kdh_ca_text, HasSubstr("Subject: O = rkl, CN = kdh-ca"));
}

// ---- TR-34 KDH certificates ---------------------------------------------------------------

TEST_F(CaGrpcPgTest, OnlyKmsMayRequestAKdhCertificate) {
  auto pub = crypto::GenerateRsaKey(2048).value().GetPublicKey();
  for (const char* who : {"mtms", "admin:alice", "hsm-kms", "ca", "custodian:carol"}) {
    auto stub = Stub(who);
    auto denied = IssueKdh(*stub, pub);
    EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << who;
    EXPECT_EQ(denied.status().message(),
              absl::StrCat("caller '", who, "' may not call IssueKdhCertificate"));
  }
  // A bootstrap admin with this CA's own certificate is refused too.
  EXPECT_EQ(IssueKdh(*Alice(), pub).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates WHERE profile = 'kdh'")[0][0].as<int>(), 0);
  EXPECT_GE(Sql("SELECT count(*) FROM ca_audit WHERE action = 'rpc.refused' AND detail LIKE "
                "'%IssueKdhCertificate%'")[0][0]
                .as<int>(),
            6);
  auto kms = Stub("kms");
  auto issued = IssueKdh(*kms, pub);
  ASSERT_TRUE(issued.ok()) << issued.status();
  EXPECT_EQ(issued->serial_hex().size(), 32u);
  EXPECT_EQ(Sql("SELECT issuer, subject_cn FROM ca_certificates WHERE profile = 'kdh'")[0][0]
                .as<std::string>(),
            "kdh-ca");
}

// kms's word is not enough: the CA certifies only the key the HSM itself holds.
TEST_F(CaGrpcPgTest, KdhCertificateOnlyForTheKeyTheHsmHolds) {
  auto kms = Stub("kms");
  const crypto::PublicKey held = crypto::GenerateRsaKey(2048).value().GetPublicKey();
  const Bytes mine = crypto::GenerateRsaKey(2048).value().GetPublicKey().ToDer();
  hsm_keys_.Put("hsm-kms", 5, held);
  auto ask = [&](const std::string& hsm_id, uint64_t index) {
    v1::IssueKdhCertificateRequest req;
    req.set_public_key_der(std::string(mine.begin(), mine.end()));
    req.set_hsm_id(hsm_id);
    req.set_key_index(index);
    return Call<v1::IssueKdhCertificateRequest, v1::IssuedCertificate>(
        *kms, &v1::CertificateAuthority::Stub::IssueKdhCertificate, req);
  };
  auto other_key = ask("hsm-kms", 5);
  EXPECT_EQ(other_key.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(other_key.status().message(),
            "public_key_der: is not the KDH signing key 5 of HSM hsm-kms");
  EXPECT_EQ(ask("hsm-kms", 6).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ask("hsm-x", 5).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates WHERE profile = 'kdh'")[0][0].as<int>(), 0);
}

TEST_F(CaGrpcPgTest, KdhCertificateHasExactlyTheKdhProfilePerOpenssl) {
  auto kms = Stub("kms");
  auto key = crypto::GenerateRsaKey(2048).value();
  auto issued = IssueKdh(*kms, key.GetPublicKey());
  ASSERT_TRUE(issued.ok()) << issued.status();
  const std::string kdh_ca_pem = boot_->kdh_ca.ToPem();

  auto verify = OpensslVerify(kdh_ca_pem, issued->certificate_pem());
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_THAT(verify.output, HasSubstr(": OK"));

  std::string text = X509Text(issued->certificate_pem());
  EXPECT_THAT(ExtensionHeaders(text), ElementsAreArray(kPlainProfileExtensions));
  EXPECT_THAT(text, HasSubstr("X509v3 Basic Constraints: critical\n                CA:FALSE\n"));
  EXPECT_THAT(text, HasSubstr("X509v3 Key Usage: critical\n                Digital Signature\n"));
  EXPECT_THAT(text, HasSubstr("Subject: O = rkl, CN = kdh:hsm-kms:5\n"));
  EXPECT_THAT(text, HasSubstr("Issuer: O = rkl, CN = kdh-ca\n"));
  EXPECT_THAT(text, HasSubstr("Signature Algorithm: sha256WithRSAEncryption"));

  auto cert = crypto::Certificate::FromPem(issued->certificate_pem()).value();
  EXPECT_EQ(cert.SubjectCommonName(), "kdh:hsm-kms:5");
  EXPECT_EQ(cert.IssuerCommonName(), "kdh-ca");
  EXPECT_TRUE(cert.HasBasicConstraints());
  EXPECT_FALSE(cert.IsCa());
  EXPECT_TRUE(cert.BasicConstraintsCritical());
  EXPECT_EQ(cert.KeyUsageBits(), crypto::KeyUsage::kDigitalSignature);
  EXPECT_TRUE(cert.KeyUsageCritical());
  EXPECT_FALSE(cert.HasExtendedKeyUsage());
  EXPECT_TRUE(cert.DnsNames().empty());
  EXPECT_TRUE(*cert.GetPublicKey() == key.GetPublicKey());
  EXPECT_FALSE(cert.SubjectKeyId().empty());
  EXPECT_EQ(cert.AuthorityKeyId(), boot_->kdh_ca.SubjectKeyId());
  EXPECT_EQ(cert.SerialHex(), issued->serial_hex());
  EXPECT_EQ(cert.NotAfter(), issued->not_after_unix_s());
  // Default validity: 730 days.
  EXPECT_NEAR(static_cast<double>(cert.NotAfter() - absl::ToUnixSeconds(absl::Now())),
              730.0 * 86'400, 3600.0);

  // What a terminal checks with its burned-in kdh-ca (libs/tr34).
  absl::Status role = tr34::CheckRole(cert, tr34::Role::kKdh, boot_->kdh_ca);
  EXPECT_TRUE(role.ok()) << role;
  // ...and which a certificate of another issuer or role never passes.
  EXPECT_FALSE(tr34::CheckRole(cert, tr34::Role::kKdh, boot_->terminal_root).ok());
  EXPECT_FALSE(tr34::CheckRole(cert, tr34::Role::kKrd, boot_->kdh_ca).ok());

  auto status = Status(*kms, issued->serial_hex());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->issuer(), v1::ISSUER_KDH_CA);
  EXPECT_EQ(status->profile(), "kdh");
  EXPECT_EQ(status->subject_cn(), "kdh:hsm-kms:5");
  EXPECT_EQ(status->state(), v1::CertificateStatus::STATE_GOOD);
}

TEST_F(CaGrpcPgTest, KdhAndWorkCertificatesNeverChainToEachOthersIssuer) {
  auto kdh = IssueKdh(*Stub("kms"), crypto::GenerateRsaKey(2048).value().GetPublicKey());
  ASSERT_TRUE(kdh.ok()) << kdh.status();
  auto work = IssueWork(*Stub("mtms"), crypto::GenerateRsaKey(2048).value().GetPublicKey());
  ASSERT_TRUE(work.ok()) << work.status();
  auto kdh_under_root = OpensslVerify(boot_->terminal_root.ToPem(), kdh->certificate_pem());
  EXPECT_NE(kdh_under_root.exit_code, 0) << kdh_under_root.output;
  auto work_under_kdh_ca = OpensslVerify(boot_->kdh_ca.ToPem(), work->certificate_pem());
  EXPECT_NE(work_under_kdh_ca.exit_code, 0) << work_under_kdh_ca.output;
  auto kdh_cert = crypto::Certificate::FromPem(kdh->certificate_pem()).value();
  auto work_cert = crypto::Certificate::FromPem(work->certificate_pem()).value();
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  EXPECT_FALSE(crypto::VerifyChain(kdh_cert, {}, {&boot_->terminal_root, 1}, {}, now).ok());
  EXPECT_FALSE(crypto::VerifyChain(work_cert, {}, {&boot_->kdh_ca, 1}, {}, now).ok());
  EXPECT_TRUE(crypto::VerifyChain(kdh_cert, {}, {&boot_->kdh_ca, 1}, {}, now).ok());
  // A work certificate is no KDH certificate for a terminal either.
  EXPECT_FALSE(tr34::CheckRole(work_cert, tr34::Role::kKdh, boot_->kdh_ca).ok());
}

TEST_F(CaGrpcPgTest, KdhCertificateRequestsAreValidatedOverGrpc) {
  auto kms = Stub("kms");
  auto rsa = crypto::GenerateRsaKey(2048).value().GetPublicKey();
  struct Case {
    crypto::PublicKey key;
    std::string hsm_id;
    uint32_t days;
    std::string message;
  };
  std::vector<Case> cases = {
      {crypto::GenerateEcP256Key()->GetPublicKey(), "hsm-kms", 0,
       "public_key_der: must be an RSA key"},
      {testing::RsaKeyWithExponent(1024, 65537).GetPublicKey(), "hsm-kms", 0,
       "public_key_der: RSA key must have 2048 to 4096 bits, got 1024"},
      {testing::RsaKeyWithExponent(2048, 3).GetPublicKey(), "hsm-kms", 0,
       "public_key_der: RSA public exponent must be 65537"},
      {rsa, "HSM-KMS", 0, "hsm_id: must be 1-32 characters of [a-z0-9-]"},
      {rsa, std::string(33, 'a'), 0, "hsm_id: must be 1-32 characters of [a-z0-9-]"},
      {rsa, "hsm-kms", 731, "validity_days: must be at most 730 for kdh certificates"},
  };
  for (const Case& c : cases) {
    auto refused = IssueKdh(*kms, c.key, c.hsm_id, c.days);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(refused.status().message(), c.message);
  }
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates WHERE profile = 'kdh'")[0][0].as<int>(), 0);
  auto shorter = IssueKdh(*kms, rsa, "hsm-kms", 730);
  EXPECT_TRUE(shorter.ok()) << shorter.status();
}

TEST_F(CaGrpcPgTest, RevokedKdhCertificateIsListedInKdhCaCrl) {
  auto kms = Stub("kms");
  auto issued = IssueKdh(*kms, crypto::GenerateRsaKey(2048).value().GetPublicKey());
  ASSERT_TRUE(issued.ok()) << issued.status();
  const std::string serial = issued->serial_hex();
  // kms may read but not revoke.
  EXPECT_EQ(Revoke(*kms, serial).status().code(), absl::StatusCode::kPermissionDenied);
  auto revoked = Revoke(*Alice(), serial);
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->state(), v1::CertificateStatus::STATE_REVOKED);
  EXPECT_EQ(revoked->issuer(), v1::ISSUER_KDH_CA);
  EXPECT_EQ(Status(*kms, serial)->state(), v1::CertificateStatus::STATE_REVOKED);

  auto crl = Crl(*kms, v1::ISSUER_KDH_CA);
  ASSERT_TRUE(crl.ok()) << crl.status();
  EXPECT_EQ(crl->crl_number(), 2u);
  std::string crl_path = tmp_.Write("kdh-ca.crl.pem", crl->crl_pem());
  std::string ca_path = tmp_.Write("kdh-ca.pem", boot_->kdh_ca.ToPem());
  auto crl_text = testing::RunCommand("openssl crl -noout -text -in " + crl_path);
  EXPECT_THAT(crl_text.output, HasSubstr("Issuer: O = rkl, CN = kdh-ca"));
  EXPECT_THAT(crl_text.output, HasSubstr("Serial Number: " + serial));
  auto crl_sig = testing::RunCommand("openssl crl -noout -CAfile " + ca_path + " -in " + crl_path);
  EXPECT_THAT(crl_sig.output, HasSubstr("verify OK"));
  auto verify = OpensslVerify(boot_->kdh_ca.ToPem(), issued->certificate_pem(), crl->crl_pem());
  EXPECT_NE(verify.exit_code, 0);
  EXPECT_THAT(verify.output, HasSubstr("certificate revoked"));

  // What a terminal runs on the CRL that comes with CT_KDH (libs/tr34).
  auto cert = crypto::Certificate::FromPem(issued->certificate_pem()).value();
  auto parsed = crypto::Crl::FromPem(crl->crl_pem()).value();
  std::vector<Bytes> crls = {parsed.ToDer()};
  absl::Status not_revoked =
      tr34::CheckKdhNotRevoked(cert, crls, boot_->kdh_ca, absl::ToUnixSeconds(absl::Now()));
  EXPECT_EQ(not_revoked.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(not_revoked.message(), HasSubstr("revoked"));

  // terminal-root's CRL is untouched.
  EXPECT_EQ(Crl(*kms, v1::ISSUER_TERMINAL_ROOT)->crl_number(), 1u);
}

TEST_F(CaGrpcPgTest, OperatorCertificatesAreAdminOnlyAndFollowTheirProfile) {
  auto card = crypto::GenerateEcP256Key().value();
  std::string csr = testing::CsrPem(card, "ignored");
  for (const char* who : {"mtms", "kms"}) {
    auto stub = Stub(who);
    EXPECT_EQ(IssueOperator(*stub, csr).status().code(), absl::StatusCode::kPermissionDenied);
  }
  auto admin = Alice();
  auto issued = IssueOperator(*admin, csr);
  ASSERT_TRUE(issued.ok()) << issued.status();
  std::string text = X509Text(issued->certificate_pem());
  EXPECT_THAT(ExtensionHeaders(text), ElementsAreArray(kPlainProfileExtensions));
  EXPECT_THAT(text, HasSubstr("X509v3 Key Usage: critical\n                Digital Signature\n"));
  EXPECT_THAT(text, HasSubstr("CN = operator:alice"));
  EXPECT_THAT(text, HasSubstr("Issuer: O = rkl, CN = operator-ca"));
  auto ok = OpensslVerify(boot_->operator_ca.ToPem(), issued->certificate_pem());
  EXPECT_EQ(ok.exit_code, 0) << ok.output;

  // Never a work certificate: wrong issuer and wrong key usage.
  auto as_work = OpensslVerify(boot_->terminal_root.ToPem(), issued->certificate_pem());
  EXPECT_NE(as_work.exit_code, 0) << as_work.output;
  auto cert = crypto::Certificate::FromPem(issued->certificate_pem()).value();
  EXPECT_FALSE(crypto::VerifyChain(cert, {}, {&boot_->terminal_root, 1}, {},
                                   absl::ToUnixSeconds(absl::Now()))
                   .ok());
  EXPECT_NE(cert.KeyUsageBits(), crypto::KeyUsage::kKeyEncipherment);
  EXPECT_FALSE(crypto::HasAll(cert.KeyUsageBits(), crypto::KeyUsage::kKeyEncipherment));
}

TEST_F(CaGrpcPgTest, CsrWithForeignSignatureIsInvalidArgument) {
  auto admin = Alice();
  std::string csr = testing::MismatchedCsrPem(crypto::GenerateEcP256Key().value(),
                                              crypto::GenerateEcP256Key().value());
  auto op = IssueOperator(*admin, csr);
  EXPECT_EQ(op.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(op.status().message(),
            "csr_pem: signature does not verify under the request's public key");
  EXPECT_EQ(IssueService(*admin, csr, "kms").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates")[0][0].as<int>(), 12);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificate_requests")[0][0].as<int>(), 0);
}

TEST_F(CaGrpcPgTest, ServiceCertificatesAreAdminOnlyAndCarryEkuAndSans) {
  auto key = crypto::GenerateEcP256Key().value();
  auto mtms = Stub("mtms");
  EXPECT_EQ(IssueService(*mtms, testing::CsrPem(key), "kms").status().code(),
            absl::StatusCode::kPermissionDenied);
  v1::RequestCertificateRequest req;
  req.mutable_service()->set_csr_pem(testing::CsrPem(key));
  req.mutable_service()->set_name("kms");
  req.mutable_service()->add_dns_names("kms.rkl.internal");
  auto issued = RequestAndApprove(*Alice(), req);
  ASSERT_TRUE(issued.ok()) << issued.status();
  std::string text = X509Text(issued->certificate_pem());
  EXPECT_THAT(ExtensionHeaders(text),
              ElementsAre("X509v3 Basic Constraints: critical", "X509v3 Key Usage: critical",
                          "X509v3 Extended Key Usage:", "X509v3 Subject Alternative Name:",
                          "X509v3 Subject Key Identifier:", "X509v3 Authority Key Identifier:"));
  EXPECT_THAT(text, HasSubstr("TLS Web Server Authentication, TLS Web Client Authentication\n"));
  EXPECT_THAT(text, HasSubstr("DNS:kms, DNS:localhost, DNS:kms.rkl.internal\n"));
  EXPECT_THAT(text, HasSubstr("Subject: O = rkl, CN = kms\n"));
  auto verify = OpensslVerify(boot_->service_ca.ToPem(), issued->certificate_pem());
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto purpose = testing::RunCommand("openssl verify -purpose sslserver -CAfile " +
                                     tmp_.Write("sca.pem", boot_->service_ca.ToPem()) + " " +
                                     tmp_.Write("svc.pem", issued->certificate_pem()));
  EXPECT_EQ(purpose.exit_code, 0) << purpose.output;
}

TEST_F(CaGrpcPgTest, RevokedOperatorIsListedInTheCrlAndReportedRevoked) {
  auto admin = Alice();
  auto issued = IssueOperator(*admin, testing::CsrPem(crypto::GenerateEcP256Key().value()));
  ASSERT_TRUE(issued.ok());
  const std::string serial = issued->serial_hex();
  auto mtms = Stub("mtms");
  auto before = Status(*mtms, serial);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->state(), v1::CertificateStatus::STATE_GOOD);
  EXPECT_EQ(before->profile(), "operator");
  EXPECT_EQ(before->issuer(), v1::ISSUER_OPERATOR_CA);
  EXPECT_EQ(before->subject_cn(), "operator:alice");

  // Only admins revoke.
  EXPECT_EQ(Revoke(*mtms, serial).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Status(*mtms, serial)->state(), v1::CertificateStatus::STATE_GOOD);

  auto revoked = Revoke(*admin, serial);
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->state(), v1::CertificateStatus::STATE_REVOKED);
  auto after = Status(*mtms, serial);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::CertificateStatus::STATE_REVOKED);
  EXPECT_EQ(after->reason(), v1::REVOCATION_REASON_KEY_COMPROMISE);
  EXPECT_GT(after->revoked_at_unix_s(), 0);

  auto crl = Crl(*mtms, v1::ISSUER_OPERATOR_CA);
  ASSERT_TRUE(crl.ok()) << crl.status();
  EXPECT_EQ(crl->crl_number(), 2u);
  EXPECT_GT(crl->next_update_unix_s(), absl::ToUnixSeconds(absl::Now()) + 6 * 86'400);
  std::string crl_path = tmp_.Write("operator-ca.crl.pem", crl->crl_pem());
  std::string ca_path = tmp_.Write("operator-ca.pem", boot_->operator_ca.ToPem());
  auto crl_text = testing::RunCommand("openssl crl -noout -text -in " + crl_path);
  EXPECT_EQ(crl_text.exit_code, 0) << crl_text.output;
  EXPECT_THAT(crl_text.output, HasSubstr("Serial Number: " + serial));
  EXPECT_THAT(crl_text.output, HasSubstr("Key Compromise"));
  EXPECT_THAT(crl_text.output, HasSubstr("X509v3 CRL Number: \n                2"));
  EXPECT_THAT(crl_text.output, HasSubstr("Next Update:"));
  auto crl_sig = testing::RunCommand("openssl crl -noout -CAfile " + ca_path + " -in " + crl_path);
  EXPECT_EQ(crl_sig.exit_code, 0) << crl_sig.output;
  EXPECT_THAT(crl_sig.output, HasSubstr("verify OK"));

  // openssl's own chain check with the CRL now rejects the certificate.
  auto verify =
      OpensslVerify(boot_->operator_ca.ToPem(), issued->certificate_pem(), crl->crl_pem());
  EXPECT_NE(verify.exit_code, 0);
  EXPECT_THAT(verify.output, HasSubstr("certificate revoked"));
  // ...while another operator's certificate still verifies against the same CRL.
  auto other = IssueOperator(*admin, testing::CsrPem(crypto::GenerateEcP256Key().value()), "bob");
  ASSERT_TRUE(other.ok());
  auto good = OpensslVerify(boot_->operator_ca.ToPem(), other->certificate_pem(), crl->crl_pem());
  EXPECT_EQ(good.exit_code, 0) << good.output;

  // Other issuers' CRLs are untouched and empty.
  auto root_crl = Crl(*mtms, v1::ISSUER_TERMINAL_ROOT);
  ASSERT_TRUE(root_crl.ok());
  EXPECT_EQ(root_crl->crl_number(), 1u);
  EXPECT_THAT(testing::RunCommand("openssl crl -noout -text -in " +
                                  tmp_.Write("root.crl.pem", root_crl->crl_pem()))
                  .output,
              HasSubstr("No Revoked Certificates."));
}

TEST_F(CaGrpcPgTest, StatusAndRevocationInputErrors) {
  auto admin = Stub("admin:alice");
  EXPECT_EQ(Status(*admin, "00112233445566778899AABBCCDDEEFF").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Status(*admin, "not-hex").status().code(), absl::StatusCode::kInvalidArgument);
  v1::RevokeCertificateRequest req;
  req.set_serial_hex(boot_->admins[0].certificate.SerialHex());
  auto no_reason = Call<v1::RevokeCertificateRequest, v1::CertificateStatus>(
      *admin, &v1::CertificateAuthority::Stub::RevokeCertificate, req);
  EXPECT_EQ(no_reason.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Revoke(*admin, boot_->service_ca.SerialHex()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Crl(*admin, v1::ISSUER_UNSPECIFIED).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- Dual control over gRPC: the identity and the certificate serial come from mTLS ----------

TEST_F(CaGrpcPgTest, OneAdminAloneCannotIssueAPrivilegedCertificate) {
  auto alice = Alice();
  const int certs_before = Sql("SELECT count(*) FROM ca_certificates")[0][0].as<int>();
  for (const char* name : {"admin:mallory", "kms", "custodian:eve"}) {
    const int certs = Sql("SELECT count(*) FROM ca_certificates")[0][0].as<int>();
    v1::RequestCertificateRequest req;
    req.mutable_service()->set_csr_pem(testing::CsrPem(crypto::GenerateEcP256Key().value()));
    req.mutable_service()->set_name(name);
    auto requested = Request(*alice, req);
    ASSERT_TRUE(requested.ok()) << requested.status();
    EXPECT_EQ(requested->state(), v1::CertificateRequestInfo::STATE_PENDING);
    EXPECT_EQ(requested->requested_by(), "admin:alice");
    EXPECT_EQ(requested->public_key_sha256_hex().size(), 64u);
    auto self = Approve(*alice, requested->request_id(), name);
    EXPECT_EQ(self.status().code(), absl::StatusCode::kPermissionDenied) << name;
    // Identities that are not admins of this CA: PERMISSION_DENIED at the door.
    for (const char* who : {"kms", "custodian:carol", "admin:alice"}) {
      // (admin:alice of the *test* PKI: same name, a certificate this CA never issued)
      auto stranger = Stub(who);
      EXPECT_EQ(Approve(*stranger, requested->request_id(), name).status().code(),
                absl::StatusCode::kPermissionDenied)
          << who;
    }
    EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates")[0][0].as<int>(), certs);
    // ...and the second, distinct admin makes it happen.
    auto approved = Approve(*Bob(), requested->request_id(), name);
    ASSERT_TRUE(approved.ok()) << approved.status();
    EXPECT_EQ(approved->approved_by(), "admin:bob");
    auto cert = crypto::Certificate::FromPem(approved->certificate().certificate_pem());
    ASSERT_TRUE(cert.ok());
    EXPECT_EQ(cert->SubjectCommonName(), name);
  }
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates")[0][0].as<int>(), certs_before + 3);
  // Every step and every refusal is in the audit trail.
  EXPECT_EQ(
      Sql("SELECT count(*) FROM ca_audit WHERE action = 'request.create' AND result = 'OK'")[0][0]
          .as<int>(),
      3);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_audit WHERE action = 'request.approve'"
                " AND actor = 'admin:alice' AND result LIKE 'PERMISSION_DENIED%'")[0][0]
                .as<int>(),
            6);  // self-approval, and the test PKI's admin:alice
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_audit WHERE action = 'rpc.refused'")[0][0].as<int>(), 6);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_audit WHERE action = 'request.approve'"
                " AND actor = 'admin:bob' AND result = 'OK' AND serial_hex IS NOT NULL")[0][0]
                .as<int>(),
            3);
}

TEST_F(CaGrpcPgTest, TheDatabaseRefusesASelfApprovedRequestWhateverTheCode) {
  auto requested = Request(*Alice(), [] {
    v1::RequestCertificateRequest req;
    req.mutable_service()->set_csr_pem(testing::CsrPem(crypto::GenerateEcP256Key().value()));
    req.mutable_service()->set_name("admin:mallory");
    return req;
  }());
  ASSERT_TRUE(requested.ok());
  EXPECT_THROW(Sql("UPDATE ca_certificate_requests SET approved_by = requested_by WHERE id = '" +
                   requested->request_id() + "'"),
               pqxx::check_violation);
}

TEST_F(CaGrpcPgTest, RequestsCanBeListedAndReadByAdminsOnly) {
  v1::RequestCertificateRequest req;
  req.mutable_operator_()->set_csr_pem(testing::CsrPem(crypto::GenerateEcP256Key().value()));
  req.mutable_operator_()->set_operator_id("op2");
  auto requested = Request(*Alice(), req);
  ASSERT_TRUE(requested.ok()) << requested.status();
  EXPECT_EQ(requested->subject(), "operator:op2");
  auto bob = Bob();
  auto list = Call<v1::ListCertificateRequestsRequest, v1::ListCertificateRequestsResponse>(
      *bob, &v1::CertificateAuthority::Stub::ListCertificateRequests,
      v1::ListCertificateRequestsRequest());
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->requests_size(), 1);
  EXPECT_EQ(list->requests(0).request_id(), requested->request_id());
  v1::GetCertificateRequestRequest get;
  get.set_request_id(requested->request_id());
  auto mtms = Stub("mtms");
  EXPECT_EQ((Call<v1::GetCertificateRequestRequest, v1::CertificateRequestInfo>(
                 *mtms, &v1::CertificateAuthority::Stub::GetCertificateRequest, get))
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(Approve(*bob, requested->request_id(), "operator:op2").ok());
  auto fetched = Call<v1::GetCertificateRequestRequest, v1::CertificateRequestInfo>(
      *Alice(), &v1::CertificateAuthority::Stub::GetCertificateRequest, get);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->state(), v1::CertificateRequestInfo::STATE_ISSUED);
  EXPECT_FALSE(fetched->certificate().certificate_pem().empty());
}

}  // namespace
}  // namespace rkl::ca
