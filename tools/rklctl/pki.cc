// `rklctl pki ...`: the PKI bootstrap (directly against the CA database) and certificate
// administration through the running rkl-ca over mTLS with an admin certificate.
// Prints serials, fingerprints, KCVs and file names — never key material. Keys made here
// (service keys, operator cards) are generated locally and never sent anywhere: only CSRs go
// to the CA. Privileged certificates take two admins (docs/pki.md "Custody"): `request`
// (one admin, keeps the new key here) → `approve` (another admin) → `fetch` (writes the
// certificate beside the key).

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "bootstrap_output.h"
#include "ca_core.h"
#include "ca_grpc_service.h"
#include "ca_pg_repository.h"
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
#include "rkl/v1/revocation.grpc.pb.h"

namespace rkl::rklctl {
namespace {

constexpr Area kArea{"pki", absl::Seconds(30)};
constexpr size_t kMaxPinBytes = 128;

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
  std::vector<std::string> admins;
  std::vector<std::string> custodians;
  std::vector<std::string> services = {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms"};
  std::vector<std::string> hostnames;
  std::string root_key = "rsa-3072";
  std::string kdh_ca_key = "rsa-3072";
  std::string operator_ca_key = "ec-p256";
  std::string service_ca_key = "ec-p256";
  std::string leaf_key = "ec-p256";
  int root_days = ca::CaPolicy{}.terminal_root_validity_days;
  int kdh_ca_days = ca::CaPolicy{}.kdh_ca_validity_days;
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
  RKL_ASSIGN_OR_RETURN(p.kdh_ca_key, spec("--kdh-ca-key", o.kdh_ca_key));
  RKL_ASSIGN_OR_RETURN(p.operator_ca_key, spec("--operator-ca-key", o.operator_ca_key));
  RKL_ASSIGN_OR_RETURN(p.service_ca_key, spec("--service-ca-key", o.service_ca_key));
  RKL_ASSIGN_OR_RETURN(p.bootstrap_leaf_key, spec("--leaf-key", o.leaf_key));
  p.terminal_root_validity_days = o.root_days;
  p.kdh_ca_validity_days = o.kdh_ca_days;
  p.operator_ca_validity_days = o.ca_days;
  p.service_ca_validity_days = o.ca_days;
  p.service_validity_days = o.service_days;
  p.operator_validity_days = o.operator_days;
  RKL_RETURN_IF_ERROR(ca::ValidatePolicy(p));
  return p;
}

void RunInit(const InitOptions& o) {
  absl::StatusOr<crypto::SecretBytes> pin = ReadPin(o.operator_pin, o.operator_pin_file);
  if (!pin.ok()) kArea.Fail("init", pin.status());
  absl::StatusOr<ca::CaPolicy> policy = PolicyFrom(o);
  if (!policy.ok()) kArea.Fail("init", policy.status());
  // Refuse a used output directory before touching the database or generating anything.
  if (absl::Status s = ca::CheckBootstrapOutputDir(o.out); !s.ok()) kArea.Fail("init", s);

  struct stat st {};
  if (o.create_master_key && ::stat(o.master_key_file.c_str(), &st) != 0) {
    if (absl::Status s = ca::MasterKey::CreateFile(o.master_key_file); !s.ok()) {
      kArea.Fail("init (create master key)", s);
    }
    std::cout << "created master key file " << o.master_key_file << " (mode 0600)\n";
  }
  absl::StatusOr<ca::MasterKey> master_key = ca::MasterKey::LoadFromFile(o.master_key_file);
  if (!master_key.ok()) kArea.Fail("init (master key)", master_key.status());

  db::ConnectionPool pool({.dsn = o.dsn, .max_size = 2});
  // A schema the migration step (`rkl-ca --migrate-only`) already made is used as it is,
  // so init can run as the CA's runtime role; otherwise the DSN's role must create it.
  if (!db::CheckMigrationsApplied(pool, ca::Migrations()).ok()) {
    absl::StatusOr<int> applied = db::ApplyMigrations(pool, ca::Migrations());
    if (!applied.ok()) kArea.Fail("init (schema)", applied.status());
  }

  ca::PgCaRepository repository(&pool);
  ca::CaCore core(&repository, &*master_key, *policy, rkl::SystemClock(), crypto::FillRandom);
  ca::BootstrapRequest request;
  request.services = o.services;
  request.extra_dns_names = o.hostnames;
  request.admin_names = o.admins;
  request.custodian_names = o.custodians;
  request.operator_id = o.operator_id;
  request.operator_pin = *std::move(pin);
  absl::StatusOr<ca::BootstrapResult> result = core.Bootstrap(request);
  if (!result.ok()) kArea.Fail("init", result.status());
  if (absl::Status s = ca::WriteBootstrapOutput(*result, o.out); !s.ok()) {
    kArea.Fail("init (writing " + o.out +
                   "; the CA database IS initialised — reissue with `rklctl pki request` and "
                   "`rklctl pki approve`)",
               s);
  }

  std::cout << "CA initialised in " << pool.redacted_dsn() << "\n"
            << "  master key KCV " << master_key->KcvHex() << "\n";
  PrintCertificate("terminal-root", result->terminal_root);
  PrintCertificate("kdh-ca", result->kdh_ca);
  PrintCertificate("operator-ca", result->operator_ca);
  PrintCertificate("service-ca", result->service_ca);
  for (const ca::KeyAndCertificate& s : result->services) {
    PrintCertificate(s.name, s.certificate);
  }
  for (const ca::KeyAndCertificate& a : result->admins) PrintCertificate(a.name, a.certificate);
  for (const ca::KeyAndCertificate& c : result->custodians) {
    PrintCertificate(c.name, c.certificate);
  }
  PrintCertificate(result->operator_card.name, result->operator_card.certificate);
  std::cout << "wrote " << o.out << "/{ca-bundle.pem,terminal-root.pem," << ca::kKdhCaFileName
            << ",operator-ca.pem}, " << o.out << "/<service>/{cert.pem,key.pem}, " << o.out
            << "/admin-<name>/ and custodian-<name>/ for each person, " << o.out << "/operator-"
            << o.operator_id << ".p12\n";
}

// ---- add-issuer --------------------------------------------------------------------------

struct AddIssuerOptions {
  std::string issuer;
  std::string dsn;
  std::string master_key_file;
  std::string out;
  std::string key = "rsa-3072";
  int days = ca::CaPolicy{}.kdh_ca_validity_days;
};

void RunAddIssuer(const AddIssuerOptions& o) {
  const std::string step = "add-issuer";
  if (o.issuer != "kdh-ca") {
    kArea.Fail(step, absl::InvalidArgumentError(
                         "issuer: must be kdh-ca (`pki init` makes the others with the CA)"));
  }
  ca::CaPolicy policy;
  absl::StatusOr<ca::KeySpec> spec = ca::KeySpecFromName(o.key);
  if (!spec.ok()) {
    kArea.Fail(step, absl::InvalidArgumentError(absl::StrCat("--key: ", spec.status().message())));
  }
  policy.kdh_ca_key = *spec;
  policy.kdh_ca_validity_days = o.days;
  if (absl::Status s = ca::ValidatePolicy(policy); !s.ok()) kArea.Fail(step, s);
  const std::string path = o.out + "/" + ca::kKdhCaFileName;
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    kArea.Fail(step, absl::AlreadyExistsError(path + ": already exists; not overwritten"));
  }
  absl::StatusOr<ca::MasterKey> master_key = ca::MasterKey::LoadFromFile(o.master_key_file);
  if (!master_key.ok()) kArea.Fail(step + " (master key)", master_key.status());

  db::ConnectionPool pool({.dsn = o.dsn, .max_size = 2});
  // The schema must know the issuer (migration 003): apply what `rkl-ca --migrate-only`
  // has not, as `init` does.
  if (!db::CheckMigrationsApplied(pool, ca::Migrations()).ok()) {
    absl::StatusOr<int> applied = db::ApplyMigrations(pool, ca::Migrations());
    if (!applied.ok()) kArea.Fail(step + " (schema)", applied.status());
  }
  ca::PgCaRepository repository(&pool);
  ca::CaCore core(&repository, &*master_key, policy, rkl::SystemClock(), crypto::FillRandom);
  absl::StatusOr<crypto::Certificate> cert = core.AddIssuer(ca::IssuerId::kKdhCa);
  if (!cert.ok()) kArea.Fail(step, cert.status());
  absl::StatusOr<std::string> written =
      ca::WriteIssuerCertificate(ca::IssuerId::kKdhCa, *cert, o.out);
  if (!written.ok()) {
    kArea.Fail(step + " (writing " + path +
                   "; the issuer IS in the CA database — `rklctl pki issuer --issuer kdh-ca` "
                   "prints its certificate)",
               written.status());
  }
  std::cout << "issuer added to " << pool.redacted_dsn() << "\n";
  PrintCertificate("kdh-ca", *cert);
  std::cout << "wrote " << *written << " (terminals burn it in)\n";
}

void RegisterAddIssuer(CLI::App* pki) {
  auto o = std::make_shared<AddIssuerOptions>();
  auto* cmd = pki->add_subcommand(
      "add-issuer",
      "add an issuer a CA bootstrapped before it existed lacks (kdh-ca), offline like init; "
      "refuses an issuer the CA already has");
  cmd->add_option("issuer", o->issuer, "kdh-ca")->required();
  cmd->add_option("--db", o->dsn, "libpq DSN of the CA database (as for init)")
      ->required()
      ->envname("RKL_CA_DB_DSN");
  cmd->add_option("--master-key-file", o->master_key_file,
                  "the CA master key file the database was initialised with")
      ->required()
      ->envname("RKL_CA_MASTER_KEY_FILE");
  cmd->add_option("--out", o->out, "directory to write kdh-ca.pem into (created if needed)")
      ->required();
  cmd->add_option("--key", o->key, "rsa-3072 | rsa-2048")->capture_default_str();
  cmd->add_option("--days", o->days, "validity")->capture_default_str();
  cmd->callback([o] { RunAddIssuer(*o); });
}

// ---- commands against the running CA -----------------------------------------------------

struct ClientOptions {
  Endpoint endpoint;
};

std::unique_ptr<v1::CertificateAuthority::Stub> StubOrFail(const Endpoint& endpoint,
                                                           const std::string& step) {
  auto channel = Connect(endpoint);
  if (!channel.ok()) kArea.Fail(step, channel.status());
  return v1::CertificateAuthority::NewStub(*channel);
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
  cmd->add_option("--db", o->dsn,
                  "libpq DSN of the CA database: its owner, or the runtime role once "
                  "`rkl-ca --migrate-only` has made the schema (docs/operations.md)")
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
  cmd->add_option("--admins", o->admins,
                  "the first administrators, at least two (identities admin:<NAME>): dual "
                  "control needs one to request and another to approve")
      ->delimiter(',')
      ->required();
  cmd->add_option("--custodians", o->custodians,
                  "key custodians (identities custodian:<NAME>); a key ceremony needs two")
      ->delimiter(',');
  cmd->add_option("--services", o->services, "services to certify")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--hostnames", o->hostnames,
                  "extra DNS SANs for every service certificate (besides name and localhost)")
      ->delimiter(',');
  cmd->add_option("--root-key", o->root_key, "terminal-root key: rsa-3072 | rsa-2048")
      ->capture_default_str();
  cmd->add_option("--kdh-ca-key", o->kdh_ca_key, "kdh-ca (TR-34) key: rsa-3072 | rsa-2048")
      ->capture_default_str();
  cmd->add_option("--operator-ca-key", o->operator_ca_key, "ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--service-ca-key", o->service_ca_key, "ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--leaf-key", o->leaf_key, "service/admin keys: ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--root-days", o->root_days, "terminal-root validity")->capture_default_str();
  cmd->add_option("--kdh-ca-days", o->kdh_ca_days, "kdh-ca validity")->capture_default_str();
  cmd->add_option("--ca-days", o->ca_days, "operator-ca and service-ca validity")
      ->capture_default_str();
  cmd->add_option("--service-days", o->service_days, "service/admin certificate validity")
      ->capture_default_str();
  cmd->add_option("--operator-days", o->operator_days, "operator card validity")
      ->capture_default_str();
  cmd->callback([o] { RunInit(*o); });
}

// ---- dual control: request, approve, fetch -----------------------------------------------

const char* RequestStateName(v1::CertificateRequestInfo::State state) {
  switch (state) {
    case v1::CertificateRequestInfo::STATE_PENDING:
      return "PENDING";
    case v1::CertificateRequestInfo::STATE_ISSUED:
      return "ISSUED";
    case v1::CertificateRequestInfo::STATE_EXPIRED:
      return "EXPIRED";
    default:
      return "UNKNOWN";
  }
}

void PrintRequest(const v1::CertificateRequestInfo& r) {
  std::cout << "request " << r.request_id() << ": " << RequestStateName(r.state()) << "\n"
            << "  subject " << r.subject() << " (" << r.profile() << ")";
  if (r.dns_names_size() > 0) {
    std::cout << ", extra DNS names "
              << absl::StrJoin(r.dns_names().begin(), r.dns_names().end(), ",");
  }
  std::cout << "\n  requested by " << r.requested_by() << " at "
            << absl::FormatTime(absl::FromUnixSeconds(r.requested_at_unix_s())) << ", expires "
            << absl::FormatTime(absl::FromUnixSeconds(r.expires_at_unix_s())) << "\n"
            << "  key SHA-256 " << r.public_key_sha256_hex() << "\n";
  if (r.state() == v1::CertificateRequestInfo::STATE_ISSUED) {
    std::cout << "  approved by " << r.approved_by() << " at "
              << absl::FormatTime(absl::FromUnixSeconds(r.approved_at_unix_s()))
              << ", certificate serial " << r.certificate().serial_hex() << "\n";
  }
}

// The path of the pending key of an operator card request: beside the card, mode 0600,
// removed once the card is written.
std::string PendingCardKeyPath(const std::string& card) { return card + ".key.pem"; }

absl::StatusOr<crypto::SecretBytes> ReadSecretFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  std::string data = text.str();
  crypto::SecretBytes out = crypto::SecretBytes::CopyOf(AsBytes(data));
  std::fill(data.begin(), data.end(), '\0');
  return out;
}

// Sends a request, made with a key generated here and written to `key_path` first (so no
// request exists whose key is lost). On failure the key file is removed again.
v1::CertificateRequestInfo SendRequest(const Endpoint& endpoint, const std::string& step,
                                       const crypto::PrivateKey& key, const std::string& key_path,
                                       v1::RequestCertificateRequest request) {
  absl::StatusOr<crypto::SecretBytes> key_pem = key.ExportPkcs8PemSecret();
  if (!key_pem.ok()) kArea.Fail(step, key_pem.status());
  if (absl::Status s = ca::WriteNewFile(key_path, key_pem->RevealSecret(), 0600); !s.ok()) {
    kArea.Fail(step, s);
  }
  auto stub = StubOrFail(endpoint, step);
  auto ctx = rpc::MakeClientContext(kArea.timeout);
  v1::CertificateRequestInfo info;
  grpc::Status st = stub->RequestCertificate(ctx.get(), request, &info);
  if (!st.ok()) {
    std::filesystem::remove(key_path);
    kArea.Fail(step, rpc::FromGrpcStatus(st));
  }
  return info;
}

void PrintNextStep(const v1::CertificateRequestInfo& info, const std::string& fetch_hint) {
  PrintRequest(info);
  std::cout << "dual control: a second admin approves it with\n"
            << "  rklctl pki approve --request " << info.request_id() << " --subject "
            << info.subject() << "\n"
            << "after checking the key SHA-256 above with you; then\n"
            << "  rklctl pki fetch --request " << info.request_id() << " " << fetch_hint << "\n";
}

void RegisterRequest(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string name;
    std::vector<std::string> dns_names;
    std::string key_type = "ec-p256";
    std::string out;
    uint32_t days = 0;
  };
  auto [cmd, o] = AddServiceCommand<Options>(
      pki, "request",
      "ask for a service, admin:<name> or custodian:<name> certificate (key made here, kept "
      "in <out>/<name>/key.pem); a second admin must approve it",
      "ca", "localhost:50051");
  cmd->add_option("--name", o->name,
                  "ca | hsm-mtms | hsm-kms | mtms | kms | admin:<name> | custodian:<name>")
      ->required();
  cmd->add_option("--dns-name", o->dns_names, "extra DNS SAN (repeatable; services only)");
  cmd->add_option("--key-type", o->key_type, "ec-p256 | rsa-2048 | rsa-3072")
      ->capture_default_str();
  cmd->add_option("--days", o->days, "validity (default: the CA's)");
  cmd->add_option("--out", o->out, "directory; the key goes to <out>/<name>/key.pem")->required();
  cmd->callback([o] {
    const std::string step = "request";
    absl::StatusOr<ca::KeySpec> spec = ca::KeySpecFromName(o->key_type);
    if (!spec.ok()) kArea.Fail(step, spec.status());
    std::string dir = o->out + "/" + ca::IdentityDirName(o->name);
    if (absl::Status s = ca::CheckBootstrapOutputDir(dir); !s.ok()) kArea.Fail(step, s);
    absl::StatusOr<crypto::PrivateKey> key = ca::GenerateKey(*spec);
    if (!key.ok()) kArea.Fail(step, key.status());
    absl::StatusOr<crypto::Csr> csr = crypto::CsrBuilder().SetSubjectCommonName(o->name).Sign(*key);
    if (!csr.ok()) kArea.Fail(step, csr.status());
    v1::RequestCertificateRequest req;
    v1::IssueServiceCertificateRequest* svc = req.mutable_service();
    svc->set_csr_pem(csr->ToPem());
    svc->set_name(o->name);
    for (const std::string& d : o->dns_names) svc->add_dns_names(d);
    svc->set_validity_days(o->days);
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) kArea.Fail(step, absl::FailedPreconditionError("--out: cannot create " + dir));
    v1::CertificateRequestInfo info = SendRequest(o->endpoint, step, *key, dir + "/key.pem", req);
    (void)ca::WriteNewFile(dir + "/request-id", AsBytes(info.request_id() + "\n"), 0644);
    std::cout << "key written to " << dir << "/key.pem (mode 0600)\n";
    PrintNextStep(info, "--out " + o->out);
  });
}

void RegisterRequestOperator(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string id;
    std::string out;
    uint32_t days = 0;
  };
  auto [cmd, o] = AddServiceCommand<Options>(
      pki, "request-operator",
      "ask for an operator card (P-256 key made here, kept beside the card until `fetch` "
      "writes the PIN-protected PKCS#12); a second admin must approve it",
      "ca", "localhost:50051");
  cmd->add_option("--id", o->id, "operator id ([a-z0-9._-], 1-48)")->required();
  cmd->add_option("--days", o->days, "validity (default: the CA's)");
  cmd->add_option("--out", o->out, "PKCS#12 file `fetch` will create (default operator-<id>.p12)");
  cmd->callback([o] {
    const std::string step = "request-operator";
    std::string out = o->out.empty() ? "operator-" + o->id + ".p12" : o->out;
    std::error_code ec;
    if (std::filesystem::exists(out, ec)) {
      kArea.Fail(step, absl::AlreadyExistsError(out + ": already exists; not overwritten"));
    }
    absl::StatusOr<crypto::PrivateKey> key = crypto::GenerateEcP256Key();
    if (!key.ok()) kArea.Fail(step, key.status());
    absl::StatusOr<crypto::Csr> csr =
        crypto::CsrBuilder().SetSubjectCommonName(ca::OperatorCommonName(o->id)).Sign(*key);
    if (!csr.ok()) kArea.Fail(step, csr.status());
    v1::RequestCertificateRequest req;
    v1::IssueOperatorCertificateRequest* op = req.mutable_operator_();
    op->set_csr_pem(csr->ToPem());
    op->set_operator_id(o->id);
    op->set_validity_days(o->days);
    v1::CertificateRequestInfo info =
        SendRequest(o->endpoint, step, *key, PendingCardKeyPath(out), req);
    std::cout << "pending key written to " << PendingCardKeyPath(out)
              << " (mode 0600; `fetch` turns it into the PIN-protected card and removes it)\n";
    PrintNextStep(info, "--out " + out + " --pin-file <PIN file>");
  });
}

void RegisterApprove(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string request_id;
    std::string subject;
  };
  auto [cmd, o] = AddServiceCommand<Options>(
      pki, "approve",
      "approve another admin's certificate request (dual control); the CA signs it now", "ca",
      "localhost:50051");
  cmd->add_option("--request", o->request_id, "request id (32 hex digits)")->required();
  cmd->add_option("--subject", o->subject,
                  "the identity the request names, e.g. admin:bob (must match)")
      ->required();
  cmd->callback([o] {
    auto stub = StubOrFail(o->endpoint, "approve");
    v1::ApproveCertificateRequestRequest req;
    req.set_request_id(absl::AsciiStrToUpper(o->request_id));
    req.set_subject(o->subject);
    v1::CertificateRequestInfo info = kArea.Call(
        "approve", *stub, &v1::CertificateAuthority::Stub::ApproveCertificateRequest, req);
    PrintRequest(info);
  });
}

void RegisterFetch(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string request_id;
    std::string out;
    std::string pin;
    std::string pin_file;
  };
  auto [cmd, o] = AddServiceCommand<Options>(
      pki, "fetch",
      "write the certificate of an approved request beside its key (service/admin/custodian: "
      "<out>/<name>/cert.pem; operator: the PIN-protected card <out>)",
      "ca", "localhost:50051");
  cmd->add_option("--request", o->request_id, "request id (32 hex digits)")->required();
  cmd->add_option("--out", o->out, "the --out given to `request` / `request-operator`")->required();
  cmd->add_option("--pin-file", o->pin_file, "operator cards: file whose first line is the PIN");
  cmd->add_option("--pin", o->pin, "operator cards: the PIN (visible in `ps`: prefer a file)");
  cmd->callback([o] {
    const std::string step = "fetch";
    auto stub = StubOrFail(o->endpoint, step);
    v1::GetCertificateRequestRequest req;
    req.set_request_id(absl::AsciiStrToUpper(o->request_id));
    v1::CertificateRequestInfo info =
        kArea.Call(step, *stub, &v1::CertificateAuthority::Stub::GetCertificateRequest, req);
    if (info.state() != v1::CertificateRequestInfo::STATE_ISSUED) {
      PrintRequest(info);
      kArea.Fail(step, absl::FailedPreconditionError(
                           absl::StrCat("request ", info.request_id(), " is ",
                                        RequestStateName(info.state()), ", not ISSUED")));
    }
    absl::StatusOr<crypto::Certificate> cert =
        crypto::Certificate::FromPem(info.certificate().certificate_pem());
    if (!cert.ok()) kArea.Fail(step, cert.status());
    const bool card = info.profile() == "operator";
    const std::string key_path =
        card ? PendingCardKeyPath(o->out)
             : o->out + "/" + ca::IdentityDirName(info.subject()) + "/key.pem";
    absl::StatusOr<crypto::SecretBytes> key_pem = ReadSecretFile(key_path);
    if (!key_pem.ok()) kArea.Fail(step, key_pem.status());
    absl::StatusOr<crypto::PrivateKey> key = crypto::PrivateKey::FromPemSecret(*key_pem);
    if (!key.ok()) kArea.Fail(step, key.status());
    absl::StatusOr<crypto::PublicKey> cert_key = cert->GetPublicKey();
    if (!cert_key.ok() || cert_key->ToDer() != key->GetPublicKey().ToDer()) {
      kArea.Fail(step,
                 absl::FailedPreconditionError(absl::StrCat(key_path, ": is not the key request ",
                                                            info.request_id(), " certified")));
    }
    if (!card) {
      std::string cert_path = o->out + "/" + ca::IdentityDirName(info.subject()) + "/cert.pem";
      if (absl::Status s = ca::WriteNewFile(cert_path, AsBytes(cert->ToPem()), 0644); !s.ok()) {
        kArea.Fail(step, s);
      }
      std::cout << "wrote " << cert_path << "\n";
      PrintCertificate(info.subject(), *cert);
      return;
    }
    absl::StatusOr<crypto::SecretBytes> pin = ReadPin(o->pin, o->pin_file);
    if (!pin.ok()) kArea.Fail(step, pin.status());
    v1::GetIssuerCertificateRequest issuer_req;
    issuer_req.set_issuer(v1::ISSUER_OPERATOR_CA);
    auto issuer =
        kArea.Call(step, *stub, &v1::CertificateAuthority::Stub::GetIssuerCertificate, issuer_req);
    absl::StatusOr<crypto::Certificate> ca_cert =
        crypto::Certificate::FromPem(issuer.certificate_pem());
    if (!ca_cert.ok()) kArea.Fail(step, ca_cert.status());
    std::vector<crypto::Certificate> chain = {*ca_cert};
    absl::StatusOr<Bytes> p12 =
        crypto::WritePkcs12(*key, *cert, chain, cert->SubjectCommonName(), *pin);
    if (!p12.ok()) kArea.Fail(step, p12.status());
    if (absl::Status s = ca::WriteNewFile(o->out, *p12, 0600); !s.ok()) kArea.Fail(step, s);
    std::filesystem::remove(key_path);
    std::cout << "wrote operator card " << o->out << " (mode 0600); removed " << key_path << "\n";
    PrintCertificate(cert->SubjectCommonName(), *cert);
  });
}

void RegisterRequests(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    bool all = false;
    std::string request_id;
  };
  auto [cmd, o] = AddServiceCommand<Options>(
      pki, "requests", "list certificate requests waiting for approval (or one, with --request)",
      "ca", "localhost:50051");
  cmd->add_flag("--all", o->all, "include approved requests");
  cmd->add_option("--request", o->request_id, "show only this request");
  cmd->callback([o] {
    auto stub = StubOrFail(o->endpoint, "requests");
    if (!o->request_id.empty()) {
      v1::GetCertificateRequestRequest req;
      req.set_request_id(absl::AsciiStrToUpper(o->request_id));
      PrintRequest(kArea.Call("requests", *stub,
                              &v1::CertificateAuthority::Stub::GetCertificateRequest, req));
      return;
    }
    v1::ListCertificateRequestsRequest req;
    req.set_include_decided(o->all);
    auto resp = kArea.Call("requests", *stub,
                           &v1::CertificateAuthority::Stub::ListCertificateRequests, req);
    if (resp.requests().empty()) std::cout << "no requests\n";
    for (const auto& r : resp.requests()) PrintRequest(r);
  });
}

// A service to notify after a revocation: NAME=HOST:PORT (NAME is the server name its
// certificate carries, e.g. hsm-kms=localhost:50053).
struct NotifyTarget {
  std::string name;
  std::string address;
};

absl::StatusOr<NotifyTarget> ParseNotifyTarget(const std::string& spec) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--notify: '", spec, "' must be NAME=HOST:PORT, e.g. kms=localhost:50055"));
  }
  return NotifyTarget{spec.substr(0, eq), spec.substr(eq + 1)};
}

void RegisterRevoke(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string serial;
    std::string reason;
    std::vector<std::string> notify;
  };
  auto [cmd, o] = AddServiceCommand<Options>(
      pki, "revoke",
      "revoke a certificate; its issuer's CRL is re-signed, and every --notify service "
      "refreshes its CRL before this returns",
      "ca", "localhost:50051");
  cmd->add_option("--serial", o->serial, "serial number, hex")->required();
  cmd->add_option("--reason", o->reason,
                  "key-compromise | affiliation-changed | superseded | cessation-of-operation")
      ->required();
  cmd->add_option("--notify", o->notify,
                  "NAME=HOST:PORT of a service to make refresh its CRL now (repeatable, or "
                  "comma-separated); the others enforce it within their crl.refresh_interval")
      ->delimiter(',')
      ->envname("RKL_CTL_NOTIFY");
  cmd->callback([o] {
    std::vector<NotifyTarget> targets;
    for (const std::string& spec : o->notify) {
      absl::StatusOr<NotifyTarget> t = ParseNotifyTarget(spec);
      if (!t.ok()) kArea.Fail("revoke", t.status());
      targets.push_back(*t);
    }
    absl::StatusOr<v1::RevocationReason> reason = ReasonFlag(o->reason);
    if (!reason.ok()) kArea.Fail("revoke", reason.status());
    auto stub = StubOrFail(o->endpoint, "revoke");
    v1::RevokeCertificateRequest req;
    req.set_serial_hex(o->serial);
    req.set_reason(*reason);
    v1::CertificateStatus status =
        kArea.Call("revoke", *stub, &v1::CertificateAuthority::Stub::RevokeCertificate, req);
    PrintStatus(status);
    if (targets.empty()) return;
    // The service-ca CRL that lists this revocation; each service must hold at least it.
    v1::GetCrlRequest crl_req;
    crl_req.set_issuer(v1::ISSUER_SERVICE_CA);
    const uint64_t wanted =
        kArea.Call("revoke", *stub, &v1::CertificateAuthority::Stub::GetCrl, crl_req).crl_number();
    const bool service_ca = status.issuer() == v1::ISSUER_SERVICE_CA;
    std::vector<std::string> missed;
    for (const NotifyTarget& t : targets) {
      Endpoint e = o->endpoint;
      e.target = t.address;
      e.authority = t.name;
      absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = Connect(e);
      grpc::Status st = channel.ok() ? grpc::Status::OK
                                     : grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                                    std::string(channel.status().message()));
      v1::RefreshCrlResponse resp;
      if (st.ok()) {
        auto ctx = rpc::MakeClientContext(kArea.timeout);
        st = v1::Revocation::NewStub(*channel)->RefreshCrl(ctx.get(), v1::RefreshCrlRequest(),
                                                           &resp);
      }
      if (!st.ok()) {
        missed.push_back(absl::StrCat(t.name, " (", t.address, "): ", st.error_message()));
      } else if (service_ca && resp.crl_number() < wanted) {
        missed.push_back(absl::StrCat(t.name, " (", t.address, "): holds CRL number ",
                                      resp.crl_number(), ", older than ", wanted));
      } else {
        std::cout << "  " << t.name << " (" << t.address << "): service-ca CRL number "
                  << resp.crl_number() << " in force\n";
      }
    }
    if (!missed.empty()) {
      std::cerr << "rklctl pki revoke: revoked, but not confirmed by:\n";
      for (const std::string& m : missed) std::cerr << "  " << m << "\n";
      std::cerr << "they enforce it within their crl.refresh_interval once they reach rkl-ca\n";
      throw CLI::RuntimeError(1);
    }
  });
}

void RegisterReadCommands(CLI::App* pki) {
  struct Options {
    Endpoint endpoint;
    std::string issuer = "operator-ca";
    std::string serial;
    std::string out;
  };
  auto [crl_cmd, crl] = AddServiceCommand<Options>(
      pki, "crl", "print an issuer's current CRL (PEM)", "ca", "localhost:50051");
  crl_cmd->add_option("--issuer", crl->issuer, "terminal-root | operator-ca | service-ca | kdh-ca")
      ->capture_default_str();
  crl_cmd->add_option("--out", crl->out, "write the PEM here instead of stdout");
  crl_cmd->callback([crl] {
    absl::StatusOr<v1::Issuer> issuer = IssuerFlag(crl->issuer);
    if (!issuer.ok()) kArea.Fail("crl", issuer.status());
    auto stub = StubOrFail(crl->endpoint, "crl");
    v1::GetCrlRequest req;
    req.set_issuer(*issuer);
    auto resp = kArea.Call("crl", *stub, &v1::CertificateAuthority::Stub::GetCrl, req);
    std::cerr << crl->issuer << " CRL number " << resp.crl_number() << ", next update "
              << absl::FormatTime(absl::FromUnixSeconds(resp.next_update_unix_s())) << "\n";
    if (crl->out.empty()) {
      std::cout << resp.crl_pem();
    } else if (absl::Status s = ca::WriteNewFile(crl->out, AsBytes(resp.crl_pem()), 0644);
               !s.ok()) {
      kArea.Fail("crl", s);
    }
  });

  auto [status_cmd, status] = AddServiceCommand<Options>(
      pki, "status", "status of a certificate by serial", "ca", "localhost:50051");
  status_cmd->add_option("--serial", status->serial, "serial number, hex")->required();
  status_cmd->callback([status] {
    auto stub = StubOrFail(status->endpoint, "status");
    v1::GetCertificateStatusRequest req;
    req.set_serial_hex(status->serial);
    PrintStatus(
        kArea.Call("status", *stub, &v1::CertificateAuthority::Stub::GetCertificateStatus, req));
  });

  auto [issuer_cmd, issuer] = AddServiceCommand<Options>(
      pki, "issuer", "print an issuer's certificate (PEM)", "ca", "localhost:50051");
  issuer_cmd
      ->add_option("--issuer", issuer->issuer, "terminal-root | operator-ca | service-ca | kdh-ca")
      ->capture_default_str();
  issuer_cmd->callback([issuer] {
    absl::StatusOr<v1::Issuer> id = IssuerFlag(issuer->issuer);
    if (!id.ok()) kArea.Fail("issuer", id.status());
    auto stub = StubOrFail(issuer->endpoint, "issuer");
    v1::GetIssuerCertificateRequest req;
    req.set_issuer(*id);
    std::cout << kArea
                     .Call("issuer", *stub, &v1::CertificateAuthority::Stub::GetIssuerCertificate,
                           req)
                     .certificate_pem();
  });
}

}  // namespace

void RegisterPkiCommands(CLI::App& app) {
  AddCommandGroup(
      app, "pki", "PKI bootstrap and certificate administration",
      {RegisterInit, RegisterAddIssuer, RegisterRequest, RegisterRequestOperator, RegisterApprove,
       RegisterFetch, RegisterRequests, RegisterRevoke, RegisterReadCommands});
}

}  // namespace rkl::rklctl
