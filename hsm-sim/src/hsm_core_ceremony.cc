// HsmCore's key-ceremony commands (hsm_core.h; docs/hsm.md, "Key ceremony (dual control)").
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "hsm_core_internal.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"

namespace rkl::hsm {

namespace action = audit::action;
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

constexpr size_t kComponentSize = 32;
constexpr uint32_t kMinComponents = 2;
constexpr uint32_t kMaxComponents = 9;
constexpr size_t kCeremonyIdBytes = 16;
constexpr std::string_view kComponentLabelPrefix = "RKL-COMPONENT:";
constexpr char kSystemActor[] = "rkl-hsm";

Bytes ComponentOaepLabel(const std::string& ceremony_id) {
  Bytes label(kComponentLabelPrefix.begin(), kComponentLabelPrefix.end());
  label.insert(label.end(), ceremony_id.begin(), ceremony_id.end());
  return label;
}

}  // namespace

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
          .action = action::kCeremonyExpire,
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

template <typename Fn>
auto HsmCore::RunCustodianStep(AuditEvent event, const std::string& caller,
                               const std::string& ceremony_id, Fn&& body)
    -> std::invoke_result_t<Fn&, KeyTransaction&, AuditEvent&, Ceremony&, int64_t> {
  if (absl::Status s = ExpireCeremonies(); !s.ok()) {
    RecordFailure(event, s);
    return s;
  }
  return RunUnit(
      std::move(event), {},
      [&](KeyTransaction& tx, AuditEvent& audit)
          -> std::invoke_result_t<Fn&, KeyTransaction&, AuditEvent&, Ceremony&, int64_t> {
        RKL_RETURN_IF_ERROR(RequireCustodian(caller));
        int64_t now = NowUnixMs(clock_);
        RKL_ASSIGN_OR_RETURN(Ceremony c, OpenCeremony(tx, ceremony_id, now));
        return body(tx, audit, c, now);
      });
}

absl::StatusOr<BegunCeremony> HsmCore::BeginCeremony(const std::string& caller,
                                                     const std::string& label, KeyType key_type,
                                                     uint32_t component_count,
                                                     uint32_t ttl_seconds) {
  AuditEvent event{.actor = caller,
                   .action = action::kCeremonyBegin,
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
  absl::StatusOr<RsaKeyToStore> key = NewRsaKey(options_.ceremony_key_bits, "ceremony key");
  if (!key.ok()) {
    RecordFailure(event, key.status());
    return key.status();
  }
  Bytes id_bytes(kCeremonyIdBytes);
  rng_(id_bytes);
  std::string id = ToHex(id_bytes);
  return RunUnit(
      event, {}, [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<BegunCeremony> {
        RKL_RETURN_IF_ERROR(RequireFreeLabel(tx, label));
        int64_t now = NowUnixMs(clock_);
        NewKey ceremony_key{.type = KeyType::kRsaPrivate,
                            .usage = KeyUsage::kCeremonyDecrypt,
                            .label = "ceremony:" + id,
                            .rsa_bits = static_cast<uint32_t>(options_.ceremony_key_bits),
                            .public_key_der = key->public_der,
                            .material = key->pkcs8};
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
        return BegunCeremony{id, key->public_der, c.expires_at_ms};
      });
}

absl::StatusOr<CeremonyStatus> HsmCore::GetCeremony(const std::string& caller,
                                                    const std::string& ceremony_id) {
  AuditEvent event{.actor = caller,
                   .action = action::kCeremonyGet,
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
      .action = action::kCeremonyAddComponent,
      .detail = absl::StrCat("ceremony=", CeremonyIdForAudit(ceremony_id), " custodian=", caller)};
  return RunCustodianStep(
      event, caller, ceremony_id,
      [&](KeyTransaction& tx, AuditEvent& audit, Ceremony& c,
          int64_t now) -> absl::StatusOr<AddedComponent> {
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
                   .action = action::kCeremonyComplete,
                   .detail = absl::StrCat("ceremony=", CeremonyIdForAudit(ceremony_id))};
  return RunCustodianStep(
      event, caller, ceremony_id,
      [&](KeyTransaction& tx, AuditEvent& audit, Ceremony& c,
          int64_t now) -> absl::StatusOr<CompletedCeremony> {
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
        RKL_RETURN_IF_ERROR(RequireFreeLabel(tx, c.label));
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

}  // namespace rkl::hsm
