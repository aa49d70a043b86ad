#include "hsm_core.h"

#include <algorithm>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "hsm_core_internal.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"
#include "rkl/protocol/sn.h"
#include "spdlog/spdlog.h"

namespace rkl::hsm {

constexpr size_t kMaxLabelLength = 64;

absl::Status SelfTestFailed() { return absl::FailedPreconditionError("HSM self-test failed"); }

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

absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> UnsealRsa(KeyTransaction& tx,
                                                                    const KeyRecord& record) {
  return tx.UnsealRsa(record);
}

absl::Status RequireFreeLabel(KeyTransaction& tx, const std::string& label) {
  RKL_ASSIGN_OR_RETURN(bool taken, tx.LiveLabelExists(label));
  if (taken) {
    return absl::AlreadyExistsError(
        absl::StrCat("label: an active key is already labelled '", label, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RsaKeyToStore> NewRsaKey(int bits, std::string_view what) {
  absl::StatusOr<crypto::PrivateKey> key = crypto::GenerateRsaKey(bits);
  absl::StatusOr<crypto::SecretBytes> pkcs8 =
      key.ok() ? key->ExportPkcs8DerSecret() : absl::StatusOr<crypto::SecretBytes>(key.status());
  if (!pkcs8.ok()) {
    return absl::InternalError(absl::StrCat(std::string(what), " generation failed"));
  }
  return RsaKeyToStore{*std::move(pkcs8), key->GetPublicKey().ToDer()};
}

namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

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

void HsmCore::RecordRefusal(const std::string& caller, const std::string& method,
                            const absl::Status& status) {
  RecordFailure(AuditEvent{.actor = caller,
                           .action = audit::action::kRpcRefused,
                           .detail = absl::StrCat("method=", method)},
                status);
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

}  // namespace rkl::hsm
