#pragma once
// What the files of HsmCore share (hsm_core.cc: construction, audit of failures and the
// command unit; hsm_core_ceremony.cc, hsm_core_transport.cc, hsm_core_terminal.cc,
// hsm_core_admin.cc: the commands of each domain). Included by those files only.

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/statusor.h"
#include "hsm_core.h"
#include "rkl/common/status_macros.h"

namespace rkl::hsm {

// FAILED_PRECONDITION "HSM self-test failed".
absl::Status SelfTestFailed();
// A key or ceremony label: 1-64 printable ASCII characters (INVALID_ARGUMENT naming `field`).
absl::Status ValidateLabel(const std::string& label, std::string_view field);
// Checks that `index` names a key this command may use, and returns its record:
// INVALID_ARGUMENT (no index), NOT_FOUND (unknown or deleted), PERMISSION_DENIED (other
// usage, or a terminal key bound to another SN), FAILED_PRECONDITION (superseded).
absl::StatusOr<KeyRecord> UsableKey(KeyTransaction& tx, uint64_t index, std::string_view field,
                                    KeyUsage usage, const std::string* sn);
absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> UnsealRsa(KeyTransaction& tx,
                                                                    const KeyRecord& record);
// ALREADY_EXISTS if an active key has the label.
absl::Status RequireFreeLabel(KeyTransaction& tx, const std::string& label);

// A new RSA key pair as a command stores it: its PKCS#8 DER (sealed by the barrier) and its
// public half. Generated before the unit of work: it takes long, and holds no database
// resources.
struct RsaKeyToStore {
  crypto::SecretBytes pkcs8;
  Bytes public_der;
};
// INTERNAL "<what> generation failed" if OpenSSL fails.
absl::StatusOr<RsaKeyToStore> NewRsaKey(int bits, std::string_view what);

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

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

}  // namespace rkl::hsm
