// HsmCore's transport-key commands (hsm_core.h): the RSA work key pair, translation of
// operator-sealed transport keys (PROTOCOL §5) and import of Ctk_pk (§6).
#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "hsm_core_internal.h"
#include "rkl/audit/actions.h"
#include "rkl/common/parallel.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"
#include "rkl/protocol/sn.h"
#include "rkl/protocol/transport_key.h"

namespace rkl::hsm {

namespace action = audit::action;
namespace {

using crypto::SecretBytes;

// The one answer for every way a transport key can fail to decrypt or parse (PROTOCOL §5).
absl::Status TransportKeyRejected() { return absl::UnauthenticatedError("transport key rejected"); }

constexpr size_t kMaxCtkPkRequest = 512;

std::string KcvText(std::span<const uint8_t> kcv) { return ToHex(kcv); }

}  // namespace

// ---- RSA work keys ---------------------------------------------------------------------------

absl::StatusOr<GeneratedRsaKey> HsmCore::GenerateRsaKeyPair(const std::string& caller,
                                                            uint32_t bits,
                                                            const std::string& label) {
  return GenerateRsaKey(caller, bits, label, KeyUsage::kTransportDecrypt, action::kRsaKeyGenerate);
}

absl::StatusOr<GeneratedRsaKey> HsmCore::GenerateRsaKey(const std::string& caller, uint32_t bits,
                                                        const std::string& label, KeyUsage usage,
                                                        const char* audit_action) {
  AuditEvent event{.actor = caller, .action = audit_action, .detail = absl::StrCat("bits=", bits)};
  absl::Status pre = SelfTestFailed();
  if (options_.self_test_passed) {
    pre = bits == 2048 || bits == 3072 ? ValidateLabel(label, "label")
                                       : absl::InvalidArgumentError("bits: must be 2048 or 3072");
  }
  if (!pre.ok()) {
    RecordFailure(event, pre);
    return pre;
  }
  absl::StatusOr<RsaKeyToStore> pr = NewRsaKey(static_cast<int>(bits), "RSA key");
  if (!pr.ok()) {
    RecordFailure(event, pr.status());
    return pr.status();
  }
  return RunUnit(event, {},
                 [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<GeneratedRsaKey> {
                   RKL_RETURN_IF_ERROR(RequireFreeLabel(tx, label));
                   NewKey key{.type = KeyType::kRsaPrivate,
                              .usage = usage,
                              .label = label,
                              .rsa_bits = bits,
                              .public_key_der = pr->public_der,
                              .material = pr->pkcs8};
                   RKL_ASSIGN_OR_RETURN(KeyRecord record, tx.InsertKey(key, NowUnixMs(clock_)));
                   absl::StrAppend(&audit.detail, " key=", record.index, " label=", label);
                   return GeneratedRsaKey{record.index, pr->public_der};
                 });
}

absl::StatusOr<Bytes> HsmCore::GetPublicKey(const std::string& caller, uint64_t key_index) {
  AuditEvent event{
      .actor = caller, .action = action::kPublicKeyGet, .detail = absl::StrCat("key=", key_index)};
  return RunUnit(event, {},
                 [&](KeyTransaction& tx, AuditEvent&) { return LoadPublicKey(tx, key_index); });
}

absl::StatusOr<CertifiableKey> HsmCore::GetCertifiableKey(const std::string& caller,
                                                          uint64_t key_index) {
  AuditEvent event{.actor = caller,
                   .action = action::kPublicKeyGet,
                   .detail = absl::StrCat("key=", key_index, " for=certification")};
  return RunUnit(
      event, {.kind = UnitKind::kReadOnly},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<CertifiableKey> {
        if (key_index == 0) return absl::InvalidArgumentError("key_index: a key index is required");
        RKL_ASSIGN_OR_RETURN(std::optional<KeyRecord> record, tx.FindKey(key_index));
        if (!record || record->state == KeyState::kDeleted) {
          return absl::NotFoundError(absl::StrCat("key_index: key ", key_index, " not found"));
        }
        if (record->type != KeyType::kRsaPrivate ||
            (record->usage != KeyUsage::kKdhSign && record->usage != KeyUsage::kTransportDecrypt)) {
          return absl::PermissionDeniedError(
              absl::StrCat("key_index: key ", key_index, " has usage ", KeyUsageName(record->usage),
                           "; only KDH_SIGN and TRANSPORT_DECRYPT keys are certified"));
        }
        if (record->state != KeyState::kActive) {
          return absl::FailedPreconditionError(
              absl::StrCat("key_index: key ", key_index, " is ", KeyStateName(record->state)));
        }
        RKL_ASSIGN_OR_RETURN(Bytes der, LoadPublicKey(tx, key_index));
        absl::StrAppend(&audit.detail, " usage=", KeyUsageName(record->usage));
        return CertifiableKey{std::move(der), record->usage, options_.hsm_id};
      });
}

// ---- Transport key (PROTOCOL §5, §6) -----------------------------------------------------

namespace {

AuditEvent TranslateEvent(const std::string& caller, const TranslateCommand& cmd) {
  return AuditEvent{
      .actor = caller,
      .action = action::kTkTranslate,
      .sn = cmd.sn,
      .detail = absl::StrCat("pr=", cmd.pr_index, " pk=", cmd.pk_index, " mak=", cmd.mak_index),
      .request_id = cmd.request_id};
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
                             .action = action::kTkTranslate,
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

}  // namespace rkl::hsm
