// HsmCore's TR-34 commands (hsm_core.h; docs/hsm.md, "TR-34 key tokens"): the KDH signing
// key, two-pass key tokens for KRDs, and the KRD's install proof.
#include "absl/strings/str_cat.h"
#include "hsm_core_internal.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/protocol/sn.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"

namespace rkl::hsm {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

constexpr size_t kMaxNonceSize = 64;
constexpr size_t kMaxCrls = 4;

absl::Status CheckNonceSize(std::span<const uint8_t> nonce) {
  if (nonce.size() < tr34::kMinNonceSize || nonce.size() > kMaxNonceSize) {
    return absl::InvalidArgumentError("krd_nonce: must be 8-64 bytes");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GeneratedRsaKey> HsmCore::GenerateKdhKey(const std::string& caller, uint32_t bits,
                                                        const std::string& label) {
  return GenerateRsaKey(caller, bits, label, KeyUsage::kKdhSign, audit::action::kKdhKeyGenerate);
}

absl::StatusOr<crypto::Certificate> HsmCore::CheckKrdCertificate(const KeyTokenCommand& cmd) const {
  absl::StatusOr<crypto::Certificate> cert = crypto::Certificate::FromDer(cmd.krd_certificate_der);
  if (!cert.ok()) {
    return absl::InvalidArgumentError("krd_certificate_der: not a DER X.509 certificate");
  }
  // A KRD is a KRD because a trusted KRD CA says so: a KDH certificate, or one from any
  // other CA, is refused here whatever its subject.
  absl::Status role = absl::PermissionDeniedError("no KRD CA");
  for (const crypto::Certificate& ca : options_.krd_cas) {
    role = tr34::CheckRole(*cert, tr34::Role::kKrd, ca);
    if (role.ok()) break;
  }
  if (!role.ok()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "krd_certificate: not a KRD certificate of a trusted KRD CA (", role.message(), ")"));
  }
  RKL_ASSIGN_OR_RETURN(std::string named, tr34::SnOfKrdCertificate(*cert));
  if (named != cmd.sn) {
    return absl::PermissionDeniedError(
        absl::StrCat("krd_certificate: names terminal ", named, ", not sn ", cmd.sn));
  }
  return cert;
}

absl::StatusOr<BuiltKeyToken> HsmCore::BuildKeyToken(const std::string& caller,
                                                     const KeyTokenCommand& cmd) {
  AuditEvent event{.actor = caller,
                   .action = audit::action::kTmkBuildKeyToken,
                   .sn = cmd.sn,
                   .detail = absl::StrCat("kdh=", cmd.kdh_key_index,
                                          " replace_existing=", cmd.replace_existing)};
  return RunUnit(
      event, {.kind = UnitKind::kOneWrite, .attempts = 2},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::StatusOr<BuiltKeyToken> {
        RKL_RETURN_IF_ERROR(protocol::ValidateSn(cmd.sn));
        if (!cmd.algorithm) {
          return absl::InvalidArgumentError("algorithm: must be TDES2, AES128 or AES256");
        }
        const KeyAlgorithm algorithm = *cmd.algorithm;
        RKL_ASSIGN_OR_RETURN(std::string header, tr34::TmkHeader(algorithm));
        const std::string name(crypto::KeyAlgorithmName(algorithm));
        absl::StrAppend(&audit.detail, " algorithm=", name);
        RKL_RETURN_IF_ERROR(CheckNonceSize(cmd.krd_nonce));
        if (cmd.crls.size() > kMaxCrls) {
          return absl::InvalidArgumentError("crls: at most 4");
        }
        if (options_.krd_cas.empty()) {
          return absl::FailedPreconditionError("tr34: not configured");
        }
        RKL_ASSIGN_OR_RETURN(crypto::Certificate krd_cert, CheckKrdCertificate(cmd));
        RKL_ASSIGN_OR_RETURN(tr34::CertId krd_cert_id, tr34::CertIdOf(krd_cert));
        const std::string krd_id = tr34::KrdIdOf(krd_cert_id);
        absl::StrAppend(&audit.detail, " krd=", krd_id);

        // The KDH key, and the certificate that names it as the signer: the KRD checks the
        // signature with the certificate's key, so they must be one key pair.
        const uint64_t kdh_index[] = {cmd.kdh_key_index};
        const KeyType tmk_type[] = {KeyType::kTmk};
        RKL_RETURN_IF_ERROR(tx.PrefetchWithLive(kdh_index, tmk_type, cmd.sn));
        RKL_ASSIGN_OR_RETURN(KeyRecord kdh_record, UsableKey(tx, cmd.kdh_key_index, "kdh_key_index",
                                                             KeyUsage::kKdhSign, nullptr));
        absl::StatusOr<crypto::Certificate> kdh_cert =
            crypto::Certificate::FromDer(cmd.kdh_certificate_der);
        if (!kdh_cert.ok()) {
          return absl::InvalidArgumentError("kdh_certificate_der: not a DER X.509 certificate");
        }
        RKL_ASSIGN_OR_RETURN(auto kdh_key, UnsealRsa(tx, kdh_record));
        absl::StatusOr<crypto::PublicKey> certified = kdh_cert->GetPublicKey();
        if (!certified.ok() || certified->ToDer() != kdh_key->GetPublicKey().ToDer()) {
          return absl::InvalidArgumentError(
              "kdh_certificate: does not hold the key at kdh_key_index");
        }
        RKL_ASSIGN_OR_RETURN(tr34::CertId kdh_id, tr34::CertIdOf(*kdh_cert));

        // The SN's TMK. One bound to this KRD goes out again; one bound to another KRD, or
        // to a TEK (the patent's flow), never goes into a token for this KRD: it is replaced
        // only on request (re-key), never silently.
        RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> live, tx.FindLiveKeys(KeyType::kTmk, cmd.sn));
        const int64_t now = NowUnixMs(clock_);
        BuiltKeyToken out{.krd_id = krd_id};
        std::optional<SecretBytes> tmk;
        if (!live.empty() && !cmd.replace_existing) {
          const KeyRecord& existing = live.front();
          if (existing.bound_krd != krd_id) {
            return absl::PermissionDeniedError(absl::StrCat(
                "tmk: bound to another KRD (the live TMK ", existing.index, " of ", cmd.sn,
                existing.bound_krd.empty() ? " is bound to a TEK" : " is bound to KRD ",
                existing.bound_krd, "); set replace_existing to re-key"));
          }
          if (existing.algorithm != crypto::KeyAlgorithmCode(algorithm)) {
            return absl::FailedPreconditionError(absl::StrCat("sn: the live TMK of ", cmd.sn,
                                                              " is not ", name,
                                                              "; set replace_existing to re-key"));
          }
          RKL_ASSIGN_OR_RETURN(tmk, tx.Unseal(existing));
          out.tmk_index = existing.index;
          out.tmk_kcv = existing.kcv;
          absl::StrAppend(&audit.detail, " tmk=", existing.index, " kcv=", existing.kcv,
                          " (existing)");
        } else {
          for (const KeyRecord& old : live) {
            RKL_RETURN_IF_ERROR(tx.SetKeyState(old.index, KeyState::kSuperseded, now));
            absl::StrAppend(&audit.detail, " superseded=", old.index);
          }
          tmk = NewSymmetricKey(algorithm);
          RKL_ASSIGN_OR_RETURN(out.tmk_kcv, crypto::KcvHex(algorithm, *tmk));
          RKL_ASSIGN_OR_RETURN(KeyRecord record,
                               tx.InsertKey(NewKey{.type = KeyType::kTmk,
                                                   .algorithm = crypto::KeyAlgorithmCode(algorithm),
                                                   .usage = KeyUsage::kTerminalMaster,
                                                   .bound_sn = cmd.sn,
                                                   .label = "tmk:" + cmd.sn,
                                                   .kcv = out.tmk_kcv,
                                                   .bound_krd = krd_id,
                                                   .material = *tmk},
                                            now));
          out.tmk_index = record.index;
          out.created = true;
          absl::StrAppend(&audit.detail, " tmk=", record.index, " kcv=", out.tmk_kcv,
                          " bound_to_krd=", krd_id);
        }

        RKL_ASSIGN_OR_RETURN(crypto::PublicKey krd_key, krd_cert.GetPublicKey());
        tr34::KeyTokenRequest request{
            .kdh_id = std::move(kdh_id),
            .kdh_key = kdh_key.get(),
            .krd = tr34::PeerKey{.id = std::move(krd_cert_id), .key = std::move(krd_key)},
            .tmk_family = crypto::FamilyOf(algorithm),
            .tmk = &*tmk,
            .header = std::move(header),
            .krd_nonce = cmd.krd_nonce,
            .signing_time = std::nullopt,
            .crls = cmd.crls,
        };
        RKL_ASSIGN_OR_RETURN(out.key_token, tr34::BuildKeyToken(request));
        return out;
      });
}

absl::Status HsmCore::VerifyKeyTokenInstallProof(const std::string& caller,
                                                 const KeyTokenProofCommand& cmd) {
  AuditEvent event{.actor = caller,
                   .action = audit::action::kInstallVerifyKeyTokenProof,
                   .sn = cmd.sn,
                   .detail = absl::StrCat("tmk=", cmd.tmk_index)};
  return RunUnit(
      event, {.kind = UnitKind::kReadOnly},
      [&](KeyTransaction& tx, AuditEvent& audit) -> absl::Status {
        RKL_RETURN_IF_ERROR(protocol::ValidateSn(cmd.sn));
        RKL_RETURN_IF_ERROR(CheckNonceSize(cmd.krd_nonce));
        RKL_ASSIGN_OR_RETURN(KeyRecord record, UsableKey(tx, cmd.tmk_index, "tmk_index",
                                                         KeyUsage::kTerminalMaster, &cmd.sn));
        if (record.bound_krd.empty()) {
          return absl::PermissionDeniedError(absl::StrCat("tmk_index: TMK ", cmd.tmk_index,
                                                          " is bound to no KRD (not a TR-34 TMK)"));
        }
        absl::StrAppend(&audit.detail, " krd=", record.bound_krd, " kcv=", record.kcv);
        absl::StatusOr<KeyAlgorithm> algorithm = crypto::KeyAlgorithmFromCode(record.algorithm);
        if (!algorithm.ok()) {
          return absl::InternalError(
              absl::StrCat("key record ", record.index, " has no terminal algorithm"));
        }
        RKL_ASSIGN_OR_RETURN(SecretBytes tmk, tx.Unseal(record));
        // One answer for every mismatch (SN, nonce, TMK, proof bytes): the caller learns
        // nothing about which part was wrong.
        if (!tr34::VerifyInstallProof(*algorithm, tmk, cmd.sn, cmd.krd_nonce, cmd.proof)) {
          return absl::UnauthenticatedError("proof: does not verify");
        }
        return absl::OkStatus();
      });
}

}  // namespace rkl::hsm
