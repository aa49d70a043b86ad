// rkl-mtms against its real peers: HSM #1 is rkl-hsm (hsm_daemon, started through
// HsmDaemon::Start as main() does) and the CA is rkl-ca (CaCore + CaGrpcService, bootstrapped
// with CaCore::Bootstrap), each in-process on its own PostgreSQL database behind mTLS
// (TestPki service certificates). KMS is the test KMS of test_support (it only records what
// MTMS forwards). PK and MAK enter HSM #1 through a dual-control key ceremony with RSA-OAEP
// encrypted components, so the test — playing both custodians — knows them and can open the
// Ctk_pk HSM #1 produced, as KMS/HSM #2 would.
//
// Time: MTMS and the CA share one FakeClock (certificate validity, CRL times, the ±5 minute
// window, the CRL refresh schedule); HSM #1 gets a frozen clock. Nothing waits on real time:
// forwarding is driven by ForceForward, CRL refreshes by OperatorTrust::Refresh or by moving
// the fake clock.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ca_core.h"
#include "ca_db_roles.h"
#include "ca_grpc_service.h"
#include "ca_pg_repository.h"
#include "hsm_daemon.h"
#include "master_key.h"
#include "mtms_batchers.h"
#include "mtms_core.h"
#include "mtms_db_roles.h"
#include "mtms_forwarder.h"
#include "mtms_grpc_ports.h"
#include "mtms_grpc_service.h"
#include "mtms_operator_trust.h"
#include "mtms_pg_repository.h"
#include "mtms_process.h"
#include "rkl/ca/migrations.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/crypto/x509_csr.h"
#include "rkl/crypto/x509_verify.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/migration.h"
#include "rkl/mtms/migrations.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/test_pki.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "rkl/v1/mtms.grpc.pb.h"
#include "test_support.h"

namespace rkl::mtms::testing {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;
using rkl::testing::LoopbackChannel;
using ::testing::HasSubstr;

constexpr absl::Duration kTimeout = absl::Seconds(30);
constexpr char kHsmId[] = "hsm-mtms";
constexpr absl::Duration kCrlRefresh = absl::Minutes(5);  // ca.crl_refresh default

std::string ToStr(std::span<const uint8_t> b) { return std::string(AsString(b)); }

// HSM #1's clock, frozen: ceremonies never expire mid-test.
// (A FakeClock nobody advances.)
using FrozenHsmClock = FakeClock;

template <typename Stub, typename Req, typename Resp, typename Method>
absl::StatusOr<Resp> Call(Stub& stub, Method method, const Req& req) {
  auto ctx = rpc::MakeClientContext(kTimeout);
  Resp resp;
  grpc::Status s = (stub.*method)(ctx.get(), req, &resp);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return resp;
}

// What a terminal made (PROTOCOL §3) and what its operator terminal wraps around it (§4).
struct TerminalPackage {
  protocol::TransportKey tk;  // the terminal's secret, kept to compare with what KMS gets
  v1::TransportKeyPackage package;
};

// The world every test shares: the service PKI, HSM #1 with PK and MAK from the ceremony,
// the CA with its issuers. Created once per test binary (RSA keys and ceremonies are slow).
struct World {
  FakeClock clock;
  FrozenHsmClock hsm_clock;
  std::unique_ptr<rkl::testing::TestPki> pki;
  std::map<std::string, rpc::TlsFiles> tls;

  std::optional<rkl::testing::TestDatabase> hsm_db;
  std::unique_ptr<hsm::HsmDaemon> hsm;
  uint64_t pk_index = 0;
  uint64_t mak_index = 0;
  SecretBytes pk;  // XOR of the components the test entered as custodians
  SecretBytes mak;

  std::optional<rkl::testing::ServiceDatabase> ca_db;
  std::optional<ca::PgCaRepository> ca_repository;
  std::optional<ca::MasterKey> ca_master_key;
  std::optional<ca::CaCore> ca_core;
  std::unique_ptr<ca::CaGrpcService> ca_service;
  std::unique_ptr<rpc::Server> ca_server;
  std::optional<crypto::Certificate> terminal_root;  // as bootstrapped: what terminals burn in
  std::optional<crypto::Certificate> operator_ca;
};

class MtmsIntegrationTest : public rkl::testing::PgFixture {
 protected:
  MtmsIntegrationTest()
      : PgFixture({.migrations = rkl::mtms::Migrations(), .grants = kMtmsRuntimeGrants}) {}

  static void SetUpTestSuite() {
    world_ = new World();
    World& w = *world_;
    auto pki = rkl::testing::TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    w.pki = *std::move(pki);
    for (const char* id : {"hsm-mtms", "ca", "kms", "mtms", "admin:alice", "admin:bob",
                           "custodian:alice", "custodian:bob"}) {
      auto files = w.pki->Issue(id);
      ASSERT_TRUE(files.ok()) << files.status();
      w.tls[id] = *files;
    }
    // The CA first: HSM #1 trusts its operator-ca.
    ASSERT_NO_FATAL_FAILURE(StartCa(w));
    ASSERT_NO_FATAL_FAILURE(StartHsm(w));
    ASSERT_NO_FATAL_FAILURE(RunCeremony(w, v1::KEY_TYPE_PK, w.pk_index, w.pk));
    ASSERT_NO_FATAL_FAILURE(RunCeremony(w, v1::KEY_TYPE_MAK, w.mak_index, w.mak));
  }

  static void TearDownTestSuite() {
    if (world_ == nullptr) return;
    if (world_->ca_server) world_->ca_server->Shutdown(absl::Seconds(1));
    delete world_;
    world_ = nullptr;
  }

  static void StartHsm(World& w) {
    auto db = rkl::testing::TestDatabase::Create();
    ASSERT_TRUE(db.ok()) << db.status();
    w.hsm_db.emplace(*std::move(db));
    std::string lmk_file = w.pki->dir() + "/hsm-mtms-lmk.hex";
    std::ofstream(lmk_file) << ToHex(crypto::RandomBytes(32)) << "\n";
    ASSERT_EQ(::chmod(lmk_file.c_str(), 0600), 0);
    const std::string operator_ca_file = w.pki->dir() + "/operator-ca.pem";
    std::ofstream(operator_ca_file) << w.operator_ca->ToPem();
    hsm::HsmDaemonOptions options;
    options.hsm_id = kHsmId;
    options.role = hsm::HsmRole::kMtms;
    options.operator_ca_file = operator_ca_file;
    options.database_dsn = w.hsm_db->runtime_dsn();
    options.owner_dsn = w.hsm_db->owner_dsn();
    options.lmk_file = lmk_file;
    options.operational_identities = {"mtms"};
    options.listen_address = "127.0.0.1:0";
    options.tls = w.tls["hsm-mtms"];
    options.clock = w.hsm_clock;
    auto daemon = hsm::HsmDaemon::Start(options);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    w.hsm = *std::move(daemon);
    ASSERT_TRUE(w.hsm->self_test().passed) << "HSM #1 self-test failed";
  }

  // S101 on HSM #1: custodian:alice begins, each custodian adds one component RSA-OAEP
  // encrypted to the ceremony key, custodian:bob completes. The key is the XOR of the
  // components.
  static void RunCeremony(World& w, v1::KeyType type, uint64_t& index, SecretBytes& key) {
    auto alice =
        v1::Hsm::NewStub(LoopbackChannel(w.hsm->port(), w.tls["custodian:alice"], "hsm-mtms"));
    auto bob = v1::Hsm::NewStub(LoopbackChannel(w.hsm->port(), w.tls["custodian:bob"], "hsm-mtms"));
    v1::BeginCeremonyRequest begin;
    begin.set_label(type == v1::KEY_TYPE_PK ? "PK-MTMS-INT" : "MAK-MTMS-INT");
    begin.set_key_type(type);
    begin.set_component_count(2);
    auto ceremony = Call<v1::Hsm::Stub, v1::BeginCeremonyRequest, v1::BeginCeremonyResponse>(
        *alice, &v1::Hsm::Stub::BeginCeremony, begin);
    ASSERT_TRUE(ceremony.ok()) << ceremony.status();
    auto cek = crypto::PublicKey::FromDer(AsBytes(ceremony->component_encryption_key_der()));
    ASSERT_TRUE(cek.ok()) << cek.status();
    const std::string label = "RKL-COMPONENT:" + ceremony->ceremony_id();
    SecretBytes combined(32);
    for (v1::Hsm::Stub* custodian : {alice.get(), bob.get()}) {
      SecretBytes component = crypto::RandomSecret(32);
      for (size_t i = 0; i < 32; ++i) {
        combined.RevealSecretMutable()[i] ^= component.RevealSecret()[i];
      }
      auto encrypted = crypto::RsaOaepEncrypt(*cek, component, AsBytes(label));
      ASSERT_TRUE(encrypted.ok()) << encrypted.status();
      v1::AddComponentRequest add;
      add.set_ceremony_id(ceremony->ceremony_id());
      add.set_encrypted_component(ToStr(*encrypted));
      auto added = Call<v1::Hsm::Stub, v1::AddComponentRequest, v1::AddComponentResponse>(
          *custodian, &v1::Hsm::Stub::AddComponent, add);
      ASSERT_TRUE(added.ok()) << added.status();
      EXPECT_EQ(added->component_kcv(), *crypto::KcvHex(crypto::CipherFamily::kAes, component));
    }
    v1::CompleteCeremonyRequest complete;
    complete.set_ceremony_id(ceremony->ceremony_id());
    auto done = Call<v1::Hsm::Stub, v1::CompleteCeremonyRequest, v1::CompleteCeremonyResponse>(
        *bob, &v1::Hsm::Stub::CompleteCeremony, complete);
    ASSERT_TRUE(done.ok()) << done.status();
    ASSERT_EQ(done->kcv(), *crypto::KcvHex(crypto::CipherFamily::kAes, combined));
    index = done->key_index();
    key = std::move(combined);
  }

  static void StartCa(World& w) {
    auto db = rkl::testing::ServiceDatabase::Create(
        {.migrations = ca::Migrations(), .grants = ca::kCaRuntimeGrants});
    ASSERT_TRUE(db.ok()) << db.status();
    w.ca_db.emplace(*std::move(db));
    w.ca_repository.emplace(&w.ca_db->pool());
    auto master_key = ca::MasterKey::FromSecret(crypto::RandomSecret(32));
    ASSERT_TRUE(master_key.ok()) << master_key.status();
    w.ca_master_key.emplace(*std::move(master_key));
    // The default policy: RSA-3072 terminal-root, P-256 operator-ca and service-ca.
    w.ca_core.emplace(&*w.ca_repository, &*w.ca_master_key, ca::CaPolicy{}, w.clock,
                      crypto::FillRandom);
    ca::BootstrapRequest bootstrap;
    bootstrap.admin_names = {"alice", "bob"};
    bootstrap.operator_pin = SecretBytes::CopyOf(AsBytes("246810"));
    bootstrap.pkcs12_iterations = 2048;
    auto boot = w.ca_core->Bootstrap(bootstrap);
    ASSERT_TRUE(boot.ok()) << boot.status();
    w.terminal_root.emplace(boot->terminal_root);
    w.operator_ca.emplace(boot->operator_ca);
    ASSERT_TRUE(w.ca_core->CheckReady().ok());
    w.ca_service = std::make_unique<ca::CaGrpcService>(&*w.ca_core);
    auto server = rpc::Server::Start({.listen_address = "127.0.0.1:0", .tls = w.tls["ca"]},
                                     {w.ca_service.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    w.ca_server = *std::move(server);
  }

  void SetUp() override {
    ASSERT_NE(world_, nullptr);
    World& w = *world_;
    ASSERT_TRUE(w.hsm && w.ca_server && w.pk_index != 0 && w.mak_index != 0)
        << "the suite set-up failed; see above";
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    kms_service_ = std::make_unique<TestKmsService>(kms_);
    auto kms_server = rpc::Server::Start({.listen_address = "127.0.0.1:0", .tls = w.tls["kms"]},
                                         {kms_service_.get()});
    ASSERT_TRUE(kms_server.ok()) << kms_server.status();
    kms_server_ = *std::move(kms_server);
    mtms_ = std::make_unique<MtmsProcess>(
        w.clock, MtmsProcessOptions{.dsn = database().runtime_dsn(),
                                    .tls = w.tls["mtms"],
                                    .hsm_port = w.hsm->port(),
                                    .ca_port = w.ca_server->port(),
                                    .kms_port = kms_server_->port(),
                                    .hsm_name = kHsmId,
                                    .ca_name = "ca",
                                    .kms_name = "kms",
                                    .rpc_timeout = kTimeout,
                                    .crl_refresh = kCrlRefresh,
                                    .core = {.hsm_id = kHsmId},
                                    .forwarder = {.replica_id = "mtms-integration",
                                                  .pk_index = w.pk_index,
                                                  .mak_index = w.mak_index}});
    ASSERT_NE(mtms_->server, nullptr);
    auto alice = IssueOperator("alice");
    ASSERT_TRUE(alice.ok()) << alice.status();
    alice_.emplace(*std::move(alice));
  }

  void TearDown() override {
    mtms_.reset();
    if (kms_server_) kms_server_->Shutdown(absl::Seconds(1));
  }

  static World& w() { return *world_; }
  FakeClock& clock() { return world_->clock; }

  // ---- the CA, as an administrator uses it ----

  std::unique_ptr<v1::CertificateAuthority::Stub> CaAdmin() {
    return v1::CertificateAuthority::NewStub(
        LoopbackChannel(w().ca_server->port(), w().tls["admin:alice"], "ca"));
  }

  // An operator card: the key stays here, the CSR goes to the real CA.
  absl::StatusOr<OperatorCard> IssueOperator(const std::string& operator_id) {
    absl::StatusOr<crypto::PrivateKey> key = crypto::GenerateEcP256Key();
    if (!key.ok()) return key.status();
    absl::StatusOr<crypto::Csr> csr =
        crypto::CsrBuilder().SetSubjectCommonName("operator card").Sign(*key);
    if (!csr.ok()) return csr.status();
    // Signed by the real CA's core: two admins' approval (dual control) is the CA's own
    // tests' subject; here the card only has to be a real operator-ca card.
    absl::StatusOr<crypto::Certificate> cert =
        w().ca_core->IssueOperatorCertificate({csr->ToPem(), operator_id, 0});
    if (!cert.ok()) return cert.status();
    return OperatorCard{operator_id, *std::move(key), *std::move(cert)};
  }

  absl::Status RevokeAtCa(const crypto::Certificate& cert) {
    v1::RevokeCertificateRequest req;
    req.set_serial_hex(cert.SerialHex());
    req.set_reason(v1::REVOCATION_REASON_KEY_COMPROMISE);
    auto stub = CaAdmin();
    auto status =
        Call<v1::CertificateAuthority::Stub, v1::RevokeCertificateRequest, v1::CertificateStatus>(
            *stub, &v1::CertificateAuthority::Stub::RevokeCertificate, req);
    if (!status.ok()) return status.status();
    if (status->state() != v1::CertificateStatus::STATE_REVOKED) {
      return absl::InternalError("CA did not report the certificate revoked");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<crypto::Crl> CaOperatorCrl() {
    v1::GetCrlRequest req;
    req.set_issuer(v1::ISSUER_OPERATOR_CA);
    auto stub = CaAdmin();
    auto crl = Call<v1::CertificateAuthority::Stub, v1::GetCrlRequest, v1::GetCrlResponse>(
        *stub, &v1::CertificateAuthority::Stub::GetCrl, req);
    if (!crl.ok()) return crl.status();
    return crypto::Crl::FromPem(crl->crl_pem());
  }

  // ---- MTMS over gRPC, as an administrator and as an operator terminal use it ----

  std::unique_ptr<v1::Mtms::Stub> MtmsAdmin() {
    return v1::Mtms::NewStub(
        LoopbackChannel(mtms_->server->port(), w().tls["admin:alice"], "mtms"));
  }
  // The operator terminal: server-authenticated TLS only, no client certificate.
  std::unique_ptr<v1::Mtms::Stub> MtmsAnonymous() {
    return v1::Mtms::NewStub(LoopbackChannel(mtms_->server->port(), w().pki->Anonymous(), "mtms"));
  }

  // `fresh_millisecond` moves the shared frozen clock on, so created_at values of work keys
  // differ the way they do in production; ProvisioningTwiceInOneMillisecondWorks turns it off.
  absl::StatusOr<v1::WorkKey> Provision(bool rotate, bool fresh_millisecond = true) {
    if (fresh_millisecond) clock().Advance(absl::Milliseconds(1));
    v1::ProvisionWorkKeyRequest req;
    req.set_rotate(rotate);
    auto stub = MtmsAdmin();
    return Call<v1::Mtms::Stub, v1::ProvisionWorkKeyRequest, v1::WorkKey>(
        *stub, &v1::Mtms::Stub::ProvisionWorkKey, req);
  }

  absl::StatusOr<v1::WorkKey> Retire(const std::string& serial_hex, bool force) {
    v1::RetireWorkKeyRequest req;
    req.set_serial_hex(serial_hex);
    req.set_force(force);
    auto stub = MtmsAdmin();
    return Call<v1::Mtms::Stub, v1::RetireWorkKeyRequest, v1::WorkKey>(
        *stub, &v1::Mtms::Stub::RetireWorkKey, req);
  }

  absl::StatusOr<WorkCertificateBundle> FetchWorkCertificate() {
    auto stub = MtmsAnonymous();
    auto resp = Call<v1::Mtms::Stub, v1::GetWorkCertificateRequest, v1::GetWorkCertificateResponse>(
        *stub, &v1::Mtms::Stub::GetWorkCertificate, v1::GetWorkCertificateRequest());
    if (!resp.ok()) return resp.status();
    return WorkCertificateBundle{resp->work_certificate_pem(), resp->terminal_root_pem(),
                                 resp->serial_hex()};
  }

  absl::StatusOr<std::string> Submit(const SubmitRequest& r) {
    v1::SubmitTransportKeyRequest req;
    req.set_package(r.package);
    req.set_signature(r.signature);
    req.set_operator_certificate_pem(r.operator_certificate_pem);
    auto stub = MtmsAnonymous();
    auto resp = Call<v1::Mtms::Stub, v1::SubmitTransportKeyRequest, v1::SubmitTransportKeyResponse>(
        *stub, &v1::Mtms::Stub::SubmitTransportKey, req);
    if (!resp.ok()) return resp.status();
    return resp->submission_id();
  }

  absl::StatusOr<v1::ForceForwardResponse> ForceForward() {
    auto stub = MtmsAdmin();
    return Call<v1::Mtms::Stub, v1::Empty, v1::ForceForwardResponse>(
        *stub, &v1::Mtms::Stub::ForceForward, v1::Empty());
  }

  SubmissionRecord Row(const std::string& submission_id) {
    auto row = mtms_->core.GetSubmission(submission_id);
    EXPECT_TRUE(row.ok()) << row.status();
    return row.ok() ? *row : SubmissionRecord{};
  }

  // ---- the terminal ----

  // PROTOCOL §2: the terminal accepts HsmWCRT only if it chains to its burned-in HsmRCRT, is
  // within validity, has exactly keyUsage keyEncipherment and holds RSA >= 2048.
  absl::StatusOr<crypto::PublicKey> TerminalAcceptsWorkCertificate(const std::string& pem) {
    absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromPem(pem);
    if (!cert.ok()) return cert.status();
    const crypto::Certificate roots[] = {*w().terminal_root};
    if (absl::Status s = crypto::VerifyChain(*cert, {}, roots, {}, clock().NowUnixSeconds());
        !s.ok()) {
      return s;
    }
    if (cert->KeyUsageBits() != crypto::KeyUsage::kKeyEncipherment || cert->IsCa()) {
      return absl::UnauthenticatedError("work certificate: wrong profile");
    }
    absl::StatusOr<crypto::PublicKey> pu = cert->GetPublicKey();
    if (!pu.ok()) return pu.status();
    if (pu->Type() != crypto::KeyType::kRsa || pu->Bits() < 2048) {
      return absl::UnauthenticatedError("work certificate: not RSA >= 2048");
    }
    return pu;
  }

  // PROTOCOL §3–§4: TK from the secure module, P, Ctk_Pu under Pu with label "RKL-TK:" ‖
  // label_sn (the package's SN unless a test says otherwise), the operator terminal's package.
  absl::StatusOr<TerminalPackage> MakeTerminalPackage(const WorkCertificateBundle& work,
                                                      const std::string& sn, KeyAlgorithm algorithm,
                                                      const std::string& label_sn = "") {
    absl::StatusOr<crypto::PublicKey> pu = TerminalAcceptsWorkCertificate(work.certificate_pem);
    if (!pu.ok()) return pu.status();
    TerminalPackage out{.tk = protocol::TransportKey{algorithm, crypto::GenerateKey(algorithm),
                                                     crypto::GenerateKey(algorithm)}};
    absl::StatusOr<SecretBytes> payload = protocol::EncodeTkPayload(out.tk);
    if (!payload.ok()) return payload.status();
    absl::StatusOr<Bytes> ctk_pu = crypto::RsaOaepEncrypt(
        *pu, *payload, protocol::OaepLabel(label_sn.empty() ? sn : label_sn));
    if (!ctk_pu.ok()) return ctk_pu.status();
    v1::TransportKeyPackage& p = out.package;
    p.set_sn(sn);
    p.set_ctk_pu(ToStr(*ctk_pu));
    p.set_work_certificate_serial(work.serial_hex);
    p.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(algorithm)));
    p.set_created_at_unix_ms(clock().NowUnixMs());
    p.set_nonce(ToStr(crypto::RandomBytes(16)));
    p.set_operator_id(alice_->operator_id);
    return out;
  }

  // What HSM #2 would do with the Ctk_pk KMS received: check header and MAC, unwrap, and
  // compare with the terminal's TK.
  void ExpectKmsReceived(const TerminalPackage& t) {
    std::optional<Bytes> ctk_pk = kms_.Get(t.package.sn());
    ASSERT_TRUE(ctk_pk.has_value()) << "KMS received nothing for " << t.package.sn();
    auto parsed = protocol::ParseCtkPk(*ctk_pk);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->header.sn, t.package.sn());
    EXPECT_EQ(parsed->header.algorithm, t.tk.algorithm);
    EXPECT_EQ(parsed->header.created_at_unix_ms, t.package.created_at_unix_ms());
    Bytes pk_kcv = *crypto::Kcv(crypto::CipherFamily::kAes, w().pk);
    Bytes mak_kcv = *crypto::Kcv(crypto::CipherFamily::kAes, w().mak);
    EXPECT_EQ(Bytes(parsed->header.pk_kcv.begin(), parsed->header.pk_kcv.end()),
              Bytes(pk_kcv.begin(), pk_kcv.begin() + 3));
    EXPECT_EQ(Bytes(parsed->header.mak_kcv.begin(), parsed->header.mak_kcv.end()),
              Bytes(mak_kcv.begin(), mak_kcv.begin() + 3));
    auto opened = protocol::OpenCtkPk(*parsed, w().pk, w().mak);
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_EQ(opened->algorithm, t.tk.algorithm);
    EXPECT_TRUE(opened->tek == t.tk.tek) << "TEK differs from the terminal's";
    EXPECT_TRUE(opened->auk == t.tk.auk) << "AUK differs from the terminal's";
    // And a wrong MAK does not open it.
    SecretBytes wrong_mak = SecretBytes::CopyOf(w().mak.RevealSecret());
    wrong_mak.RevealSecretMutable()[0] ^= 0x01;
    EXPECT_EQ(protocol::OpenCtkPk(*parsed, w().pk, wrong_mak).status().code(),
              absl::StatusCode::kUnauthenticated);
  }

  // Provisions (idempotently) and returns what an operator terminal fetches.
  WorkCertificateBundle ProvisionedWork() {
    auto key = Provision(false);
    EXPECT_TRUE(key.ok()) << key.status();
    auto work = FetchWorkCertificate();
    EXPECT_TRUE(work.ok()) << work.status();
    return work.ok() ? *work : WorkCertificateBundle{};
  }

  static World* world_;

  FakeKms kms_;
  std::unique_ptr<TestKmsService> kms_service_;
  std::unique_ptr<rpc::Server> kms_server_;
  std::unique_ptr<MtmsProcess> mtms_;
  std::optional<OperatorCard> alice_;
};

World* MtmsIntegrationTest::world_ = nullptr;

// S201–S203: HSM #1 generates the pair, the CA certifies Pu under terminal-root, and what
// MTMS hands out is exactly that.
TEST_F(MtmsIntegrationTest, WorkKeyIsGeneratedByHsm1AndCertifiedByTheCa) {
  EXPECT_EQ(FetchWorkCertificate().status().code(), absl::StatusCode::kFailedPrecondition);
  auto key = Provision(false);
  ASSERT_TRUE(key.ok()) << key.status();
  auto again = Provision(false);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->serial_hex(), key->serial_hex());
  auto work = FetchWorkCertificate();
  ASSERT_TRUE(work.ok()) << work.status();
  EXPECT_EQ(work->serial_hex, key->serial_hex());
  EXPECT_EQ(work->certificate_pem, key->certificate_pem());

  auto cert = crypto::Certificate::FromPem(work->certificate_pem);
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->SubjectCommonName(),
            absl::StrCat("hsm-work:", kHsmId, ":", key->hsm_key_index()));
  EXPECT_EQ(cert->SerialHex(), work->serial_hex);
  EXPECT_TRUE(cert->HasKeyUsage());
  EXPECT_TRUE(cert->KeyUsageCritical());
  EXPECT_EQ(cert->KeyUsageBits(), crypto::KeyUsage::kKeyEncipherment);
  EXPECT_FALSE(cert->IsCa());
  EXPECT_EQ(cert->IssuerCommonName(), "terminal-root");
  // Chains to the terminal-root the CA was bootstrapped with (what terminals burn in) ...
  const crypto::Certificate roots[] = {*w().terminal_root};
  absl::Status chain = crypto::VerifyChain(*cert, {}, roots, {}, clock().NowUnixSeconds());
  EXPECT_TRUE(chain.ok()) << chain;
  auto served_root = crypto::Certificate::FromPem(work->terminal_root_pem);
  ASSERT_TRUE(served_root.ok());
  EXPECT_EQ(*served_root, *w().terminal_root);
  // ... and not to another issuer of the same CA.
  const crypto::Certificate wrong_roots[] = {*w().operator_ca};
  EXPECT_FALSE(crypto::VerifyChain(*cert, {}, wrong_roots, {}, clock().NowUnixSeconds()).ok());
  // The certified key is the one HSM #1 holds at that index.
  auto hsm = v1::Hsm::NewStub(LoopbackChannel(w().hsm->port(), w().tls["mtms"], "hsm-mtms"));
  v1::GetPublicKeyRequest get;
  get.set_key_index(key->hsm_key_index());
  auto pu = Call<v1::Hsm::Stub, v1::GetPublicKeyRequest, v1::GetPublicKeyResponse>(
      *hsm, &v1::Hsm::Stub::GetPublicKey, get);
  ASSERT_TRUE(pu.ok()) << pu.status();
  auto hsm_pu = crypto::PublicKey::FromDer(AsBytes(pu->public_key_der()));
  ASSERT_TRUE(hsm_pu.ok());
  EXPECT_TRUE(*cert->GetPublicKey() == *hsm_pu);
  EXPECT_EQ(hsm_pu->Bits(), 2048);
  // The CA recorded it.
  v1::GetCertificateStatusRequest status_req;
  status_req.set_serial_hex(work->serial_hex);
  auto ca = CaAdmin();
  auto status =
      Call<v1::CertificateAuthority::Stub, v1::GetCertificateStatusRequest, v1::CertificateStatus>(
          *ca, &v1::CertificateAuthority::Stub::GetCertificateStatus, status_req);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->state(), v1::CertificateStatus::STATE_GOOD);
  EXPECT_EQ(status->issuer(), v1::ISSUER_TERMINAL_ROOT);
}

// HSM #1 refuses a second active key with the same label. MTMS once labelled work keys
// "mtms-work-<now ms>", so provisioning twice in one millisecond (a quick rotate, two
// replicas) failed with ALREADY_EXISTS; the label now carries a random suffix.
TEST_F(MtmsIntegrationTest, ProvisioningTwiceInOneMillisecondWorks) {
  auto first = Provision(false);
  ASSERT_TRUE(first.ok()) << first.status();
  auto rotated = Provision(true, /*fresh_millisecond=*/false);
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  EXPECT_NE(rotated->serial_hex(), first->serial_hex());
}

TEST_F(MtmsIntegrationTest, ValidPackageIsStoredForwardedAndOpensUnderPkMakForEveryAlgorithm) {
  WorkCertificateBundle work = ProvisionedWork();
  std::vector<std::pair<TerminalPackage, std::string>> submitted;
  for (KeyAlgorithm a : {KeyAlgorithm::kAes128, KeyAlgorithm::kAes256, KeyAlgorithm::kTdes2}) {
    SCOPED_TRACE(std::string(crypto::KeyAlgorithmName(a)));
    auto t = MakeTerminalPackage(
        work, absl::StrCat("INT-VALID-", std::string(crypto::KeyAlgorithmName(a))), a);
    ASSERT_TRUE(t.ok()) << t.status();
    SubmitRequest req = SignPackage(t->package.SerializeAsString(), *alice_);
    auto id = Submit(req);
    ASSERT_TRUE(id.ok()) << id.status();
    SubmissionRecord row = Row(*id);
    EXPECT_EQ(row.state, SubmissionState::kReceived);
    EXPECT_EQ(ToStr(row.package), req.package);  // byte-exact
    EXPECT_EQ(ToStr(row.signature), req.signature);
    EXPECT_EQ(row.operator_certificate_pem, req.operator_certificate_pem);
    EXPECT_EQ(row.operator_certificate_serial, alice_->certificate.SerialHex());
    EXPECT_EQ(row.work_certificate_serial, work.serial_hex);
    EXPECT_EQ(row.sn, t->package.sn());
    submitted.emplace_back(*std::move(t), *id);
  }
  EXPECT_EQ(kms_.calls(), 0);  // nothing leaves before the forwarder runs

  auto pass = ForceForward();
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(pass->forwarded(), 3u);
  EXPECT_EQ(pass->rejected(), 0u);
  EXPECT_EQ(pass->retry_later(), 0u);
  EXPECT_EQ(kms_.calls(), 3);
  EXPECT_EQ(kms_.stored(), 3);
  for (const auto& [t, id] : submitted) {
    SCOPED_TRACE(t.package.sn());
    SubmissionRecord row = Row(id);
    EXPECT_EQ(row.state, SubmissionState::kForwarded);
    EXPECT_EQ(row.attempts, 1u);
    ExpectKmsReceived(t);
  }
}

TEST_F(MtmsIntegrationTest, ReplayedPackageIsAlreadyExists) {
  WorkCertificateBundle work = ProvisionedWork();
  auto t = MakeTerminalPackage(work, "INT-REPLAY", KeyAlgorithm::kAes128);
  ASSERT_TRUE(t.ok()) << t.status();
  SubmitRequest req = SignPackage(t->package.SerializeAsString(), *alice_);
  auto first = Submit(req);
  ASSERT_TRUE(first.ok()) << first.status();
  auto replay = Submit(req);
  EXPECT_EQ(replay.status().code(), absl::StatusCode::kAlreadyExists) << replay.status();
  // Also after the first one was forwarded: the nonce is spent for good.
  ASSERT_EQ(ForceForward()->forwarded(), 1u);
  EXPECT_EQ(Submit(req).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(kms_.calls(), 1);
}

TEST_F(MtmsIntegrationTest, CreatedAtTenMinutesOffIsFailedPrecondition) {
  WorkCertificateBundle work = ProvisionedWork();
  for (int64_t offset_ms : {-10 * 60 * 1000, 10 * 60 * 1000}) {
    SCOPED_TRACE(offset_ms);
    auto t = MakeTerminalPackage(work, "INT-STALE", KeyAlgorithm::kAes128);
    ASSERT_TRUE(t.ok()) << t.status();
    t->package.set_created_at_unix_ms(clock().NowUnixMs() + offset_ms);
    auto refused = Submit(SignPackage(t->package.SerializeAsString(), *alice_));
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
    EXPECT_THAT(refused.status().message(), HasSubstr("created_at"));
  }
  // The same package made now is fine: only the time was wrong.
  auto t = MakeTerminalPackage(work, "INT-STALE", KeyAlgorithm::kAes128);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(Submit(SignPackage(t->package.SerializeAsString(), *alice_)).ok());
}

TEST_F(MtmsIntegrationTest, SignatureOverAModifiedPackageIsUnauthenticated) {
  WorkCertificateBundle work = ProvisionedWork();
  auto t = MakeTerminalPackage(work, "INT-SIGNED", KeyAlgorithm::kAes128);
  ASSERT_TRUE(t.ok()) << t.status();
  SubmitRequest req = SignPackage(t->package.SerializeAsString(), *alice_);
  v1::TransportKeyPackage modified = t->package;
  modified.set_sn("INT-REDIRECTED");
  req.package = modified.SerializeAsString();
  auto refused = Submit(req);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("signature"));
  EXPECT_EQ(ForceForward()->forwarded(), 0u);
  EXPECT_EQ(kms_.calls(), 0);
}

TEST_F(MtmsIntegrationTest, OperatorRevokedAtTheCaIsRefusedOnceMtmsHasTheNewCrl) {
  WorkCertificateBundle work = ProvisionedWork();
  auto sign_new = [&](const OperatorCard& card, const std::string& sn) {
    auto t = MakeTerminalPackage(work, sn, KeyAlgorithm::kAes128);
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return SubmitRequest{};
    t->package.set_operator_id(card.operator_id);
    return SignPackage(t->package.SerializeAsString(), card);
  };

  // Revocation picked up through the explicit refresh hook.
  auto eve = IssueOperator("eve");
  ASSERT_TRUE(eve.ok()) << eve.status();
  ASSERT_TRUE(Submit(sign_new(*eve, "INT-EVE-1")).ok());  // good until revoked
  ASSERT_TRUE(RevokeAtCa(eve->certificate).ok());
  auto crl = CaOperatorCrl();
  ASSERT_TRUE(crl.ok()) << crl.status();
  EXPECT_TRUE(crl->IsRevoked(eve->certificate));
  EXPECT_FALSE(crl->IsRevoked(alice_->certificate));
  ASSERT_TRUE(mtms_->trust.Refresh().ok());
  auto refused = Submit(sign_new(*eve, "INT-EVE-2"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("revoked"));
  // Others are unaffected.
  EXPECT_TRUE(Submit(sign_new(*alice_, "INT-ALICE-1")).ok());

  // Revocation picked up by the scheduled refresh (ca.crl_refresh), on the fake clock.
  auto mallory = IssueOperator("mallory");
  ASSERT_TRUE(mallory.ok()) << mallory.status();
  ASSERT_TRUE(Submit(sign_new(*mallory, "INT-MAL-1")).ok());
  ASSERT_TRUE(RevokeAtCa(mallory->certificate).ok());
  clock().Advance(kCrlRefresh + absl::Seconds(1));
  refused = Submit(sign_new(*mallory, "INT-MAL-2"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("revoked"));
  EXPECT_TRUE(Submit(sign_new(*alice_, "INT-ALICE-2")).ok());
}

// PROTOCOL §3/§5: the OAEP label binds Ctk_Pu to its SN. HSM #1 cannot decrypt a Ctk_Pu made
// for SN A when asked for SN B, and says so exactly as it does for random bytes.
TEST_F(MtmsIntegrationTest, CtkPuForSnASubmittedAsSnBIsRejectedExactlyLikeRandomBytes) {
  WorkCertificateBundle work = ProvisionedWork();
  auto swapped = MakeTerminalPackage(work, "INT-SN-B", KeyAlgorithm::kAes128, "INT-SN-A");
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  auto swapped_id = Submit(SignPackage(swapped->package.SerializeAsString(), *alice_));
  ASSERT_TRUE(swapped_id.ok()) << swapped_id.status();  // MTMS cannot tell; HSM #1 can

  auto garbage = MakeTerminalPackage(work, "INT-SN-C", KeyAlgorithm::kAes128);
  ASSERT_TRUE(garbage.ok()) << garbage.status();
  const size_t modulus_bytes = garbage->package.ctk_pu().size();
  ASSERT_EQ(modulus_bytes, 256u);
  garbage->package.set_ctk_pu(ToStr(crypto::RandomBytes(modulus_bytes)));
  auto garbage_id = Submit(SignPackage(garbage->package.SerializeAsString(), *alice_));
  ASSERT_TRUE(garbage_id.ok()) << garbage_id.status();

  // A correct package in the same pass is forwarded: the refusals are per package.
  auto good = MakeTerminalPackage(work, "INT-SN-A", KeyAlgorithm::kAes128);
  ASSERT_TRUE(good.ok());
  ASSERT_TRUE(Submit(SignPackage(good->package.SerializeAsString(), *alice_)).ok());

  auto pass = ForceForward();
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(pass->rejected(), 2u);
  EXPECT_EQ(pass->forwarded(), 1u);
  EXPECT_EQ(pass->retry_later(), 0u);
  SubmissionRecord a = Row(*swapped_id);
  SubmissionRecord b = Row(*garbage_id);
  EXPECT_EQ(a.state, SubmissionState::kRejected);
  EXPECT_EQ(b.state, SubmissionState::kRejected);
  EXPECT_EQ(a.reason, b.reason);
  EXPECT_EQ(a.last_error, b.last_error);
  EXPECT_EQ(a.attempts, b.attempts);
  EXPECT_THAT(a.reason, HasSubstr("UNAUTHENTICATED"));
  EXPECT_EQ(a.reason, "hsm: UNAUTHENTICATED: transport key rejected");
  // Never retried, never forwarded.
  EXPECT_FALSE(kms_.Get("INT-SN-B").has_value());
  EXPECT_FALSE(kms_.Get("INT-SN-C").has_value());
  ASSERT_NO_FATAL_FAILURE(ExpectKmsReceived(*good));
  EXPECT_EQ(ForceForward()->rejected(), 0u);
  EXPECT_EQ(kms_.calls(), 1);
}

TEST_F(MtmsIntegrationTest, PackagesUnderThePreviousWorkKeyAreForwardedUntilItIsRetired) {
  WorkCertificateBundle first = ProvisionedWork();
  auto old_key_index = Provision(false)->hsm_key_index();
  // Packages made under the first certificate, before the rotation.
  auto before_rotation = MakeTerminalPackage(first, "INT-ROT-1", KeyAlgorithm::kAes256);
  auto queued_at_retire = MakeTerminalPackage(first, "INT-ROT-2", KeyAlgorithm::kAes128);
  auto after_retire = MakeTerminalPackage(first, "INT-ROT-3", KeyAlgorithm::kTdes2);
  ASSERT_TRUE(before_rotation.ok() && queued_at_retire.ok() && after_retire.ok());

  auto rotated = Provision(true);
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  EXPECT_NE(rotated->serial_hex(), first.serial_hex);
  EXPECT_NE(rotated->hsm_key_index(), old_key_index);
  auto second = FetchWorkCertificate();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->serial_hex, rotated->serial_hex());
  auto second_cert = crypto::Certificate::FromPem(second->certificate_pem);
  ASSERT_TRUE(second_cert.ok());
  EXPECT_EQ(second_cert->SubjectCommonName(),
            absl::StrCat("hsm-work:", kHsmId, ":", rotated->hsm_key_index()));

  // The PREVIOUS key still takes and forwards packages, next to the CURRENT one.
  auto old_id = Submit(SignPackage(before_rotation->package.SerializeAsString(), *alice_));
  ASSERT_TRUE(old_id.ok()) << old_id.status();
  auto new_pkg = MakeTerminalPackage(*second, "INT-ROT-NEW", KeyAlgorithm::kAes128);
  ASSERT_TRUE(new_pkg.ok());
  auto new_id = Submit(SignPackage(new_pkg->package.SerializeAsString(), *alice_));
  ASSERT_TRUE(new_id.ok()) << new_id.status();
  auto pass = ForceForward();
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(pass->forwarded(), 2u);
  EXPECT_EQ(Row(*old_id).state, SubmissionState::kForwarded);
  ASSERT_NO_FATAL_FAILURE(ExpectKmsReceived(*before_rotation));
  ASSERT_NO_FATAL_FAILURE(ExpectKmsReceived(*new_pkg));

  // Retiring: refused while a package for the key is queued, unless forced; the forwarder
  // then rejects that package without asking HSM #1.
  auto queued_id = Submit(SignPackage(queued_at_retire->package.SerializeAsString(), *alice_));
  ASSERT_TRUE(queued_id.ok()) << queued_id.status();
  EXPECT_EQ(Retire(second->serial_hex, false).status().code(),
            absl::StatusCode::kFailedPrecondition);  // CURRENT
  EXPECT_EQ(Retire(first.serial_hex, false).status().code(),
            absl::StatusCode::kFailedPrecondition);  // one queued
  auto retired = Retire(first.serial_hex, true);
  ASSERT_TRUE(retired.ok()) << retired.status();
  pass = ForceForward();
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(pass->rejected(), 1u);
  EXPECT_EQ(pass->forwarded(), 0u);
  SubmissionRecord queued = Row(*queued_id);
  EXPECT_EQ(queued.state, SubmissionState::kRejected);
  EXPECT_THAT(queued.reason, HasSubstr("retired"));
  EXPECT_FALSE(kms_.Get("INT-ROT-2").has_value());

  // New packages naming the retired certificate are refused at intake.
  auto refused = Submit(SignPackage(after_retire->package.SerializeAsString(), *alice_));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  // The CURRENT key is unaffected.
  auto still = MakeTerminalPackage(*second, "INT-ROT-LATER", KeyAlgorithm::kAes256);
  ASSERT_TRUE(still.ok());
  ASSERT_TRUE(Submit(SignPackage(still->package.SerializeAsString(), *alice_)).ok());
  EXPECT_EQ(ForceForward()->forwarded(), 1u);
  ASSERT_NO_FATAL_FAILURE(ExpectKmsReceived(*still));
}

}  // namespace
}  // namespace rkl::mtms::testing
