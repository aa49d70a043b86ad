// `rklctl pki ...`: the PKI bootstrap (directly against the CA database) and certificate
// administration through the running rkl-ca over mTLS with an admin certificate.
// Prints serials, fingerprints, KCVs and file names — never key material. Keys made here
// (service keys, operator cards) are generated locally and never sent anywhere: only CSRs go
// to the CA. See docs/pki.md.

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "bootstrap_output.h"
#include "ca_core.h"
#include "ca_grpc_service.h"
#include "ca_repository.h"
#include "commands.h"
#include "connection.h"
#include "master_key.h"
#include "rkl/ca/migrations.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/crypto/x509_csr.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/migration.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/status.h"
#include "rkl/v1/ca.grpc.pb.h"

namespace rkl::rklctl {
namespace {

constexpr absl::Duration kRpcTimeout = absl::Seconds(30);
constexpr size_t kMaxPinBytes = 128;

[[noreturn]] void Fail(const std::string& step, const absl::Status& status) {
  std::cerr << "rklctl pki " << step << ": " << status.message() << "\n";
  throw CLI::RuntimeError(1);
}

// The PIN from the command line or from a file (first line), as a secret.
absl::StatusOr<crypto::SecretBytes> ReadPin(const std::string& pin, const std::string& pin_file) {
  if (!pin.empty() && !pin_file.empty()) {
    return absl::InvalidArgumentError("give either --operator-pin or --operator-pin-file");
  }
  if (!pin.empty()) return crypto::SecretBytes::CopyOf(AsBytes(pin));
  if (pin_file.empty()) {
    return absl::InvalidArgumentError(
        "an operator card needs a PIN: --operator-pin-file F (or --operator-pin PIN)");
  }
  std::ifstream in(pin_file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("pin file ", pin_file, ": cannot be read"));
  crypto::SecretBytes buf(kMaxPinBytes + 2);
  in.read(reinterpret_cast<char*>(buf.RevealSecretMutable().data()),
          static_cast<std::streamsize>(buf.size()));
  size_t n = static_cast<size_t>(in.gcount());
  std::span<const uint8_t> bytes = buf.RevealSecret();
  size_t len = 0;
  while (len < n && bytes[len] != '\n' && bytes[len] != '\r') ++len;
  if (len == 0 || len > kMaxPinBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("pin file ", pin_file, ": first line must hold a 1-128 byte PIN"));
  }
  return buf.Sub(0, len);
}

std::string Fingerprint(const crypto::Certificate& cert) { return ToHex(cert.Sha256Fingerprint()); }

void PrintCertificate(const std::string& what, const crypto::Certificate& cert) {
  std::cout << "  " << what << ": CN=" << cert.SubjectCommonName() << " serial " << cert.SerialHex()
            << " not after " << absl::FormatTime(absl::FromUnixSeconds(cert.NotAfter()))
            << "\n    SHA-256 " << Fingerprint(cert) << "\n";
}

// ---- init --------------------------------------------------------------------------------

struct InitOptions {
  std::string dsn;
  std::string master_key_file;
  bool create_master_key = false;
  std::string out;
  std::string operator_id = "operator1";
  std::string operator_pin;
  std::string operator_pin_file;
  std::string admin = "admin";
  std::vector<std::string> services = {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms"};
  std::vector<std::string> hostnames;
  std::string root_key = "rsa-3072";
  std::string operator_ca_key = "ec-p256";
  std::string service_ca_key = "ec-p256";
  std::string leaf_key = "ec-p256";
  int root_days = ca::CaPolicy{}.terminal_root_validity_days;
  int ca_days = ca::CaPolicy{}.service_ca_validity_days;
  int service_days = ca::CaPolicy{}.service_validity_days;
  int operator_days = ca::CaPolicy{}.operator_validity_days;
};

absl::StatusOr<ca::CaPolicy> PolicyFrom(const InitOptions& o) {
  ca::CaPolicy p;
  auto spec = [](const std::string& flag, const std::string& v) -> absl::StatusOr<ca::KeySpec> {
    absl::StatusOr<ca::KeySpec> s = ca::KeySpecFromName(v);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", s.status().message()));
    return s;
  };
  RKL_ASSIGN_OR_RETURN(p.terminal_root_key, spec("--root-key", o.root_key));
  RKL_ASSIGN_OR_RETURN(p.operator_ca_key, spec("--operator-ca-key", o.operator_ca_key));
  RKL_ASSIGN_OR_RETURN(p.service_ca_key, spec("--service-ca-key", o.service_ca_key));
  RKL_ASSIGN_OR_RETURN(p.bootstrap_leaf_key, spec("--leaf-key", o.leaf_key));
  p.terminal_root_validity_days = o.root_days;
  p.operator_ca_validity_days = o.ca_days;
  p.service_ca_validity_days = o.ca_days;
  p.service_validity_days = o.service_days;
  p.operator_validity_days = o.operator_days;
  RKL_RETURN_IF_ERROR(ca::ValidatePolicy(p));
  return p;
}

void RunInit(const InitOptions& o) {
  absl::StatusOr<crypto::SecretBytes> pin = ReadPin(o.operator_pin, o.operator_pin_file);
  if (!pin.ok()) Fail("init", pin.status());
  absl::StatusOr<ca::CaPolicy> policy = PolicyFrom(o);
  if (!policy.ok()) Fail("init", policy.status());
  // Refuse a used output directory before touching the database or generating anything.
  if (absl::Status s = ca::CheckBootstrapOutputDir(o.out); !s.ok()) Fail("init", s);

  struct stat st {};
  if (o.create_master_key && ::stat(o.master_key_file.c_str(), &st) != 0) {
    if (absl::Status s = ca::MasterKey::CreateFile(o.master_key_file); !s.ok()) {
      Fail("init (create master key)", s);
    }
    std::cout << "created master key file " << o.master_key_file << " (mode 0600)\n";
  }
  absl::StatusOr<ca::MasterKey> master_key = ca::MasterKey::LoadFromFile(o.master_key_file);
  if (!master_key.ok()) Fail("init (master key)", master_key.status());

  db::ConnectionPool pool({.dsn = o.dsn, .max_size = 2});
  absl::StatusOr<int> applied = db::ApplyMigrations(pool, ca::Migrations());
  if (!applied.ok()) Fail("init (schema)", applied.status());

  ca::PgCaRepository repository(&pool);
  ca::CaCore core(
      &repository, &*master_key, *policy, [] { return absl::Now(); }, crypto::FillRandom);
  ca::BootstrapRequest request;
  request.services = o.services;
  request.extra_dns_names = o.hostnames;
  request.admin_name = o.admin;
  request.operator_id = o.operator_id;
  request.operator_pin = *std::move(pin);
  absl::StatusOr<ca::BootstrapResult> result = core.Bootstrap(request);
  if (!result.ok()) Fail("init", result.status());
  if (absl::Status s = ca::WriteBootstrapOutput(*result, o.out); !s.ok()) {
    Fail("init (writing " + o.out +
             "; the CA database IS initialised — reissue with "
             "`rklctl pki issue-service` / `issue-operator`)",
         s);
  }

  std::cout << "CA initialised in " << pool.redacted_dsn() << "\n"
            << "  master key KCV " << master_key->KcvHex() << "\n";
  PrintCertificate("terminal-root", result->terminal_root);
  PrintCertificate("operator-ca", result->operator_ca);
  PrintCertificate("service-ca", result->service_ca);
  for (const ca::KeyAndCertificate& s : result->services) {
    PrintCertificate(s.name, s.certificate);
  }
  PrintCertificate(result->admin.name, result->admin.certificate);
  PrintCertificate(result->operator_card.name, result->operator_card.certificate);
  std::cout << "wrote " << o.out << "/{ca-bundle.pem,terminal-root.pem,operator-ca.pem}, " << o.out
            << "/<service>/{cert.pem,key.pem}, " << o.out << "/"
            << ca::IdentityDirName(result->admin.name) << "/, " << o.out << "/operator-"
            << o.operator_id << ".p12\n";
}

// ---- commands against the running CA -----------------------------------------------------

struct ClientOptions {
  Endpoint endpoint;
};

std::unique_ptr<v1::CertificateAuthority::Stub> StubOrFail(const Endpoint& endpoint,
                                                           const std::string& step) {
  auto channel = Connect(endpoint);
  if (!channel.ok()) Fail(step, channel.status());
  return v1::CertificateAuthority::NewStub(*channel);
}

template <typename Req, typename Resp, typename Method>
Resp CallOrFail(v1::CertificateAuthority::Stub& stub, Method method, const Req& req,
                const std::string& step) {
  auto ctx = rpc::MakeClientContext(kRpcTimeout);
  Resp resp;
  grpc::Status s = (stub.*method)(ctx.get(), req, &resp);
  if (!s.ok()) Fail(step, rpc::FromGrpcStatus(s));
  return resp;
}

absl::StatusOr<v1::Issuer> IssuerFlag(const std::string& name) {
  RKL_ASSIGN_OR_RETURN(ca::IssuerId id, ca::IssuerFromName(name));
  return ca::IssuerToProto(id);
}

absl::StatusOr<v1::RevocationReason> ReasonFlag(const std::string& name) {
  if (name == "key-compromise") return v1::REVOCATION_REASON_KEY_COMPROMISE;
  if (name == "affiliation-changed") return v1::REVOCATION_REASON_AFFILIATION_CHANGED;
  if (name == "superseded") return v1::REVOCATION_REASON_SUPERSEDED;
  if (name == "cessation-of-operation") return v1::REVOCATION_REASON_CESSATION_OF_OPERATION;
  return absl::InvalidArgumentError(
      "--reason: must be key-compromise, affiliation-changed, superseded or "
      "cessation-of-operation");
}

void PrintStatus(const v1::CertificateStatus& s) {
  std::cout << "serial " << s.serial_hex() << ": "
            << (s.state() == v1::CertificateStatus::STATE_REVOKED ? "REVOKED" : "GOOD") << "\n"
            << "  subject CN " << s.subject_cn() << ", profile " << s.profile() << ", issuer "
            << v1::Issuer_Name(s.issuer()) << "\n"
            << "  not after " << absl::FormatTime(absl::FromUnixSeconds(s.not_after_unix_s()))
            << "\n";
  if (s.state() == v1::CertificateStatus::STATE_REVOKED) {
    std::cout << "  revoked at " << absl::FormatTime(absl::FromUnixSeconds(s.revoked_at_unix_s()))
              << " (" << v1::RevocationReason_Name(s.reason()) << ")\n";
  }
}

void RegisterInit(CLI::App* pki) {
  auto o = std::make_shared<InitOptions>();
  auto* cmd =
      pki->add_subcommand("init",
                          "bootstrap a fresh CA: issuers, every service's mTLS identity, an admin "
                          "certificate and one operator card (refuses an initialised CA)");
  cmd->add_option("--db", o->dsn, "libpq DSN of the CA database")
      ->required()
      ->envname("RKL_CA_DB_DSN");
  cmd->add_option("--master-key-file", o->master_key_file,
                  "CA master key file (32 raw bytes or 64 hex digits, mode 0600)")
      ->required()
      ->envname("RKL_CA_MASTER_KEY_FILE");
  cmd->add_flag("--create-master-key", o->create_master_key,
                "generate the master key file (mode 0600) if it does not exist");
  cmd->add_option("--out", o->out, "output directory (must not exist, or be empty)")->required();
  cmd->add_option("--operator-id", o->operator_id, "id of the first operator card")
      ->capture_default_str();
  cmd->add_option("--operator-pin-file", o->operator_pin_file, "file whose first line is the PIN");
  cmd->add_option("--operator-pin", o->operator_pin, "the PIN (visible in `ps`: prefer a file)");
  cmd->add_option("--admin", o->admin, "first administrator: identity admin:<NAME>")
      ->capture_default_str();
  cmd->add_option("--services", o->services, "services to certify")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--hostnames", o->hostnames,
                  "extra DNS SANs for every service certificate (besides name and localhost)")
      ->delimiter(',');
  cmd->add_option("--root-key", o->root_key, "terminal-root key: rsa-3072 | rsa-2048")
      ->capture_default_str();
  cmd->add_option("--operator-ca-key", o->operator_ca_key, "ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--service-ca-key", o->service_ca_key, "ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--leaf-key", o->leaf_key, "service/admin keys: ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--root-days", o->root_days, "terminal-root validity")->capture_default_str();
  cmd->add_option("--ca-days", o->ca_days, "operator-ca and service-ca validity")
      ->capture_default_str();
  cmd->add_option("--service-days", o->service_days, "service/admin certificate validity")
      ->capture_default_str();
  cmd->add_option("--operator-days", o->operator_days, "operator card validity")
      ->capture_default_str();
  cmd->callback([o] { RunInit(*o); });
}

void RegisterIssueService(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string name;
    std::vector<std::string> dns_names;
    std::string key_type = "ec-p256";
    std::string out;
    uint32_t days = 0;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = pki->add_subcommand(
      "issue-service", "new key + certificate for a service or admin:<name> (key made here)");
  AddEndpointOptions(cmd, o->endpoint, "ca", "localhost:50051");
  cmd->add_option("--name", o->name, "ca | hsm-mtms | hsm-kms | mtms | kms | admin:<name>")
      ->required();
  cmd->add_option("--dns-name", o->dns_names, "extra DNS SAN (repeatable)");
  cmd->add_option("--key-type", o->key_type, "ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--days", o->days, "validity (default: the CA's)");
  cmd->add_option("--out", o->out, "directory; writes <out>/<name>/{cert.pem,key.pem}")->required();
  cmd->callback([o] {
    const std::string step = "issue-service";
    absl::StatusOr<ca::KeySpec> spec = ca::KeySpecFromName(o->key_type);
    if (!spec.ok()) Fail(step, spec.status());
    std::string dir = o->out + "/" + ca::IdentityDirName(o->name);
    if (absl::Status s = ca::CheckBootstrapOutputDir(dir); !s.ok()) Fail(step, s);
    absl::StatusOr<crypto::PrivateKey> key = ca::GenerateKey(*spec);
    if (!key.ok()) Fail(step, key.status());
    absl::StatusOr<crypto::Csr> csr = crypto::CsrBuilder().SetSubjectCommonName(o->name).Sign(*key);
    if (!csr.ok()) Fail(step, csr.status());
    auto stub = StubOrFail(o->endpoint, step);
    v1::IssueServiceCertificateRequest req;
    req.set_csr_pem(csr->ToPem());
    req.set_name(o->name);
    for (const std::string& d : o->dns_names) req.add_dns_names(d);
    req.set_validity_days(o->days);
    auto resp = CallOrFail<v1::IssueServiceCertificateRequest, v1::IssuedCertificate>(
        *stub, &v1::CertificateAuthority::Stub::IssueServiceCertificate, req, step);
    absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromPem(resp.certificate_pem());
    if (!cert.ok()) Fail(step, cert.status());
    absl::StatusOr<crypto::SecretBytes> key_pem = key->ExportPkcs8PemSecret();
    if (!key_pem.ok()) Fail(step, key_pem.status());
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (absl::Status s = ca::WriteNewFile(dir + "/key.pem", key_pem->RevealSecret(), 0600);
        !s.ok()) {
      Fail(step, s);
    }
    if (absl::Status s = ca::WriteNewFile(dir + "/cert.pem", AsBytes(resp.certificate_pem()), 0644);
        !s.ok()) {
      Fail(step, s);
    }
    std::cout << "issued " << dir << "/{cert.pem,key.pem}\n";
    PrintCertificate(o->name, *cert);
  });
}

void RegisterIssueOperator(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string id;
    std::string pin;
    std::string pin_file;
    std::string out;
    uint32_t days = 0;
  };
  auto o = std::make_shared<Options>();
  auto* cmd =
      pki->add_subcommand("issue-operator",
                          "new operator card: P-256 key made here, certificate from operator-ca, "
                          "written as a PIN-protected PKCS#12");
  AddEndpointOptions(cmd, o->endpoint, "ca", "localhost:50051");
  cmd->add_option("--id", o->id, "operator id ([a-z0-9._-], 1-48)")->required();
  cmd->add_option("--pin-file", o->pin_file, "file whose first line is the PIN");
  cmd->add_option("--pin", o->pin, "the PIN (visible in `ps`: prefer a file)");
  cmd->add_option("--days", o->days, "validity (default: the CA's)");
  cmd->add_option("--out", o->out, "PKCS#12 file to create (default operator-<id>.p12)");
  cmd->callback([o] {
    const std::string step = "issue-operator";
    absl::StatusOr<crypto::SecretBytes> pin = ReadPin(o->pin, o->pin_file);
    if (!pin.ok()) Fail(step, pin.status());
    std::string out = o->out.empty() ? "operator-" + o->id + ".p12" : o->out;
    absl::StatusOr<crypto::PrivateKey> key = crypto::GenerateEcP256Key();
    if (!key.ok()) Fail(step, key.status());
    absl::StatusOr<crypto::Csr> csr =
        crypto::CsrBuilder().SetSubjectCommonName(ca::OperatorCommonName(o->id)).Sign(*key);
    if (!csr.ok()) Fail(step, csr.status());
    auto stub = StubOrFail(o->endpoint, step);
    v1::IssueOperatorCertificateRequest req;
    req.set_csr_pem(csr->ToPem());
    req.set_operator_id(o->id);
    req.set_validity_days(o->days);
    auto resp = CallOrFail<v1::IssueOperatorCertificateRequest, v1::IssuedCertificate>(
        *stub, &v1::CertificateAuthority::Stub::IssueOperatorCertificate, req, step);
    v1::GetIssuerCertificateRequest issuer_req;
    issuer_req.set_issuer(v1::ISSUER_OPERATOR_CA);
    auto issuer = CallOrFail<v1::GetIssuerCertificateRequest, v1::GetIssuerCertificateResponse>(
        *stub, &v1::CertificateAuthority::Stub::GetIssuerCertificate, issuer_req, step);
    absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromPem(resp.certificate_pem());
    absl::StatusOr<crypto::Certificate> ca_cert =
        crypto::Certificate::FromPem(issuer.certificate_pem());
    if (!cert.ok()) Fail(step, cert.status());
    if (!ca_cert.ok()) Fail(step, ca_cert.status());
    std::vector<crypto::Certificate> chain = {*ca_cert};
    absl::StatusOr<Bytes> p12 =
        crypto::WritePkcs12(*key, *cert, chain, cert->SubjectCommonName(), *pin);
    if (!p12.ok()) Fail(step, p12.status());
    if (absl::Status s = ca::WriteNewFile(out, *p12, 0600); !s.ok()) Fail(step, s);
    std::cout << "wrote operator card " << out << " (mode 0600)\n";
    PrintCertificate(cert->SubjectCommonName(), *cert);
  });
}

void RegisterRevoke(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string serial;
    std::string reason;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = pki->add_subcommand("revoke", "revoke a certificate; its issuer's CRL is re-signed");
  AddEndpointOptions(cmd, o->endpoint, "ca", "localhost:50051");
  cmd->add_option("--serial", o->serial, "serial number, hex")->required();
  cmd->add_option("--reason", o->reason,
                  "key-compromise | affiliation-changed | superseded | cessation-of-operation")
      ->required();
  cmd->callback([o] {
    absl::StatusOr<v1::RevocationReason> reason = ReasonFlag(o->reason);
    if (!reason.ok()) Fail("revoke", reason.status());
    auto stub = StubOrFail(o->endpoint, "revoke");
    v1::RevokeCertificateRequest req;
    req.set_serial_hex(o->serial);
    req.set_reason(*reason);
    PrintStatus(CallOrFail<v1::RevokeCertificateRequest, v1::CertificateStatus>(
        *stub, &v1::CertificateAuthority::Stub::RevokeCertificate, req, "revoke"));
  });
}

void RegisterReadCommands(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string issuer = "operator-ca";
    std::string serial;
    std::string out;
  };
  auto crl = std::make_shared<Options>();
  auto* crl_cmd = pki->add_subcommand("crl", "print an issuer's current CRL (PEM)");
  AddEndpointOptions(crl_cmd, crl->endpoint, "ca", "localhost:50051");
  crl_cmd->add_option("--issuer", crl->issuer, "terminal-root | operator-ca | service-ca")
      ->capture_default_str();
  crl_cmd->add_option("--out", crl->out, "write the PEM here instead of stdout");
  crl_cmd->callback([crl] {
    absl::StatusOr<v1::Issuer> issuer = IssuerFlag(crl->issuer);
    if (!issuer.ok()) Fail("crl", issuer.status());
    auto stub = StubOrFail(crl->endpoint, "crl");
    v1::GetCrlRequest req;
    req.set_issuer(*issuer);
    auto resp = CallOrFail<v1::GetCrlRequest, v1::GetCrlResponse>(
        *stub, &v1::CertificateAuthority::Stub::GetCrl, req, "crl");
    std::cerr << crl->issuer << " CRL number " << resp.crl_number() << ", next update "
              << absl::FormatTime(absl::FromUnixSeconds(resp.next_update_unix_s())) << "\n";
    if (crl->out.empty()) {
      std::cout << resp.crl_pem();
    } else if (absl::Status s = ca::WriteNewFile(crl->out, AsBytes(resp.crl_pem()), 0644);
               !s.ok()) {
      Fail("crl", s);
    }
  });

  auto status = std::make_shared<Options>();
  auto* status_cmd = pki->add_subcommand("status", "status of a certificate by serial");
  AddEndpointOptions(status_cmd, status->endpoint, "ca", "localhost:50051");
  status_cmd->add_option("--serial", status->serial, "serial number, hex")->required();
  status_cmd->callback([status] {
    auto stub = StubOrFail(status->endpoint, "status");
    v1::GetCertificateStatusRequest req;
    req.set_serial_hex(status->serial);
    PrintStatus(CallOrFail<v1::GetCertificateStatusRequest, v1::CertificateStatus>(
        *stub, &v1::CertificateAuthority::Stub::GetCertificateStatus, req, "status"));
  });

  auto issuer = std::make_shared<Options>();
  auto* issuer_cmd = pki->add_subcommand("issuer", "print an issuer's certificate (PEM)");
  AddEndpointOptions(issuer_cmd, issuer->endpoint, "ca", "localhost:50051");
  issuer_cmd->add_option("--issuer", issuer->issuer, "terminal-root | operator-ca | service-ca")
      ->capture_default_str();
  issuer_cmd->callback([issuer] {
    absl::StatusOr<v1::Issuer> id = IssuerFlag(issuer->issuer);
    if (!id.ok()) Fail("issuer", id.status());
    auto stub = StubOrFail(issuer->endpoint, "issuer");
    v1::GetIssuerCertificateRequest req;
    req.set_issuer(*id);
    std::cout << CallOrFail<v1::GetIssuerCertificateRequest, v1::GetIssuerCertificateResponse>(
                     *stub, &v1::CertificateAuthority::Stub::GetIssuerCertificate, req, "issuer")
                     .certificate_pem();
  });
}

}  // namespace

void RegisterPkiCommands(CLI::App& app) {
  auto* pki = app.add_subcommand("pki", "PKI bootstrap and certificate administration");
  pki->require_subcommand(1);
  RegisterInit(pki);
  RegisterIssueService(pki);
  RegisterIssueOperator(pki);
  RegisterRevoke(pki);
  RegisterReadCommands(pki);
}

}  // namespace rkl::rklctl
