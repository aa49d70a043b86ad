// rkl-pos against the REAL system, every service in-process with its own PostgreSQL database:
//
//   rkl-ca      bootstrapped exactly as `rklctl pki init` does it (CaCore::Bootstrap +
//               WriteBootstrapOutput): every service certificate, the admin certificate, the
//               terminal root HsmRCRT and the operator card come from that directory;
//   rkl-hsm ×2  HsmDaemon, HSM #1 (hsm-mtms, serves mtms) and HSM #2 (hsm-kms, serves kms),
//               each with its own LMK; PK and MAK entered by the same two custodians
//               (custodian:alice and custodian:bob from the bootstrap) with
//               RSA-OAEP-encrypted components into BOTH HSMs (S101);
//   rkl-mtms    configured from YAML through its own schema (PK/MAK indexes of HSM #1), the
//               forwarder running; work key provisioned through the admin RPC (S201–S203);
//   rkl-kms     configured from YAML through its own schema (PK/MAK indexes of HSM #2),
//               refusing client certificates on the service-ca CRL it fetches from rkl-ca.
//
// The simulator is driven as `rkl-pos provision` and `rkl-pos fleet` drive it: its real gRPC
// clients over server-authenticated TLS, the operator card opened from the bootstrap's
// PKCS#12, ProvisionTerminal and RunFleet, results verified through the KMS admin RPC.
// Finally every database (pg_dump), the simulator's state directory and everything that was
// printed or logged are searched for every clear key the test can learn.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bootstrap_output.h"
#include "ca_core.h"
#include "ca_db_roles.h"
#include "ca_grpc_service.h"
#include "ca_pg_repository.h"
#include "clients.h"
#include "fakes.h"
#include "fleet.h"
#include "grpc_hsm_port.h"
#include "hsm_daemon.h"
#include "kms_config.h"
#include "kms_core.h"
#include "kms_db_roles.h"
#include "kms_grpc_service.h"
#include "kms_pg_repository.h"
#include "master_key.h"
#include "mtms_config.h"
#include "mtms_core.h"
#include "mtms_db_roles.h"
#include "mtms_forwarder.h"
#include "mtms_grpc_ports.h"
#include "mtms_grpc_service.h"
#include "mtms_operator_trust.h"
#include "mtms_pg_repository.h"
#include "operator_terminal.h"
#include "provision.h"
#include "rkl/ca/migrations.h"
#include "rkl/common/config.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_csr.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/migration.h"
#include "rkl/db/schema_roles.h"
#include "rkl/kms/migrations.h"
#include "rkl/mtms/migrations.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/revocation.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/loopback_channel.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/wait.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "rkl/v1/kms.grpc.pb.h"
#include "rkl/v1/mtms.grpc.pb.h"
#include "secure_module.h"
#include "spdlog/sinks/base_sink.h"
#include "spdlog/spdlog.h"
#include "terminal.h"

namespace rkl::pos {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;
using ::testing::IsEmpty;

constexpr absl::Duration kRpcTimeout = absl::Seconds(30);
constexpr char kPin[] = "735911";
constexpr char kInstalled[] = "TERMINAL_STATE_INSTALLED";
constexpr int kFleetCount = 100;
constexpr int kFleetConcurrency = 16;

// ---------------------------------------------------------------------------------------
// Small helpers.

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// A YAML single-quoted scalar.
std::string Yq(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

rpc::TlsFiles IdentityTls(const std::string& pki, const std::string& identity) {
  const std::string d = pki + "/" + ca::IdentityDirName(identity);
  return {d + "/cert.pem", d + "/key.pem", pki + "/ca-bundle.pem"};
}

std::string TlsYaml(const rpc::TlsFiles& tls, const std::string& indent) {
  return absl::StrCat(indent, "cert_file: ", Yq(tls.cert_file), "\n", indent,
                      "key_file: ", Yq(tls.key_file), "\n", indent, "ca_file: ", Yq(tls.ca_file),
                      "\n");
}

// No environment: the YAML alone configures the service.
absl::StatusOr<Config> ConfigFromYaml(const ConfigSchema& schema, const std::string& yaml) {
  return LoadConfigFromYaml(schema, yaml,
                            [](const std::string&) -> std::optional<std::string> { return {}; });
}

Bytes Xor(const SecretBytes& a, const SecretBytes& b) {
  Bytes out(a.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = a.RevealSecret()[i] ^ b.RevealSecret()[i];
  return out;
}

Bytes Copy(const SecretBytes& s) {
  auto r = s.RevealSecret();
  return Bytes(r.begin(), r.end());
}

// Collects every log line in memory; Contents() may be called while services still log.
class CaptureSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string Contents() {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    text_.append(formatted.data(), formatted.size());
  }
  void flush_() override {}

 private:
  std::string text_;
};

// ---------------------------------------------------------------------------------------
// The leak search: every form a key could take in a dump, a file or a log line.

// Raw, upper- and lower-case hex, and base64 at each of the three byte alignments a key can
// have inside a longer encoded buffer (only the characters that depend on key bytes alone).
std::vector<std::pair<std::string, std::string>> Encodings(const Bytes& key) {
  const std::string raw(key.begin(), key.end());
  const std::string hex = ToHex(key);
  std::vector<std::pair<std::string, std::string>> out = {
      {"raw", raw}, {"HEX", hex}, {"hex", absl::AsciiStrToLower(hex)}};
  for (size_t shift = 0; shift < 3; ++shift) {
    const std::string prefixed = std::string(shift, '\0') + raw;
    const std::string b64 = absl::Base64Escape(prefixed);
    const size_t skip = shift == 0 ? 0 : 4;           // the first quantum mixes in padding
    const size_t usable = (prefixed.size() / 3) * 4;  // whole quanta only
    if (usable > skip + 8) {
      out.push_back({absl::StrCat("base64@", shift), b64.substr(skip, usable - skip)});
    }
  }
  return out;
}

class LeakSearch {
 public:
  static constexpr size_t kWindow = 12;

  void Add(const std::string& label, const Bytes& key) {
    for (auto& [form, needle] : Encodings(key)) {
      EXPECT_GE(needle.size(), 16u) << label << " " << form;
      needles_.push_back({absl::StrCat(label, " (", form, ")"), std::move(needle)});
    }
    index_.clear();
  }
  size_t size() const { return needles_.size(); }

  // Labels of the needles found in `haystack`, each suffixed with `where`. One pass over the
  // haystack with a hash of every needle's first kWindow bytes, so a few megabytes of dumps
  // against thousands of needles stay fast.
  std::vector<std::string> Find(std::string_view haystack, const std::string& where) {
    if (index_.empty()) {
      for (size_t i = 0; i < needles_.size(); ++i) {
        index_[std::string_view(needles_[i].second).substr(0, kWindow)].push_back(i);
      }
    }
    std::set<std::string> hits;
    for (size_t pos = 0; pos + kWindow <= haystack.size(); ++pos) {
      auto it = index_.find(haystack.substr(pos, kWindow));
      if (it == index_.end()) continue;
      for (size_t i : it->second) {
        if (haystack.substr(pos, needles_[i].second.size()) == needles_[i].second) {
          hits.insert(absl::StrCat(needles_[i].first, " in ", where));
        }
      }
    }
    return std::vector<std::string>(hits.begin(), hits.end());
  }

 private:
  std::vector<std::pair<std::string, std::string>> needles_;
  std::unordered_map<std::string_view, std::vector<size_t>> index_;
};

// pg_dump of the whole database (schema and data), followed by the decoded bytes of every
// `\x...` bytea literal in it, so raw key bytes stored in a bytea column would be found too.
std::string DumpDatabase(const std::string& dsn, const std::string& out_file) {
  const std::string err_file = out_file + ".err";
  const std::string cmd = absl::StrCat(RKL_POS_TEST_PG_DUMP, " --no-owner -d ", ShellQuote(dsn),
                                       " -f ", ShellQuote(out_file), " 2>", ShellQuote(err_file));
  const int rc = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << "pg_dump: " << ReadWholeFile(err_file);
  std::string dump = ReadWholeFile(out_file);
  std::string decoded;
  auto is_hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
  for (size_t pos = dump.find("\\x"); pos != std::string::npos; pos = dump.find("\\x", pos)) {
    size_t end = pos + 2;
    while (end < dump.size() && is_hex(dump[end])) ++end;
    size_t digits = (end - pos - 2) / 2 * 2;
    if (digits >= 2) {
      absl::StatusOr<Bytes> bytes = FromHex(std::string_view(dump).substr(pos + 2, digits));
      if (bytes.ok()) {
        decoded += "\n";
        decoded.append(bytes->begin(), bytes->end());
      }
    }
    pos = end;
  }
  return dump + decoded;
}

// Every regular file under `dir`, path → contents.
std::map<std::string, std::string> CollectFiles(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) files[e.path().string()] = ReadWholeFile(e.path().string());
  }
  return files;
}

// ---------------------------------------------------------------------------------------
// The services, each wired the way its main() wires it.

struct CaProcess {
  explicit CaProcess(const std::string& dsn)
      : pool({.dsn = dsn, .max_size = 4}),
        repository(&pool),
        master_key(ca::MasterKey::FromSecret(crypto::RandomSecret(32)).value()),
        core(
            &repository, &master_key, ca::CaPolicy{}, [] { return absl::Now(); },
            crypto::FillRandom),
        service(&core) {}
  ~CaProcess() {
    if (server) server->Shutdown(absl::Seconds(1));
  }
  db::ConnectionPool pool;
  ca::PgCaRepository repository;
  ca::MasterKey master_key;
  ca::CaCore core;
  ca::CaGrpcService service;
  std::unique_ptr<rpc::Server> server;
};

struct KmsProcess {
  KmsProcess(const kms::KmsSettings& s, std::shared_ptr<grpc::Channel> hsm_channel)
      : settings(s),
        pool(s.db),
        repository(pool, crypto::SecretBytes(32)),
        hsm(std::move(hsm_channel), s.hsm_timeout),
        core(
            repository, hsm, [] { return absl::Now(); }, crypto::FillRandom, s.core),
        service(core, repository.audit_log()) {}
  ~KmsProcess() {
    if (server) server->Shutdown(absl::Seconds(1));
  }
  kms::KmsSettings settings;
  db::ConnectionPool pool;
  kms::PgKmsRepository repository;
  kms::GrpcHsmPort hsm;
  kms::KmsCore core;
  kms::KmsGrpcService service;
  std::unique_ptr<rpc::Server> server;
};

struct MtmsProcess {
  MtmsProcess(const Config& config, std::shared_ptr<grpc::Channel> hsm_channel,
              std::shared_ptr<grpc::Channel> ca_channel, std::shared_ptr<grpc::Channel> kms_channel)
      : pool({.dsn = config.GetString("db.dsn"),
              .max_size = static_cast<int>(config.GetInt("db.pool_size"))}),
        repository(pool, crypto::SecretBytes(32)),
        hsm(std::move(hsm_channel), config.GetDuration("rpc.timeout")),
        ca(std::move(ca_channel), config.GetDuration("rpc.timeout")),
        kms(std::move(kms_channel), config.GetDuration("rpc.timeout")),
        trust(ca, clock, config.GetDuration("ca.crl_refresh")),
        core(repository, hsm, ca, trust, clock, mtms::CoreOptionsFromConfig(config)),
        forwarder(repository, hsm, kms, trust, clock, mtms::ForwarderOptionsFromConfig(config)),
        service(core, forwarder, repository.audit_log()) {}
  ~MtmsProcess() {
    forwarder.Stop();
    if (server) server->Shutdown(absl::Seconds(1));
  }
  Clock clock = SystemClock();
  db::ConnectionPool pool;
  mtms::PgMtmsRepository repository;
  mtms::GrpcHsmPort hsm;
  mtms::GrpcCaPort ca;
  mtms::GrpcKmsPort kms;
  mtms::OperatorTrust trust;
  mtms::MtmsCore core;
  mtms::Forwarder forwarder;
  mtms::MtmsGrpcService service;
  std::unique_ptr<rpc::Server> server;
};

struct CeremonyKey {
  uint64_t index = 0;
  std::string kcv;
};

// One ceremony over gRPC as rklctl runs it: the first custodian begins, each custodian
// encrypts its component to the ceremony key (RSA-OAEP, label "RKL-COMPONENT:<id>") and adds
// it, the last completes.
absl::StatusOr<CeremonyKey> RunCeremony(
    int hsm_port, const std::string& hsm_authority, const std::string& pki, v1::KeyType type,
    const std::string& label,
    const std::vector<std::pair<std::string, const SecretBytes*>>& custodians) {
  std::vector<std::unique_ptr<v1::Hsm::Stub>> stubs;
  for (const auto& [identity, component] : custodians) {
    stubs.push_back(v1::Hsm::NewStub(
        rkl::testing::LoopbackChannel(hsm_port, IdentityTls(pki, identity), hsm_authority)));
  }
  v1::BeginCeremonyRequest begin;
  begin.set_label(label);
  begin.set_key_type(type);
  begin.set_component_count(static_cast<uint32_t>(custodians.size()));
  v1::BeginCeremonyResponse ceremony;
  auto ctx = rpc::MakeClientContext(kRpcTimeout);
  grpc::Status st = stubs.front()->BeginCeremony(ctx.get(), begin, &ceremony);
  if (!st.ok()) return rpc::FromGrpcStatus(st);
  RKL_ASSIGN_OR_RETURN(
      crypto::PublicKey cek,
      crypto::PublicKey::FromDer(AsBytes(ceremony.component_encryption_key_der())));
  const std::string oaep_label = "RKL-COMPONENT:" + ceremony.ceremony_id();
  for (size_t i = 0; i < custodians.size(); ++i) {
    RKL_ASSIGN_OR_RETURN(Bytes encrypted,
                         crypto::RsaOaepEncrypt(cek, *custodians[i].second, AsBytes(oaep_label)));
    v1::AddComponentRequest add;
    add.set_ceremony_id(ceremony.ceremony_id());
    add.set_encrypted_component(std::string(encrypted.begin(), encrypted.end()));
    v1::AddComponentResponse added;
    auto add_ctx = rpc::MakeClientContext(kRpcTimeout);
    st = stubs[i]->AddComponent(add_ctx.get(), add, &added);
    if (!st.ok()) return rpc::FromGrpcStatus(st);
  }
  v1::CompleteCeremonyRequest complete;
  complete.set_ceremony_id(ceremony.ceremony_id());
  v1::CompleteCeremonyResponse done;
  auto done_ctx = rpc::MakeClientContext(kRpcTimeout);
  st = stubs.back()->CompleteCeremony(done_ctx.get(), complete, &done);
  if (!st.ok()) return rpc::FromGrpcStatus(st);
  return CeremonyKey{done.key_index(), done.kcv()};
}

// ---------------------------------------------------------------------------------------
// The whole deployment, started once for the suite.

struct ProvisionRun {
  KeyAlgorithm algorithm;
  std::string sn;
  absl::StatusOr<ProvisionResult> result = absl::UnknownError("not run");
};

struct FleetRun {
  std::string prefix;
  FleetSummary summary;
  std::vector<std::string> sns;
};

struct World {
  pos::testing::TempDir dir;
  std::string pki_dir() const { return dir.path() + "/pki"; }
  // audit.mac_key_file of KMS and MTMS: a key file as the deployments make one (mode 0600).
  std::string audit_key_file() const {
    const std::string path = dir.path() + "/audit-mac.key";
    if (!std::filesystem::exists(path)) {
      std::ofstream(path) << std::string(64, 'a') << "\n";
      std::filesystem::permissions(
          path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    }
    return path;
  }
  std::string state_dir() const { return dir.path() + "/state"; }
  std::string output_dir() const { return dir.path() + "/output"; }

  // Everything logged (services and simulator, one process) and printed.
  std::shared_ptr<CaptureSink> log = std::make_shared<CaptureSink>();
  std::shared_ptr<spdlog::logger> previous_logger;
  std::ostringstream out;       // what `rkl-pos provision` / `fleet` print on stdout
  std::ostringstream progress;  // fleet progress (stderr of `rkl-pos fleet`)

  std::optional<rkl::testing::ServiceDatabase> ca_db, hsm1_db, hsm2_db, mtms_db, kms_db;
  std::unique_ptr<CaProcess> ca;
  std::unique_ptr<hsm::HsmDaemon> hsm1, hsm2;
  std::unique_ptr<rpc::ServiceCaCrl> kms_crl;  // outlives the KMS server that enforces it
  std::unique_ptr<KmsProcess> kms;
  std::unique_ptr<MtmsProcess> mtms;

  // The custodians' components (the test played both custodians) and the ceremony results.
  SecretBytes pk_alice, pk_bob, mak_alice, mak_bob;
  CeremonyKey pk1, mak1, pk2, mak2;

  // The simulator, as rkl-pos builds it from its flags.
  std::unique_ptr<GrpcMtmsClient> sim_mtms;
  std::unique_ptr<GrpcKmsClient> sim_kms;
  std::unique_ptr<GrpcKmsClient> sim_admin;  // --admin-cert/--admin-key
  std::optional<crypto::Certificate> terminal_root;
  std::optional<OperatorCard> card;
  std::unique_ptr<OperatorTerminal> operator_terminal;

  std::optional<std::vector<ProvisionRun>> provisioned;
  std::optional<FleetRun> fleet;
  absl::Duration setup_time;
  bool ready = false;  // every service started and configured

  ProvisionContext Context(KeyAlgorithm algorithm) {
    ProvisionContext ctx;
    ctx.state_dir = state_dir();
    ctx.algorithm = algorithm;
    ctx.terminal_root = &*terminal_root;
    ctx.operator_terminal = operator_terminal.get();
    ctx.kms = sim_kms.get();
    ctx.forwarding = ForwardingWait{};  // the documented default: at most 60 s
    ctx.clock = [] { return absl::Now(); };
    ctx.sleep = SleepFor;
    return ctx;
  }
};

class PosIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto t0 = std::chrono::steady_clock::now();
    w_ = new World();
    // Capture every log line of every service and of the simulator.
    w_->previous_logger = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>("capture", w_->log);
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
    std::filesystem::create_directories(w_->output_dir());

    ASSERT_NO_FATAL_FAILURE(StartCa());
    ASSERT_NO_FATAL_FAILURE(StartHsms());
    ASSERT_NO_FATAL_FAILURE(KeyCeremony());
    ASSERT_NO_FATAL_FAILURE(StartKms());
    ASSERT_NO_FATAL_FAILURE(StartMtms());
    ASSERT_NO_FATAL_FAILURE(ProvisionWorkKey());
    ASSERT_NO_FATAL_FAILURE(StartSimulator());
    w_->setup_time = absl::FromChrono(std::chrono::steady_clock::now() - t0);
    w_->ready = true;
  }

  static void TearDownTestSuite() {
    if (w_ == nullptr) return;
    std::cout << "[pos_integration] deployment set-up took " << absl::FormatDuration(w_->setup_time)
              << "\n";
    // Clients first, then the services in the reverse order of their dependencies, then
    // the databases.
    w_->operator_terminal.reset();
    w_->sim_admin.reset();
    w_->sim_kms.reset();
    w_->sim_mtms.reset();
    w_->mtms.reset();
    w_->kms.reset();
    w_->hsm1.reset();
    w_->hsm2.reset();
    w_->ca.reset();
    spdlog::set_default_logger(w_->previous_logger);
    delete w_;
    w_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(w_ != nullptr && w_->ready) << "the deployment did not start; see above";
  }

  // A fresh database; with `schema`, migrated as `rkl-<svc> --migrate-only` would.
  static rkl::testing::ServiceDatabase NewDatabase(rkl::testing::ServiceSchema schema = {}) {
    auto db = rkl::testing::ServiceDatabase::Create(schema);
    EXPECT_TRUE(db.ok()) << db.status();
    return *std::move(db);
  }

  // rkl-ca on its database, bootstrapped as `rklctl pki init` does: two admins and the two
  // key custodians (the MTMS custodian alice, the KMS custodian bob).
  static void StartCa() {
    w_->ca_db.emplace(
        NewDatabase({.migrations = ca::Migrations(), .grants = ca::kCaRuntimeGrants}));
    w_->ca = std::make_unique<CaProcess>(w_->ca_db->runtime_dsn());
    ASSERT_TRUE(ca::CheckBootstrapOutputDir(w_->pki_dir()).ok());
    ca::BootstrapRequest req;
    req.admin_names = {"alice", "bob"};
    req.custodian_names = {"alice", "bob"};
    req.operator_pin = SecretBytes::CopyOf(AsBytes(kPin));
    auto boot = w_->ca->core.Bootstrap(req);
    ASSERT_TRUE(boot.ok()) << boot.status();
    absl::Status written = ca::WriteBootstrapOutput(*boot, w_->pki_dir());
    ASSERT_TRUE(written.ok()) << written;
    ASSERT_TRUE(w_->ca->core.CheckReady().ok());

    auto server = rpc::Server::Start(
        {.listen_address = "127.0.0.1:0", .tls = IdentityTls(w_->pki_dir(), "ca")},
        {&w_->ca->service});
    ASSERT_TRUE(server.ok()) << server.status();
    w_->ca->server = *std::move(server);
  }

  static std::unique_ptr<hsm::HsmDaemon> StartHsm(const std::string& hsm_id,
                                                  const std::string& serves,
                                                  const rkl::testing::ServiceDatabase& db) {
    const std::string lmk_file = absl::StrCat(w_->dir.path(), "/", hsm_id, "-lmk.hex");
    std::ofstream(lmk_file) << ToHex(crypto::RandomBytes(32)) << "\n";
    ::chmod(lmk_file.c_str(), 0600);
    hsm::HsmDaemonOptions options;
    options.hsm_id = hsm_id;
    options.database_dsn = db.runtime_dsn();
    options.owner_dsn = db.owner_dsn();
    options.lmk_file = lmk_file;
    options.operational_identities = {serves};
    options.role = serves == "mtms" ? hsm::HsmRole::kMtms : hsm::HsmRole::kKms;
    // HSM #1 translates only packages signed by operators of this deployment's operator-ca
    // (written by the bootstrap, as `rklctl pki init` does).
    if (serves == "mtms") options.operator_ca_file = w_->pki_dir() + "/operator-ca.pem";
    options.listen_address = "127.0.0.1:0";
    options.tls = IdentityTls(w_->pki_dir(), hsm_id);
    auto daemon = hsm::HsmDaemon::Start(options);
    EXPECT_TRUE(daemon.ok()) << hsm_id << ": " << daemon.status();
    return daemon.ok() ? *std::move(daemon) : nullptr;
  }

  static void StartHsms() {
    w_->hsm1_db.emplace(NewDatabase());
    w_->hsm2_db.emplace(NewDatabase());
    w_->hsm1 = StartHsm("hsm-mtms", "mtms", *w_->hsm1_db);
    w_->hsm2 = StartHsm("hsm-kms", "kms", *w_->hsm2_db);
    ASSERT_TRUE(w_->hsm1 && w_->hsm2);
    ASSERT_NE(w_->hsm1->lmk_kcv(), w_->hsm2->lmk_kcv());
  }

  // S101: the MTMS custodian (alice) and the KMS custodian (bob) enter the SAME two
  // components of PK and of MAK into both HSMs.
  static void KeyCeremony() {
    w_->pk_alice = crypto::RandomSecret(32);
    w_->pk_bob = crypto::RandomSecret(32);
    w_->mak_alice = crypto::RandomSecret(32);
    w_->mak_bob = crypto::RandomSecret(32);
    const std::string pki = w_->pki_dir();
    auto run = [&](hsm::HsmDaemon& hsm, const std::string& authority, v1::KeyType type,
                   const char* label, const SecretBytes& a, const SecretBytes& b) {
      auto key = RunCeremony(hsm.port(), authority, pki, type, label,
                             {{"custodian:alice", &a}, {"custodian:bob", &b}});
      EXPECT_TRUE(key.ok()) << authority << " " << label << ": " << key.status();
      return key.ok() ? *key : CeremonyKey{};
    };
    w_->pk1 = run(*w_->hsm1, "hsm-mtms", v1::KEY_TYPE_PK, "PK-1", w_->pk_alice, w_->pk_bob);
    w_->mak1 = run(*w_->hsm1, "hsm-mtms", v1::KEY_TYPE_MAK, "MAK-1", w_->mak_alice, w_->mak_bob);
    w_->pk2 = run(*w_->hsm2, "hsm-kms", v1::KEY_TYPE_PK, "PK-1", w_->pk_alice, w_->pk_bob);
    w_->mak2 = run(*w_->hsm2, "hsm-kms", v1::KEY_TYPE_MAK, "MAK-1", w_->mak_alice, w_->mak_bob);
    ASSERT_FALSE(::testing::Test::HasFailure());
    // Both HSMs hold the same PK and the same MAK, and it is the XOR of the components.
    EXPECT_EQ(w_->pk1.kcv, w_->pk2.kcv);
    EXPECT_EQ(w_->mak1.kcv, w_->mak2.kcv);
    EXPECT_NE(w_->pk1.kcv, w_->mak1.kcv);
    SecretBytes pk = SecretBytes::CopyOf(Xor(w_->pk_alice, w_->pk_bob));
    SecretBytes mak = SecretBytes::CopyOf(Xor(w_->mak_alice, w_->mak_bob));
    EXPECT_EQ(w_->pk1.kcv, crypto::KcvHex(KeyAlgorithm::kAes256, pk).value());
    EXPECT_EQ(w_->mak1.kcv, crypto::KcvHex(KeyAlgorithm::kAes256, mak).value());
    ASSERT_FALSE(::testing::Test::HasFailure());
  }

  // rkl-kms from its YAML configuration, as main() wires it.
  static void StartKms() {
    w_->kms_db.emplace(NewDatabase());
    const std::string pki = w_->pki_dir();
    const std::string yaml =
        absl::StrCat("listen: '127.0.0.1:0'\n", "tls:\n", TlsYaml(IdentityTls(pki, "kms"), "  "),
                     "db:\n", "  dsn: ", Yq(w_->kms_db->runtime_dsn()), "\n",
                     "  owner_dsn: ", Yq(w_->kms_db->owner_dsn()), "\n", "  pool_size: 8\n",
                     "hsm:\n", "  endpoint: '127.0.0.1:", w_->hsm2->port(), "'\n",
                     "  authority: hsm-kms\n", "  tls:\n", TlsYaml(IdentityTls(pki, "kms"), "    "),
                     "  pk_index: ", w_->pk2.index, "\n", "  mak_index: ", w_->mak2.index, "\n",
                     "crl:\n", "  ca_endpoint: '127.0.0.1:", w_->ca->server->port(), "'\n",
                     "audit:\n", "  mac_key_file: ", Yq(w_->audit_key_file()), "\n");
    auto config = ConfigFromYaml(kms::MakeKmsConfigSchema(), yaml);
    ASSERT_TRUE(config.ok()) << config.status();
    kms::KmsSettings settings = kms::KmsSettingsFromConfig(*config).value();
    // Client certificates on the service-ca CRL are refused, the CRL fetched from rkl-ca.
    auto crl = rpc::ServiceCaCrl::Create(settings.crl);
    ASSERT_TRUE(crl.ok()) << crl.status();
    w_->kms_crl = *std::move(crl);
    ASSERT_TRUE(w_->kms_crl->Start().ok());
    ASSERT_TRUE(w_->kms_crl->list().crl_number().has_value());
    w_->kms_crl->ConfigureServer(settings.server);
    ASSERT_EQ(settings.core.pk_index, w_->pk2.index);
    ASSERT_EQ(settings.core.mak_index, w_->mak2.index);
    auto hsm_channel = rpc::MakeChannel(settings.hsm_target, settings.hsm_channel);
    ASSERT_TRUE(hsm_channel.ok()) << hsm_channel.status();
    w_->kms = std::make_unique<KmsProcess>(settings, *hsm_channel);
    // As main() does: migrate as db.owner_dsn, then serve as db.dsn's role.
    auto applied = db::SetUpSchema(w_->kms->pool, {.owner_dsn = settings.owner_dsn},
                                   kms::Migrations(), kms::kKmsRuntimeGrants);
    ASSERT_TRUE(applied.ok()) << applied.status();
    auto server = rpc::Server::Start(settings.server, {&w_->kms->service});
    ASSERT_TRUE(server.ok()) << server.status();
    w_->kms->server = *std::move(server);
    w_->kms->server->SetServing(true);
    w_->kms->server->SetServing("rkl.v1.Kms", true);
  }

  // rkl-mtms from its YAML configuration, as main() wires it, with the forwarder running.
  static void StartMtms() {
    w_->mtms_db.emplace(NewDatabase());
    const std::string pki = w_->pki_dir();
    const std::string yaml = absl::StrCat(
        "listen: '127.0.0.1:0'\n", "tls:\n", TlsYaml(IdentityTls(pki, "mtms"), "  "), "db:\n",
        "  dsn: ", Yq(w_->mtms_db->runtime_dsn()), "\n",
        "  owner_dsn: ", Yq(w_->mtms_db->owner_dsn()), "\n", "  pool_size: 8\n", "hsm:\n",
        "  endpoint: '127.0.0.1:", w_->hsm1->port(), "'\n", "  pk_index: ", w_->pk1.index, "\n",
        "  mak_index: ", w_->mak1.index, "\n", "ca:\n",
        "  endpoint: '127.0.0.1:", w_->ca->server->port(), "'\n", "kms:\n",
        "  endpoint: '127.0.0.1:", w_->kms->server->port(), "'\n", "rpc:\n", "  timeout: 30s\n",
        "forwarder:\n", "  interval: 100ms\n", "replica_id: mtms-pos-integration\n", "crl:\n",
        "  ca_endpoint: '127.0.0.1:", w_->ca->server->port(), "'\n", "audit:\n",
        "  mac_key_file: ", Yq(w_->audit_key_file()), "\n");
    auto loaded = ConfigFromYaml(mtms::MakeMtmsConfigSchema(), yaml);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const Config& config = *loaded;
    ASSERT_EQ(mtms::ForwarderOptionsFromConfig(config).pk_index, w_->pk1.index);
    ASSERT_EQ(mtms::ForwarderOptionsFromConfig(config).mak_index, w_->mak1.index);
    auto channel = [&](const std::string& peer) {
      rpc::ChannelOptions options;
      options.tls = rpc::TlsFilesFromConfig(config);
      options.authority = config.GetString(peer + ".authority");
      auto c = rpc::MakeChannel(config.GetString(peer + ".endpoint"), options);
      EXPECT_TRUE(c.ok()) << peer << ": " << c.status();
      return c.ok() ? *c : nullptr;
    };
    w_->mtms = std::make_unique<MtmsProcess>(config, channel("hsm"), channel("ca"), channel("kms"));
    auto applied = db::SetUpSchema(w_->mtms->pool, {.owner_dsn = config.GetString("db.owner_dsn")},
                                   mtms::Migrations(), mtms::kMtmsRuntimeGrants);
    ASSERT_TRUE(applied.ok()) << applied.status();
    absl::Status refreshed = w_->mtms->trust.Refresh();
    ASSERT_TRUE(refreshed.ok()) << refreshed;
    auto server = rpc::Server::Start({.listen_address = config.GetString("listen"),
                                      .tls = rpc::TlsFilesFromConfig(config),
                                      .client_cert_mode = rpc::ClientCertMode::kOptionalVerified},
                                     {&w_->mtms->service});
    ASSERT_TRUE(server.ok()) << server.status();
    w_->mtms->server = *std::move(server);
    ASSERT_TRUE(config.GetBool("forwarder.enabled"));
    w_->mtms->forwarder.Start();
  }

  // S201–S203 through the MTMS admin RPC, as `rklctl mtms provision-work-key` does.
  static void ProvisionWorkKey() {
    auto admin = v1::Mtms::NewStub(rkl::testing::LoopbackChannel(
        w_->mtms->server->port(), IdentityTls(w_->pki_dir(), "admin:alice"), "mtms"));
    v1::ProvisionWorkKeyRequest req;
    v1::WorkKey key;
    auto ctx = rpc::MakeClientContext(kRpcTimeout);
    grpc::Status st = admin->ProvisionWorkKey(ctx.get(), req, &key);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(key.state(), v1::WorkKey::STATE_CURRENT);
    ASSERT_FALSE(key.serial_hex().empty());
  }

  // What `rkl-pos` builds from --mtms/--kms (+ --*-authority), --ca-bundle, --terminal-root,
  // --operator-card/--operator-pin-file and --admin-cert/--admin-key.
  static void StartSimulator() {
    const std::string pki = w_->pki_dir();
    std::filesystem::create_directories(w_->state_dir());
    const rpc::TlsFiles anonymous{"", "", pki + "/ca-bundle.pem"};
    auto mtms_channel =
        MakePosChannel({absl::StrCat("127.0.0.1:", w_->mtms->server->port()), "mtms", anonymous});
    auto kms_channel =
        MakePosChannel({absl::StrCat("127.0.0.1:", w_->kms->server->port()), "kms", anonymous});
    auto admin_channel = MakePosChannel({absl::StrCat("127.0.0.1:", w_->kms->server->port()), "kms",
                                         IdentityTls(pki, "admin:alice")});
    ASSERT_TRUE(mtms_channel.ok() && kms_channel.ok() && admin_channel.ok());
    w_->sim_mtms = std::make_unique<GrpcMtmsClient>(*mtms_channel);
    w_->sim_kms = std::make_unique<GrpcKmsClient>(*kms_channel);
    w_->sim_admin = std::make_unique<GrpcKmsClient>(*admin_channel);
    auto root = crypto::Certificate::Parse(AsBytes(ReadWholeFile(pki + "/terminal-root.pem")));
    ASSERT_TRUE(root.ok()) << root.status();
    w_->terminal_root.emplace(*std::move(root));
    const std::string p12 = ReadWholeFile(pki + "/operator-operator1.p12");
    auto card =
        OperatorCard::Open(Bytes(p12.begin(), p12.end()), SecretBytes::CopyOf(AsBytes(kPin)));
    ASSERT_TRUE(card.ok()) << card.status();
    ASSERT_EQ(card->operator_id(), "operator1");
    w_->card.emplace(*std::move(card));
    w_->operator_terminal =
        std::make_unique<OperatorTerminal>(*w_->sim_mtms, &*w_->card, [] { return absl::Now(); });
  }

  // `rkl-pos provision --sn PROV-<ALG> --algorithm <ALG>` for each algorithm, once per suite.
  static const std::vector<ProvisionRun>& Provisioned() {
    if (!w_->provisioned) {
      std::vector<ProvisionRun> runs;
      for (KeyAlgorithm a : {KeyAlgorithm::kAes128, KeyAlgorithm::kAes256, KeyAlgorithm::kTdes2}) {
        ProvisionRun run{a, "PROV-" + std::string(crypto::KeyAlgorithmName(a))};
        StepRecorder steps;
        run.result = ProvisionTerminal(w_->Context(a), run.sn, steps);
        for (const auto& [step, d] : steps.steps()) {
          w_->out << absl::StrFormat("step %-16s %8.1f ms\n", step, absl::ToDoubleMilliseconds(d));
        }
        if (run.result.ok()) {
          const SecureModuleDescription& d = run.result->terminal;
          w_->out << "sn " << d.sn << " state " << d.lifecycle << " algorithm " << d.algorithm
                  << " TEK KCV " << d.tek_kcv << " AUK KCV " << d.auk_kcv << " TMK KCV "
                  << d.tmk_kcv << " submission " << d.submission_id << "\n";
        }
        runs.push_back(std::move(run));
      }
      w_->provisioned = std::move(runs);
    }
    return *w_->provisioned;
  }

  // `rkl-pos fleet --count 100 --concurrency 16 --json ...`, once per suite.
  static const FleetRun& Fleet() {
    if (!w_->fleet) {
      FleetRun run;
      run.prefix = absl::StrCat("FLEET-", ToHex(crypto::RandomBytes(3)));
      for (int i = 0; i < kFleetCount; ++i) {
        run.sns.push_back(absl::StrFormat("%s-%06d", run.prefix, i + 1));
      }
      const ProvisionContext ctx = w_->Context(KeyAlgorithm::kAes128);
      FleetOptions options;
      options.count = kFleetCount;
      options.concurrency = kFleetConcurrency;
      options.progress = &w_->progress;
      options.progress_is_tty = false;
      run.summary = RunFleet(options, [&](int index, StepRecorder& steps) {
        return ProvisionTerminal(ctx, run.sns[index], steps).status();
      });
      // The CLI's own verification: KMS's count of INSTALLED terminals with the prefix.
      auto views = w_->sim_admin->ListTerminals(run.prefix + "-");
      EXPECT_TRUE(views.ok()) << views.status();
      if (views.ok()) {
        int installed = 0;
        for (const auto& v : *views) installed += v.state == kInstalled ? 1 : 0;
        run.summary.kms_verified_installed = installed;
      }
      w_->out << FormatSummaryText(run.summary);
      const std::string json = FormatSummaryJson(run.summary);
      std::ofstream(w_->output_dir() + "/fleet.json") << json;
      std::cout << "[pos_integration] fleet summary:\n"
                << FormatSummaryText(run.summary) << "[pos_integration] fleet JSON: " << json
                << "\n";
      w_->fleet = std::move(run);
    }
    return *w_->fleet;
  }

  static testing::RevealedKeys KeysOf(const std::string& sn) {
    auto module = SecureModule::Open(w_->state_dir(), sn);
    EXPECT_TRUE(module.ok()) << sn << ": " << module.status();
    if (!module.ok()) return {};
    return SecureModuleTestPeer::RevealKeysForTest(*module);
  }

  static World* w_;
};

World* PosIntegrationTest::w_ = nullptr;

TEST_F(PosIntegrationTest, ProvisionInstallsOneTerminalPerAlgorithmAsKmsConfirms) {
  for (const ProvisionRun& run : Provisioned()) {
    SCOPED_TRACE(run.sn);
    ASSERT_TRUE(run.result.ok()) << run.result.status();
    EXPECT_EQ(run.result->terminal.lifecycle, "INSTALLED");
    EXPECT_EQ(run.result->terminal.algorithm, crypto::KeyAlgorithmName(run.algorithm));
    EXPECT_EQ(run.result->kms_state, kInstalled);

    // KMS's own view, through the admin RPC (what `provision --admin-cert` checks)...
    auto view = w_->sim_admin->GetTerminal(run.sn);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->state, kInstalled);
    // ...against the terminal's secure module, reopened from disk (`rkl-pos status`).
    auto module = SecureModule::Open(w_->state_dir(), run.sn);
    ASSERT_TRUE(module.ok()) << module.status();
    const SecureModuleDescription status = module->Describe();
    EXPECT_EQ(status.lifecycle, "INSTALLED");
    ASSERT_EQ(status.tmk_kcv.size(), 6u);
    EXPECT_EQ(view->tmk_kcv, status.tmk_kcv);
    EXPECT_EQ(view->tek_kcv, status.tek_kcv);
    EXPECT_EQ(view->auk_kcv, status.auk_kcv);
    // And the KCV really is that of the key the module holds, of the terminal's algorithm.
    const testing::RevealedKeys keys = SecureModuleTestPeer::RevealKeysForTest(*module);
    EXPECT_EQ(keys.tmk.size(), run.algorithm == KeyAlgorithm::kAes256 ? 32u : 16u);
    EXPECT_EQ(crypto::KcvHex(run.algorithm, SecretBytes::CopyOf(keys.tmk)).value(), status.tmk_kcv);

    // An INSTALLED terminal is refused, and stays as it is.
    StepRecorder again;
    auto second = ProvisionTerminal(w_->Context(run.algorithm), run.sn, again);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
    EXPECT_EQ(SecureModule::Open(w_->state_dir(), run.sn)->Describe().tmk_kcv, status.tmk_kcv);
  }
}

// MTMS GetOwnSubmission through rkl-pos's operator terminal (`rkl-pos submission`): the
// operator reads its own submissions back — FORWARDED for a provisioned terminal, REJECTED
// with KMS's reason for a clone of an INSTALLED SN, which without it would only ever see its
// terminal's calls fail.
TEST_F(PosIntegrationTest, TheOperatorReadsItsSubmissionsBackAndWhyOneWasRejected) {
  const ProvisionRun& run = Provisioned().front();
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  auto forwarded = w_->operator_terminal->QuerySubmission(run.result->terminal.submission_id);
  ASSERT_TRUE(forwarded.ok()) << forwarded.status();
  EXPECT_EQ(forwarded->sn, run.sn);
  EXPECT_EQ(forwarded->state, "SUBMISSION_STATE_FORWARDED");
  EXPECT_TRUE(forwarded->reason.empty());

  // A second terminal with the same SN (another state directory): MTMS takes its package,
  // KMS refuses it for the INSTALLED SN, and only the operator's query says so.
  const std::string clone_dir = w_->state_dir() + "-clone";
  ASSERT_EQ(::mkdir(clone_dir.c_str(), 0700), 0);
  ProvisionContext ctx = w_->Context(run.algorithm);
  ctx.state_dir = clone_dir;
  StepRecorder steps;
  auto clone = ProvisionTerminal(ctx, run.sn, steps);
  EXPECT_FALSE(clone.ok());
  auto module = SecureModule::Open(clone_dir, run.sn);
  ASSERT_TRUE(module.ok()) << module.status();
  const std::string id = module->Describe().submission_id;
  ASSERT_FALSE(id.empty());
  absl::StatusOr<SubmissionView> view;
  EXPECT_TRUE(rkl::testing::WaitUntil([&] {
    view = w_->operator_terminal->QuerySubmission(id);
    return !view.ok() || view->state != "SUBMISSION_STATE_RECEIVED";
  }));
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->state, "SUBMISSION_STATE_REJECTED");
  EXPECT_THAT(view->reason, ::testing::HasSubstr("FAILED_PRECONDITION"));
  // The installed terminal is untouched.
  auto installed = w_->sim_admin->GetTerminal(run.sn);
  ASSERT_TRUE(installed.ok()) << installed.status();
  EXPECT_EQ(installed->state, kInstalled);
  EXPECT_EQ(installed->tmk_kcv, run.result->terminal.tmk_kcv);
}

TEST_F(PosIntegrationTest, FleetOfHundredIsInstalledWithDistinctTmks) {
  const FleetRun& fleet = Fleet();
  EXPECT_EQ(fleet.summary.total, kFleetCount);
  EXPECT_EQ(fleet.summary.succeeded, kFleetCount);
  EXPECT_EQ(fleet.summary.failed, 0);
  EXPECT_THAT(fleet.summary.failures_by_reason, IsEmpty());
  EXPECT_EQ(fleet.summary.kms_verified_installed, kFleetCount);
  RecordProperty("terminals_per_second",
                 absl::StrFormat("%.1f", fleet.summary.terminals_per_second));
  RecordProperty("fleet_seconds",
                 absl::StrFormat("%.2f", absl::ToDoubleSeconds(fleet.summary.elapsed)));

  // KMS's view, paging through ListTerminals with a small page.
  auto kms_admin = v1::Kms::NewStub(rkl::testing::LoopbackChannel(
      w_->kms->server->port(), IdentityTls(w_->pki_dir(), "admin:alice"), "kms"));
  std::map<std::string, v1::Terminal> listed;
  std::string token;
  int pages = 0;
  do {
    v1::ListTerminalsRequest req;
    req.set_sn_prefix(fleet.prefix + "-");
    req.mutable_page()->set_page_size(16);
    req.mutable_page()->set_page_token(token);
    v1::ListTerminalsResponse resp;
    auto ctx = rpc::MakeClientContext(kRpcTimeout);
    grpc::Status st = kms_admin->ListTerminals(ctx.get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_LE(resp.terminals_size(), 16);
    for (const v1::Terminal& t : resp.terminals()) {
      EXPECT_TRUE(listed.emplace(t.sn(), t).second) << "listed twice: " << t.sn();
    }
    token = resp.next_page_token();
    ASSERT_LT(++pages, 100) << "paging does not end";
  } while (!token.empty());
  EXPECT_GE(pages, (kFleetCount + 15) / 16);
  ASSERT_EQ(listed.size(), static_cast<size_t>(kFleetCount));
  for (const std::string& sn : fleet.sns) {
    SCOPED_TRACE(sn);
    auto it = listed.find(sn);
    ASSERT_NE(it, listed.end());
    EXPECT_EQ(it->second.state(), v1::TERMINAL_STATE_INSTALLED);
    auto module = SecureModule::Open(w_->state_dir(), sn);
    ASSERT_TRUE(module.ok()) << module.status();
    EXPECT_EQ(module->Describe().lifecycle, "INSTALLED");
    EXPECT_EQ(it->second.tmk_kcv(), module->Describe().tmk_kcv);
  }

  // 100 distinct TMK key indexes in KMS, each a live TMK in HSM #2 bound to its SN with the
  // KCV KMS reports.
  pqxx::result rows =
      w_->kms_db->Sql("SELECT sn, tmk_index, tmk_kcv FROM terminals WHERE sn LIKE '" +
                      fleet.prefix + "-%' ORDER BY sn");
  ASSERT_EQ(rows.size(), static_cast<size_t>(kFleetCount));
  std::set<int64_t> tmk_indexes;
  std::map<int64_t, std::pair<std::string, std::string>> expected;  // index → (sn, kcv)
  for (const auto& row : rows) {
    ASSERT_FALSE(row[1].is_null()) << row[0].c_str();
    tmk_indexes.insert(row[1].as<int64_t>());
    expected[row[1].as<int64_t>()] = {row[0].c_str(), row[2].c_str()};
  }
  EXPECT_EQ(tmk_indexes.size(), static_cast<size_t>(kFleetCount));
  pqxx::result hsm_rows =
      w_->hsm2_db->Sql("SELECT key_index, bound_sn, kcv, state FROM hsm_key WHERE key_type = 6");
  int matched = 0;
  for (const auto& row : hsm_rows) {
    auto it = expected.find(row[0].as<int64_t>());
    if (it == expected.end()) continue;
    ++matched;
    EXPECT_EQ(row[1].c_str(), it->second.first);
    EXPECT_EQ(row[2].c_str(), it->second.second);
    EXPECT_EQ(row[3].as<int>(), 1) << "TMK of " << it->second.first << " is not live";
  }
  EXPECT_EQ(matched, kFleetCount);

  // The TMKs the terminals actually hold are pairwise distinct (and so are TEKs and AUKs).
  std::set<Bytes> tmks, teks, auks;
  for (const std::string& sn : fleet.sns) {
    testing::RevealedKeys keys = KeysOf(sn);
    ASSERT_EQ(keys.tmk.size(), 16u) << sn;
    tmks.insert(keys.tmk);
    teks.insert(keys.tek);
    auks.insert(keys.auk);
  }
  EXPECT_EQ(tmks.size(), static_cast<size_t>(kFleetCount));
  EXPECT_EQ(teks.size(), static_cast<size_t>(kFleetCount));
  EXPECT_EQ(auks.size(), static_cast<size_t>(kFleetCount));
}

TEST_F(PosIntegrationTest, SearchFindsAPlantedKeyInADumpAFileAndOutput) {
  // The control: the same dump, file and output search must find a key that is there.
  const Bytes planted = crypto::RandomBytes(16);
  LeakSearch search;
  search.Add("planted", planted);

  auto control_db = NewDatabase();
  const std::string hex = ToHex(planted);
  const std::string raw(planted.begin(), planted.end());
  control_db.Sql(
      "CREATE TABLE planted (b bytea, upper_hex text, b64 text, b64_shifted text);"
      "INSERT INTO planted VALUES (decode('" +
      hex + "', 'hex'), '" + hex + "', '" + absl::Base64Escape(raw) + "', '" +
      absl::Base64Escape("ab" + raw) + "')");
  const std::string dump = DumpDatabase(control_db.dsn(), w_->output_dir() + "/control.sql");
  std::vector<std::string> hits = search.Find(dump, "control dump");
  for (const char* form : {"raw", "HEX", "hex", "base64@0", "base64@2"}) {
    EXPECT_THAT(hits, ::testing::Contains(::testing::HasSubstr(absl::StrCat("(", form, ")"))))
        << form << "; hits: " << absl::StrJoin(hits, ", ");
  }

  pos::testing::TempDir files;
  std::ofstream(files.path() + "/raw.bin", std::ios::binary) << "x" << raw << "y";
  std::ofstream(files.path() + "/b64.txt") << absl::Base64Escape("z" + raw);
  int file_hits = 0;
  for (const auto& [path, content] : CollectFiles(files.path())) {
    file_hits += search.Find(content, path).empty() ? 0 : 1;
  }
  EXPECT_EQ(file_hits, 2);
  EXPECT_FALSE(
      search.Find(w_->log->Contents() + "key=" + absl::AsciiStrToLower(hex), "log").empty());
  EXPECT_THAT(search.Find("nothing to see here, not even 0123456789abcdef", "x"), IsEmpty());
}

TEST_F(PosIntegrationTest, NoClearKeyInAnyDatabaseStateDirectoryOrOutput) {
  // Make sure every flow ran (also when this test runs alone).
  for (const ProvisionRun& run : Provisioned()) ASSERT_TRUE(run.result.ok()) << run.sn;
  ASSERT_EQ(Fleet().summary.succeeded, kFleetCount);

  // Every key the test terminals hold, learnt through the test-only hook.
  LeakSearch search;
  std::map<std::string, Bytes> device_keys;  // sn → device key (expected in its own file)
  int terminals = 0;
  for (const auto& e : std::filesystem::directory_iterator(w_->state_dir())) {
    const std::string sn = e.path().filename().string();
    auto module = SecureModule::Open(w_->state_dir(), sn);
    ASSERT_TRUE(module.ok()) << sn << ": " << module.status();
    ASSERT_EQ(module->Describe().lifecycle, "INSTALLED") << sn;
    const testing::RevealedKeys keys = SecureModuleTestPeer::RevealKeysForTest(*module);
    ASSERT_FALSE(keys.tek.empty() || keys.auk.empty() || keys.tmk.empty()) << sn;
    search.Add(sn + " TEK", keys.tek);
    search.Add(sn + " AUK", keys.auk);
    search.Add(sn + " TMK", keys.tmk);
    device_keys[module->device_key_file()] = keys.device_key;
    ++terminals;
  }
  EXPECT_EQ(terminals, kFleetCount + 3);
  // The ceremony: every component, and the PK and MAK they make.
  search.Add("PK component (alice)", Copy(w_->pk_alice));
  search.Add("PK component (bob)", Copy(w_->pk_bob));
  search.Add("MAK component (alice)", Copy(w_->mak_alice));
  search.Add("MAK component (bob)", Copy(w_->mak_bob));
  search.Add("PK", Xor(w_->pk_alice, w_->pk_bob));
  search.Add("MAK", Xor(w_->mak_alice, w_->mak_bob));
  EXPECT_EQ(search.size(), (3u * terminals + 6u) * 6u);

  std::vector<std::string> hits;
  auto collect = [&](std::vector<std::string> h) { hits.insert(hits.end(), h.begin(), h.end()); };

  // Every service database.
  size_t dumped = 0;
  for (const auto& [name, db] :
       {std::pair{"ca", &*w_->ca_db}, std::pair{"hsm-mtms", &*w_->hsm1_db},
        std::pair{"hsm-kms", &*w_->hsm2_db}, std::pair{"mtms", &*w_->mtms_db},
        std::pair{"kms", &*w_->kms_db}}) {
    const std::string dump =
        DumpDatabase(db->dsn(), absl::StrCat(w_->output_dir(), "/", name, ".sql"));
    EXPECT_GT(dump.size(), 1000u) << name;
    dumped += dump.size();
    collect(search.Find(dump, absl::StrCat("database ", name)));
  }
  // Sanity: the dumps are not empty of what they should hold (KMS knows every fleet SN).
  EXPECT_NE(ReadWholeFile(w_->output_dir() + "/kms.sql").find(Fleet().sns.back()),
            std::string::npos);

  // Every file the test made: the simulator's state directory and fleet JSON, and the PKI
  // and LMK files for good measure.
  size_t files = 0;
  for (const auto& [path, content] : CollectFiles(w_->dir.path())) {
    if (path.size() > 4 && path.substr(path.size() - 4) == ".sql") continue;  // dumps above
    ++files;
    collect(search.Find(content, path));
  }
  EXPECT_GE(files, 2u * (kFleetCount + 3) + 1);
  // The device key stands for the hardware key: in its own file by design, nowhere else.
  LeakSearch device_search;
  for (const auto& [file, key] : device_keys) device_search.Add("device key " + file, key);
  for (const auto& [path, content] : CollectFiles(w_->state_dir())) {
    for (const std::string& hit : device_search.Find(content, path)) {
      if (hit.rfind("device key " + path + " ", 0) != 0) hits.push_back(hit);
    }
  }

  // Everything printed and logged, by the simulator and by every service.
  const std::string output = w_->out.str() + w_->progress.str() + w_->log->Contents();
  EXPECT_NE(output.find("TMK KCV"), std::string::npos);  // the output is not trivially empty
  EXPECT_NE(output.find(Fleet().sns.front()), std::string::npos);  // services' logs are in it
  collect(search.Find(output, "output"));
  collect(device_search.Find(output, "output"));

  std::cout << "[pos_integration] leak search: " << search.size() << " needles over " << dumped
            << " bytes of database dumps, " << files << " files and " << output.size()
            << " bytes of output\n";
  EXPECT_THAT(hits, IsEmpty());
}

}  // namespace
}  // namespace rkl::pos
