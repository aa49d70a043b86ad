// The TR-34 side of Terminal (terminal.h): a KRD doing the two-pass exchange with KMS, the
// KDH (docs/tr34.md). Every check runs before the secure module changes; a refusal names
// the rule and leaves the state file byte-identical.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/protocol/sn.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"
#include "terminal.h"

namespace rkl::pos {
namespace {

using crypto::Certificate;
using crypto::SecretBytes;

constexpr char kRefused[] = "key_token: refused, secure module unchanged: ";

absl::Status Annotate(const absl::Status& status, std::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(std::string(prefix), status.message()));
}

bool ConfirmationOutcomeOpen(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded ||
         status.code() == absl::StatusCode::kUnknown || status.code() == absl::StatusCode::kAborted;
}

absl::Status RequireTr34(const SecureModuleState& s) {
  if (s.protocol != Protocol::kTr34) {
    return absl::FailedPreconditionError(
        absl::StrCat("protocol: terminal ", s.sn,
                     " was manufactured for the patent flow; it has no KRD key for TR-34"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SecretBytes> ReceiveTmkFromKeyToken(
    std::span<const uint8_t> key_token, const tr34::PeerKey& kdh, std::span<const uint8_t> nonce,
    const tr34::CertId& own_id, const crypto::PrivateKey& own_key, crypto::KeyAlgorithm algorithm,
    const std::string& tmk_kcv,
    const std::function<absl::Status(std::span<const Bytes> crls)>& check_crls) {
  auto block = tr34::ReceiveTwoPassKeyToken(key_token, kdh, nonce, own_id, own_key);
  if (!block.ok()) return Annotate(block.status(), kRefused);
  auto parsed = tr34::ParseKeyToken(key_token);
  if (!parsed.ok()) return Annotate(parsed.status(), kRefused);
  if (absl::Status crl = check_crls(parsed->crls); !crl.ok()) {
    return Annotate(crl, absl::StrCat(kRefused,
                                      "the KDH must not be revoked (a current kdh-ca "
                                      "CRL must come with the key token): "));
  }
  RKL_ASSIGN_OR_RETURN(std::string header, tr34::TmkHeader(algorithm));
  const std::string alg(crypto::KeyAlgorithmName(algorithm));
  if (block->header != header) {
    return absl::InvalidArgumentError(absl::StrCat(kRefused, "key block header \"", block->header,
                                                   "\" is not the TMK header \"", header,
                                                   "\" of a ", alg, " terminal"));
  }
  if (block->key.size() != crypto::KeyLength(algorithm)) {
    return absl::InvalidArgumentError(absl::StrCat(kRefused, "the TMK is ", block->key.size(),
                                                   " bytes; a ", alg, " TMK is ",
                                                   crypto::KeyLength(algorithm)));
  }
  RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(algorithm, block->key));
  if (kcv != tmk_kcv) {
    return absl::InvalidArgumentError(absl::StrCat(
        kRefused, "tmk_kcv: the KCV KMS sent does not match the TMK in the key token"));
  }
  return std::move(block->key);
}

absl::StatusOr<Terminal> Terminal::ManufactureTr34(const std::string& state_dir,
                                                   const std::string& sn,
                                                   crypto::KeyAlgorithm algorithm,
                                                   const KrdFactory& factory, Clock clock) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(tr34::TmkHeader(algorithm).status());
  if (factory.kdh_ca == nullptr || factory.krd_ca == nullptr) {
    return absl::InvalidArgumentError(
        "tr34: manufacture needs the kdh-ca certificate and the "
        "KRD CA card");
  }
  if (!factory.kdh_ca->IsCa()) {
    return absl::InvalidArgumentError(
        "kdh_ca: must be the kdh-ca CA certificate (the KDH trust anchor)");
  }
  const int64_t now = absl::ToUnixSeconds(clock());
  // Inside the secure module: the device key pair. Only its public half leaves, to be
  // certified by the factory's KRD CA.
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey device_key, crypto::GenerateRsaKey(kKrdDeviceKeyBits));
  RKL_ASSIGN_OR_RETURN(Certificate krd_cert,
                       IssueKrdCertificate(*factory.krd_ca, sn, device_key.GetPublicKey(), now));
  SecureModuleState state;
  state.sn = sn;
  state.algorithm = algorithm;
  state.protocol = Protocol::kTr34;
  state.lifecycle = Lifecycle::kManufactured;
  state.kdh_ca_der = factory.kdh_ca->ToDer();
  state.krd_certificate_der = krd_cert.ToDer();
  RKL_ASSIGN_OR_RETURN(state.krd_private_key, device_key.ExportPkcs8DerSecret());
  state.manufactured_at_unix_ms = absl::ToUnixMillis(clock());
  RKL_ASSIGN_OR_RETURN(SecureModule module, SecureModule::Create(state_dir, state));
  return Terminal(std::move(module), std::move(clock));
}

absl::StatusOr<Bytes> Terminal::KrdCredentialToken() const {
  RKL_RETURN_IF_ERROR(RequireTr34(module_.state()));
  RKL_ASSIGN_OR_RETURN(Certificate krd, Certificate::FromDer(module_.state().krd_certificate_der));
  const Certificate certs[] = {krd};
  return tr34::BuildCredentialToken(certs);
}

absl::Status Terminal::BindKdh(const Bytes& ct_kdh) {
  const SecureModuleState& current = module_.state();
  RKL_RETURN_IF_ERROR(RequireTr34(current));
  constexpr char kPrefix[] = "ct_kdh: refused, secure module unchanged: ";
  auto credential = tr34::ParseCredentialToken(ct_kdh);
  if (!credential.ok()) return Annotate(credential.status(), kPrefix);
  if (credential->certificates.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kPrefix, "CT_KDH must carry exactly one certificate (the KDH's), it carries ",
                     credential->certificates.size()));
  }
  const Certificate& kdh = credential->certificates[0];
  RKL_ASSIGN_OR_RETURN(Certificate kdh_ca, Certificate::FromDer(current.kdh_ca_der));
  if (absl::Status role = tr34::CheckRole(kdh, tr34::Role::kKdh, kdh_ca); !role.ok()) {
    return Annotate(role, absl::StrCat(kPrefix,
                                       "the KDH certificate must be issued for role KDH "
                                       "by the burned-in kdh-ca: "));
  }
  const int64_t now = NowUnixMs() / 1000;
  if (now < kdh.NotBefore() || now > kdh.NotAfter()) {
    return absl::FailedPreconditionError(
        absl::StrCat(kPrefix, "the KDH certificate is not within its validity now"));
  }
  if (absl::Status crl = tr34::CheckKdhNotRevoked(kdh, credential->crls, kdh_ca, now); !crl.ok()) {
    return Annotate(crl, absl::StrCat(kPrefix,
                                      "the KDH must not be revoked (a current kdh-ca "
                                      "CRL must come with CT_KDH): "));
  }
  const Bytes der = kdh.ToDer();
  if (!current.kdh_certificate_der.empty()) {
    if (current.kdh_certificate_der != der) {
      return absl::FailedPreconditionError(absl::StrCat(
          kPrefix, "terminal ", current.sn, " is bound to another KDH; KMS offered ",
          kdh.SubjectCommonName(), " #", kdh.SerialHex(),
          ". Rebinding a KRD to a new KDH (TR-34 rebind tokens) is out of rkl-pos's scope"));
    }
    return absl::OkStatus();  // the same KDH: nothing to change
  }
  SecureModuleState next = current;
  next.kdh_certificate_der = der;
  if (next.lifecycle == Lifecycle::kManufactured) next.lifecycle = Lifecycle::kKdhBound;
  return module_.Commit(std::move(next));
}

absl::StatusOr<KeyTokenRequestParts> Terminal::PrepareKeyTokenRequest() {
  const SecureModuleState& current = module_.state();
  RKL_RETURN_IF_ERROR(RequireTr34(current));
  if (current.kdh_certificate_der.empty()) {
    return absl::FailedPreconditionError(
        "terminal: no KDH bound; a key token is requested only after CT_KDH was accepted");
  }
  if (current.lifecycle == Lifecycle::kInstalled) {
    return absl::FailedPreconditionError(
        absl::StrCat("terminal: ", current.sn,
                     " is already INSTALLED (TR-34 re-key is out of "
                     "rkl-pos's scope)"));
  }
  KeyTokenRequestParts parts;
  RKL_ASSIGN_OR_RETURN(parts.ct_krd, KrdCredentialToken());
  Bytes nonce = crypto::RandomBytes(kKrdNonceSize);
  RKL_ASSIGN_OR_RETURN(parts.rt_krd, tr34::BuildRandomNumberToken(nonce));
  // Persisted before it leaves: the only token the terminal will take is one for this number.
  SecureModuleState next = current;
  next.pending_nonce = std::move(nonce);
  if (next.lifecycle == Lifecycle::kKdhBound) next.lifecycle = Lifecycle::kTokenRequested;
  RKL_RETURN_IF_ERROR(module_.Commit(std::move(next)));
  return parts;
}

absl::Status Terminal::AcceptKeyToken(const Bytes& key_token, const std::string& tmk_kcv) {
  const SecureModuleState& current = module_.state();
  RKL_RETURN_IF_ERROR(RequireTr34(current));
  if (current.pending_nonce.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(kRefused,
                     "no random number is pending; a key token is accepted only once, in answer "
                     "to this terminal's own RT_KRD"));
  }
  if (current.kdh_certificate_der.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(kRefused, "no KDH bound"));
  }
  RKL_ASSIGN_OR_RETURN(Certificate kdh_ca, Certificate::FromDer(current.kdh_ca_der));
  RKL_ASSIGN_OR_RETURN(Certificate kdh_cert, Certificate::FromDer(current.kdh_certificate_der));
  RKL_ASSIGN_OR_RETURN(Certificate krd_cert, Certificate::FromDer(current.krd_certificate_der));
  auto kdh = tr34::PeerFromCertificate(kdh_cert, tr34::Role::kKdh, kdh_ca);
  if (!kdh.ok()) return Annotate(kdh.status(), kRefused);
  RKL_ASSIGN_OR_RETURN(tr34::CertId own_id, tr34::CertIdOf(krd_cert));
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey own_key,
                       crypto::PrivateKey::FromPkcs8DerSecret(current.krd_private_key));

  auto check_crls = [&](std::span<const Bytes> crls) {
    return tr34::CheckKdhNotRevoked(kdh_cert, crls, kdh_ca, NowUnixMs() / 1000);
  };
  RKL_ASSIGN_OR_RETURN(SecretBytes tmk,
                       ReceiveTmkFromKeyToken(key_token, *kdh, current.pending_nonce, own_id,
                                              own_key, current.algorithm, tmk_kcv, check_crls));
  if (!current.tmk.empty() && !(tmk == current.tmk)) {
    return absl::FailedPreconditionError(
        absl::StrCat(kRefused, "KMS delivered another TMK than the one awaiting confirmation"));
  }
  SecureModuleState next = current;
  next.tmk = std::move(tmk);
  next.accepted_nonce = current.pending_nonce;
  next.pending_nonce.clear();  // this token, or any other for that number, never again
  next.lifecycle = Lifecycle::kTmkLoaded;
  return module_.Commit(std::move(next));
}

absl::StatusOr<DownloadResult> Terminal::LoadTmkTr34(KmsTr34Port& kms, const ForwardingWait& wait,
                                                     const Sleeper& sleep) {
  RKL_RETURN_IF_ERROR(RequireTr34(module_.state()));
  const std::string sn = module_.state().sn;
  const crypto::KeyAlgorithm algorithm = module_.state().algorithm;
  if (module_.state().lifecycle == Lifecycle::kInstalled) {
    return absl::FailedPreconditionError(absl::StrCat("terminal: ", sn, " is already INSTALLED"));
  }
  DownloadResult result;
  // ConfirmKeyToken with the proof of the TMK held, repeated while no answer says how the
  // call ended (kConfirmAttempts in all).
  auto confirm = [&]() -> absl::StatusOr<std::string> {
    const SecureModuleState& loaded = module_.state();
    RKL_ASSIGN_OR_RETURN(Bytes proof,
                         tr34::InstallProof(algorithm, loaded.tmk, sn, loaded.accepted_nonce));
    absl::StatusOr<std::string> confirmed;
    absl::Duration pause = wait.initial_backoff;
    for (int attempt = 1;; ++attempt) {
      ++result.confirm_attempts;
      confirmed = kms.ConfirmKeyToken(sn, proof);
      if (confirmed.ok() || !ConfirmationOutcomeOpen(confirmed.status()) ||
          attempt >= kConfirmAttempts) {
        return confirmed;
      }
      sleep(pause);
      pause = std::min(pause * 2, wait.max_backoff);
    }
  };
  auto install = [&](const std::string& kms_state) -> absl::StatusOr<DownloadResult> {
    SecureModuleState installed = module_.state();
    installed.lifecycle = Lifecycle::kInstalled;
    installed.installed_at_unix_ms = NowUnixMs();
    RKL_RETURN_IF_ERROR(module_.Commit(std::move(installed)));
    RKL_ASSIGN_OR_RETURN(result.tmk_kcv, crypto::KcvHex(algorithm, module_.state().tmk));
    result.kms_state = kms_state;
    return result;
  };

  // TMK_LOADED: the TMK is held but KMS's answer to its proof never came. The same proof
  // again: KMS answers INSTALLED whether or not it had accepted it (a repeat of an accepted
  // proof answers INSTALLED; KMS refuses a new key token to an INSTALLED terminal). Only if
  // KMS refuses the proof outright does the terminal ask for a token again, and then accepts
  // only the TMK it holds.
  if (module_.state().lifecycle == Lifecycle::kTmkLoaded) {
    absl::StatusOr<std::string> confirmed = confirm();
    if (confirmed.ok()) return install(*confirmed);
    if (ConfirmationOutcomeOpen(confirmed.status())) {
      return Annotate(confirmed.status(), "kms: ConfirmKeyToken: ");
    }
  }

  auto ct_kdh = kms.GetKdhCredential(sn);
  if (!ct_kdh.ok()) return Annotate(ct_kdh.status(), "kms: GetKdhCredential: ");
  RKL_RETURN_IF_ERROR(BindKdh(*ct_kdh));

  RKL_ASSIGN_OR_RETURN(KeyTokenRequestParts parts, PrepareKeyTokenRequest());
  ++result.begin_attempts;
  auto delivery = kms.RequestKeyToken(sn, parts.ct_krd, parts.rt_krd, algorithm);
  if (!delivery.ok()) return Annotate(delivery.status(), "kms: RequestKeyToken: ");
  RKL_RETURN_IF_ERROR(AcceptKeyToken(delivery->key_token, delivery->tmk_kcv));

  absl::StatusOr<std::string> confirmed = confirm();
  // TMK_LOADED stays: running provision again confirms it.
  if (!confirmed.ok()) return Annotate(confirmed.status(), "kms: ConfirmKeyToken: ");
  return install(*confirmed);
}

}  // namespace rkl::pos
