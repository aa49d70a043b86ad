// `rklctl hsm ...`: the key ceremony (PK/MAK from custodian components under dual control),
// key information, key deletion, audit-chain verification and anchoring against one rkl-hsm,
// plus two offline helpers that make a random component or LMK file. Nothing printed is key
// material: only ceremony ids, key indexes, KCVs, states and audit anchors. A component is read
// from a file, a no-echo prompt or (development only) the command line, and leaves this process
// only RSA-OAEP-encrypted to the ceremony's own key.

#include <fcntl.h>
#include <termios.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "commands.h"
#include "connection.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/status.h"
#include "rkl/v1/hsm.grpc.pb.h"

namespace rkl::rklctl {
namespace {

using crypto::SecretBytes;

constexpr size_t kComponentSize = 32;
constexpr Area kArea{"hsm", absl::Seconds(60)};
constexpr char kDefaultHsm[] = "localhost:50052";

std::unique_ptr<v1::Hsm::Stub> HsmStub(const Endpoint& endpoint) {
  auto channel = Connect(endpoint);
  if (!channel.ok()) kArea.Fail("connect", channel.status(), 2);
  return v1::Hsm::NewStub(*channel);
}

// 64 hex digits (optionally followed by a line ending) or 32 raw bytes.
absl::StatusOr<SecretBytes> ParseComponent(const SecretBytes& text) {
  auto t = text.RevealSecret();
  if (t.size() == kComponentSize) return text;
  size_t len = t.size();
  while (len > 0 && (t[len - 1] == '\n' || t[len - 1] == '\r' || t[len - 1] == ' ')) --len;
  if (len != 2 * kComponentSize) {
    return absl::InvalidArgumentError("a component is 64 hex digits (or 32 raw bytes)");
  }
  SecretBytes out(kComponentSize);
  for (size_t i = 0; i < kComponentSize; ++i) {
    int v = 0;
    for (size_t j = 0; j < 2; ++j) {
      char c = static_cast<char>(t[2 * i + j]);
      int d = absl::ascii_isdigit(c)   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) return absl::InvalidArgumentError("a component is 64 hex digits");
      v = v << 4 | d;
    }
    out.RevealSecretMutable()[i] = static_cast<uint8_t>(v);
  }
  return out;
}

absl::StatusOr<SecretBytes> ReadSecretFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(path + ": cannot be opened");
  SecretBytes buf(256);
  size_t n = 0;
  while (n < buf.size()) {
    ssize_t r = ::read(fd, buf.RevealSecretMutable().data() + n, buf.size() - n);
    if (r <= 0) break;
    n += static_cast<size_t>(r);
  }
  ::close(fd);
  return buf.Sub(0, n);
}

absl::StatusOr<SecretBytes> PromptComponent() {
  std::cerr << "Component (64 hex digits, not echoed): " << std::flush;
  termios old{};
  bool tty = ::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &old) == 0;
  if (tty) {
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  SecretBytes line(128);
  size_t n = 0;
  int c;
  while (n < line.size() && (c = std::getchar()) != EOF && c != '\n') {
    line.RevealSecretMutable()[n++] = static_cast<uint8_t>(c);
  }
  if (tty) ::tcsetattr(STDIN_FILENO, TCSANOW, &old);
  std::cerr << "\n";
  return ParseComponent(line.Sub(0, n));
}

// Writes 32 fresh random bytes as hex to a new file only its owner can read; returns them.
absl::StatusOr<SecretBytes> WriteNewSecretFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(path + ": cannot be created (it must not exist yet)");
  }
  SecretBytes secret = crypto::RandomSecret(kComponentSize);
  static constexpr char kDigits[] = "0123456789ABCDEF";
  SecretBytes text(2 * kComponentSize + 1);
  auto out = text.RevealSecretMutable();
  for (size_t i = 0; i < kComponentSize; ++i) {
    out[2 * i] = kDigits[secret.RevealSecret()[i] >> 4];
    out[2 * i + 1] = kDigits[secret.RevealSecret()[i] & 0xF];
  }
  out[2 * kComponentSize] = '\n';
  bool ok = ::write(fd, out.data(), out.size()) == static_cast<ssize_t>(out.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok) return absl::InternalError(path + ": write failed");
  return secret;
}

std::string Kcv(const SecretBytes& key) {
  return crypto::KcvHex(crypto::KeyAlgorithm::kAes256, key).value_or("??????");
}

const char* StateName(v1::CeremonyState s) {
  switch (s) {
    case v1::CEREMONY_STATE_OPEN:
      return "OPEN";
    case v1::CEREMONY_STATE_COMPLETED:
      return "COMPLETED";
    case v1::CEREMONY_STATE_EXPIRED:
      return "EXPIRED";
    default:
      return "UNKNOWN";
  }
}

// The options of a command on one ceremony.
struct CeremonyOpts {
  Endpoint endpoint;
  std::string id;
};
std::pair<CLI::App*, std::shared_ptr<CeremonyOpts>> AddCeremonyCommand(CLI::App* ceremony,
                                                                       const std::string& name,
                                                                       const std::string& help) {
  auto [cmd, o] = AddServiceCommand<CeremonyOpts>(ceremony, name, help, "hsm", kDefaultHsm);
  cmd->add_option("--ceremony", o->id, "ceremony id")->required();
  return {cmd, o};
}

void RegisterCeremony(CLI::App* hsm) {
  auto* ceremony = hsm->add_subcommand(
      "ceremony",
      "PK/MAK key ceremony under dual control: begin, add-component and complete take "
      "custodian:<name> certificates (two distinct custodians); status also admins");
  ceremony->require_subcommand(1);

  // begin
  {
    struct Opts {
      Endpoint endpoint;
      std::string label, type;
      uint32_t components = 2;
      uint32_t ttl = 0;
    };
    auto [cmd, o] = AddServiceCommand<Opts>(ceremony, "begin", "start a ceremony; prints its id",
                                            "hsm", kDefaultHsm);
    cmd->add_option("--label", o->label, "label of the key to make, e.g. PK-2026")->required();
    cmd->add_option("--type", o->type, "PK or MAK")
        ->required()
        ->check(CLI::IsMember({"PK", "MAK"}));
    cmd->add_option("--components", o->components, "number of custodians (at least 2)")
        ->capture_default_str();
    cmd->add_option("--ttl", o->ttl,
                    "seconds before an unfinished ceremony expires (0: HSM default)");
    cmd->callback([o] {
      auto stub = HsmStub(o->endpoint);
      v1::BeginCeremonyRequest req;
      req.set_label(o->label);
      req.set_key_type(o->type == "PK" ? v1::KEY_TYPE_PK : v1::KEY_TYPE_MAK);
      req.set_component_count(o->components);
      req.set_ttl_seconds(o->ttl);
      auto r = kArea.Call("begin ceremony", *stub, &v1::Hsm::Stub::BeginCeremony, req);
      std::cout << "ceremony " << r.ceremony_id() << " open for " << o->type << " '" << o->label
                << "', " << o->components << " components, expires at unix ms "
                << r.expires_at_unix_ms() << "\n";
    });
  }

  // status
  {
    auto [cmd, o] =
        AddCeremonyCommand(ceremony, "status", "show a ceremony's state and custodians");
    cmd->callback([o] {
      auto stub = HsmStub(o->endpoint);
      v1::GetCeremonyRequest req;
      req.set_ceremony_id(o->id);
      auto r = kArea.Call("get ceremony", *stub, &v1::Hsm::Stub::GetCeremony, req);
      std::cout << "ceremony " << r.ceremony_id() << " " << StateName(r.state()) << ", label '"
                << r.label() << "', " << r.components_added() << "/" << r.component_count()
                << " components";
      for (const auto& c : r.custodians()) std::cout << " [" << c << "]";
      if (r.result_key_index() != 0) std::cout << ", key index " << r.result_key_index();
      std::cout << "\n";
    });
  }

  // add-component
  {
    struct Opts {
      Endpoint endpoint;
      std::string id, file, hex, generate_to;
    };
    auto [cmd, o] = AddServiceCommand<Opts>(
        ceremony, "add-component",
        "add this custodian's component (the custodian is the --tls-cert identity, a "
        "custodian:<name> certificate); with no source option the component is prompted for "
        "without echo",
        "hsm", kDefaultHsm);
    cmd->add_option("--ceremony", o->id, "ceremony id")->required();
    auto* file = cmd->add_option("--component-file", o->file,
                                 "file with the component (64 hex digits or 32 raw bytes)");
    auto* hex = cmd->add_option("--component-hex", o->hex,
                                "DEVELOPMENT ONLY: the component on the command line (it lands "
                                "in shell history and the process list)");
    auto* gen = cmd->add_option("--generate-to", o->generate_to,
                                "make a fresh random component, write it to this new file "
                                "(mode 0600) and add it");
    file->excludes(hex)->excludes(gen);
    hex->excludes(gen);
    cmd->callback([o] {
      absl::StatusOr<SecretBytes> component = absl::UnknownError("no component");
      if (!o->file.empty()) {
        auto text = ReadSecretFile(o->file);
        component = text.ok() ? ParseComponent(*text) : text.status();
      } else if (!o->hex.empty()) {
        component = ParseComponent(SecretBytes::CopyOf(AsBytes(o->hex)));
      } else if (!o->generate_to.empty()) {
        component = WriteNewSecretFile(o->generate_to);
      } else {
        component = PromptComponent();
      }
      if (!component.ok()) kArea.Fail("read component", component.status(), 2);

      auto stub = HsmStub(o->endpoint);
      v1::GetCeremonyRequest get;
      get.set_ceremony_id(o->id);
      auto ceremony = kArea.Call("get ceremony", *stub, &v1::Hsm::Stub::GetCeremony, get);
      if (ceremony.state() != v1::CEREMONY_STATE_OPEN) {
        kArea.Fail("add component", absl::FailedPreconditionError(
                                        absl::StrCat("ceremony is ", StateName(ceremony.state()))));
      }
      const std::string& der = ceremony.component_encryption_key_der();
      auto key = crypto::PublicKey::FromDer(AsBytes(der));
      if (!key.ok() || key->Type() != crypto::KeyType::kRsa || key->Bits() < 3072) {
        kArea.Fail("ceremony key",
                   absl::FailedPreconditionError("not an RSA key of at least 3072 bits"));
      }
      std::string label = "RKL-COMPONENT:" + o->id;
      auto encrypted = crypto::RsaOaepEncrypt(*key, *component, AsBytes(label));
      if (!encrypted.ok()) kArea.Fail("encrypt component", encrypted.status());
      v1::AddComponentRequest add;
      add.set_ceremony_id(o->id);
      add.set_encrypted_component(std::string(encrypted->begin(), encrypted->end()));
      auto r = kArea.Call("add component", *stub, &v1::Hsm::Stub::AddComponent, add);
      std::string local_kcv = Kcv(*component);
      if (r.component_kcv() != local_kcv) {
        kArea.Fail("add component", absl::DataLossError(absl::StrCat(
                                        "the HSM reports component KCV ", r.component_kcv(),
                                        " but the component entered has KCV ", local_kcv)));
      }
      std::cout << "component added: KCV " << r.component_kcv() << " (" << r.components_added()
                << "/" << r.components_required() << ")\n";
    });
  }

  // complete
  {
    auto [cmd, o] = AddCeremonyCommand(ceremony, "complete", "combine the components into the key");
    cmd->callback([o] {
      auto stub = HsmStub(o->endpoint);
      v1::CompleteCeremonyRequest req;
      req.set_ceremony_id(o->id);
      auto r = kArea.Call("complete ceremony", *stub, &v1::Hsm::Stub::CompleteCeremony, req);
      std::cout << "key index " << r.key_index() << " KCV " << r.kcv() << "\n";
    });
  }
}

void RegisterSecretFiles(CLI::App* hsm) {
  for (const auto& [name, what] :
       {std::pair<std::string, std::string>{"component", "a custodian component"},
        std::pair<std::string, std::string>{"lmk", "an LMK file for rkl-hsm's lmk.file"}}) {
    auto* group = hsm->add_subcommand(name, "offline: make " + what);
    group->require_subcommand(1);
    auto out = std::make_shared<std::string>();
    auto* cmd = group->add_subcommand(
        "new", "write 32 random bytes as hex to a NEW file (mode 0600); prints only its KCV");
    cmd->add_option("--out", *out, "file to create")->required();
    cmd->callback([out, name] {
      auto secret = WriteNewSecretFile(*out);
      if (!secret.ok()) kArea.Fail(name + " new", secret.status(), 2);
      std::cout << name << " written to " << *out << " (mode 0600), KCV " << Kcv(*secret) << "\n";
    });
  }
}

// A command of an HSM with one option besides the endpoint's (`option`, required or not):
// run(stub, the option's value).
template <typename Value>
void AddHsmCommand(CLI::App* hsm, const std::string& name, const std::string& description,
                   const std::string& option, const std::string& option_description, bool required,
                   std::function<void(v1::Hsm::Stub&, const Value&)> run) {
  struct Opts {
    Endpoint endpoint;
    Value value{};
  };
  auto [cmd, o] = AddServiceCommand<Opts>(hsm, name, description, "hsm", kDefaultHsm);
  cmd->add_option(option, o->value, option_description)->required(required);
  cmd->callback([o, run] { run(*HsmStub(o->endpoint), o->value); });
}

// A command on the key --index of an HSM: run(stub, index).
void AddKeyIndexCommand(CLI::App* hsm, const std::string& name, const std::string& description,
                        std::function<void(v1::Hsm::Stub&, const uint64_t&)> run) {
  AddHsmCommand<uint64_t>(hsm, name, description, "--index", "key index", true, std::move(run));
}

void RegisterKeyCommands(CLI::App* hsm) {
  AddKeyIndexCommand(hsm, "key-info", "show a key's metadata (never its bytes)",
                     [](v1::Hsm::Stub& stub, const uint64_t& index) {
                       v1::GetKeyInfoRequest req;
                       req.set_key_index(index);
                       auto r = kArea.Call("key info", stub, &v1::Hsm::Stub::GetKeyInfo, req);
                       std::cout << "index      " << r.key_index() << "\n"
                                 << "type       " << v1::KeyType_Name(r.type()) << "\n"
                                 << "algorithm  " << v1::KeyAlgorithm_Name(r.algorithm()) << "\n"
                                 << "usage      " << v1::KeyUsage_Name(r.usage()) << "\n"
                                 << "bound sn   " << r.bound_sn() << "\n"
                                 << "label      " << r.label() << "\n"
                                 << "kcv        " << r.kcv() << "\n"
                                 << "state      " << v1::KeyState_Name(r.state()) << "\n"
                                 << "created    " << r.created_at_unix_ms() << " (unix ms)\n";
                       if (r.rsa_bits() != 0) std::cout << "rsa bits   " << r.rsa_bits() << "\n";
                       if (r.kek_index() != 0) std::cout << "bound tek  " << r.kek_index() << "\n";
                       if (!r.bound_krd().empty())
                         std::cout << "bound krd  " << r.bound_krd() << "\n";
                     });
  AddKeyIndexCommand(hsm, "delete-key", "delete a key and erase its sealed material",
                     [](v1::Hsm::Stub& stub, const uint64_t& index) {
                       v1::DeleteKeyRequest req;
                       req.set_key_index(index);
                       kArea.Call("delete key", stub, &v1::Hsm::Stub::DeleteKey, req);
                       std::cout << "key " << index << " deleted\n";
                     });
  AddHsmCommand<std::string>(
      hsm, "audit-verify",
      "verify the audit chain (and with --anchor that it still holds the anchored record); "
      "exit 1 and name the first broken record if not",
      "--anchor",
      "an anchor of this HSM (its audit.anchor_file, or saved from audit-anchor): also detects "
      "the newest records removed",
      false, [](v1::Hsm::Stub& stub, const std::string& anchor_file) {
        v1::VerifyAuditChainRequest req;
        if (!anchor_file.empty()) {
          std::ifstream in(anchor_file, std::ios::binary);
          if (!in)
            kArea.Fail("read anchor", absl::NotFoundError(anchor_file + ": cannot be read"), 2);
          std::string text(4096, '\0');
          in.read(text.data(), static_cast<std::streamsize>(text.size()));
          text.resize(static_cast<size_t>(in.gcount()));
          req.set_anchor(std::string(absl::StripAsciiWhitespace(text)));
        }
        auto r = kArea.Call("verify audit chain", stub, &v1::Hsm::Stub::VerifyAuditChain, req);
        if (r.intact()) {
          std::cout << "audit chain intact: " << r.records_checked() << " records";
          if (!anchor_file.empty()) {
            std::cout << "; holds anchored record " << r.anchor_seq();
          }
          std::cout << "\n";
          return;
        }
        std::cout << "audit chain BROKEN at record " << r.first_broken_seq() << " ("
                  << r.records_checked() << " records checked): " << r.finding() << "\n";
        throw CLI::RuntimeError(1);
      });
  AddHsmCommand<std::string>(
      hsm, "audit-anchor",
      "anchor the audit chain's head now (the HSM also writes it to its audit.anchor_file); "
      "prints the anchor",
      "--out", "also write the anchor to this NEW file, to keep it away from the HSM", false,
      [](v1::Hsm::Stub& stub, const std::string& out) {
        auto r =
            kArea.Call("anchor audit chain", stub, &v1::Hsm::Stub::AnchorAuditChain, v1::Empty());
        if (!out.empty()) {
          int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
          const std::string line = r.anchor() + "\n";
          bool ok =
              fd >= 0 && ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
          ok = fd >= 0 && ::fsync(fd) == 0 && ok;
          if (fd >= 0) ::close(fd);
          if (!ok) {
            kArea.Fail(
                "write anchor",
                absl::FailedPreconditionError(out + ": cannot be created (it must not exist)"), 2);
          }
        }
        std::cout << r.anchor() << "\n";
      });
}

}  // namespace

void RegisterHsmCommands(CLI::App& app) {
  AddCommandGroup(app, "hsm", "key ceremony, key info, audit verification (rkl-hsm)",
                  {RegisterCeremony, RegisterSecretFiles, RegisterKeyCommands});
}

}  // namespace rkl::rklctl
