#include "hsm_core.h"

#include <algorithm>
#include <thread>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "rkl/common/parallel.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/sn.h"
#include "rkl/protocol/transport_key.h"
#include "spdlog/spdlog.h"

namespace rkl::hsm {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

constexpr size_t kComponentSize = 32;
constexpr size_t kMaxLabelLength = 64;
constexpr size_t kMaxReasonLength = 256;
constexpr uint32_t kMinComponents = 2;
constexpr uint32_t kMaxComponents = 9;
constexpr uint32_t kMaxRandomLength = 1024;
constexpr size_t kMaxCtkPkRequest = 512;
constexpr size_t kCeremonyIdBytes = 16;
constexpr std::string_view kComponentLabelPrefix = "RKL-COMPONENT:";
constexpr char kSystemActor[] = "rkl-hsm";

absl::Status SelfTestFailed() { return absl::FailedPreconditionError("HSM self-test failed"); }

// The one answer for every way a transport key can fail to decrypt or parse (PROTOCOL §5).
absl::Status TransportKeyRejected() { return absl::UnauthenticatedError("transport key rejected"); }

const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

absl::Status ValidateLabel(const std::string& label, std::string_view field) {
  if (label.empty() || label.size() > kMaxLabelLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": must be 1-64 printable ASCII characters"));
  }
  for (char c : label) {
    if (c < 0x20 || c > 0x7E) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(field), ": must be 1-64 printable ASCII characters"));
    }
  }
  return absl::OkStatus();
}

// A free-text reason for the audit record: bounded, and no control characters (it becomes
// part of a line of audit detail).
absl::Status ValidateReason(const std::string& reason) {
  if (reason.size() > kMaxReasonLength) {
    return absl::InvalidArgumentError("reason: at most 256 characters");
  }
  for (char c : reason) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      return absl::InvalidArgumentError("reason: control characters are not allowed");
    }
  }
  return absl::OkStatus();
}

std::string AlgorithmName(uint8_t code) {
  auto a = crypto::KeyAlgorithmFromCode(code);
  return a.ok() ? std::string(crypto::KeyAlgorithmName(*a)) : "none";
}

Bytes ComponentOaepLabel(const std::string& ceremony_id) {
  Bytes label(kComponentLabelPrefix.begin(), kComponentLabelPrefix.end());
  label.insert(label.end(), ceremony_id.begin(), ceremony_id.end());
  return label;
}

// Checks that `index` names a key this command may use, and returns its record:
// INVALID_ARGUMENT (no index), NOT_FOUND (unknown or deleted), PERMISSION_DENIED (other
// usage, or a terminal key bound to another SN), FAILED_PRECONDITION (superseded).
absl::StatusOr<KeyRecord> UsableKey(KeyTransaction& tx, uint64_t index, std::string_view field,
                                    KeyUsage usage, const std::string* sn) {
  std::string f(field);
  if (index == 0) return absl::InvalidArgumentError(f + ": a key index is required");
  RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(index));
  if (!record || record->state == KeyState::kDeleted) {
    return absl::NotFoundError(absl::StrCat(f, ": key ", index, " not found"));
  }
  if (record->usage != usage) {
    return absl::PermissionDeniedError(absl::StrCat(f, ": key ", index, " has usage ",
                                                    KeyUsageName(record->usage),
                                                    ", this command "
                                                    "needs ",
                                                    KeyUsageName(usage)));
  }
  if (sn != nullptr && record->bound_sn != *sn) {
    return absl::PermissionDeniedError(
        absl::StrCat(f, ": key ", index, " is not bound to terminal ", *sn));
  }
  if (record->state != KeyState::kActive) {
    return absl::FailedPreconditionError(
        absl::StrCat(f, ": key ", index, " is ", KeyStateName(record->state)));
  }
  return *std::move(record);
}

absl::StatusOr<KeyAlgorithm> TerminalAlgorithm(const KeyRecord& record) {
  auto a = crypto::KeyAlgorithmFromCode(record.algorithm);
  if (!a.ok()) {
    return absl::InternalError(
        absl::StrCat("key record ", record.index, " has no terminal algorithm"));
  }
  return *a;
}

absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> UnsealRsa(KeyTransaction& tx,
                                                                    const KeyRecord& record) {
  return tx.UnsealRsa(record);
}

std::string KcvText(std::span<const uint8_t> kcv) { return ToHex(kcv); }

}  // namespace

int HsmCore::BatchThreads() const {
  if (options_.batch_threads > 0) return options_.batch_threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

HsmCore::HsmCore(KeyBarrier& store, AuditLog& audit, Clock clock, crypto::RandomSource rng,
                 HsmCoreOptions options)
    : store_(store),
      audit_(audit),
      clock_(std::move(clock)),
      rng_(std::move(rng)),
      options_(std::move(options)),
      evidence_(options_.operator_cas) {}

// Runs `body` in one unit of work of the store and audits it: on success the record is
// written in that unit (so the change and its record commit together); on failure it is
// written on its own. `options.attempts` > 1 re-runs the whole command after ALREADY_EXISTS,
// which is how a unique index reports a concurrent twin (the re-run then finds the twin's
// result).
template <typename Fn>
auto HsmCore::RunUnit(AuditEvent event, UnitOptions options, Fn&& body)
    -> std::invoke_result_t<Fn&, KeyTransaction&, AuditEvent&> {
  using R = std::invoke_result_t<Fn&, KeyTransaction&, AuditEvent&>;
  if (options.uses_crypto && !options_.self_test_passed) {
    RecordFailure(event, SelfTestFailed());
    return R(SelfTestFailed());
  }
  absl::Status status;
  std::optional<R> out;
  std::string failure_detail = event.detail;
  for (int attempt = 0; attempt < options.attempts; ++attempt) {
    auto unit = [&](KeyTransaction& tx) -> absl::Status {
      out.reset();
      AuditEvent record = event;
      R result = body(tx, record);
      failure_detail = record.detail;
      if (!StatusOf(result).ok()) return StatusOf(result);
      record.at_ms = NowUnixMs(clock_);
      record.result = "OK";
      RKL_RETURN_IF_ERROR(tx.Audit(record));
      out.emplace(std::move(result));
      return absl::OkStatus();
    };
    switch (options.kind) {
      case UnitKind::kTransaction:
        status = store_.Transact(unit);
        break;
      case UnitKind::kReadOnly:
        status = store_.TransactReadOnly(unit);
        break;
      case UnitKind::kOneWrite:
        status = store_.TransactOneWrite(unit);
        break;
    }
    if (status.code() != absl::StatusCode::kAlreadyExists) break;
  }
  if (status.ok()) return std::move(*out);
  event.detail = failure_detail;
  RecordFailure(event, status);
  return R(status);
}

std::string AuditSn(const std::string& sn) {
  if (sn.empty() || protocol::ValidateSn(sn).ok()) return sn;
  // What a refused caller sent as its SN may be anything up to the message limit (1 MiB):
  // the audit keeps a bounded, marked form — hex of the first 16 bytes and the length —
  // so a record can neither grow with the request nor pass for a real SN.
  constexpr size_t kShown = 16;
  return absl::StrCat("invalid:", absl::BytesToHexString(sn.substr(0, kShown)),
                      sn.size() > kShown ? "..." : "", "(", sn.size(), " bytes)");
}

void HsmCore::MarkFailed(AuditEvent& event, const absl::Status& status) {
  event.sn = AuditSn(event.sn);
  event.at_ms = NowUnixMs(clock_);
  event.result = absl::StatusCodeToString(status.code());
  absl::StrAppend(&event.detail, event.detail.empty() ? "" : " ", "error=\"",
                  std::string(status.message()), "\"");
}

void HsmCore::RecordFailure(AuditEvent event, const absl::Status& status) {
  MarkFailed(event, status);
  if (absl::Status s = audit_.Append(event); !s.ok()) {
    spdlog::error("audit record for {} by {} could not be written: {}", event.action, event.actor,
                  s.ToString());
  }
}

void HsmCore::RecordRefusal(const std::string& caller, const std::string& action,
                            const absl::Status& status) {
  RecordFailure(AuditEvent{.actor = caller, .action = action}, status);
}

SecretBytes HsmCore::NewSymmetricKey(KeyAlgorithm algorithm) {
  SecretBytes key(crypto::KeyLength(algorithm));
  while (true) {
    rng_(key.RevealSecretMutable());
    if (algorithm != KeyAlgorithm::kTdes2) return key;
    crypto::SetOddParity(key);
    auto k = key.RevealSecret();
    // K1 == K2 would make the TDES key single DES.
    if (!std::equal(k.begin(), k.begin() + 8, k.begin() + 8)) return key;
  }
}

absl::StatusOr<Bytes> HsmCore::LoadPublicKey(KeyTransaction& tx, uint64_t key_index) {
  if (key_index == 0) return absl::InvalidArgumentError("key_index: a key index is required");
  RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(key_index));
  if (!record || record->state == KeyState::kDeleted) {
    return absl::NotFoundError(absl::StrCat("key_index: key ", key_index, " not found"));
  }
  if (record->type != KeyType::kRsaPrivate) {
    return absl::PermissionDeniedError(absl::StrCat("key_index: key ", key_index, " is a ",
                                                    KeyTypeName(record->type),
                                                    ", not an RSA key pair"));
  }
  // The public half is derived from the sealed private key rather than trusted from its
  // column: a substituted public key would make callers encrypt to someone else.
  RKL_ASSIGN_OR_RETURN(auto pr, UnsealRsa(tx, *record));
  Bytes der = pr->GetPublicKey().ToDer();
  if (der != record->public_key_der) {
    return absl::InternalError(
        absl::StrCat("key record ", key_index, " failed its integrity check"));
  }
  return der;
}

// ---- RSA work keys ---------------------------------------------------------------------------

absl::StatusOr<GeneratedRsaKey> HsmCore::GenerateRsaKeyPair(const std::string& caller,
                                                            uint32_t bits,
                                                            const std::string& label) {
  AuditEvent event{
      .actor = caller, .action = "generate_rsa_key_pair", .detail = absl::StrCat("bits=", bits)};
  absl::Status pre = SelfTestFailed();
  if (options_.self_test_passed) {
    pre = bits == 2048 || bits == 3072 ? ValidateLabel(label, "label")
                                       : absl::InvalidArgumentError("bits: must be 2048 or 3072");
  }
  if (!pre.ok()) {
    RecordFailure(event, pre);
    return pre;
  }
  // Generated before the transaction: it takes long, and holds no database resources.
  absl::StatusOr<crypto::PrivateKey> pr = crypto::GenerateRsaKey(static_cast<int>(bits));
  absl::StatusOr<SecretBytes> pkcs8 =
      pr.ok() ? pr->ExportPkcs8DerSecret() : absl::StatusOr<SecretBytes>(pr.status());
  if (!pkcs8.ok()) {
    absl::Status s = absl::InternalError("RSA key generation failed");
    RecordFailure(event, s);
    return s;
  }
  Bytes public_der = pr->GetPublicKey().ToDer();
  return RunUnit(event, {},
                 [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<GeneratedRsaKey> {
                   RKL_ASSIGN_OR_RETURN(bool taken, tx.LiveLabelExists(label));
                   if (taken) {
                     return absl::AlreadyExistsError(
                         absl::StrCat("label: an active key is already labelled '", label, "'"));
                   }
                   NewKey key{.type = KeyType::kRsaPrivate,
                              .usage = KeyUsage::kTransportDecrypt,
                              .label = label,
                              .rsa_bits = bits,
                              .public_key_der = public_der,
                              .material = *pkcs8};
                   RKL_ASSIGN_OR_RETURN(KeyRecord record, tx.InsertKey(key, NowUnixMs(clock_)));
                   absl::StrAppend(&audit.detail, " key=", record.index, " label=", label);
                   return GeneratedRsaKey{record.index, public_der};
                 });
}

absl::StatusOr<Bytes> HsmCore::GetPublicKey(const std::string& caller, uint64_t key_index) {
  AuditEvent event{
      .actor = caller, .action = "get_public_key", .detail = absl::StrCat("key=", key_index)};
  return RunUnit(event, {},
                 [&](KeyTransaction& tx, AuditEvent&) { return LoadPublicKey(tx, key_index); });
}

// ---- Key ceremony ----------------------------------------------------------------------------

absl::Status HsmCore::ExpireCeremonies() {
  int64_t now = NowUnixMs(clock_);
  return store_.Transact([&](KeyTransaction& tx) -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::vector<Ceremony> expired, tx.FindExpiredCeremonies(now));
    for (const Ceremony& c : expired) {
      RKL_RETURN_IF_ERROR(tx.DeleteComponents(c.id));
      RKL_RETURN_IF_ERROR(tx.SetKeyState(c.ceremony_key_index, KeyState::kDeleted, now));
      RKL_RETURN_IF_ERROR(tx.SetCeremonyState(c.id, CeremonyState::kExpired, 0));
    }
    for (const Ceremony& c : expired) {
      RKL_RETURN_IF_ERROR(tx.Audit(AuditEvent{
          .at_ms = now,
          .actor = kSystemActor,
          .action = "ceremony_expire",
          .detail = absl::StrCat("ceremony=", c.id, " label=", c.label,
                                 " components=", c.custodians.size(), "/", c.component_count,
                                 " ceremony_key=", c.ceremony_key_index, " (erased)"),
          .result = "OK"}));
    }
    return absl::OkStatus();
  });
}

namespace {

// Ceremony ids are ToHex of kCeremonyIdBytes random bytes. Checked before any lookup, and an
// invalid id is never echoed (in errors or the audit): it is caller-controlled and unbounded.
absl::Status ValidateCeremonyId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("ceremony_id: required");
  bool ok = id.size() == 2 * kCeremonyIdBytes;
  for (char ch : id) ok = ok && ((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F'));
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("ceremony_id: must be ", 2 * kCeremonyIdBytes, " upper-case hex digits"));
  }
  return absl::OkStatus();
}

std::string CeremonyIdForAudit(const std::string& id) {
  return ValidateCeremonyId(id).ok() ? id : "<invalid>";
}

// Ceremonies are the custodians': only a custodian:<name> identity (a role of its own in
// service-ca certificates, issued under dual control) may begin, add to or complete one.
bool IsCustodianIdentity(const std::string& identity) {
  constexpr std::string_view kPrefix = "custodian:";
  return identity.size() > kPrefix.size() && identity.starts_with(kPrefix);
}

absl::Status RequireCustodian(const std::string& caller) {
  if (IsCustodianIdentity(caller)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("caller '", caller.empty() ? "(no identity)" : caller,
                   "' is not a key custodian; ceremonies need custodian:<name> certificates"));
}

absl::StatusOr<Ceremony> OpenCeremony(KeyTransaction& tx, const std::string& id, int64_t now) {
  RKL_RETURN_IF_ERROR(ValidateCeremonyId(id));
  RKL_ASSIGN_OR_RETURN(std::optional<Ceremony> c, tx.FindCeremony(id));
  if (!c) return absl::NotFoundError(absl::StrCat("ceremony_id: ceremony ", id, " not found"));
  if (c->state == CeremonyState::kCompleted) {
    return absl::FailedPreconditionError(absl::StrCat("ceremony ", id, " is already completed"));
  }
  if (c->state == CeremonyState::kExpired || now >= c->expires_at_ms) {
    return absl::FailedPreconditionError(
        absl::StrCat("ceremony ", id, " expired; its components were erased, start a new one"));
  }
  return *std::move(c);
}

}  // namespace

absl::StatusOr<BegunCeremony> HsmCore::BeginCeremony(const std::string& caller,
                                                     const std::string& label, KeyType key_type,
                                                     uint32_t component_count,
                                                     uint32_t ttl_seconds) {
  AuditEvent event{.actor = caller,
                   .action = "ceremony_begin",
                   .detail = absl::StrCat("label=", label, " type=", KeyTypeName(key_type),
                                          " components=", component_count)};
  absl::Duration ttl =
      ttl_seconds == 0 ? options_.default_ceremony_ttl : absl::Seconds(ttl_seconds);
  absl::Status pre = options_.self_test_passed ? ValidateLabel(label, "label") : SelfTestFailed();
  if (pre.ok()) pre = RequireCustodian(caller);
  if (pre.ok() && key_type != KeyType::kPk && key_type != KeyType::kMak) {
    pre = absl::InvalidArgumentError("key_type: must be KEY_TYPE_PK or KEY_TYPE_MAK");
  } else if (pre.ok() && (component_count < kMinComponents || component_count > kMaxComponents)) {
    pre = absl::InvalidArgumentError("component_count: must be between 2 and 9 (dual control)");
  } else if (pre.ok() && ttl > options_.max_ceremony_ttl) {
    pre = absl::InvalidArgumentError(
        absl::StrCat("ttl_seconds: at most ", absl::ToInt64Seconds(options_.max_ceremony_ttl)));
  }
  if (pre.ok()) pre = ExpireCeremonies();
  if (!pre.ok()) {
    RecordFailure(event, pre);
    return pre;
  }
  absl::StatusOr<crypto::PrivateKey> key = crypto::GenerateRsaKey(options_.ceremony_key_bits);
  absl::StatusOr<SecretBytes> pkcs8 =
      key.ok() ? key->ExportPkcs8DerSecret() : absl::StatusOr<SecretBytes>(key.status());
  if (!pkcs8.ok()) {
    absl::Status s = absl::InternalError("ceremony key generation failed");
    RecordFailure(event, s);
    return s;
  }
  Bytes public_der = key->GetPublicKey().ToDer();
  Bytes id_bytes(kCeremonyIdBytes);
  rng_(id_bytes);
  std::string id = ToHex(id_bytes);
  return RunUnit(
      event, {}, [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<BegunCeremony> {
        RKL_ASSIGN_OR_RETURN(bool taken, tx.LiveLabelExists(label));
        if (taken) {
          return absl::AlreadyExistsError(
              absl::StrCat("label: an active key is already labelled '", label, "'"));
        }
        int64_t now = NowUnixMs(clock_);
        NewKey ceremony_key{.type = KeyType::kRsaPrivate,
                            .usage = KeyUsage::kCeremonyDecrypt,
                            .label = "ceremony:" + id,
                            .rsa_bits = static_cast<uint32_t>(options_.ceremony_key_bits),
                            .public_key_der = public_der,
                            .material = *pkcs8};
        RKL_ASSIGN_OR_RETURN(KeyRecord record, tx.InsertKey(ceremony_key, now));
        Ceremony c{.id = id,
                   .label = label,
                   .key_type = key_type,
                   .component_count = component_count,
                   .ceremony_key_index = record.index,
                   .state = CeremonyState::kOpen,
                   .created_by = caller,
                   .created_at_ms = now,
                   .expires_at_ms = now + absl::ToInt64Milliseconds(ttl)};
        RKL_RETURN_IF_ERROR(tx.InsertCeremony(c));
        absl::StrAppend(&audit.detail, " ceremony=", id, " ceremony_key=", record.index);
        return BegunCeremony{id, public_der, c.expires_at_ms};
      });
}

absl::StatusOr<CeremonyStatus> HsmCore::GetCeremony(const std::string& caller,
                                                    const std::string& ceremony_id) {
  AuditEvent event{.actor = caller,
                   .action = "ceremony_get",
                   .detail = absl::StrCat("ceremony=", CeremonyIdForAudit(ceremony_id))};
  if (absl::Status s = ExpireCeremonies(); !s.ok()) {
    RecordFailure(event, s);
    return s;
  }
  return RunUnit(event, {}, [&](KeyTransaction& tx, AuditEvent&) -> absl::StatusOr<CeremonyStatus> {
    RKL_RETURN_IF_ERROR(ValidateCeremonyId(ceremony_id));
    RKL_ASSIGN_OR_RETURN(std::optional<Ceremony> c, tx.FindCeremony(ceremony_id));
    if (!c) {
      return absl::NotFoundError(absl::StrCat("ceremony_id: ceremony ", ceremony_id, " not found"));
    }
    CeremonyStatus status{*c, {}};
    if (c->state == CeremonyState::kOpen) {
      RKL_ASSIGN_OR_RETURN(status.component_encryption_key_der,
                           LoadPublicKey(tx, c->ceremony_key_index));
    }
    return status;
  });
}

absl::StatusOr<AddedComponent> HsmCore::AddComponent(const std::string& caller,
                                                     const std::string& ceremony_id,
                                                     const Bytes& encrypted_component) {
  AuditEvent event{
      .actor = caller,
      .action = "ceremony_add_component",
      .detail = absl::StrCat("ceremony=", CeremonyIdForAudit(ceremony_id), " custodian=", caller)};
  if (absl::Status s = ExpireCeremonies(); !s.ok()) {
    RecordFailure(event, s);
    return s;
  }
  return RunUnit(
      event, {}, [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<AddedComponent> {
        RKL_RETURN_IF_ERROR(RequireCustodian(caller));
        int64_t now = NowUnixMs(clock_);
        RKL_ASSIGN_OR_RETURN(Ceremony c, OpenCeremony(tx, ceremony_id, now));
        if (std::find(c.custodians.begin(), c.custodians.end(), caller) != c.custodians.end()) {
          return absl::AlreadyExistsError(
              absl::StrCat("custodian '", caller, "' already added a component to ceremony ", c.id,
                           "; each component must come from a different custodian"));
        }
        if (c.custodians.size() >= c.component_count) {
          return absl::FailedPreconditionError(absl::StrCat("ceremony ", c.id, " already has all ",
                                                            c.component_count, " components"));
        }
        if (encrypted_component.empty()) {
          return absl::InvalidArgumentError("encrypted_component: required");
        }
        RKL_ASSIGN_OR_RETURN(KeyRecord record, UsableKey(tx, c.ceremony_key_index, "ceremony key",
                                                         KeyUsage::kCeremonyDecrypt, nullptr));
        if (encrypted_component.size() != record.rsa_bits / 8) {
          return absl::InvalidArgumentError(
              absl::StrCat("encrypted_component: must be ", record.rsa_bits / 8,
                           " bytes (RSA-OAEP under the ceremony key)"));
        }
        RKL_ASSIGN_OR_RETURN(auto key, UnsealRsa(tx, record));
        auto component =
            crypto::RsaOaepDecrypt(*key, encrypted_component, ComponentOaepLabel(c.id));
        if (!component.ok() || component->size() != kComponentSize) {
          return absl::UnauthenticatedError(
              "encrypted_component: rejected (not a 32-byte component encrypted to this "
              "ceremony's key)");
        }
        RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(KeyAlgorithm::kAes256, *component));
        RKL_RETURN_IF_ERROR(tx.AddComponent(c.id, caller, kcv, *component, now));
        uint32_t added = static_cast<uint32_t>(c.custodians.size()) + 1;
        absl::StrAppend(&audit.detail, " component_kcv=", kcv, " components=", added, "/",
                        c.component_count);
        return AddedComponent{kcv, added, c.component_count};
      });
}

absl::StatusOr<CompletedCeremony> HsmCore::CompleteCeremony(const std::string& caller,
                                                            const std::string& ceremony_id) {
  AuditEvent event{.actor = caller,
                   .action = "ceremony_complete",
                   .detail = absl::StrCat("ceremony=", CeremonyIdForAudit(ceremony_id))};
  if (absl::Status s = ExpireCeremonies(); !s.ok()) {
    RecordFailure(event, s);
    return s;
  }
  return RunUnit(
      event, {}, [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<CompletedCeremony> {
        RKL_RETURN_IF_ERROR(RequireCustodian(caller));
        int64_t now = NowUnixMs(clock_);
        RKL_ASSIGN_OR_RETURN(Ceremony c, OpenCeremony(tx, ceremony_id, now));
        if (c.custodians.size() < c.component_count) {
          return absl::FailedPreconditionError(
              absl::StrCat("ceremony ", c.id, " is incomplete: ", c.custodians.size(), " of ",
                           c.component_count, " components added"));
        }
        // Dual control, checked again where the key is made: at least two components, each
        // from a different custodian identity (a ceremony begun before custodian roles
        // existed may hold admin components; it cannot complete).
        std::vector<std::string> holders = c.custodians;
        std::sort(holders.begin(), holders.end());
        if (holders.size() < kMinComponents ||
            std::adjacent_find(holders.begin(), holders.end()) != holders.end() ||
            !std::all_of(holders.begin(), holders.end(), IsCustodianIdentity)) {
          return absl::PermissionDeniedError(absl::StrCat(
              "ceremony ", c.id, ": its components must come from at least ", kMinComponents,
              " distinct custodian:* identities (have: ", absl::StrJoin(c.custodians, ","), ")"));
        }
        RKL_ASSIGN_OR_RETURN(bool taken, tx.LiveLabelExists(c.label));
        if (taken) {
          return absl::AlreadyExistsError(
              absl::StrCat("label: an active key is already labelled '", c.label, "'"));
        }
        RKL_ASSIGN_OR_RETURN(std::vector<SecretBytes> components, tx.OpenComponents(c.id));
        if (components.size() != c.component_count) {
          return absl::InternalError(absl::StrCat("ceremony ", c.id, " lost components"));
        }
        SecretBytes combined(kComponentSize);
        auto out = combined.RevealSecretMutable();
        for (const SecretBytes& component : components) {
          auto in = component.RevealSecret();
          if (in.size() != kComponentSize) {
            return absl::InternalError(absl::StrCat("ceremony ", c.id, " has a bad component"));
          }
          for (size_t i = 0; i < kComponentSize; ++i) out[i] ^= in[i];
        }
        if (std::all_of(out.begin(), out.end(), [](uint8_t b) { return b == 0; })) {
          return absl::FailedPreconditionError(
              absl::StrCat("ceremony ", c.id,
                           ": the components cancel out (all-zero key); start a new "
                           "ceremony with fresh components"));
        }
        RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(KeyAlgorithm::kAes256, combined));
        NewKey key{.type = c.key_type,
                   .usage = c.key_type == KeyType::kPk ? KeyUsage::kTkWrap : KeyUsage::kTkMac,
                   .label = c.label,
                   .kcv = kcv,
                   .material = std::move(combined)};
        RKL_ASSIGN_OR_RETURN(KeyRecord record, tx.InsertKey(key, now));
        RKL_RETURN_IF_ERROR(tx.DeleteComponents(c.id));
        RKL_RETURN_IF_ERROR(tx.SetKeyState(c.ceremony_key_index, KeyState::kDeleted, now));
        RKL_RETURN_IF_ERROR(tx.SetCeremonyState(c.id, CeremonyState::kCompleted, record.index));
        absl::StrAppend(&audit.detail, " label=", c.label, " type=", KeyTypeName(c.key_type),
                        " key=", record.index, " kcv=", kcv,
                        " custodians=", absl::StrJoin(c.custodians, ","));
        return CompletedCeremony{record.index, kcv};
      });
}

// ---- Transport key (PROTOCOL §5, §6) -----------------------------------------------------

namespace {

AuditEvent TranslateEvent(const std::string& caller, const TranslateCommand& cmd) {
  return AuditEvent{
      .actor = caller,
      .action = "translate_transport_key",
      .sn = cmd.sn,
      .detail = absl::StrCat("pr=", cmd.pr_index, " pk=", cmd.pk_index, " mak=", cmd.mak_index)};
}

}  // namespace

absl::StatusOr<Bytes> HsmCore::TranslateTransportKey(const std::string& caller,
                                                     const TranslateCommand& cmd) {
  return RunUnit(TranslateEvent(caller, cmd), {.kind = UnitKind::kReadOnly},
                 [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<Bytes> {
                   const uint64_t keys[] = {cmd.pr_index, cmd.pk_index, cmd.mak_index};
                   RKL_RETURN_IF_ERROR(tx.Prefetch(keys));
                   return DoTranslate(tx, audit, cmd);
                 });
}

absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> HsmCore::TranslateTransportKeys(
    const std::string& caller, std::span<const TranslateCommand> commands) {
  absl::Status refused;
  if (commands.empty() || commands.size() > kMaxTranslateBatch) {
    refused = absl::InvalidArgumentError(
        absl::StrCat("items: between 1 and ", kMaxTranslateBatch, " translate commands"));
  } else if (!options_.self_test_passed) {
    refused = SelfTestFailed();
  }
  if (!refused.ok()) {
    RecordFailure(AuditEvent{.actor = caller,
                             .action = "translate_transport_key",
                             .detail = absl::StrCat("batch of ", commands.size())},
                  refused);
    return refused;
  }
  std::vector<absl::StatusOr<Bytes>> results;
  absl::Status unit = store_.TransactReadOnly([&](KeyTransaction& tx) -> absl::Status {
    results.clear();
    std::vector<uint64_t> keys;
    for (const TranslateCommand& cmd : commands) {
      keys.insert(keys.end(), {cmd.pr_index, cmd.pk_index, cmd.mak_index});
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    RKL_RETURN_IF_ERROR(tx.Prefetch(keys));
    // Checks and keys, in order; then the RSA decryptions — nearly all of the work — on
    // several threads; then Ctk_pk and the record of each item, in order.
    std::vector<absl::StatusOr<TranslateKeys>> prepared;
    prepared.reserve(commands.size());
    for (const TranslateCommand& cmd : commands) prepared.push_back(PrepareTranslate(tx, cmd));
    // The operator evidence is checked per item with its decryption, on the same threads.
    std::vector<Decrypted> decrypted(commands.size());
    ParallelFor(commands.size(), BatchThreads(), [&](size_t i) {
      if (prepared[i].ok()) decrypted[i] = CheckAndDecrypt(*prepared[i], commands[i]);
    });
    for (size_t i = 0; i < commands.size(); ++i) {
      const TranslateCommand& cmd = commands[i];
      AuditEvent record = TranslateEvent(caller, cmd);
      absl::StatusOr<Bytes> result = prepared[i].ok()
                                         ? FinishTranslate(record, cmd, *prepared[i], decrypted[i])
                                         : absl::StatusOr<Bytes>(prepared[i].status());
      if (result.ok()) {
        record.at_ms = NowUnixMs(clock_);
        record.result = "OK";
      } else {
        MarkFailed(record, result.status());
      }
      RKL_RETURN_IF_ERROR(tx.Audit(record));
      results.push_back(std::move(result));
    }
    return absl::OkStatus();
  });
  if (!unit.ok()) {
    for (const TranslateCommand& cmd : commands) RecordFailure(TranslateEvent(caller, cmd), unit);
    return unit;
  }
  return results;
}

absl::StatusOr<HsmCore::TranslateKeys> HsmCore::PrepareTranslate(KeyTransaction& tx,
                                                                 const TranslateCommand& cmd) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(cmd.sn));
  if (!cmd.algorithm) {
    return absl::InvalidArgumentError("algorithm: must be TDES2, AES128 or AES256");
  }
  if (cmd.created_at_ms < 0) {
    return absl::InvalidArgumentError("created_at_unix_ms: must not be negative");
  }
  if (cmd.ctk_pu.empty()) return absl::InvalidArgumentError("ctk_pu: required");
  RKL_ASSIGN_OR_RETURN(KeyRecord pr_record, UsableKey(tx, cmd.pr_index, "pr_index",
                                                      KeyUsage::kTransportDecrypt, nullptr));
  RKL_ASSIGN_OR_RETURN(KeyRecord pk_record,
                       UsableKey(tx, cmd.pk_index, "pk_index", KeyUsage::kTkWrap, nullptr));
  RKL_ASSIGN_OR_RETURN(KeyRecord mak_record,
                       UsableKey(tx, cmd.mak_index, "mak_index", KeyUsage::kTkMac, nullptr));
  if (cmd.ctk_pu.size() != pr_record.rsa_bits / 8) {
    return absl::InvalidArgumentError(absl::StrCat("ctk_pu: must be ", pr_record.rsa_bits / 8,
                                                   " bytes (the modulus of key ", pr_record.index,
                                                   ")"));
  }
  TranslateKeys keys;
  RKL_ASSIGN_OR_RETURN(keys.pr, UnsealRsa(tx, pr_record));
  RKL_ASSIGN_OR_RETURN(keys.pk, tx.Unseal(pk_record));
  RKL_ASSIGN_OR_RETURN(keys.mak, tx.Unseal(mak_record));
  return keys;
}

HsmCore::Decrypted HsmCore::CheckAndDecrypt(const TranslateKeys& keys,
                                            const TranslateCommand& cmd) const {
  Decrypted out;
  // Nothing is decrypted unless an operator signed exactly this transport key for this SN.
  absl::StatusOr<std::string> operator_id =
      evidence_.Verify(cmd.evidence, TranslateSubject{.sn = cmd.sn,
                                                      .ctk_pu = cmd.ctk_pu,
                                                      .algorithm = *cmd.algorithm,
                                                      .created_at_ms = cmd.created_at_ms});
  if (!operator_id.ok()) {
    out.evidence = operator_id.status();
    return out;
  }
  out.operator_id = *std::move(operator_id);
  out.payload = crypto::RsaOaepDecrypt(*keys.pr, cmd.ctk_pu, protocol::OaepLabel(cmd.sn));
  return out;
}

absl::StatusOr<Bytes> HsmCore::FinishTranslate(AuditEvent& audit, const TranslateCommand& cmd,
                                               const TranslateKeys& keys,
                                               const Decrypted& decrypted) {
  if (!decrypted.evidence.ok()) return decrypted.evidence;
  absl::StrAppend(&audit.detail, " operator=", decrypted.operator_id);
  // Every decryption or format failure is the same answer: no padding or format oracle.
  const absl::StatusOr<SecretBytes>& payload = decrypted.payload;
  if (!payload.ok()) return TransportKeyRejected();
  auto tk = protocol::ParseTkPayload(*payload);
  if (!tk.ok() || tk->algorithm != *cmd.algorithm) return TransportKeyRejected();

  protocol::CtkPkHeader header{
      .algorithm = tk->algorithm, .sn = cmd.sn, .created_at_unix_ms = cmd.created_at_ms};
  RKL_ASSIGN_OR_RETURN(Bytes pk_kcv, crypto::Kcv(crypto::CipherFamily::kAes, keys.pk));
  RKL_ASSIGN_OR_RETURN(Bytes mak_kcv, crypto::Kcv(crypto::CipherFamily::kAes, keys.mak));
  std::copy_n(pk_kcv.begin(), 3, header.pk_kcv.begin());
  std::copy_n(mak_kcv.begin(), 3, header.mak_kcv.begin());
  RKL_ASSIGN_OR_RETURN(Bytes ctk_pk, protocol::BuildCtkPk(header, *payload, keys.pk, keys.mak));
  RKL_ASSIGN_OR_RETURN(std::string tek_kcv, crypto::KcvHex(tk->algorithm, tk->tek));
  RKL_ASSIGN_OR_RETURN(std::string auk_kcv, crypto::KcvHex(tk->algorithm, tk->auk));
  absl::StrAppend(&audit.detail, " pk_kcv=", KcvText(pk_kcv), " mak_kcv=", KcvText(mak_kcv),
                  " algorithm=", std::string(crypto::KeyAlgorithmName(tk->algorithm)),
                  " tek_kcv=", tek_kcv, " auk_kcv=", auk_kcv, " created_at=", cmd.created_at_ms);
  return ctk_pk;
}

absl::StatusOr<Bytes> HsmCore::DoTranslate(KeyTransaction& tx, AuditEvent& audit,
                                           const TranslateCommand& cmd) {
  RKL_ASSIGN_OR_RETURN(TranslateKeys keys, PrepareTranslate(tx, cmd));
  return FinishTranslate(audit, cmd, keys, CheckAndDecrypt(keys, cmd));
}

absl::StatusOr<ImportedTransportKey> HsmCore::DoImport(KeyTransaction& tx, AuditEvent& audit,
                                                       const ImportCommand& cmd) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(cmd.sn));
  if (cmd.ctk_pk.empty()) return absl::InvalidArgumentError("ctk_pk: required");
  if (cmd.ctk_pk.size() > kMaxCtkPkRequest) {
    return absl::InvalidArgumentError("ctk_pk: at most 512 bytes");
  }
  RKL_ASSIGN_OR_RETURN(protocol::ParsedCtkPk parsed, protocol::ParseCtkPk(cmd.ctk_pk));
  // PK, MAK and the SN's live terminal keys (used below) in one read.
  const uint64_t keys[] = {cmd.pk_index, cmd.mak_index};
  const KeyType transport_types[] = {KeyType::kTek, KeyType::kAuk, KeyType::kTmk};
  RKL_RETURN_IF_ERROR(tx.PrefetchWithLive(keys, transport_types, cmd.sn));
  RKL_ASSIGN_OR_RETURN(KeyRecord pk_record,
                       UsableKey(tx, cmd.pk_index, "pk_index", KeyUsage::kTkWrap, nullptr));
  RKL_ASSIGN_OR_RETURN(KeyRecord mak_record,
                       UsableKey(tx, cmd.mak_index, "mak_index", KeyUsage::kTkMac, nullptr));
  RKL_ASSIGN_OR_RETURN(SecretBytes pk, tx.Unseal(pk_record));
  RKL_ASSIGN_OR_RETURN(SecretBytes mak, tx.Unseal(mak_record));
  RKL_ASSIGN_OR_RETURN(Bytes pk_kcv, crypto::Kcv(crypto::CipherFamily::kAes, pk));
  RKL_ASSIGN_OR_RETURN(Bytes mak_kcv, crypto::Kcv(crypto::CipherFamily::kAes, mak));
  const auto& h = parsed.header;
  absl::StrAppend(&audit.detail, " header_pk_kcv=", KcvText(h.pk_kcv),
                  " header_mak_kcv=", KcvText(h.mak_kcv), " pk_kcv=", KcvText(pk_kcv),
                  " mak_kcv=", KcvText(mak_kcv));
  // The MAC first (PROTOCOL §6): nothing in the header counts before it verifies.
  if (!crypto::CmacVerify(crypto::CipherFamily::kAes, mak, parsed.authenticated, parsed.mac)) {
    return absl::UnauthenticatedError("ctk_pk: MAC does not verify");
  }
  if (!std::equal(h.pk_kcv.begin(), h.pk_kcv.end(), pk_kcv.begin()) ||
      !std::equal(h.mak_kcv.begin(), h.mak_kcv.end(), mak_kcv.begin())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ctk_pk: made under PK/MAK with KCVs ", KcvText(h.pk_kcv), "/", KcvText(h.mak_kcv),
        " but this HSM holds ", KcvText(pk_kcv), "/", KcvText(mak_kcv), ": ceremony keys differ"));
  }
  if (h.sn != cmd.sn) {
    return absl::InvalidArgumentError("sn: differs from the SN inside ctk_pk");
  }
  auto tk = protocol::OpenCtkPk(parsed, pk, mak);
  if (!tk.ok()) return absl::UnauthenticatedError("ctk_pk: transport key rejected");
  uint8_t code = crypto::KeyAlgorithmCode(tk->algorithm);
  RKL_ASSIGN_OR_RETURN(std::string tek_kcv, crypto::KcvHex(tk->algorithm, tk->tek));
  RKL_ASSIGN_OR_RETURN(std::string auk_kcv, crypto::KcvHex(tk->algorithm, tk->auk));
  absl::StrAppend(&audit.detail,
                  " algorithm=", std::string(crypto::KeyAlgorithmName(tk->algorithm)),
                  " tek_kcv=", tek_kcv, " auk_kcv=", auk_kcv);
  ImportedTransportKey result{.tek_kcv = tek_kcv,
                              .auk_kcv = auk_kcv,
                              .algorithm = tk->algorithm,
                              .created_at_ms = h.created_at_unix_ms};

  RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live_teks, tx.FindLiveKeys(KeyType::kTek, cmd.sn));
  RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live_auks, tx.FindLiveKeys(KeyType::kAuk, cmd.sn));
  // The same Ctk_pk again (a KMS retry): hand back the keys it already produced.
  if (live_teks.size() == 1 && live_auks.size() == 1 && live_teks[0].algorithm == code &&
      live_auks[0].algorithm == code) {
    RKL_ASSIGN_OR_RETURN(SecretBytes old_tek, tx.Unseal(live_teks[0]));
    RKL_ASSIGN_OR_RETURN(SecretBytes old_auk, tx.Unseal(live_auks[0]));
    if (old_tek == tk->tek && old_auk == tk->auk) {
      result.tek_index = live_teks[0].index;
      result.auk_index = live_auks[0].index;
      absl::StrAppend(&audit.detail, " tek=", result.tek_index, " auk=", result.auk_index,
                      " (already imported)");
      return result;
    }
  }
  // A new transport key for the SN supersedes the old one, and the SN's TMK with it: a TMK
  // leaves only under the TEK it was made for, so the next delivery makes a new one
  // (PROTOCOL §8, re-keying). KMS refuses a new transport key for an installed terminal
  // unless an administrator marked it for re-key.
  RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live_tmks, tx.FindLiveKeys(KeyType::kTmk, cmd.sn));
  int64_t now = NowUnixMs(clock_);
  for (const auto* live : {&live_teks, &live_auks, &live_tmks}) {
    for (const KeyRecord& old : *live) {
      RKL_RETURN_IF_ERROR(tx.SetKeyState(old.index, KeyState::kSuperseded, now));
      absl::StrAppend(&audit.detail, " superseded=", old.index);
    }
  }
  const NewKey new_keys[] = {NewKey{.type = KeyType::kTek,
                                    .algorithm = code,
                                    .usage = KeyUsage::kExportKek,
                                    .bound_sn = cmd.sn,
                                    .label = "tek:" + cmd.sn,
                                    .kcv = tek_kcv,
                                    .material = tk->tek},
                             NewKey{.type = KeyType::kAuk,
                                    .algorithm = code,
                                    .usage = KeyUsage::kTerminalAuth,
                                    .bound_sn = cmd.sn,
                                    .label = "auk:" + cmd.sn,
                                    .kcv = auk_kcv,
                                    .material = tk->auk}};
  RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> inserted, tx.InsertKeys(new_keys, now));
  const KeyRecord& tek = inserted[0];
  const KeyRecord& auk = inserted[1];
  result.tek_index = tek.index;
  result.auk_index = auk.index;
  absl::StrAppend(&audit.detail, " tek=", tek.index, " auk=", auk.index);
  return result;
}

// ---- TMK, authentication, delivery (PROTOCOL §7, §8) ---------------------------------------

absl::StatusOr<GeneratedTmk> HsmCore::DoGenerateTmk(KeyTransaction& tx, AuditEvent& audit,
                                                    const std::string& sn,
                                                    std::optional<KeyAlgorithm> algorithm,
                                                    bool replace_existing, uint64_t tek_index) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  if (!algorithm) {
    return absl::InvalidArgumentError("algorithm: must be TDES2, AES128 or AES256");
  }
  uint8_t code = crypto::KeyAlgorithmCode(*algorithm);
  std::string name(crypto::KeyAlgorithmName(*algorithm));
  absl::StrAppend(&audit.detail, " algorithm=", name);
  RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live, tx.FindLiveKeys(KeyType::kTmk, sn));
  int64_t now = NowUnixMs(clock_);
  // The live TMK is delivered again only under the TEK it was made for. One made for a TEK
  // that has been replaced since (a new transport key raced a delivery), or made before
  // TMKs were bound, is superseded here instead: a TMK never leaves under a second TEK.
  if (!live.empty() && !replace_existing && live.front().kek_index == tek_index) {
    const KeyRecord& existing = live.front();
    if (existing.algorithm != code) {
      return absl::FailedPreconditionError(absl::StrCat("sn: the live TMK of ", sn, " is ",
                                                        AlgorithmName(existing.algorithm), ", not ",
                                                        name, "; set replace_existing to re-key"));
    }
    RKL_ASSIGN_OR_RETURN(SecretBytes tmk, tx.Unseal(existing));
    RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(*algorithm, tmk));
    absl::StrAppend(&audit.detail, " tmk=", existing.index, " kcv=", kcv, " (existing)");
    return GeneratedTmk{existing.index, kcv, false};
  }
  for (const KeyRecord& old : live) {
    RKL_RETURN_IF_ERROR(tx.SetKeyState(old.index, KeyState::kSuperseded, now));
    absl::StrAppend(&audit.detail, " superseded=", old.index);
  }
  SecretBytes tmk = NewSymmetricKey(*algorithm);
  RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(*algorithm, tmk));
  RKL_ASSIGN_OR_RETURN(KeyRecord record, tx.InsertKey(NewKey{.type = KeyType::kTmk,
                                                             .algorithm = code,
                                                             .usage = KeyUsage::kTerminalMaster,
                                                             .bound_sn = sn,
                                                             .label = "tmk:" + sn,
                                                             .kcv = kcv,
                                                             .kek_index = tek_index,
                                                             .material = std::move(tmk)},
                                                      now));
  absl::StrAppend(&audit.detail, " tmk=", record.index, " kcv=", kcv, " bound_to_tek=", tek_index);
  return GeneratedTmk{record.index, kcv, true};
}

absl::StatusOr<AuthChallengeResult> HsmCore::DoAuthChallenge(KeyTransaction& tx, AuditEvent& audit,
                                                             uint64_t auk_index,
                                                             const std::string& sn,
                                                             const Bytes& rnd1) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_ASSIGN_OR_RETURN(KeyRecord record,
                       UsableKey(tx, auk_index, "auk_index", KeyUsage::kTerminalAuth, &sn));
  RKL_ASSIGN_OR_RETURN(KeyAlgorithm algorithm, TerminalAlgorithm(record));
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(algorithm, rnd1, "rnd1"));
  RKL_ASSIGN_OR_RETURN(SecretBytes auk, tx.Unseal(record));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys, protocol::DeriveAuthKeys(algorithm, auk, sn));
  AuthChallengeResult result;
  result.rnd2.resize(crypto::BlockSize(algorithm));
  rng_(result.rnd2);
  RKL_ASSIGN_OR_RETURN(result.crnd1, protocol::MakeCrnd1(keys, rnd1, result.rnd2));
  return result;
}

absl::StatusOr<AuthChallengeResult> HsmCore::AuthChallenge(const std::string& caller,
                                                           uint64_t auk_index,
                                                           const std::string& sn,
                                                           const Bytes& rnd1) {
  AuditEvent event{.actor = caller,
                   .action = "auth_challenge",
                   .sn = sn,
                   .detail = absl::StrCat("auk=", auk_index)};
  return RunUnit(event, {.kind = UnitKind::kReadOnly},
                 [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<AuthChallengeResult> {
                   return DoAuthChallenge(tx, audit, auk_index, sn, rnd1);
                 });
}

absl::Status HsmCore::DoAuthVerify(KeyTransaction& tx, AuditEvent& audit,
                                   const AuthVerifyCommand& cmd) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(cmd.sn));
  RKL_ASSIGN_OR_RETURN(KeyRecord record,
                       UsableKey(tx, cmd.auk_index, "auk_index", KeyUsage::kTerminalAuth, &cmd.sn));
  RKL_ASSIGN_OR_RETURN(KeyAlgorithm algorithm, TerminalAlgorithm(record));
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(algorithm, cmd.rnd1, "rnd1"));
  RKL_RETURN_IF_ERROR(protocol::CheckNonce(algorithm, cmd.rnd2, "rnd2"));
  RKL_ASSIGN_OR_RETURN(SecretBytes auk, tx.Unseal(record));
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys, protocol::DeriveAuthKeys(algorithm, auk, cmd.sn));
  return protocol::VerifyCrnd2(keys, cmd.rnd1, cmd.rnd2, cmd.crnd2);
}

absl::StatusOr<ExportedKeyBlock> HsmCore::DoExport(KeyTransaction& tx, AuditEvent& audit,
                                                   uint64_t key_index, uint64_t kek_index,
                                                   const std::string& sn) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  // Only a TMK is exportable, and only under its own terminal's TEK.
  const uint64_t keys[] = {key_index, kek_index};
  RKL_RETURN_IF_ERROR(tx.Prefetch(keys));
  RKL_ASSIGN_OR_RETURN(KeyRecord key_record,
                       UsableKey(tx, key_index, "key_index", KeyUsage::kTerminalMaster, &sn));
  RKL_ASSIGN_OR_RETURN(KeyRecord kek_record,
                       UsableKey(tx, kek_index, "kek_index", KeyUsage::kExportKek, &sn));
  // A TMK goes out only under the TEK it was made for: not under a TEK imported since
  // (which superseded it anyway), and never a TMK made before the binding existed.
  if (key_record.kek_index != kek_index) {
    return absl::PermissionDeniedError(
        key_record.kek_index == 0
            ? absl::StrCat("key_index: TMK ", key_index,
                           " is bound to no TEK (made before TMKs were bound); re-key the "
                           "terminal")
            : absl::StrCat("key_index: TMK ", key_index, " is bound to TEK ", key_record.kek_index,
                           ", not to kek_index ", kek_index));
  }
  RKL_ASSIGN_OR_RETURN(KeyAlgorithm key_algorithm, TerminalAlgorithm(key_record));
  RKL_ASSIGN_OR_RETURN(KeyAlgorithm kek_algorithm, TerminalAlgorithm(kek_record));
  if (key_algorithm != kek_algorithm) {
    return absl::FailedPreconditionError(
        absl::StrCat("key_index: the TMK is ", std::string(crypto::KeyAlgorithmName(key_algorithm)),
                     " but the TEK is ", std::string(crypto::KeyAlgorithmName(kek_algorithm)),
                     "; a terminal's keys share one algorithm (PROTOCOL 1)"));
  }
  RKL_ASSIGN_OR_RETURN(SecretBytes tmk, tx.Unseal(key_record));
  RKL_ASSIGN_OR_RETURN(SecretBytes tek, tx.Unseal(kek_record));
  ExportedKeyBlock result;
  RKL_ASSIGN_OR_RETURN(result.key_block,
                       keyblock::BuildTmkBlock(tek, kek_algorithm, tmk, key_algorithm, rng_));
  RKL_ASSIGN_OR_RETURN(result.key_kcv, crypto::KcvHex(key_algorithm, tmk));
  RKL_ASSIGN_OR_RETURN(result.kek_kcv, crypto::KcvHex(kek_algorithm, tek));
  absl::StrAppend(&audit.detail, " key_kcv=", result.key_kcv, " kek_kcv=", result.kek_kcv);
  return result;
}

// ---- Composite commands for KMS: several commands in one transaction and audit record ------

absl::StatusOr<ImportedAndChallenged> HsmCore::ImportAndChallenge(const std::string& caller,
                                                                  const ImportCommand& cmd,
                                                                  const Bytes& rnd1) {
  AuditEvent event{.actor = caller,
                   .action = "import_and_challenge",
                   .sn = cmd.sn,
                   .detail = absl::StrCat("pk=", cmd.pk_index, " mak=", cmd.mak_index)};
  return RunUnit(
      event, {.kind = UnitKind::kOneWrite, .attempts = 2},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<ImportedAndChallenged> {
        ImportedAndChallenged out;
        RKL_ASSIGN_OR_RETURN(out.imported, DoImport(tx, audit, cmd));
        RKL_ASSIGN_OR_RETURN(out.challenge,
                             DoAuthChallenge(tx, audit, out.imported.auk_index, cmd.sn, rnd1));
        return out;
      });
}

absl::StatusOr<AuthenticatedDelivery> HsmCore::AuthenticateAndDeliver(
    const std::string& caller, const AuthVerifyCommand& verify,
    std::optional<KeyAlgorithm> algorithm, bool replace_existing, uint64_t tek_index) {
  AuditEvent event{.actor = caller,
                   .action = "authenticate_and_deliver",
                   .sn = verify.sn,
                   .detail = absl::StrCat("auk=", verify.auk_index, " tek=", tek_index,
                                          " replace_existing=", replace_existing)};
  return RunUnit(
      event, {.kind = UnitKind::kOneWrite, .attempts = 2},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<AuthenticatedDelivery> {
        // AUK, TEK and the SN's live keys in one read; the TMK made below is known without
        // one. The live TEK and AUK are taken as found (FindLiveKeys), so the write fails and
        // the command runs again if a new transport key superseded them meanwhile: a TMK is
        // never made for, or sent under, a TEK that is no longer the SN's.
        const uint64_t keys[] = {verify.auk_index, tek_index};
        const KeyType live_types[] = {KeyType::kTek, KeyType::kAuk, KeyType::kTmk};
        RKL_RETURN_IF_ERROR(tx.PrefetchWithLive(keys, live_types, verify.sn));
        RKL_RETURN_IF_ERROR(tx.FindLiveKeys(KeyType::kTek, verify.sn).status());
        RKL_RETURN_IF_ERROR(tx.FindLiveKeys(KeyType::kAuk, verify.sn).status());
        // Nothing is made or exported unless the terminal proved itself just now.
        RKL_RETURN_IF_ERROR(DoAuthVerify(tx, audit, verify));
        absl::StrAppend(&audit.detail, " crnd2=verified");
        AuthenticatedDelivery out;
        RKL_ASSIGN_OR_RETURN(
            out.tmk, DoGenerateTmk(tx, audit, verify.sn, algorithm, replace_existing, tek_index));
        RKL_ASSIGN_OR_RETURN(out.block,
                             DoExport(tx, audit, out.tmk.tmk_index, tek_index, verify.sn));
        return out;
      });
}

absl::Status HsmCore::VerifyInstallProof(const std::string& caller,
                                         const InstallProofCommand& cmd) {
  AuditEvent event{.actor = caller,
                   .action = "verify_install_proof",
                   .sn = cmd.sn,
                   .detail = absl::StrCat("auk=", cmd.auk_index,
                                          " tmk_kcv=", absl::AsciiStrToUpper(cmd.tmk_kcv))};
  return RunUnit(
      event, {.kind = UnitKind::kReadOnly},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::Status {
        RKL_RETURN_IF_ERROR(protocol::ValidateSn(cmd.sn));
        auto kcv = FromHex(cmd.tmk_kcv, "tmk_kcv");
        if (!kcv.ok() || kcv->size() != crypto::kKcvSize) {
          return absl::InvalidArgumentError("tmk_kcv: must be 6 hex digits");
        }
        // The AUK and the SN's live TMK (checked below) in one read.
        const uint64_t auk_index[] = {cmd.auk_index};
        const KeyType tmk_type[] = {KeyType::kTmk};
        RKL_RETURN_IF_ERROR(tx.PrefetchWithLive(auk_index, tmk_type, cmd.sn));
        RKL_ASSIGN_OR_RETURN(KeyRecord record, UsableKey(tx, cmd.auk_index, "auk_index",
                                                         KeyUsage::kTerminalAuth, &cmd.sn));
        RKL_ASSIGN_OR_RETURN(KeyAlgorithm algorithm, TerminalAlgorithm(record));
        RKL_RETURN_IF_ERROR(protocol::CheckNonce(algorithm, cmd.rnd1, "rnd1"));
        RKL_RETURN_IF_ERROR(protocol::CheckNonce(algorithm, cmd.rnd2, "rnd2"));
        RKL_ASSIGN_OR_RETURN(SecretBytes auk, tx.Unseal(record));
        RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                             protocol::DeriveAuthKeys(algorithm, auk, cmd.sn));
        RKL_RETURN_IF_ERROR(
            protocol::VerifyInstallProof(keys, cmd.sn, *kcv, cmd.rnd1, cmd.rnd2, cmd.proof));
        // The proof is only worth something if it names the TMK this HSM holds for the SN.
        RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live, tx.FindLiveKeys(KeyType::kTmk, cmd.sn));
        if (live.empty()) {
          return absl::FailedPreconditionError(absl::StrCat("sn: ", cmd.sn, " has no live TMK"));
        }
        RKL_ASSIGN_OR_RETURN(KeyAlgorithm tmk_algorithm, TerminalAlgorithm(live.front()));
        RKL_ASSIGN_OR_RETURN(SecretBytes tmk, tx.Unseal(live.front()));
        RKL_ASSIGN_OR_RETURN(Bytes live_kcv, crypto::Kcv(tmk_algorithm, tmk));
        if (live_kcv != *kcv) {
          return absl::FailedPreconditionError(
              absl::StrCat("tmk_kcv: is not the KCV of the live TMK of ", cmd.sn));
        }
        absl::StrAppend(&audit.detail, " tmk=", live.front().index);
        return absl::OkStatus();
      });
}

// ---- Revocation ------------------------------------------------------------------------

absl::StatusOr<std::vector<uint64_t>> HsmCore::DestroyTerminalKeys(const std::string& caller,
                                                                   const std::string& sn,
                                                                   const std::string& reason) {
  AuditEvent event{.actor = caller, .action = "destroy_terminal_keys", .sn = sn};
  return RunUnit(
      event, {.uses_crypto = false},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<std::vector<uint64_t>> {
        RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
        RKL_RETURN_IF_ERROR(ValidateReason(reason));
        if (!reason.empty()) absl::StrAppend(&audit.detail, "reason=\"", reason, "\"");
        RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> keys, tx.FindUndeletedKeysOf(sn));
        const int64_t now = NowUnixMs(clock_);
        std::vector<uint64_t> destroyed;
        for (const KeyRecord& k : keys) {
          RKL_RETURN_IF_ERROR(tx.SetKeyState(k.index, KeyState::kDeleted, now));
          destroyed.push_back(k.index);
          absl::StrAppend(&audit.detail, audit.detail.empty() ? "" : " ",
                          "destroyed=", KeyTypeName(k.type), ":", k.index, "(",
                          KeyStateName(k.state), ",kcv=", k.kcv, ")");
        }
        if (destroyed.empty()) {
          absl::StrAppend(&audit.detail, audit.detail.empty() ? "" : " ",
                          "nothing left to destroy");
        }
        return destroyed;
      });
}

// ---- Administration ----------------------------------------------------------------------

absl::StatusOr<KeyRecord> HsmCore::GetKeyInfo(const std::string& caller, uint64_t key_index) {
  AuditEvent event{
      .actor = caller, .action = "get_key_info", .detail = absl::StrCat("key=", key_index)};
  return RunUnit(
      event, {.kind = UnitKind::kReadOnly, .uses_crypto = false},
      [&](KeyTransaction& tx, AuditEvent&) -> absl::StatusOr<KeyRecord> {
        if (key_index == 0) return absl::InvalidArgumentError("key_index: a key index is required");
        RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(key_index));
        if (!record)
          return absl::NotFoundError(absl::StrCat("key_index: key ", key_index, " not found"));
        record->nonce.clear();
        record->sealed.clear();
        return *std::move(record);
      });
}

absl::Status HsmCore::DeleteKey(const std::string& caller, uint64_t key_index) {
  AuditEvent event{
      .actor = caller, .action = "delete_key", .detail = absl::StrCat("key=", key_index)};
  return RunUnit(
      event, {.uses_crypto = false}, [&](KeyTransaction& tx, AuditEvent& audit) -> absl::Status {
        if (key_index == 0) return absl::InvalidArgumentError("key_index: a key index is required");
        RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(key_index));
        if (!record)
          return absl::NotFoundError(absl::StrCat("key_index: key ", key_index, " not found"));
        absl::StrAppend(&audit.detail, " type=", KeyTypeName(record->type),
                        " label=", record->label, " kcv=", record->kcv);
        if (record->state == KeyState::kDeleted) {
          absl::StrAppend(&audit.detail, " (already deleted)");
          return absl::OkStatus();
        }
        return tx.SetKeyState(key_index, KeyState::kDeleted, NowUnixMs(clock_));
      });
}

absl::StatusOr<Bytes> HsmCore::GenerateRandom(const std::string& caller, uint32_t length) {
  AuditEvent event{
      .actor = caller, .action = "generate_random", .detail = absl::StrCat("length=", length)};
  return RunUnit(event, {.kind = UnitKind::kReadOnly},
                 [&](KeyTransaction&, AuditEvent&) -> absl::StatusOr<Bytes> {
                   if (length == 0 || length > kMaxRandomLength) {
                     return absl::InvalidArgumentError("length: must be between 1 and 1024");
                   }
                   Bytes out(length);
                   rng_(out);
                   return out;
                 });
}

absl::StatusOr<AuditVerification> HsmCore::VerifyAuditChain(const std::string& caller,
                                                            std::string_view anchor_text) {
  AuditEvent event{.actor = caller, .action = "verify_audit_chain"};
  std::optional<AuditAnchor> anchor;
  if (!anchor_text.empty()) {
    absl::StatusOr<AuditAnchor> parsed = ParseAuditAnchor(anchor_text);
    if (!parsed.ok()) {
      RecordFailure(event, parsed.status());
      return parsed.status();
    }
    anchor = *std::move(parsed);
  }
  absl::StatusOr<AuditVerification> verification = audit_.Verify(anchor ? &*anchor : nullptr);
  if (!verification.ok()) {
    RecordFailure(event, verification.status());
    return verification.status();
  }
  return RunUnit(event, {.uses_crypto = false},
                 [&](KeyTransaction&, AuditEvent& audit) -> absl::StatusOr<AuditVerification> {
                   absl::StrAppend(
                       &audit.detail, "records=", verification->records_checked,
                       verification->intact
                           ? " intact"
                           : absl::StrCat(" first_broken_seq=", verification->first_broken_seq));
                   if (anchor) absl::StrAppend(&audit.detail, " anchor_seq=", anchor->seq);
                   return *verification;
                 });
}

absl::StatusOr<AuditAnchor> HsmCore::AnchorAuditChain(const std::string& caller) {
  AuditEvent event{.actor = caller, .action = "anchor_audit_chain"};
  absl::StatusOr<AuditAnchor> anchor = audit_.Anchor();
  if (!anchor.ok()) {
    RecordFailure(event, anchor.status());
    return anchor.status();
  }
  return RunUnit(event, {.uses_crypto = false},
                 [&](KeyTransaction&, AuditEvent& audit) -> absl::StatusOr<AuditAnchor> {
                   absl::StrAppend(&audit.detail, "anchor_seq=", anchor->seq);
                   return *anchor;
                 });
}

}  // namespace rkl::hsm
