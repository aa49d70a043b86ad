#include "secure_module.h"

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "files.h"
#include "rkl/common/enum_names.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/x509.h"
#include "rkl/protocol/sn.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"

namespace rkl::pos {
namespace {

using crypto::SecretBytes;

constexpr char kStateFileName[] = "secure_module.sealed";
constexpr char kDeviceKeyFileName[] = "device.key";
constexpr mode_t kFileMode = 0600;
constexpr mode_t kDirMode = 0700;

// Serialised state: magic, then fields as tag (1) ‖ [len]_4 ‖ value, each tag at most once.
constexpr std::string_view kStateMagicV1 = "RKLSM\x01";
constexpr std::string_view kStateMagic = "RKLSM\x02";
enum Tag : uint8_t {
  kTagSn = 1,
  kTagAlgorithm = 2,
  kTagLifecycle = 3,
  kTagTerminalRoot = 4,
  kTagWorkCertificate = 5,
  kTagTek = 6,
  kTagAuk = 7,
  kTagCtkPu = 8,
  kTagSubmissionId = 9,
  kTagTmk = 10,
  kTagManufacturedAt = 11,
  kTagInstalledAt = 12,
  // Version 2.
  kTagProtocol = 13,
  kTagKdhCa = 14,
  kTagKrdCertificate = 15,
  kTagKrdPrivateKey = 16,
  kTagKdhCertificate = 17,
  kTagPendingNonce = 18,
  kTagAcceptedNonce = 19,
};
constexpr uint8_t kMaxTagV1 = kTagInstalledAt;
constexpr uint8_t kMaxTag = kTagAcceptedNonce;
constexpr size_t kFieldOverhead = 1 + 4;

// Writes fields into a SecretBytes sized up front, so key bytes never sit in a buffer that
// reallocates (and would leave a stale copy on the heap).
class StateWriter {
 public:
  explicit StateWriter(size_t size) : out_(size) {}
  void Raw(std::span<const uint8_t> data) {
    std::memcpy(out_.RevealSecretMutable().data() + pos_, data.data(), data.size());
    pos_ += data.size();
  }
  void Field(uint8_t tag, std::span<const uint8_t> value) {
    uint8_t header[kFieldOverhead] = {
        tag, static_cast<uint8_t>(value.size() >> 24), static_cast<uint8_t>(value.size() >> 16),
        static_cast<uint8_t>(value.size() >> 8), static_cast<uint8_t>(value.size())};
    Raw(header);
    Raw(value);
  }
  SecretBytes Finish() && { return std::move(out_); }

 private:
  SecretBytes out_;
  size_t pos_ = 0;
};

Bytes Int64Bytes(int64_t v) {
  Bytes out(8);
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(v & 0xff);
    v >>= 8;
  }
  return out;
}

absl::Status Corrupt(std::string_view rule) {
  return absl::DataLossError(absl::StrCat("secure module state: ", std::string(rule)));
}

Bytes SnAad(std::string_view sn) { return Bytes(sn.begin(), sn.end()); }

std::string DeviceKeyFile(const std::string& dir) {
  return absl::StrCat(dir, "/", kDeviceKeyFileName);
}

}  // namespace

std::string_view LifecycleName(Lifecycle lifecycle) {
  static constexpr EnumName<Lifecycle> kNames[] = {
      {Lifecycle::kManufactured, "MANUFACTURED"}, {Lifecycle::kCertInstalled, "CERT_INSTALLED"},
      {Lifecycle::kTkGenerated, "TK_GENERATED"},  {Lifecycle::kTkSubmitted, "TK_SUBMITTED"},
      {Lifecycle::kTmkLoaded, "TMK_LOADED"},      {Lifecycle::kInstalled, "INSTALLED"},
      {Lifecycle::kKdhBound, "KDH_BOUND"},        {Lifecycle::kTokenRequested, "TOKEN_REQUESTED"},
  };
  return NameOf(kNames, lifecycle, "UNKNOWN");
}

std::string_view ProtocolName(Protocol protocol) {
  return protocol == Protocol::kTr34 ? "tr34" : "patent";
}

absl::StatusOr<Protocol> ProtocolFromName(std::string_view name) {
  if (name == "patent") return Protocol::kPatent;
  if (name == "tr34") return Protocol::kTr34;
  return absl::InvalidArgumentError(
      absl::StrCat("protocol: must be patent or tr34, got \"", std::string(name), "\""));
}

std::string TerminalDirectory(const std::string& state_dir, std::string_view sn) {
  return absl::StrCat(state_dir, "/", std::string(sn));
}

absl::StatusOr<SecretBytes> SerializeState(const SecureModuleState& state) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(state.sn));
  const uint8_t algorithm = crypto::KeyAlgorithmCode(state.algorithm);
  const uint8_t lifecycle = static_cast<uint8_t>(state.lifecycle);
  const Bytes manufactured = Int64Bytes(state.manufactured_at_unix_ms);
  const Bytes installed = Int64Bytes(state.installed_at_unix_ms);

  size_t size = kStateMagic.size();
  auto add = [&](size_t n) { size += kFieldOverhead + n; };
  add(state.sn.size());
  add(1);
  add(1);
  add(state.terminal_root_der.size());
  add(state.work_certificate_der.size());
  add(state.tek.size());
  add(state.auk.size());
  add(state.ctk_pu.size());
  add(state.submission_id.size());
  add(state.tmk.size());
  add(8);
  add(8);
  add(1);
  add(state.kdh_ca_der.size());
  add(state.krd_certificate_der.size());
  add(state.krd_private_key.size());
  add(state.kdh_certificate_der.size());
  add(state.pending_nonce.size());
  add(state.accepted_nonce.size());
  const uint8_t protocol = static_cast<uint8_t>(state.protocol);

  StateWriter w(size);
  w.Raw(AsBytes(kStateMagic));
  w.Field(kTagSn, AsBytes(state.sn));
  w.Field(kTagAlgorithm, {&algorithm, 1});
  w.Field(kTagLifecycle, {&lifecycle, 1});
  w.Field(kTagTerminalRoot, state.terminal_root_der);
  w.Field(kTagWorkCertificate, state.work_certificate_der);
  w.Field(kTagTek, state.tek.RevealSecret());
  w.Field(kTagAuk, state.auk.RevealSecret());
  w.Field(kTagCtkPu, state.ctk_pu);
  w.Field(kTagSubmissionId, AsBytes(state.submission_id));
  w.Field(kTagTmk, state.tmk.RevealSecret());
  w.Field(kTagManufacturedAt, manufactured);
  w.Field(kTagInstalledAt, installed);
  w.Field(kTagProtocol, {&protocol, 1});
  w.Field(kTagKdhCa, state.kdh_ca_der);
  w.Field(kTagKrdCertificate, state.krd_certificate_der);
  w.Field(kTagKrdPrivateKey, state.krd_private_key.RevealSecret());
  w.Field(kTagKdhCertificate, state.kdh_certificate_der);
  w.Field(kTagPendingNonce, state.pending_nonce);
  w.Field(kTagAcceptedNonce, state.accepted_nonce);
  return std::move(w).Finish();
}

absl::StatusOr<SecureModuleState> ParseState(const SecretBytes& serialized) {
  std::span<const uint8_t> in = serialized.RevealSecret();
  auto has_magic = [&](std::string_view magic) {
    return in.size() >= magic.size() && std::memcmp(in.data(), magic.data(), magic.size()) == 0;
  };
  // Version 1: a patent terminal's state from before TR-34, fields 1-12 only.
  const bool v1 = has_magic(kStateMagicV1);
  if (!v1 && !has_magic(kStateMagic)) return Corrupt("unknown format");
  const uint8_t max_tag = v1 ? kMaxTagV1 : kMaxTag;
  in = in.subspan(kStateMagic.size());
  SecureModuleState state;
  bool seen[kMaxTag + 1] = {};
  while (!in.empty()) {
    if (in.size() < kFieldOverhead) return Corrupt("truncated field header");
    const uint8_t tag = in[0];
    const size_t len =
        (size_t{in[1]} << 24) | (size_t{in[2]} << 16) | (size_t{in[3]} << 8) | size_t{in[4]};
    in = in.subspan(kFieldOverhead);
    if (len > in.size()) return Corrupt("truncated field");
    if (tag == 0 || tag > max_tag) return Corrupt("unknown field");
    if (seen[tag]) return Corrupt("repeated field");
    seen[tag] = true;
    std::span<const uint8_t> value = in.first(len);
    in = in.subspan(len);
    switch (tag) {
      case kTagSn:
        state.sn = std::string(AsString(value));
        break;
      case kTagAlgorithm: {
        if (len != 1) return Corrupt("algorithm length");
        auto algorithm = crypto::KeyAlgorithmFromCode(value[0]);
        if (!algorithm.ok()) return Corrupt("algorithm");
        state.algorithm = *algorithm;
        break;
      }
      case kTagLifecycle:
        if (len != 1 || value[0] < static_cast<uint8_t>(Lifecycle::kManufactured) ||
            value[0] > static_cast<uint8_t>(Lifecycle::kTokenRequested)) {
          return Corrupt("lifecycle");
        }
        state.lifecycle = static_cast<Lifecycle>(value[0]);
        break;
      case kTagTerminalRoot:
        state.terminal_root_der.assign(value.begin(), value.end());
        break;
      case kTagWorkCertificate:
        state.work_certificate_der.assign(value.begin(), value.end());
        break;
      case kTagTek:
        state.tek = SecretBytes::CopyOf(value);
        break;
      case kTagAuk:
        state.auk = SecretBytes::CopyOf(value);
        break;
      case kTagCtkPu:
        state.ctk_pu.assign(value.begin(), value.end());
        break;
      case kTagSubmissionId:
        state.submission_id = std::string(AsString(value));
        break;
      case kTagTmk:
        state.tmk = SecretBytes::CopyOf(value);
        break;
      case kTagManufacturedAt:
      case kTagInstalledAt: {
        if (len != 8) return Corrupt("timestamp length");
        int64_t v = 0;
        for (uint8_t b : value) v = (v << 8) | b;
        (tag == kTagManufacturedAt ? state.manufactured_at_unix_ms : state.installed_at_unix_ms) =
            v;
        break;
      }
      case kTagProtocol:
        if (len != 1 || (value[0] != static_cast<uint8_t>(Protocol::kPatent) &&
                         value[0] != static_cast<uint8_t>(Protocol::kTr34))) {
          return Corrupt("protocol");
        }
        state.protocol = static_cast<Protocol>(value[0]);
        break;
      case kTagKdhCa:
        state.kdh_ca_der.assign(value.begin(), value.end());
        break;
      case kTagKrdCertificate:
        state.krd_certificate_der.assign(value.begin(), value.end());
        break;
      case kTagKrdPrivateKey:
        state.krd_private_key = SecretBytes::CopyOf(value);
        break;
      case kTagKdhCertificate:
        state.kdh_certificate_der.assign(value.begin(), value.end());
        break;
      case kTagPendingNonce:
        state.pending_nonce.assign(value.begin(), value.end());
        break;
      case kTagAcceptedNonce:
        state.accepted_nonce.assign(value.begin(), value.end());
        break;
    }
  }
  const bool tr34_lifecycle =
      state.lifecycle == Lifecycle::kKdhBound || state.lifecycle == Lifecycle::kTokenRequested;
  if (tr34_lifecycle && state.protocol != Protocol::kTr34) {
    return Corrupt("lifecycle");
  }
  for (uint8_t tag = 1; tag <= max_tag; ++tag) {
    if (!seen[tag]) return Corrupt("missing field");
  }
  if (!protocol::ValidateSn(state.sn).ok()) return Corrupt("sn");
  return state;
}

std::string SecureModule::state_file() const { return absl::StrCat(dir_, "/", kStateFileName); }
std::string SecureModule::device_key_file() const { return DeviceKeyFile(dir_); }

absl::StatusOr<SecureModule> SecureModule::Create(const std::string& state_dir,
                                                  const SecureModuleState& initial) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(initial.sn));
  const std::string dir = TerminalDirectory(state_dir, initial.sn);
  RKL_RETURN_IF_ERROR(MakeDirectories(state_dir, kDirMode));
  if (::mkdir(dir.c_str(), kDirMode) != 0) {
    if (errno == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat("sn: terminal ", initial.sn, " already exists in ", state_dir));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create directory ", dir, ": ", std::strerror(errno)));
  }
  absl::StatusOr<SecureModule> module = [&]() -> absl::StatusOr<SecureModule> {
    SecretBytes device_key = crypto::RandomSecret(crypto::SealingKey::kKekSize);
    RKL_RETURN_IF_ERROR(CreateSecretFile(DeviceKeyFile(dir), device_key, kFileMode));
    RKL_ASSIGN_OR_RETURN(crypto::SealingKey sealing_key,
                         crypto::SealingKey::Create(std::move(device_key)));
    SecureModule created(dir, std::move(sealing_key), SecureModuleState{});
    created.state_.sn = initial.sn;
    RKL_RETURN_IF_ERROR(created.Commit(initial));
    return created;
  }();
  if (!module.ok()) {
    // A half-made terminal would block the SN forever: remove it.
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  return module;
}

absl::StatusOr<SecureModule> SecureModule::Open(const std::string& state_dir,
                                                const std::string& sn) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  const std::string dir = TerminalDirectory(state_dir, sn);
  if (!PathExists(dir)) {
    return absl::NotFoundError(absl::StrCat("sn: no terminal ", sn, " in ", state_dir,
                                            " (run `rkl-pos manufacture` first)"));
  }
  const std::string device_key_file = DeviceKeyFile(dir);
  RKL_ASSIGN_OR_RETURN(SecretBytes device_key, ReadSecretFile(device_key_file));
  absl::StatusOr<crypto::SealingKey> sealing_key =
      crypto::SealingKey::Create(std::move(device_key));
  if (!sealing_key.ok()) {
    return absl::DataLossError(absl::StrCat(device_key_file, ": not a device key"));
  }
  SecureModule module(dir, *std::move(sealing_key), SecureModuleState{});
  RKL_ASSIGN_OR_RETURN(Bytes sealed, ReadFileBytes(module.state_file()));
  auto opened = module.device_key_.Open(SnAad(sn), sealed);
  if (!opened.ok()) {
    return absl::DataLossError(absl::StrCat(
        module.state_file(), ": does not open under this device's key (tampered or copied)"));
  }
  RKL_ASSIGN_OR_RETURN(module.state_, ParseState(*opened));
  if (module.state_.sn != sn) return Corrupt("sn does not match the directory");
  return module;
}

absl::Status SecureModule::Commit(SecureModuleState next) {
  if (next.sn != state_.sn) {
    return absl::InvalidArgumentError("sn: a secure module's SN never changes");
  }
  RKL_ASSIGN_OR_RETURN(SecretBytes serialized, SerializeState(next));
  RKL_ASSIGN_OR_RETURN(Bytes sealed, device_key_.Seal(SnAad(next.sn), serialized));
  RKL_RETURN_IF_ERROR(WriteFileAtomically(state_file(), sealed, kFileMode));
  state_ = std::move(next);
  return absl::OkStatus();
}

absl::StatusOr<crypto::Certificate> CertificateMemo::Get(const Bytes& der) const {
  if (certificate_.has_value() && der == der_) return *certificate_;
  RKL_ASSIGN_OR_RETURN(crypto::Certificate parsed, crypto::Certificate::FromDer(der));
  der_ = der;
  certificate_ = parsed;
  return parsed;
}

void CertificateMemo::Remember(const crypto::Certificate& certificate) const {
  der_ = certificate.ToDer();
  certificate_ = certificate;
}

absl::StatusOr<crypto::Certificate> SecureModule::TerminalRoot() const {
  return root_memo_.Get(state_.terminal_root_der);
}

absl::StatusOr<crypto::Certificate> SecureModule::WorkCertificate() const {
  if (state_.work_certificate_der.empty()) {
    return absl::FailedPreconditionError("terminal: no work certificate installed");
  }
  return work_memo_.Get(state_.work_certificate_der);
}

SecureModuleDescription SecureModule::Describe() const {
  SecureModuleDescription d;
  d.sn = state_.sn;
  d.lifecycle = std::string(LifecycleName(state_.lifecycle));
  d.algorithm = std::string(crypto::KeyAlgorithmName(state_.algorithm));
  auto kcv = [&](const SecretBytes& key) -> std::string {
    if (key.empty()) return "";
    auto hex = crypto::KcvHex(state_.algorithm, key);
    return hex.ok() ? *hex : "";
  };
  d.tek_kcv = kcv(state_.tek);
  d.auk_kcv = kcv(state_.auk);
  d.tmk_kcv = kcv(state_.tmk);
  if (!state_.work_certificate_der.empty()) {
    auto cert = WorkCertificate();
    if (cert.ok()) d.work_certificate_serial = cert->SerialHex();
  }
  d.submission_id = state_.submission_id;
  d.protocol = std::string(ProtocolName(state_.protocol));
  if (!state_.krd_certificate_der.empty()) {
    auto krd = crypto::Certificate::FromDer(state_.krd_certificate_der);
    if (krd.ok()) {
      auto id = tr34::CertIdOf(*krd);
      if (id.ok()) d.krd_id = tr34::KrdIdOf(*id);
    }
  }
  if (!state_.kdh_certificate_der.empty()) {
    auto kdh = crypto::Certificate::FromDer(state_.kdh_certificate_der);
    if (kdh.ok()) d.kdh_bound = absl::StrCat(kdh->SubjectCommonName(), " #", kdh->SerialHex());
  }
  return d;
}

}  // namespace rkl::pos
