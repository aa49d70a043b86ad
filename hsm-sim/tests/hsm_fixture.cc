#include "hsm_fixture.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/service_database.h"
#include "test_terminal.h"

namespace rkl::hsm::testing {
namespace {

std::atomic<int> counter{0};

void WriteSecretFile(const std::string& path, const crypto::SecretBytes& secret) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  auto b = secret.RevealSecret();
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  out.close();
  ::chmod(path.c_str(), 0600);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HsmInstance>> HsmInstance::Create(rkl::testing::TestPki& pki,
                                                                 InstanceOptions options) {
  auto db = rkl::testing::TestDatabase::Create();
  if (!db.ok()) return db.status();
  std::unique_ptr<HsmInstance> h(new HsmInstance(pki, *std::move(db), std::move(options)));
  h->dir_ = absl::StrCat(pki.dir(), "/", h->options_.hsm_id, "-", counter++);
  std::filesystem::create_directories(h->dir_);
  h->lmk_ = crypto::RandomSecret(32);
  h->lmk_file_ = h->dir_ + "/lmk";
  WriteSecretFile(h->lmk_file_, h->lmk_);
  if (absl::Status s = h->Start(); !s.ok()) return s;
  return h;
}

HsmInstance::~HsmInstance() { Stop(); }

absl::Status HsmInstance::Start(const std::string& lmk_file) {
  Stop();
  auto tls = pki_.Issue(options_.hsm_id);
  if (!tls.ok()) return tls.status();
  HsmDaemonOptions o;
  o.hsm_id = options_.hsm_id;
  o.role = options_.role;
  if (options_.role == HsmRole::kMtms) {
    o.operator_ca_file = dir_ + "/operator-ca.pem";
    operator_.WriteCaFile(o.operator_ca_file);
  }
  // As a deployment runs it: the daemon serves as the runtime role; it migrates (and grants
  // that role its privileges) as the owner first, then drops the owner's connection.
  o.database_dsn = db_.runtime_dsn();
  o.owner_dsn = db_.owner_dsn();
  o.db_pool_size = 8;
  o.lmk_file = lmk_file.empty() ? lmk_file_ : lmk_file;
  o.operational_identities = {options_.operational_identity};
  o.listen_address = "127.0.0.1:0";
  o.tls = *tls;
  o.key_cache_size = options_.key_cache_size;
  o.audit_seal_interval = options_.audit_seal_interval;
  o.anchor_file = options_.anchor_file;
  o.anchor_interval = options_.anchor_interval;
  o.fail_self_test = options_.fail_self_test;
  o.krd_ca_files = options_.krd_ca_files;
  o.clock = clock_;
  auto d = HsmDaemon::Start(std::move(o));
  if (!d.ok()) return d.status();
  daemon_ = *std::move(d);
  return absl::OkStatus();
}

void HsmInstance::Stop() { daemon_.reset(); }

std::shared_ptr<grpc::Channel> HsmInstance::Channel(const std::string& identity) {
  rpc::ChannelOptions options;
  {
    absl::MutexLock lock(&tls_mu_);
    if (!tls_.contains(identity)) tls_[identity] = pki_.Issue(identity).value();
    options.tls = tls_[identity];
  }
  options.authority = options_.hsm_id;
  return rpc::MakeChannel("127.0.0.1:" + std::to_string(daemon_->port()), options).value();
}

std::unique_ptr<v1::Hsm::Stub> HsmInstance::Stub(const std::string& identity) {
  return v1::Hsm::NewStub(Channel(identity));
}

std::string HsmInstance::WriteOtherLmkFile(const crypto::SecretBytes& lmk) {
  std::string path = dir_ + "/other-lmk-" + std::to_string(counter++);
  WriteSecretFile(path, lmk);
  return path;
}

void HsmInstance::Sql(const std::string& statement) { rkl::testing::RunSql(db_.dsn(), statement); }

std::string HsmInstance::DumpDatabase() {
  std::string dump;
  std::string cmd =
      "/usr/lib/postgresql/15/bin/pg_dump --data-only --no-owner '--dbname=" + db_.dsn() + "'";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe != nullptr) {
    std::array<char, 4096> buf;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) dump.append(buf.data(), n);
    ::pclose(pipe);
  }
  // Raw bytes of every bytea column of every table.
  pqxx::connection conn(db_.dsn());
  pqxx::work tx(conn);
  for (const auto& col : tx.exec("SELECT table_name, column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'public' AND data_type = 'bytea'")) {
    std::string q = absl::StrCat("SELECT ", tx.quote_name(col[1].as<std::string>()), " FROM ",
                                 tx.quote_name(col[0].as<std::string>()));
    for (const auto& row : tx.exec(q)) {
      if (row[0].is_null()) continue;
      pqxx::binarystring b(row[0]);
      dump.append(reinterpret_cast<const char*>(b.data()), b.size());
      dump.push_back('\n');
    }
  }
  return dump;
}

v1::BeginCeremonyRequest BeginRequest(const std::string& label, v1::KeyType type,
                                      uint32_t component_count) {
  v1::BeginCeremonyRequest begin;
  begin.set_label(label);
  begin.set_key_type(type);
  begin.set_component_count(component_count);
  return begin;
}

v1::AddComponentRequest ComponentRequest(const v1::BeginCeremonyResponse& begun,
                                         const crypto::SecretBytes& component) {
  const std::string& key = begun.component_encryption_key_der();
  const Bytes encrypted =
      EncryptComponent(Bytes(key.begin(), key.end()), begun.ceremony_id(), component);
  v1::AddComponentRequest add;
  add.set_ceremony_id(begun.ceremony_id());
  add.set_encrypted_component(std::string(encrypted.begin(), encrypted.end()));
  return add;
}

v1::CompleteCeremonyRequest CompleteRequest(const v1::BeginCeremonyResponse& begun) {
  v1::CompleteCeremonyRequest complete;
  complete.set_ceremony_id(begun.ceremony_id());
  return complete;
}

absl::StatusOr<CeremonyResult> RunCeremony(
    HsmInstance& hsm, v1::KeyType type, const std::string& label,
    const std::vector<std::pair<std::string, crypto::SecretBytes>>& custodian_components) {
  auto first = hsm.Stub(custodian_components.front().first);
  auto begun = Call(*first, &v1::Hsm::Stub::BeginCeremony,
                    BeginRequest(label, type, static_cast<uint32_t>(custodian_components.size())));
  if (!begun.ok()) return begun.status();
  for (const auto& [custodian, component] : custodian_components) {
    auto stub = hsm.Stub(custodian);
    auto added = Call(*stub, &v1::Hsm::Stub::AddComponent, ComponentRequest(*begun, component));
    if (!added.ok()) return added.status();
  }
  auto done = Call(*first, &v1::Hsm::Stub::CompleteCeremony, CompleteRequest(*begun));
  if (!done.ok()) return done.status();
  return CeremonyResult{done->key_index(), done->kcv()};
}

uint64_t InsertTestKey(HsmInstance& hsm, KeyType type, const std::string& sn,
                       crypto::KeyAlgorithm algorithm, uint64_t kek_index,
                       const crypto::SecretBytes* material) {
  uint64_t index = 0;
  static const std::map<KeyType, KeyUsage> kUsage = {{KeyType::kTek, KeyUsage::kExportKek},
                                                     {KeyType::kAuk, KeyUsage::kTerminalAuth},
                                                     {KeyType::kTmk, KeyUsage::kTerminalMaster}};
  absl::Status s = hsm.daemon().key_barrier().Transact([&](KeyTransaction& tx) -> absl::Status {
    auto r = tx.InsertKey(
        NewKey{.type = type,
               .algorithm = crypto::KeyAlgorithmCode(algorithm),
               .usage = kUsage.at(type),
               .bound_sn = sn,
               .label = absl::StrCat("test:", KeyTypeName(type), ":", sn, ":", counter++),
               .kcv = "000000",
               .kek_index = kek_index,
               .material = material != nullptr ? *material : crypto::GenerateKey(algorithm)},
        hsm.clock().NowUnixMs());
    if (!r.ok()) return r.status();
    index = r->index;
    return tx.Audit(AuditEvent{.at_ms = hsm.clock().NowUnixMs(),
                               .actor = "test",
                               .action = "test_insert_key",
                               .sn = sn,
                               .result = "OK"});
  });
  EXPECT_TRUE(s.ok()) << s;
  return index;
}

TerminalKeys InsertTerminalKeys(HsmInstance& hsm, const TestTerminal& t) {
  return TerminalKeys{.tek = InsertTestKey(hsm, KeyType::kTek, t.sn, t.tk.algorithm, 0, &t.tk.tek),
                      .auk = InsertTestKey(hsm, KeyType::kAuk, t.sn, t.tk.algorithm, 0, &t.tk.auk)};
}

std::vector<std::string> LeakPatterns(std::span<const uint8_t> secret) {
  std::string raw(reinterpret_cast<const char*>(secret.data()), secret.size());
  std::string hex = ToHex(secret);
  std::vector<std::string> out = {raw, hex, absl::AsciiStrToLower(hex)};
  // Base64 at each of the three byte alignments inside a longer text: encode with 0-2 bytes in
  // front and keep only the characters that depend on the secret alone.
  for (size_t shift = 0; shift < 3; ++shift) {
    std::string prefixed(shift, '\0');
    prefixed += raw;
    std::string b64 = absl::Base64Escape(prefixed);
    size_t skip = shift == 0 ? 0 : 4;
    size_t usable = ((shift + secret.size()) / 3) * 4;  // full groups only
    if (usable > skip + 8) out.push_back(b64.substr(skip, usable - skip));
  }
  return out;
}

}  // namespace rkl::hsm::testing
