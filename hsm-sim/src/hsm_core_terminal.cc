// HsmCore's terminal-key commands (hsm_core.h): TMK, authentication and delivery
// (PROTOCOL §7, §8), the composite commands KMS calls, and revocation.
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "hsm_core_internal.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/sn.h"

namespace rkl::hsm {

namespace action = audit::action;
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

std::string AlgorithmName(uint8_t code) {
  auto a = crypto::KeyAlgorithmFromCode(code);
  return a.ok() ? std::string(crypto::KeyAlgorithmName(*a)) : "none";
}

absl::StatusOr<KeyAlgorithm> TerminalAlgorithm(const KeyRecord& record) {
  auto a = crypto::KeyAlgorithmFromCode(record.algorithm);
  if (!a.ok()) {
    return absl::InternalError(
        absl::StrCat("key record ", record.index, " has no terminal algorithm"));
  }
  return *a;
}

}  // namespace

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
                   .action = action::kAuthChallenge,
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
                   .action = action::kTkImportAndChallenge,
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
                   .action = action::kTmkAuthenticateAndDeliver,
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
                   .action = action::kInstallVerifyProof,
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
  AuditEvent event{.actor = caller, .action = action::kTerminalKeysDestroy, .sn = sn};
  return RunUnit(
      event, {.uses_crypto = false},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<std::vector<uint64_t>> {
        RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
        RKL_RETURN_IF_ERROR(audit::CheckAuditReason(reason));
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

}  // namespace rkl::hsm
