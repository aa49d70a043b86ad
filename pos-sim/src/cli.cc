#include "cli.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "clients.h"
#include "files.h"
#include "fleet.h"
#include "krd_ca.h"
#include "operator_terminal.h"
#include "provision.h"
#include "rkl/common/logging.h"
#include "rkl/common/request_id.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/x509.h"
#include "rkl/protocol/sn.h"
#include "rkl/rpc/call_context.h"
#include "spdlog/spdlog.h"
#include "terminal.h"

namespace rkl::pos {
namespace {

using crypto::SecretBytes;

constexpr char kPinEnv[] = "RKL_POS_OPERATOR_PIN";
constexpr size_t kMaxPinLength = 128;
constexpr char kInstalledState[] = "TERMINAL_STATE_INSTALLED";

struct Options {
  std::string state_dir = "rkl-pos-state";
  std::string sn;
  std::string mtms;
  std::string kms;
  std::string mtms_authority;
  std::string kms_authority;
  std::string ca_bundle;
  std::string terminal_root;
  std::string operator_card;
  std::string operator_pin_file;
  std::string admin_cert;
  std::string admin_key;
  std::string algorithm = "AES128";
  std::string forwarding_timeout = "60s";
  std::string rpc_timeout = "30s";
  std::string log_level = "info";
  std::string log_format = "text";
  int count = 10;
  int concurrency = 4;
  std::string prefix;
  std::string json_file;
  std::string progress = "auto";
  // Re-runs of a terminal's flow after a transient failure (provision.h TransientRetry).
  // -1: the command's default (fleet 4, provision 0).
  int retries = -1;
  bool no_fsync = false;
  // TR-34.
  std::string protocol;  // patent|tr34 (fleet: also mixed); empty: patent, not given
  std::string kdh_ca;
  std::string krd_ca_card;
  std::string krd_ca_pin_file;
  std::string krd_export;
  // krd-ca init.
  std::string out_dir;
  std::string ca_name = kDefaultKrdCaName;
};

constexpr char kKrdCaPinEnv[] = "RKL_POS_KRD_CA_PIN";

absl::StatusOr<absl::Duration> ParseDurationFlag(const std::string& text, const char* flag) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": must be a positive duration such as 30s or 2m, got \"", text, "\""));
  }
  return d;
}

absl::Status Require(const std::string& value, const char* flag, const char* env) {
  if (!value.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(flag, " (or ", env, ") is required"));
}

absl::StatusOr<crypto::Certificate> LoadCertificate(const std::string& path, const char* flag) {
  RKL_ASSIGN_OR_RETURN(Bytes data, ReadFileBytes(path));
  auto cert = crypto::Certificate::Parse(data);
  if (!cert.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path, " is not a certificate: ", cert.status().message()));
  }
  return cert;
}

// The PIN file holds the PIN on its first line; a trailing newline is not part of it.
absl::StatusOr<SecretBytes> ReadPinFile(const std::string& path) {
  RKL_ASSIGN_OR_RETURN(SecretBytes content, ReadSecretFile(path));
  auto bytes = content.RevealSecret();
  size_t len = 0;
  while (len < bytes.size() && bytes[len] != '\n' && bytes[len] != '\r') ++len;
  return content.Sub(0, len);
}

// A card PIN from `pin_file`, else the environment variable `env`, else a prompt.
absl::StatusOr<SecretBytes> ObtainCardPin(const std::string& pin_file, const char* env_name,
                                          const char* what, const char* file_flag,
                                          const CliIo& io) {
  SecretBytes pin;
  if (!pin_file.empty()) {
    RKL_ASSIGN_OR_RETURN(pin, ReadPinFile(pin_file));
  } else if (const char* env = std::getenv(env_name); env != nullptr) {
    pin = SecretBytes::CopyOf(AsBytes(env));
  } else if (io.prompt_pin) {
    RKL_ASSIGN_OR_RETURN(pin, io.prompt_pin());
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": give ", file_flag, ", set ", env_name, ", or run on a terminal"));
  }
  if (pin.empty() || pin.size() > kMaxPinLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": must be 1 to ", kMaxPinLength, " characters"));
  }
  return pin;
}

absl::StatusOr<SecretBytes> ObtainPin(const Options& o, const CliIo& io) {
  return ObtainCardPin(o.operator_pin_file, kPinEnv, "operator PIN", "--operator-pin-file", io);
}

// Standard base64 with padding, for the manufacturer's CT_KRD file.
std::string Base64(const Bytes& data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(),
                                static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// Everything a command may need, built on demand from the options.
class Session {
 public:
  Session(const Options& o, const CliIo& io) : o_(o), io_(io) {}

  absl::Status Init() {
    RKL_ASSIGN_OR_RETURN(rpc_timeout_, ParseDurationFlag(o_.rpc_timeout, "--rpc-timeout"));
    RKL_ASSIGN_OR_RETURN(forwarding_.timeout,
                         ParseDurationFlag(o_.forwarding_timeout, "--forwarding-timeout"));
    RKL_ASSIGN_OR_RETURN(algorithm_, crypto::KeyAlgorithmFromName(o_.algorithm));
    if (o_.protocol == "mixed") {
      mixed_ = true;
    } else if (!o_.protocol.empty()) {
      RKL_ASSIGN_OR_RETURN(protocol_, ProtocolFromName(o_.protocol));
    }
    return absl::OkStatus();
  }

  // TR-34 manufacture: the burned-in kdh-ca and the unlocked KRD CA card.
  absl::StatusOr<KrdFactory> Factory() {
    if (!kdh_ca_) {
      RKL_RETURN_IF_ERROR(Require(o_.kdh_ca, "--kdh-ca", "RKL_POS_KDH_CA"));
      RKL_ASSIGN_OR_RETURN(kdh_ca_, LoadCertificate(o_.kdh_ca, "--kdh-ca"));
    }
    if (!krd_ca_) {
      RKL_RETURN_IF_ERROR(Require(o_.krd_ca_card, "--krd-ca-card", "RKL_POS_KRD_CA_CARD"));
      RKL_ASSIGN_OR_RETURN(Bytes p12, ReadFileBytes(o_.krd_ca_card));
      RKL_ASSIGN_OR_RETURN(SecretBytes pin,
                           ObtainCardPin(o_.krd_ca_pin_file, kKrdCaPinEnv, "KRD CA card PIN",
                                         "--krd-ca-pin-file", io_));
      RKL_ASSIGN_OR_RETURN(krd_ca_, OpenKrdCaCard(p12, pin));
    }
    return KrdFactory{&*kdh_ca_, &*krd_ca_};
  }

  absl::StatusOr<KmsTr34Port*> KmsTr34() {
    RKL_ASSIGN_OR_RETURN(KmsTerminalPort * ignored, Kms());
    (void)ignored;
    if (tr34_dropper_ != nullptr) return tr34_dropper_.get();
    return kms_.get();
  }

  absl::StatusOr<MtmsPort*> Mtms() {
    if (mtms_ == nullptr) {
      RKL_ASSIGN_OR_RETURN(
          mtms_, Connect<GrpcMtmsClient>(o_.mtms, "--mtms", "RKL_POS_MTMS", o_.mtms_authority));
    }
    return mtms_.get();
  }

  absl::StatusOr<KmsTerminalPort*> Kms() {
    if (kms_ == nullptr) {
      RKL_ASSIGN_OR_RETURN(
          kms_, Connect<GrpcKmsClient>(o_.kms, "--kms", "RKL_POS_KMS", o_.kms_authority));
      if (const char* drop = std::getenv(kDropConfirmRepliesEnv); drop != nullptr) {
        int n = 0;
        if (!absl::SimpleAtoi(drop, &n) || n < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(kDropConfirmRepliesEnv, ": must be a count >= 0"));
        }
        if (n > 0) {
          dropper_ = std::make_unique<ConfirmReplyDropper>(*kms_, n);
          tr34_dropper_ = std::make_unique<KeyTokenConfirmReplyDropper>(*kms_, n);
        }
      }
    }
    if (dropper_ != nullptr) return dropper_.get();
    return kms_.get();
  }

  // Null when no admin certificate was given: verification is then skipped.
  absl::StatusOr<KmsAdminPort*> KmsAdmin() {
    if (o_.admin_cert.empty() && o_.admin_key.empty()) return nullptr;
    if (admin_ == nullptr) {
      if (o_.admin_cert.empty() || o_.admin_key.empty()) {
        return absl::InvalidArgumentError("--admin-cert and --admin-key go together");
      }
      RKL_ASSIGN_OR_RETURN(admin_,
                           Connect<GrpcKmsClient>(o_.kms, "--kms", "RKL_POS_KMS", o_.kms_authority,
                                                  o_.admin_cert, o_.admin_key));
    }
    return admin_.get();
  }

  absl::StatusOr<const crypto::Certificate*> TerminalRoot() {
    if (!root_) {
      RKL_RETURN_IF_ERROR(Require(o_.terminal_root, "--terminal-root", "RKL_POS_TERMINAL_ROOT"));
      RKL_ASSIGN_OR_RETURN(root_, LoadCertificate(o_.terminal_root, "--terminal-root"));
    }
    return &*root_;
  }

  absl::StatusOr<OperatorTerminal*> Operator(bool need_card) {
    if (need_card && !card_) {
      RKL_RETURN_IF_ERROR(Require(o_.operator_card, "--operator-card", "RKL_POS_OPERATOR_CARD"));
      RKL_ASSIGN_OR_RETURN(Bytes p12, ReadFileBytes(o_.operator_card));
      RKL_ASSIGN_OR_RETURN(SecretBytes pin, ObtainPin(o_, io_));
      RKL_ASSIGN_OR_RETURN(card_, OperatorCard::Open(p12, pin));
      operator_.reset();
    }
    if (operator_ == nullptr) {
      RKL_ASSIGN_OR_RETURN(MtmsPort * mtms, Mtms());
      operator_ =
          std::make_unique<OperatorTerminal>(*mtms, card_ ? &*card_ : nullptr, SystemClock());
    }
    return operator_.get();
  }

  absl::StatusOr<Terminal> LoadTerminal() {
    RKL_RETURN_IF_ERROR(Require(o_.sn, "--sn", "RKL_POS_SN"));
    return Terminal::Load(o_.state_dir, o_.sn, SystemClock());
  }

  const Options& options() const { return o_; }
  const CliIo& io() const { return io_; }
  crypto::KeyAlgorithm algorithm() const { return algorithm_; }
  // --protocol: patent (default), tr34, or (fleet) mixed.
  Protocol protocol() const { return protocol_; }
  bool protocol_given() const { return !o_.protocol.empty(); }
  bool mixed() const { return mixed_; }
  const ForwardingWait& forwarding() const { return forwarding_; }

 private:
  // A `Client` of the service at `target` (required: `flag` or `env`), over TLS verified with
  // the CA bundle; `cert` and `key` are the client's own identity, empty for none.
  template <typename Client>
  absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target, const char* flag,
                                                  const char* env, const std::string& authority,
                                                  const std::string& cert = "",
                                                  const std::string& key = "") {
    RKL_RETURN_IF_ERROR(Require(target, flag, env));
    RKL_RETURN_IF_ERROR(Require(o_.ca_bundle, "--ca-bundle", "RKL_POS_CA_BUNDLE"));
    RKL_ASSIGN_OR_RETURN(auto channel,
                         MakePosChannel({target, authority, {cert, key, o_.ca_bundle}}));
    return std::make_unique<Client>(std::move(channel), rpc_timeout_);
  }

  const Options& o_;
  const CliIo& io_;
  absl::Duration rpc_timeout_;
  ForwardingWait forwarding_;
  crypto::KeyAlgorithm algorithm_ = crypto::KeyAlgorithm::kAes128;
  std::unique_ptr<GrpcMtmsClient> mtms_;
  std::unique_ptr<GrpcKmsClient> kms_;
  std::unique_ptr<ConfirmReplyDropper> dropper_;  // the test switch, when set
  std::unique_ptr<KeyTokenConfirmReplyDropper> tr34_dropper_;
  Protocol protocol_ = Protocol::kPatent;
  bool mixed_ = false;
  std::optional<crypto::Certificate> kdh_ca_;
  std::optional<KrdCa> krd_ca_;
  std::unique_ptr<GrpcKmsClient> admin_;
  std::optional<crypto::Certificate> root_;
  std::optional<OperatorCard> card_;
  std::unique_ptr<OperatorTerminal> operator_;
};

void PrintDescription(std::ostream& out, const SecureModuleDescription& d) {
  auto or_dash = [](const std::string& s) { return s.empty() ? std::string("-") : s; };
  out << "sn            " << d.sn << "\n"
      << "state         " << d.lifecycle << "\n"
      << "algorithm     " << d.algorithm << "\n"
      << "work cert     " << or_dash(d.work_certificate_serial) << "\n"
      << "TEK KCV       " << or_dash(d.tek_kcv) << "\n"
      << "AUK KCV       " << or_dash(d.auk_kcv) << "\n"
      << "TMK KCV       " << or_dash(d.tmk_kcv) << "\n"
      << "submission    " << or_dash(d.submission_id) << "\n"
      << "protocol      " << d.protocol << "\n";
  if (d.protocol == ProtocolName(Protocol::kTr34)) {
    out << "KRD id        " << or_dash(d.krd_id) << "\n"
        << "KDH bound     " << or_dash(d.kdh_bound) << "\n";
  }
}

// Checks, through the KMS admin RPC, that KMS itself holds the terminal INSTALLED with the
// TMK the terminal stored.
absl::Status VerifyAtKms(Session& s, const SecureModuleDescription& d) {
  RKL_ASSIGN_OR_RETURN(KmsAdminPort * admin, s.KmsAdmin());
  if (admin == nullptr) return absl::OkStatus();
  RKL_ASSIGN_OR_RETURN(KmsTerminalView view, admin->GetTerminal(d.sn));
  *s.io().out << "kms (admin)   " << view.state << ", TMK KCV " << view.tmk_kcv << "\n";
  if (view.state != kInstalledState) {
    return absl::FailedPreconditionError(
        absl::StrCat("kms: reports ", view.state, " for ", d.sn, ", not INSTALLED"));
  }
  if (view.tmk_kcv != d.tmk_kcv) {
    return absl::FailedPreconditionError("kms: TMK KCV differs from the one the terminal stored");
  }
  return absl::OkStatus();
}

// Appends base64(DER CT_KRD) as one line to `path`: the manufacturer's file that
// `rklctl kms krd import` reads.
absl::Status AppendKrdExport(const std::string& path, const Bytes& ct_krd) {
  const std::string line = Base64(ct_krd) + "\n";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--krd-export: cannot open ", path, ": ", std::strerror(errno)));
  }
  const ssize_t written = ::write(fd, line.data(), line.size());
  const bool synced = !DurableWrites() || ::fsync(fd) == 0;
  ::close(fd);
  if (written != static_cast<ssize_t>(line.size()) || !synced) {
    return absl::FailedPreconditionError(absl::StrCat("--krd-export: cannot write ", path));
  }
  return absl::OkStatus();
}

absl::Status CmdManufacture(Session& s) {
  const Options& o = s.options();
  RKL_RETURN_IF_ERROR(Require(o.sn, "--sn", "RKL_POS_SN"));
  if (s.protocol() == Protocol::kTr34) {
    RKL_ASSIGN_OR_RETURN(KrdFactory factory, s.Factory());
    RKL_ASSIGN_OR_RETURN(Terminal t, Terminal::ManufactureTr34(o.state_dir, o.sn, s.algorithm(),
                                                               factory, SystemClock()));
    if (!o.krd_export.empty()) {
      RKL_ASSIGN_OR_RETURN(Bytes ct_krd, t.KrdCredentialToken());
      RKL_RETURN_IF_ERROR(AppendKrdExport(o.krd_export, ct_krd));
    }
    spdlog::info("manufactured TR-34 terminal {} ({}), KRD id {}", o.sn, o.algorithm,
                 t.Describe().krd_id);
    PrintDescription(*s.io().out, t.Describe());
    return absl::OkStatus();
  }
  if (!o.krd_export.empty()) {
    return absl::InvalidArgumentError("--krd-export: only with --protocol tr34");
  }
  RKL_ASSIGN_OR_RETURN(const crypto::Certificate* root, s.TerminalRoot());
  RKL_ASSIGN_OR_RETURN(
      Terminal t, Terminal::Manufacture(o.state_dir, o.sn, s.algorithm(), *root, SystemClock()));
  spdlog::info("manufactured terminal {} ({})", o.sn, o.algorithm);
  PrintDescription(*s.io().out, t.Describe());
  return absl::OkStatus();
}

absl::Status CmdInstallCert(Session& s) {
  RKL_ASSIGN_OR_RETURN(Terminal t, s.LoadTerminal());
  RKL_ASSIGN_OR_RETURN(OperatorTerminal * op, s.Operator(false));
  RKL_ASSIGN_OR_RETURN(WorkCertificateBundle bundle, op->FetchWorkCertificate());
  RKL_RETURN_IF_ERROR(t.InstallWorkCertificatePem(bundle.work_certificate_pem));
  spdlog::info("terminal {} accepted work certificate {}", t.Describe().sn, bundle.serial_hex);
  PrintDescription(*s.io().out, t.Describe());
  return absl::OkStatus();
}

absl::Status CmdGenerateTk(Session& s) {
  RKL_ASSIGN_OR_RETURN(Terminal t, s.LoadTerminal());
  RKL_RETURN_IF_ERROR(t.GenerateTransportKey());
  const SecureModuleDescription d = t.Describe();
  spdlog::info("terminal {} generated TK (TEK KCV {}, AUK KCV {})", d.sn, d.tek_kcv, d.auk_kcv);
  PrintDescription(*s.io().out, d);
  return absl::OkStatus();
}

absl::Status CmdSubmit(Session& s) {
  RKL_ASSIGN_OR_RETURN(Terminal t, s.LoadTerminal());
  RKL_ASSIGN_OR_RETURN(TransportKeyOffer offer, t.OfferTransportKey());
  RKL_ASSIGN_OR_RETURN(OperatorTerminal * op, s.Operator(true));
  RKL_ASSIGN_OR_RETURN(SubmissionReceipt receipt, op->Submit(offer));
  RKL_RETURN_IF_ERROR(t.MarkSubmitted(receipt.submission_id));
  spdlog::info("terminal {}: package submitted, MTMS receipt {} ({})", offer.sn,
               receipt.submission_id, receipt.state);
  PrintDescription(*s.io().out, t.Describe());
  return absl::OkStatus();
}

absl::Status CmdSubmission(Session& s) {
  RKL_ASSIGN_OR_RETURN(Terminal t, s.LoadTerminal());
  const SecureModuleDescription d = t.Describe();
  if (d.submission_id.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("terminal ", d.sn, " has no MTMS receipt yet (run submit)"));
  }
  RKL_ASSIGN_OR_RETURN(OperatorTerminal * op, s.Operator(true));
  RKL_ASSIGN_OR_RETURN(SubmissionView v, op->QuerySubmission(d.submission_id));
  std::ostream& out = *s.io().out;
  out << "submission    " << v.submission_id << "\n"
      << "sn            " << v.sn << "\n"
      << "state         " << v.state << "\n"
      << "attempts      " << v.attempts << "\n";
  if (!v.reason.empty()) out << "reason        " << v.reason << "\n";
  return absl::OkStatus();
}

absl::Status CmdDownloadTmk(Session& s) {
  RKL_ASSIGN_OR_RETURN(Terminal t, s.LoadTerminal());
  RKL_ASSIGN_OR_RETURN(KmsTerminalPort * kms, s.Kms());
  RKL_ASSIGN_OR_RETURN(DownloadResult r, t.DownloadTmk(*kms, s.forwarding(), SleepFor));
  spdlog::info("terminal {}: TMK installed (KCV {}), KMS reports {}", t.Describe().sn, r.tmk_kcv,
               r.kms_state);
  PrintDescription(*s.io().out, t.Describe());
  return VerifyAtKms(s, t.Describe());
}

// A fleet rides out a restarted service the way real terminals do; a single provision
// reports the first failure unless asked to retry.
constexpr int kFleetDefaultRetries = 4;

TransientRetry RetryPolicy(const Options& o, int default_retries) {
  TransientRetry retry;
  retry.attempts = 1 + (o.retries >= 0 ? o.retries : default_retries);
  return retry;
}

// `patent`/`tr34`: the protocols the context must run; `manufacture`: whether it makes new
// terminals (and needs the HsmRCRT, or the kdh-ca and KRD CA card).
absl::StatusOr<ProvisionContext> MakeProvisionContext(Session& s, bool manufacture, bool patent,
                                                      bool tr34) {
  ProvisionContext ctx;
  ctx.state_dir = s.options().state_dir;
  ctx.algorithm = s.algorithm();
  ctx.protocol = s.protocol();
  ctx.protocol_explicit = s.protocol_given();
  if (patent) {
    if (manufacture) {
      RKL_ASSIGN_OR_RETURN(ctx.terminal_root, s.TerminalRoot());
    }
    RKL_ASSIGN_OR_RETURN(ctx.operator_terminal, s.Operator(true));
    RKL_ASSIGN_OR_RETURN(ctx.kms, s.Kms());
  }
  if (tr34) {
    if (manufacture) {
      RKL_ASSIGN_OR_RETURN(ctx.krd_factory, s.Factory());
    }
    RKL_ASSIGN_OR_RETURN(ctx.kms_tr34, s.KmsTr34());
  }
  ctx.forwarding = s.forwarding();
  ctx.clock = SystemClock();
  ctx.sleep = SleepFor;
  return ctx;
}

absl::Status CmdProvision(Session& s) {
  const Options& o = s.options();
  RKL_RETURN_IF_ERROR(Require(o.sn, "--sn", "RKL_POS_SN"));
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(o.sn));
  if (s.mixed()) return absl::InvalidArgumentError("--protocol: mixed is for fleet only");
  const bool exists = PathExists(TerminalDirectory(o.state_dir, o.sn));
  ProvisionContext probe;
  probe.state_dir = o.state_dir;
  probe.protocol = s.protocol();
  probe.protocol_explicit = s.protocol_given();
  RKL_ASSIGN_OR_RETURN(Protocol protocol, ProtocolFor(probe, o.sn));
  RKL_ASSIGN_OR_RETURN(
      ProvisionContext ctx,
      MakeProvisionContext(s, !exists, protocol == Protocol::kPatent, protocol == Protocol::kTr34));
  StepRecorder steps;
  RKL_ASSIGN_OR_RETURN(ProvisionResult r,
                       ProvisionTerminalWithRetry(ctx, o.sn, steps, RetryPolicy(o, 0)));
  for (const auto& [step, d] : steps.steps()) {
    *s.io().out << absl::StrFormat("step %-16s %8.1f ms\n", step, absl::ToDoubleMilliseconds(d));
  }
  PrintDescription(*s.io().out, r.terminal);
  spdlog::info("terminal {} provisioned (TMK KCV {}), KMS reports {}", o.sn, r.terminal.tmk_kcv,
               r.kms_state);
  return VerifyAtKms(s, r.terminal);
}

absl::Status CmdStatus(Session& s) {
  const Options& o = s.options();
  if (!o.sn.empty()) {
    RKL_ASSIGN_OR_RETURN(Terminal t, s.LoadTerminal());
    PrintDescription(*s.io().out, t.Describe());
    return absl::OkStatus();
  }
  std::vector<std::string> sns;
  if (DIR* dir = ::opendir(o.state_dir.c_str()); dir != nullptr) {
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != ".." && protocol::ValidateSn(name).ok()) sns.push_back(name);
    }
    ::closedir(dir);
  } else {
    return absl::NotFoundError(absl::StrCat("--state-dir: cannot open ", o.state_dir));
  }
  std::sort(sns.begin(), sns.end());
  std::ostream& out = *s.io().out;
  out << absl::StrFormat("%-32s %-15s %-7s %-6s %-6s %-6s %-6s %-64s %s\n", "SN", "STATE", "ALG",
                         "TEK", "AUK", "TMK", "PROTO", "KRD-ID", "KDH");
  for (const std::string& sn : sns) {
    auto t = Terminal::Load(o.state_dir, sn, SystemClock());
    if (!t.ok()) {
      out << absl::StrFormat("%-32s unreadable: %s\n", sn, t.status().message());
      continue;
    }
    const SecureModuleDescription d = t->Describe();
    auto dash = [](const std::string& v) { return v.empty() ? std::string("-") : v; };
    out << absl::StrFormat("%-32s %-15s %-7s %-6s %-6s %-6s %-6s %-64s %s\n", d.sn, d.lifecycle,
                           d.algorithm, dash(d.tek_kcv), dash(d.auk_kcv), dash(d.tmk_kcv),
                           d.protocol, dash(d.krd_id), dash(d.kdh_bound));
  }
  return absl::OkStatus();
}

std::string FleetSn(const std::string& prefix, int index) {
  return absl::StrFormat("%s-%06d", prefix, index + 1);
}

absl::Status CmdFleet(Session& s, Options& o) {
  if (o.count < 1) return absl::InvalidArgumentError("--count: must be at least 1");
  if (o.concurrency < 1) return absl::InvalidArgumentError("--concurrency: must be at least 1");
  if (o.prefix.empty()) {
    // A fresh prefix per run, so a fleet never collides with terminals of an earlier run.
    o.prefix = absl::StrCat("FLEET-", ToHex(crypto::RandomBytes(3)));
  }
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(FleetSn(o.prefix, o.count - 1)));
  if (o.no_fsync) SetDurableWrites(false);
  // --protocol mixed: odd-numbered terminals (…-000001, …-000003, …) patent, even-numbered
  // TR-34.
  const bool mixed = s.mixed();
  const bool any_tr34 = mixed || s.protocol() == Protocol::kTr34;
  const bool any_patent = mixed || s.protocol() == Protocol::kPatent;
  RKL_ASSIGN_OR_RETURN(ProvisionContext ctx, MakeProvisionContext(s, true, any_patent, any_tr34));
  ProvisionContext patent_ctx = ctx;
  patent_ctx.protocol = Protocol::kPatent;
  ProvisionContext tr34_ctx = ctx;
  tr34_ctx.protocol = Protocol::kTr34;
  RKL_ASSIGN_OR_RETURN(KmsAdminPort * admin, s.KmsAdmin());  // fail fast on bad flags

  FleetOptions fo;
  fo.count = o.count;
  fo.concurrency = o.concurrency;
  if (o.progress != "none") {
    fo.progress = s.io().err;
    fo.progress_is_tty = o.progress == "bar" || (o.progress == "auto" && s.io().err_is_tty);
  }
  *s.io().out << "fleet: " << o.count << " terminals " << FleetSn(o.prefix, 0) << " .. "
              << FleetSn(o.prefix, o.count - 1) << ", concurrency " << o.concurrency
              << ", protocol " << (mixed ? "mixed" : ProtocolName(s.protocol())) << "\n";
  const TransientRetry retry = RetryPolicy(o, kFleetDefaultRetries);
  FleetSummary summary = RunFleet(fo, [&](int index, StepRecorder& steps) {
    const ProvisionContext& c = mixed ? (index % 2 == 0 ? patent_ctx : tr34_ctx) : ctx;
    return ProvisionTerminalWithRetry(c, FleetSn(o.prefix, index), steps, retry).status();
  });

  absl::Status verdict = absl::OkStatus();
  if (admin != nullptr) {
    RKL_ASSIGN_OR_RETURN(std::vector<KmsTerminalView> views, admin->ListTerminals(o.prefix + "-"));
    int installed = 0;
    for (const auto& v : views) {
      if (v.state == kInstalledState) ++installed;
    }
    summary.kms_verified_installed = installed;
    if (installed != summary.succeeded) {
      verdict = absl::FailedPreconditionError(absl::StrCat(
          "kms: reports ", installed, " INSTALLED, the simulator counted ", summary.succeeded));
    }
  }
  *s.io().out << FormatSummaryText(summary);
  if (!o.json_file.empty()) {
    const std::string json = FormatSummaryJson(summary);
    RKL_RETURN_IF_ERROR(WriteFileAtomically(o.json_file, Bytes(json.begin(), json.end()), 0644));
  }
  if (summary.failed > 0) {
    return absl::AbortedError(
        absl::StrCat(summary.failed, " of ", summary.total, " terminals failed (see the summary)"));
  }
  return verdict;
}

// Adds the flag `name` ("--ca-bundle") bound to `value`. It can also be set through the
// environment variable named after it: RKL_POS_, then the name in upper case with '_' for '-'
// (RKL_POS_CA_BUNDLE).
template <typename T>
CLI::Option* AddFlag(CLI::App* c, const std::string& name, T& value, const std::string& help) {
  std::string env = "RKL_POS_" + name.substr(2);
  for (char& ch : env) ch = ch == '-' ? '_' : absl::ascii_toupper(static_cast<unsigned char>(ch));
  return c->add_option(name, value, help)->envname(env);
}

// Flag groups shared by the subcommands.
void AddStateDir(CLI::App* c, Options& o) {
  AddFlag(c, "--state-dir", o.state_dir,
          "Directory of the terminals' secure modules (one sub-directory per SN)")
      ->capture_default_str();
}
void AddSnFlag(CLI::App* c, Options& o, bool required) {
  auto* opt = AddFlag(c, "--sn", o.sn, "Terminal serial number: 1-32 of A-Z 0-9 -");
  if (required) opt->required();
}
void AddSn(CLI::App* c, Options& o) { AddSnFlag(c, o, true); }
void AddSnOptional(CLI::App* c, Options& o) { AddSnFlag(c, o, false); }
void AddCaBundle(CLI::App* c, Options& o) {
  AddFlag(c, "--ca-bundle", o.ca_bundle,
          "service-ca certificate(s) that MTMS's and KMS's TLS certificates chain to");
  AddFlag(c, "--rpc-timeout", o.rpc_timeout, "Deadline of each RPC")->capture_default_str();
}
void AddMtms(CLI::App* c, Options& o) {
  AddFlag(c, "--mtms", o.mtms, "MTMS address host:port (server-authenticated TLS)");
  AddFlag(c, "--mtms-authority", o.mtms_authority,
          "Name MTMS's certificate must carry, if not the host of --mtms");
}
void AddKms(CLI::App* c, Options& o) {
  AddFlag(c, "--kms", o.kms, "KMS address host:port (server-authenticated TLS)");
  AddFlag(c, "--kms-authority", o.kms_authority,
          "Name KMS's certificate must carry, if not the host of --kms");
  AddFlag(c, "--forwarding-timeout", o.forwarding_timeout,
          "How long to wait for MTMS to forward the TK to KMS")
      ->capture_default_str();
}
void AddCard(CLI::App* c, Options& o) {
  AddFlag(c, "--operator-card", o.operator_card,
          "Operator card: PKCS#12 with the ECDSA P-256 key and operator certificate");
  AddFlag(c, "--operator-pin-file", o.operator_pin_file,
          "File whose first line is the card PIN; else RKL_POS_OPERATOR_PIN, else a no-echo "
          "prompt on the terminal");
}
void AddAdmin(CLI::App* c, Options& o) {
  AddFlag(c, "--admin-cert", o.admin_cert,
          "admin:* client certificate, to verify results through the KMS admin RPC");
  AddFlag(c, "--admin-key", o.admin_key, "Private key of --admin-cert");
}
void AddRetriesFlag(CLI::App* c, Options& o, int default_retries) {
  AddFlag(c, "--retries", o.retries,
          absl::StrCat("Re-runs of a terminal's flow after UNAVAILABLE, DEADLINE_EXCEEDED or "
                       "ABORTED, resuming where it stopped, with backoff 1s doubling to 10s "
                       "(default ",
                       default_retries, ")"))
      ->check(CLI::Range(0, 100));
}
void AddRetries(CLI::App* c, Options& o) { AddRetriesFlag(c, o, 0); }
void AddFleetRetries(CLI::App* c, Options& o) { AddRetriesFlag(c, o, kFleetDefaultRetries); }
void AddRoot(CLI::App* c, Options& o) {
  AddFlag(c, "--terminal-root", o.terminal_root,
          "HsmRCRT (terminal-root certificate, PEM or DER) burned into new terminals");
  AddFlag(c, "--algorithm", o.algorithm, "Terminal key algorithm of new terminals")
      ->check(CLI::IsMember({"AES128", "AES256", "TDES2"}))
      ->capture_default_str();
}

void AddProtocolFlag(CLI::App* c, Options& o, bool allow_mixed) {
  std::vector<std::string> allowed = {"patent", "tr34"};
  if (allow_mixed) allowed.push_back("mixed");
  AddFlag(c, "--protocol", o.protocol,
          allow_mixed ? "How new terminals load their TMK: patent (default), tr34 (TR-34 two-pass "
                        "KRD), or mixed (odd-numbered terminals patent, even-numbered tr34)"
                      : "How a new terminal loads its TMK: patent (default) or tr34 (TR-34 "
                        "two-pass KRD); an existing terminal keeps its own")
      ->check(CLI::IsMember(allowed));
}
void AddTr34Factory(CLI::App* c, Options& o) {
  AddFlag(c, "--kdh-ca", o.kdh_ca,
          "TR-34: kdh-ca certificate (PEM or DER) burned into new terminals as their only KDH "
          "trust anchor");
  AddFlag(c, "--krd-ca-card", o.krd_ca_card,
          "TR-34: the manufacturer's KRD CA card (krd-ca.p12 from `rkl-pos krd-ca init`) that "
          "certifies new terminals' device keys");
  AddFlag(c, "--krd-ca-pin-file", o.krd_ca_pin_file,
          "TR-34: file whose first line is the KRD CA card PIN; else RKL_POS_KRD_CA_PIN, else a "
          "no-echo prompt");
}
void AddTr34(CLI::App* c, Options& o) {
  AddProtocolFlag(c, o, false);
  AddTr34Factory(c, o);
}
void AddTr34Fleet(CLI::App* c, Options& o) {
  AddProtocolFlag(c, o, true);
  AddTr34Factory(c, o);
}

absl::Status CmdKrdCaInit(Session& s) {
  const Options& o = s.options();
  RKL_ASSIGN_OR_RETURN(SecretBytes pin, ObtainCardPin(o.krd_ca_pin_file, kKrdCaPinEnv,
                                                      "KRD CA card PIN", "--pin-file", s.io()));
  for (const char* name : {kKrdCaCardFile, kKrdCaCertificateFile}) {
    const std::string path = absl::StrCat(o.out_dir, "/", name);
    if (PathExists(path)) {
      return absl::AlreadyExistsError(
          absl::StrCat("--out: ", path, " exists; a KRD CA is never overwritten"));
    }
  }
  RKL_ASSIGN_OR_RETURN(KrdCa ca, CreateKrdCa(o.ca_name, NowUnixSeconds(SystemClock())));
  RKL_RETURN_IF_ERROR(WriteKrdCa(o.out_dir, ca, pin));
  spdlog::info("KRD CA {} created in {}", o.ca_name, o.out_dir);
  *s.io().out << "KRD CA        " << ca.cert.SubjectCommonName() << "\n"
              << "serial        " << ca.cert.SerialHex() << "\n"
              << "card          " << o.out_dir << "/" << kKrdCaCardFile << "\n"
              << "certificate   " << o.out_dir << "/" << kKrdCaCertificateFile << "\n";
  return absl::OkStatus();
}

// An option group: adds its flags to a subcommand.
using OptionGroup = void (*)(CLI::App*, Options&);

}  // namespace

int RunPosCli(int argc, const char* const* argv, const CliIo& io) {
  Options o;
  CLI::App app{
      "rkl-pos: POS terminal (with its secure module) and operator terminal (with its operator "
      "card) simulator for rkl. Clear keys never leave the secure module files; output shows "
      "KCVs and states only. Every flag can also be set through the environment variable "
      "shown beside it."};
  app.require_subcommand(1);
  // A flag given twice (or in a script and again by hand) takes the last value.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  AddFlag(&app, "--log-level", o.log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();
  AddFlag(&app, "--log-format", o.log_format, "text|json")->capture_default_str();
  app.fallthrough();

  // Each subcommand: its name, help, the option groups it takes (in --help order) and what it
  // runs.
  struct Command {
    CLI::App* app;
    std::function<absl::Status(Session&)> run;
  };
  std::vector<Command> commands;
  auto add_command = [&](const char* name, const char* help,
                         std::initializer_list<OptionGroup> groups,
                         std::function<absl::Status(Session&)> run) {
    CLI::App* command = app.add_subcommand(name, help);
    for (OptionGroup add_group : groups) add_group(command, o);
    commands.push_back({command, std::move(run)});
    return command;
  };
  auto* manufacture = add_command(
      "manufacture",
      "Create a terminal: SN, key algorithm and burned-in HsmRCRT; or (--protocol tr34) a KRD: "
      "device key pair, KRD certificate from the KRD CA card, burned-in kdh-ca",
      {AddStateDir, AddSn, AddRoot, AddTr34}, CmdManufacture);
  AddFlag(manufacture, "--krd-export", o.krd_export,
          "TR-34: append base64(DER CT_KRD) as one line to this file (the manufacturer's file "
          "for `rklctl kms krd import`)");
  add_command(
      "install-cert",
      "S204-S206: the operator terminal fetches HsmWCRT from MTMS; the terminal verifies it "
      "against its HsmRCRT and keeps Pu",
      {AddStateDir, AddSn, AddMtms, AddCaBundle}, CmdInstallCert);
  add_command("generate-tk",
              "S102-S103: the secure module makes TK = TEK || AUK and Ctk_Pu under Pu",
              {AddStateDir, AddSn}, CmdGenerateTk);
  add_command(
      "submit",
      "S104-S105, S301-S303: the operator terminal signs SN + Ctk_Pu with the operator card and "
      "sends it to MTMS",
      {AddStateDir, AddSn, AddMtms, AddCaBundle, AddCard}, CmdSubmit);
  add_command(
      "submission",
      "The operator reads back the terminal's MTMS submission: state, and why it was rejected "
      "(signed with the operator card)",
      {AddStateDir, AddSn, AddMtms, AddCaBundle, AddCard}, CmdSubmission);
  add_command(
      "download-tmk",
      "S109-S113, S401-S405: mutual authentication with AUK, TMK as a TR-31 block under TEK, "
      "install proof",
      {AddStateDir, AddSn, AddKms, AddCaBundle, AddAdmin}, CmdDownloadTmk);
  add_command("provision",
              "All steps for one terminal (resumes an existing terminal where it stopped)",
              {AddStateDir, AddSn, AddRoot, AddTr34, AddMtms, AddKms, AddCaBundle, AddCard,
               AddAdmin, AddRetries},
              CmdProvision);
  add_command("status", "Show one terminal (--sn) or all terminals: states and KCVs only",
              {AddStateDir, AddSnOptional}, CmdStatus);
  auto* fleet = add_command(
      "fleet",
      "N terminals through the whole flow in parallel, with progress and a latency summary",
      {AddStateDir, AddRoot, AddTr34Fleet, AddMtms, AddKms, AddCaBundle, AddCard, AddAdmin,
       AddFleetRetries},
      [&](Session& s) { return CmdFleet(s, o); });
  fleet->add_option("--count", o.count, "Number of terminals")->capture_default_str();
  fleet->add_option("--concurrency", o.concurrency, "Terminals in flight at once")
      ->capture_default_str();
  fleet->add_option("--prefix", o.prefix,
                    "SN prefix; terminals are <prefix>-000001... (default: FLEET-<random>)");
  fleet->add_option("--json", o.json_file, "Also write the summary as JSON to this file");
  fleet->add_option("--progress", o.progress, "auto|bar|plain|none (auto: bar on a terminal)")
      ->check(CLI::IsMember({"auto", "bar", "plain", "none"}))
      ->capture_default_str();
  fleet->add_flag("--no-fsync", o.no_fsync,
                  "Do not force the terminals' state files to disk (a load run: real terminals "
                  "sync their own flash, not this machine's disk). Files are still replaced "
                  "atomically; a crash of this machine may lose the last steps' state");

  CLI::App* krd_ca = app.add_subcommand("krd-ca", "The terminal manufacturer's TR-34 KRD CA");
  krd_ca->require_subcommand(1);
  CLI::App* krd_ca_init = krd_ca->add_subcommand(
      "init",
      "Create the KRD CA: RSA-3072 self-signed CA in a PIN-protected PKCS#12 DIR/krd-ca.p12 and "
      "its certificate DIR/krd-ca.pem (never overwrites)");
  krd_ca_init->add_option("--out", o.out_dir, "Directory for krd-ca.p12 and krd-ca.pem")
      ->required();
  krd_ca_init
      ->add_option("--pin-file", o.krd_ca_pin_file,
                   "File whose first line is the new card's PIN; else RKL_POS_KRD_CA_PIN, else a "
                   "no-echo prompt")
      ->envname("RKL_POS_KRD_CA_PIN_FILE");
  krd_ca_init->add_option("--name", o.ca_name, "The CA's subject CN")->capture_default_str();
  commands.push_back({krd_ca_init, CmdKrdCaInit});

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is a "parse error" with exit code 0; every real usage error exits 2.
    return app.exit(e, *io.out, *io.err) == 0 ? 0 : 2;
  }

  if (io.init_logging) {
    auto format = ParseLogFormat(o.log_format);
    auto level = ParseLogLevel(o.log_level);
    if (!format.ok() || !level.ok()) {
      *io.err << "rkl-pos: --log-format/--log-level: "
              << (!format.ok() ? format.status() : level.status()).message() << "\n";
      return 2;
    }
    InitLogging({.format = *format, .level = *level, .program = "rkl-pos"});
  }

  for (const Command& c : commands) {
    if (!c.app->parsed()) continue;
    // One request id for the whole command (each of its calls to MTMS and KMS); a terminal
    // flow (provision, each fleet terminal) runs under an id of its own (provision.h).
    const ScopedRequestId command_id(rpc::NewRequestId());
    Session session(o, io);
    absl::Status status = session.Init();
    if (status.ok()) status = c.run(session);
    if (!status.ok()) {
      const CLI::App* parent = c.app->get_parent();
      const std::string name = parent != nullptr && parent != &app
                                   ? parent->get_name() + " " + c.app->get_name()
                                   : c.app->get_name();
      *io.err << "rkl-pos " << name << ": " << absl::StatusCodeToString(status.code()) << ": "
              << status.message() << "\n";
      return 1;
    }
    return 0;
  }
  return 2;
}

namespace {

// Reads the PIN from /dev/tty with echo off; the typed characters go straight into
// SecretBytes.
absl::StatusOr<SecretBytes> PromptPinOnTty() {
  int fd = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (fd < 0) return absl::FailedPreconditionError("operator PIN: no terminal to prompt on");
  termios old_mode;
  const bool have_mode = ::tcgetattr(fd, &old_mode) == 0;
  if (have_mode) {
    termios quiet = old_mode;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(fd, TCSAFLUSH, &quiet);
  }
  constexpr char kPrompt[] = "Operator card PIN: ";
  (void)!::write(fd, kPrompt, sizeof(kPrompt) - 1);
  SecretBytes buffer(kMaxPinLength + 1);
  auto out = buffer.RevealSecretMutable();
  size_t len = 0;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n' && c != '\r') {
    if (len < out.size()) out[len++] = static_cast<uint8_t>(c);
  }
  c = 0;
  if (have_mode) ::tcsetattr(fd, TCSAFLUSH, &old_mode);
  (void)!::write(fd, "\n", 1);
  ::close(fd);
  return buffer.Sub(0, len);
}

}  // namespace

CliIo ProcessCliIo() {
  CliIo io;
  io.out = &std::cout;
  io.err = &std::cerr;
  io.init_logging = true;
  io.err_is_tty = ::isatty(STDERR_FILENO) == 1;
  if (::isatty(STDIN_FILENO) == 1) io.prompt_pin = PromptPinOnTty;
  return io;
}

}  // namespace rkl::pos
