// The PKI bootstrap end to end: Bootstrap into a real database, the files it writes, an mTLS
// server and clients that use nothing but those files, the operator card, the refusal to run
// twice, and a search of a full database dump for every private key the bootstrap made.

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "bootstrap_output.h"
#include "ca_grpc_service.h"
#include "ca_pg_fixture.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/rsa.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/shell.h"
#include "test_keys.h"

namespace rkl::ca {
namespace {

using rkl::testing::ShellQuote;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr char kPin[] = "735911";
constexpr absl::Duration kTimeout = absl::Seconds(20);

int FileMode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 0777);
}

// Every representation of a private key that could end up in a dump: the PKCS#8 DER (raw,
// hex in both cases, base64), its PEM, and the bare secret numbers (EC scalar; RSA d, p, q).
std::vector<std::pair<std::string, std::string>> KeyNeedles(const std::string& label,
                                                            const crypto::PrivateKey& key) {
  std::vector<std::pair<std::string, std::string>> needles;
  crypto::SecretBytes der = key.ExportPkcs8DerSecret().value();
  crypto::SecretBytes pem = key.ExportPkcs8PemSecret().value();
  std::string der_str(AsString(der.RevealSecret()));
  std::string der_hex = ToHex(der.RevealSecret());
  needles.push_back({label + " DER", der_str});
  needles.push_back({label + " DER hex", der_hex});
  needles.push_back({label + " DER hex lower", absl::AsciiStrToLower(der_hex)});
  needles.push_back({label + " DER base64", absl::Base64Escape(der_str)});
  needles.push_back({label + " PEM", std::string(AsString(pem.RevealSecret()))});
  std::vector<const char*> params =
      key.Type() == crypto::KeyType::kRsa
          ? std::vector<const char*>{OSSL_PKEY_PARAM_RSA_D, OSSL_PKEY_PARAM_RSA_FACTOR1,
                                     OSSL_PKEY_PARAM_RSA_FACTOR2}
          : std::vector<const char*>{OSSL_PKEY_PARAM_PRIV_KEY};
  for (const char* p : params) {
    BIGNUM* bn = nullptr;
    EXPECT_EQ(EVP_PKEY_get_bn_param(key.evp_pkey(), p, &bn), 1);
    Bytes bytes(static_cast<size_t>(BN_num_bytes(bn)));
    BN_bn2bin(bn, bytes.data());
    BN_clear_free(bn);
    std::string hex = ToHex(bytes);
    needles.push_back({label + " " + p, std::string(AsString(bytes))});
    needles.push_back({label + " " + p + " hex", hex});
    needles.push_back({label + " " + p + " hex lower", absl::AsciiStrToLower(hex)});
  }
  return needles;
}

class BootstrapPgTest : public CaPgTest {
 protected:
  void SetUp() override {
    policy_ = CaPolicy{};  // the defaults, RSA-3072 terminal-root included
    CaPgTest::SetUp();
  }

  std::string out_dir() const { return tmp_.path() + "/pki"; }

  BootstrapResult BootstrapToDisk() {
    EXPECT_TRUE(CheckBootstrapOutputDir(out_dir()).ok());
    BootstrapResult r = Bootstrap(kPin);
    absl::Status written = WriteBootstrapOutput(r, out_dir());
    EXPECT_TRUE(written.ok()) << written;
    return r;
  }

  std::string Dump() {
    std::string path = tmp_.path() + "/dump.sql";
    auto dump = testing::RunCommand(std::string(RKL_CA_TEST_PG_DUMP) + " --no-owner -d " +
                                    ShellQuote(database().dsn()) + " -f " + path);
    EXPECT_EQ(dump.exit_code, 0) << dump.output;
    return testing::ReadFileOrDie(path);
  }
};

TEST_F(BootstrapPgTest, WritesTheDocumentedLayoutWithPrivateFilesMode0600) {
  BootstrapResult r = BootstrapToDisk();
  const std::string d = out_dir();
  for (const char* f : {"ca-bundle.pem", "terminal-root.pem", "kdh-ca.pem", "operator-ca.pem"}) {
    EXPECT_EQ(FileMode(d + "/" + f), 0644) << f;
  }
  // What terminals burn in to check the TR-34 KDH certificate.
  EXPECT_EQ(testing::ReadFileOrDie(d + "/kdh-ca.pem"), r.kdh_ca.ToPem());
  EXPECT_EQ(testing::ReadFileOrDie(d + "/ca-bundle.pem"), r.service_ca.ToPem());
  EXPECT_EQ(testing::ReadFileOrDie(d + "/terminal-root.pem"), r.terminal_root.ToPem());
  EXPECT_EQ(testing::ReadFileOrDie(d + "/operator-ca.pem"), r.operator_ca.ToPem());
  for (const char* id : {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms", "admin-alice", "admin-bob"}) {
    std::string cert = d + "/" + id + "/cert.pem";
    std::string key = d + "/" + id + "/key.pem";
    EXPECT_EQ(FileMode(key), 0600) << key;
    auto verify = testing::RunCommand("openssl verify -x509_strict -purpose sslclient -CAfile " +
                                      d + "/ca-bundle.pem " + cert);
    EXPECT_EQ(verify.exit_code, 0) << id << ": " << verify.output;
    // openssl agrees that the key belongs to the certificate.
    auto cert_pub = testing::RunCommand("openssl x509 -noout -pubkey -in " + cert);
    auto key_pub = testing::RunCommand("openssl pkey -pubout -in " + key);
    EXPECT_EQ(cert_pub.output, key_pub.output) << id;
  }
  EXPECT_EQ(FileMode(d + "/operator-operator1.p12"), 0600);
  // Terminal root: RSA-3072, SHA-256, per PROTOCOL §1.
  std::string root_text = X509Text(r.terminal_root.ToPem());
  EXPECT_THAT(root_text, HasSubstr("Public-Key: (3072 bit)"));
  EXPECT_THAT(root_text, HasSubstr("sha256WithRSAEncryption"));
  // kdh-ca: the same by default.
  std::string kdh_ca_text = X509Text(r.kdh_ca.ToPem());
  EXPECT_THAT(kdh_ca_text, HasSubstr("Public-Key: (3072 bit)"));
  EXPECT_THAT(kdh_ca_text, HasSubstr("sha256WithRSAEncryption"));
  EXPECT_THAT(kdh_ca_text, HasSubstr("CA:TRUE, pathlen:0"));
  EXPECT_THAT(X509Text(r.services[0].certificate.ToPem()), HasSubstr("DNS:ca, DNS:localhost"));
}

TEST_F(BootstrapPgTest, ProducedFilesRunMutualTlsFromTheFirstSecond) {
  BootstrapToDisk();
  const std::string d = out_dir();
  CaGrpcService service(&*core_);
  auto server =
      rpc::Server::Start({.listen_address = "127.0.0.1:0",
                          .tls = {d + "/ca/cert.pem", d + "/ca/key.pem", d + "/ca-bundle.pem"}},
                         {&service});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub_for = [&](const std::string& id) {
    rpc::ChannelOptions options{
        .tls = {d + "/" + id + "/cert.pem", d + "/" + id + "/key.pem", d + "/ca-bundle.pem"},
        .authority = "ca"};
    auto channel = rpc::MakeChannel("127.0.0.1:" + std::to_string((*server)->port()), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return v1::CertificateAuthority::NewStub(*channel);
  };

  // The admin certificates are admins: one requests a service certificate, the other
  // approves it.
  v1::RequestCertificateRequest svc_req;
  svc_req.mutable_service()->set_csr_pem(testing::CsrPem(crypto::GenerateEcP256Key().value()));
  svc_req.mutable_service()->set_name("kms");
  v1::CertificateRequestInfo requested;
  auto ctx = rpc::MakeClientContext(kTimeout);
  grpc::Status s = stub_for("admin-alice")->RequestCertificate(ctx.get(), svc_req, &requested);
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::ApproveCertificateRequestRequest approve;
  approve.set_request_id(requested.request_id());
  approve.set_subject("kms");
  v1::CertificateRequestInfo approved;
  auto approve_ctx = rpc::MakeClientContext(kTimeout);
  s = stub_for("admin-bob")->ApproveCertificateRequest(approve_ctx.get(), approve, &approved);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(approved.certificate().certificate_pem().empty());

  // The mtms certificate is mtms: it may have Pu certified; kms may not.
  v1::IssueWorkCertificateRequest work_req;
  Bytes pu = crypto::GenerateRsaKey(2048).value().GetPublicKey().ToDer();
  work_req.set_public_key_der(std::string(pu.begin(), pu.end()));
  work_req.set_hsm_id("hsm-mtms");
  work_req.set_key_index(1);
  v1::IssuedCertificate work_resp;
  auto mtms_ctx = rpc::MakeClientContext(kTimeout);
  s = stub_for("mtms")->IssueWorkCertificate(mtms_ctx.get(), work_req, &work_resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  auto verify =
      OpensslVerify(testing::ReadFileOrDie(d + "/terminal-root.pem"), work_resp.certificate_pem());
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto kms_ctx = rpc::MakeClientContext(kTimeout);
  s = stub_for("kms")->IssueWorkCertificate(kms_ctx.get(), work_req, &work_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(BootstrapPgTest, OperatorCardOpensWithItsPinOnly) {
  BootstrapResult r = BootstrapToDisk();
  std::string path = out_dir() + "/operator-operator1.p12";
  std::string p12 = testing::ReadFileOrDie(path);
  auto card = crypto::ReadPkcs12(AsBytes(p12), crypto::SecretBytes::CopyOf(AsBytes(kPin)));
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_EQ(card->certificate.SubjectCommonName(), "operator:operator1");
  EXPECT_EQ(card->private_key.Type(), crypto::KeyType::kEcP256);
  ASSERT_EQ(card->chain.size(), 1u);
  EXPECT_EQ(card->chain[0], r.operator_ca);
  // The card signs, and its certificate checks out against operator-ca.
  Bytes msg = {1, 2, 3};
  auto sig = crypto::EcdsaSign(card->private_key, msg);
  ASSERT_TRUE(sig.ok());
  EXPECT_TRUE(crypto::EcdsaVerify(*card->certificate.GetPublicKey(), msg, *sig).ok());

  auto wrong = crypto::ReadPkcs12(AsBytes(p12), crypto::SecretBytes::CopyOf(AsBytes("735912")));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  // openssl reads it with the PIN and refuses it without.
  auto ossl = testing::RunCommand("openssl pkcs12 -in " + path + " -passin pass:" + kPin +
                                  " -nokeys -clcerts");
  EXPECT_EQ(ossl.exit_code, 0) << ossl.output;
  EXPECT_THAT(ossl.output, HasSubstr("operator:operator1"));
  auto ossl_wrong =
      testing::RunCommand("openssl pkcs12 -in " + path + " -passin pass:000000 -nokeys");
  EXPECT_NE(ossl_wrong.exit_code, 0);
}

TEST_F(BootstrapPgTest, SecondRunRefusesAndWritesNothing) {
  BootstrapResult r = BootstrapToDisk();
  auto listing = [&] {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::recursive_directory_iterator(out_dir())) {
      names.push_back(e.path().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  };
  auto before = listing();
  // The output directory is refused before anything else...
  absl::Status dir = CheckBootstrapOutputDir(out_dir());
  EXPECT_EQ(dir.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(dir.message(), HasSubstr("not empty"));
  // ...and the database refuses too, whatever directory is named.
  BootstrapRequest req;
  req.operator_pin = crypto::SecretBytes::CopyOf(AsBytes(kPin));
  auto again = core_->Bootstrap(req);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("already initialised"));
  EXPECT_EQ(listing(), before);
  EXPECT_EQ(*core_->GetIssuerCertificate(IssuerId::kTerminalRoot), r.terminal_root);
  // Writing the layout over an existing one never overwrites a file.
  EXPECT_EQ(WriteBootstrapOutput(r, out_dir()).code(), absl::StatusCode::kFailedPrecondition);
  std::filesystem::remove(out_dir() + "/ca-bundle.pem");
  std::filesystem::rename(out_dir(), tmp_.path() + "/moved");
  std::filesystem::create_directories(out_dir());
  EXPECT_TRUE(WriteNewFile(out_dir() + "/x", AsBytes("1"), 0600).ok());
  EXPECT_EQ(WriteNewFile(out_dir() + "/x", AsBytes("2"), 0600).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(testing::ReadFileOrDie(out_dir() + "/x"), "1");
}

// `rklctl pki add-issuer kdh-ca --out DIR`: DIR/kdh-ca.pem beside an earlier bootstrap's
// files, never over an existing one.
TEST_F(BootstrapPgTest, AddedIssuerIsWrittenBesideTheBootstrapOutputOnce) {
  BootstrapResult r = BootstrapToDisk();
  const std::string d = out_dir();
  ASSERT_EQ(std::remove((d + "/kdh-ca.pem").c_str()), 0);
  auto path = WriteIssuerCertificate(IssuerId::kKdhCa, r.kdh_ca, d);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, d + "/kdh-ca.pem");
  EXPECT_EQ(FileMode(*path), 0644);
  EXPECT_EQ(testing::ReadFileOrDie(*path), r.kdh_ca.ToPem());
  auto again = WriteIssuerCertificate(IssuerId::kKdhCa, r.terminal_root, d);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(testing::ReadFileOrDie(*path), r.kdh_ca.ToPem());
  auto fresh_dir = WriteIssuerCertificate(IssuerId::kKdhCa, r.kdh_ca, tmp_.path() + "/new/sub");
  ASSERT_TRUE(fresh_dir.ok()) << fresh_dir.status();
}

TEST_F(BootstrapPgTest, DatabaseDumpHoldsNoPrivateKey) {
  BootstrapResult r = BootstrapToDisk();
  // Issue and revoke a little more, so every table has rows.
  auto op = core_->IssueOperatorCertificate(
      {testing::CsrPem(crypto::GenerateEcP256Key().value()), "bob", 0});
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(core_->Revoke(op->SerialHex(), crypto::CrlReason::kKeyCompromise).ok());

  std::string dump = Dump();
  ASSERT_GT(dump.size(), 1000u);

  // Control: public data is in the dump in the encoding searched below (bytea as hex), so a
  // key stored the same way would be found.
  std::string root_der_hex = absl::AsciiStrToLower(ToHex(r.terminal_root.ToDer()));
  ASSERT_THAT(dump, HasSubstr(root_der_hex));
  ASSERT_THAT(dump, HasSubstr(r.operator_card.certificate.SerialHex()));

  std::vector<std::pair<std::string, std::string>> needles;
  // The issuer keys, opened from the database with the master key.
  for (IssuerId id : kAllIssuers) {
    auto record = repo_->GetIssuer(id).value();
    auto cert = crypto::Certificate::FromDer(record.certificate_der).value();
    auto key = master_key_->OpenIssuerKey(IssuerName(id), cert, record.sealed_private_key);
    ASSERT_TRUE(key.ok()) << key.status();
    for (auto& n : KeyNeedles(std::string(IssuerName(id)), *key)) needles.push_back(n);
  }
  // Every key the bootstrap wrote to disk.
  for (const KeyAndCertificate& s : r.services) {
    for (auto& n : KeyNeedles(s.name, s.key)) needles.push_back(n);
  }
  for (const KeyAndCertificate& a : r.admins) {
    for (auto& n : KeyNeedles(a.name, a.key)) needles.push_back(n);
  }
  for (auto& n : KeyNeedles(r.operator_card.name, r.operator_card.key)) needles.push_back(n);
  // And the card's PKCS#12 itself.
  needles.push_back({"operator p12 hex", absl::AsciiStrToLower(ToHex(r.operator_pkcs12))});

  ASSERT_GE(needles.size(), 10u * 8u);
  int hits = 0;
  for (const auto& [label, needle] : needles) {
    ASSERT_GE(needle.size(), 16u) << label;
    if (dump.find(needle) != std::string::npos) {
      ++hits;
      ADD_FAILURE() << "database dump contains " << label;
    }
  }
  EXPECT_EQ(hits, 0);

  // The sealed issuer keys are there, and are not the keys.
  EXPECT_EQ(
      Sql("SELECT count(*) FROM ca_issuers WHERE length(sealed_private_key) > 100")[0][0].as<int>(),
      4);
}

}  // namespace
}  // namespace rkl::ca
