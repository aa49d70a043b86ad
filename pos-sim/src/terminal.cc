#include "terminal.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "rkl/common/retry_delay.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_verify.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/sn.h"
#include "rkl/protocol/transport_key.h"

namespace rkl::pos {
namespace {

using crypto::Certificate;
using crypto::KeyUsage;
using crypto::SecretBytes;

constexpr int kMinWorkKeyBits = 2048;

// Keeps the code of `status` and prefixes its message with what the terminal was doing.
absl::Status Annotate(const absl::Status& status, std::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(std::string(prefix), status.message()));
}

bool Retryable(const absl::Status& status) {
  // NOT_FOUND: MTMS has not forwarded the TK yet. UNAVAILABLE: safe to retry (§10).
  // RESOURCE_EXHAUSTED with a retry hint: over a rate limit, wait at least the hint.
  return status.code() == absl::StatusCode::kNotFound ||
         status.code() == absl::StatusCode::kUnavailable ||
         (status.code() == absl::StatusCode::kResourceExhausted && RetryDelay(status));
}

// The confirmation may have been accepted even though no answer came (a lost reply, or
// UNKNOWN from a write that may have committed): the same call is repeated, and KMS answers
// a repeat of a proof it accepted with INSTALLED (docs/kms.md "Retries").
bool ConfirmationOutcomeOpen(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded ||
         status.code() == absl::StatusCode::kUnknown || status.code() == absl::StatusCode::kAborted;
}

// The patent's steps have nothing to do on a TR-34 terminal (it has no HsmRCRT, TEK or AUK).
absl::Status RequirePatent(const SecureModuleState& s) {
  if (s.protocol != Protocol::kPatent) {
    return absl::FailedPreconditionError(absl::StrCat(
        "protocol: terminal ", s.sn,
        " is a TR-34 KRD; it loads its TMK with `rkl-pos provision` (TR-34 two-pass)"));
  }
  return absl::OkStatus();
}

}  // namespace

void SleepFor(absl::Duration d) { std::this_thread::sleep_for(absl::ToChronoNanoseconds(d)); }

absl::Status CheckWorkCertificate(const Certificate& work_certificate,
                                  const Certificate& terminal_root, int64_t at_unix_seconds) {
  const Certificate roots[] = {terminal_root};
  absl::Status chain = crypto::VerifyChain(work_certificate, {}, roots, {}, at_unix_seconds);
  if (!chain.ok()) {
    if (chain.code() == absl::StatusCode::kFailedPrecondition) {
      return absl::FailedPreconditionError(
          absl::StrCat("work_certificate: not usable now (", chain.message(),
                       "); the terminal accepts only a work certificate within its validity"));
    }
    return absl::UnauthenticatedError(
        absl::StrCat("work_certificate: does not chain to the burned-in terminal root "
                     "(HsmRCRT) (",
                     chain.message(), ")"));
  }
  if (!work_certificate.HasKeyUsage() || !work_certificate.KeyUsageCritical() ||
      work_certificate.KeyUsageBits() != KeyUsage::kKeyEncipherment) {
    return absl::PermissionDeniedError(
        "work_certificate: keyUsage must be exactly keyEncipherment and critical");
  }
  if (work_certificate.IsCa()) {
    return absl::PermissionDeniedError("work_certificate: must not be a CA certificate");
  }
  auto key = work_certificate.GetPublicKey();
  if (!key.ok() || key->Type() != crypto::KeyType::kRsa || key->Bits() < kMinWorkKeyBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "work_certificate: must hold an RSA key of at least ", kMinWorkKeyBits, " bits"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Terminal> Terminal::Manufacture(const std::string& state_dir, const std::string& sn,
                                               crypto::KeyAlgorithm algorithm,
                                               const Certificate& terminal_root, Clock clock) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  if (!terminal_root.IsSelfSigned() || !terminal_root.IsCa()) {
    return absl::InvalidArgumentError(
        "terminal_root: must be the self-signed terminal-root CA certificate (HsmRCRT)");
  }
  SecureModuleState state;
  state.sn = sn;
  state.algorithm = algorithm;
  state.lifecycle = Lifecycle::kManufactured;
  state.terminal_root_der = terminal_root.ToDer();
  state.manufactured_at_unix_ms = absl::ToUnixMillis(clock());
  RKL_ASSIGN_OR_RETURN(SecureModule module, SecureModule::Create(state_dir, state));
  module.RememberTerminalRoot(terminal_root);
  return Terminal(std::move(module), std::move(clock));
}

absl::StatusOr<Terminal> Terminal::Load(const std::string& state_dir, const std::string& sn,
                                        Clock clock) {
  RKL_ASSIGN_OR_RETURN(SecureModule module, SecureModule::Open(state_dir, sn));
  return Terminal(std::move(module), std::move(clock));
}

int64_t Terminal::NowUnixMs() const { return absl::ToUnixMillis(clock_()); }

absl::Status Terminal::InstallWorkCertificatePem(const std::string& work_certificate_pem) {
  auto cert = Certificate::FromPem(work_certificate_pem);
  if (!cert.ok()) return Annotate(cert.status(), "work_certificate: not a certificate: ");
  return InstallWorkCertificate(*cert);
}

absl::Status Terminal::InstallWorkCertificate(const Certificate& work_certificate) {
  const SecureModuleState& current = module_.state();
  RKL_RETURN_IF_ERROR(RequirePatent(current));
  if (current.lifecycle == Lifecycle::kTkSubmitted || current.lifecycle == Lifecycle::kTmkLoaded) {
    return absl::FailedPreconditionError(absl::StrCat(
        "terminal: a transport key is in flight (", std::string(LifecycleName(current.lifecycle)),
        "); download the TMK before installing another work certificate"));
  }
  RKL_ASSIGN_OR_RETURN(Certificate root, module_.TerminalRoot());
  RKL_RETURN_IF_ERROR(CheckWorkCertificate(work_certificate, root, NowUnixMs() / 1000));

  SecureModuleState next = current;
  next.work_certificate_der = work_certificate.ToDer();
  // A TK made under a previous Pu is discarded: it was never sent.
  if (next.lifecycle == Lifecycle::kTkGenerated) {
    next.tek = SecretBytes();
    next.auk = SecretBytes();
    next.ctk_pu.clear();
  }
  if (next.lifecycle != Lifecycle::kInstalled) next.lifecycle = Lifecycle::kCertInstalled;
  RKL_RETURN_IF_ERROR(module_.Commit(std::move(next)));
  module_.RememberWorkCertificate(work_certificate);
  return absl::OkStatus();
}

absl::Status Terminal::GenerateTransportKey() {
  const SecureModuleState& current = module_.state();
  RKL_RETURN_IF_ERROR(RequirePatent(current));
  if (current.work_certificate_der.empty()) {
    return absl::FailedPreconditionError(
        "terminal: no work certificate installed; run install-cert first");
  }
  if (current.lifecycle == Lifecycle::kTmkLoaded) {
    return absl::FailedPreconditionError(
        "terminal: a TMK awaits confirmation; run download-tmk to finish it first");
  }
  RKL_ASSIGN_OR_RETURN(Certificate work, module_.WorkCertificate());
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey pu, work.GetPublicKey());

  protocol::TransportKey tk{current.algorithm, crypto::GenerateKey(current.algorithm),
                            crypto::GenerateKey(current.algorithm)};
  RKL_ASSIGN_OR_RETURN(SecretBytes payload, protocol::EncodeTkPayload(tk));
  RKL_ASSIGN_OR_RETURN(Bytes ctk_pu,
                       crypto::RsaOaepEncrypt(pu, payload, protocol::OaepLabel(current.sn)));

  SecureModuleState next = current;
  next.tek = std::move(tk.tek);
  next.auk = std::move(tk.auk);
  next.ctk_pu = std::move(ctk_pu);
  next.submission_id.clear();
  // An installed terminal keeps its TMK until a new one arrives (re-key).
  if (next.lifecycle != Lifecycle::kInstalled) next.lifecycle = Lifecycle::kTkGenerated;
  return module_.Commit(std::move(next));
}

absl::StatusOr<TransportKeyOffer> Terminal::OfferTransportKey() const {
  const SecureModuleState& s = module_.state();
  if (s.ctk_pu.empty()) {
    return absl::FailedPreconditionError(
        "terminal: no transport key generated; run generate-tk first");
  }
  RKL_ASSIGN_OR_RETURN(Certificate work, module_.WorkCertificate());
  return TransportKeyOffer{s.sn, s.ctk_pu, work.SerialHex(), s.algorithm};
}

absl::Status Terminal::MarkSubmitted(const std::string& submission_id) {
  SecureModuleState next = module_.state();
  next.submission_id = submission_id;
  if (next.lifecycle == Lifecycle::kTkGenerated) next.lifecycle = Lifecycle::kTkSubmitted;
  return module_.Commit(std::move(next));
}

absl::StatusOr<DownloadResult> Terminal::DownloadTmk(KmsTerminalPort& kms,
                                                     const ForwardingWait& wait,
                                                     const Sleeper& sleep) {
  const SecureModuleState& current = module_.state();
  RKL_RETURN_IF_ERROR(RequirePatent(current));
  if (current.tek.empty() || current.auk.empty() || current.ctk_pu.empty()) {
    return absl::FailedPreconditionError(
        "terminal: no transport key; run generate-tk and submit first");
  }
  const crypto::KeyAlgorithm algorithm = current.algorithm;
  const std::string sn = current.sn;
  // TMK_LOADED: the TMK is stored but KMS's acceptance of its proof never arrived. The
  // terminal authenticates again, takes delivery of the same TMK and confirms it.
  const bool resuming = current.lifecycle == Lifecycle::kTmkLoaded;
  RKL_ASSIGN_OR_RETURN(protocol::AuthKeys keys,
                       protocol::DeriveAuthKeys(algorithm, current.auk, sn));

  // S401: Rnd1. Until MTMS has forwarded SN + Ctk_pk, KMS does not know the terminal.
  DownloadResult result;
  const absl::Time start = clock_();
  const absl::Time deadline = start + wait.timeout;
  absl::Duration backoff = wait.initial_backoff;
  Bytes rnd1;
  absl::StatusOr<AuthChallenge> challenge;
  for (;;) {
    rnd1 = crypto::RandomBytes(crypto::BlockSize(algorithm));
    ++result.begin_attempts;
    // KMS holds the call until the TK arrives, for what is left of the timeout at most.
    challenge = kms.BeginAuthentication(
        sn, rnd1, std::clamp(deadline - clock_(), absl::ZeroDuration(), wait.begin_wait));
    if (challenge.ok() || !Retryable(challenge.status())) break;
    const absl::Time now = clock_();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          kForwardingTimeoutMessagePrefix, " after waiting ", absl::FormatDuration(wait.timeout),
          " for MTMS to forward its transport key (last: ",
          absl::StatusCodeToString(challenge.status().code()), ": ", challenge.status().message(),
          ")"));
    }
    sleep(std::min(std::max(backoff, RetryDelay(challenge.status()).value_or(absl::ZeroDuration())),
                   deadline - now));
    backoff = std::min(backoff * 2, wait.max_backoff);
  }
  if (!challenge.ok()) return Annotate(challenge.status(), "kms: BeginAuthentication: ");
  result.waited_for_forwarding = clock_() - start;

  // S402–S403: KMS must prove AUK before the terminal says anything that depends on it.
  RKL_RETURN_IF_ERROR(Annotate(protocol::CheckNonce(algorithm, challenge->rnd2, "rnd2"), "kms: "));
  if (absl::Status proved = protocol::VerifyCrnd1(keys, rnd1, challenge->rnd2, challenge->crnd1);
      !proved.ok()) {
    return absl::UnauthenticatedError(
        "kms: could not prove AUK (crnd1 does not verify); the terminal aborted the "
        "download and its secure module is unchanged");
  }
  RKL_ASSIGN_OR_RETURN(Bytes crnd2, protocol::MakeCrnd2(keys, rnd1, challenge->rnd2));

  // S404–S405, S112: the TMK under TEK.
  auto delivery = kms.CompleteAuthentication(challenge->session_id, sn, crnd2);
  if (!delivery.ok()) return Annotate(delivery.status(), "kms: CompleteAuthentication: ");
  auto tmk = keyblock::ParseTmkBlock(current.tek, algorithm, delivery->key_block);
  if (!tmk.ok()) {
    return Annotate(tmk.status(), "key_block: refused, secure module unchanged: ");
  }
  if (tmk->tmk_algorithm != algorithm) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_block: refused, secure module unchanged: TMK algorithm ",
        std::string(crypto::KeyAlgorithmName(tmk->tmk_algorithm)), " differs from the terminal's ",
        std::string(crypto::KeyAlgorithmName(algorithm))));
  }
  if (!delivery->tmk_kcv.empty() && delivery->tmk_kcv != tmk->tmk_kcv) {
    return absl::InvalidArgumentError(
        "tmk_kcv: refused, secure module unchanged: the KCV KMS sent does not match the "
        "key block's KC block");
  }

  // S113: store the TMK, then prove it to KMS.
  if (resuming) {
    // Only the TMK this terminal already holds can finish the job: anything else means KMS
    // and the terminal disagree, and the stored TMK is kept.
    if (!(tmk->tmk == current.tmk)) {
      return absl::FailedPreconditionError(
          "key_block: refused, secure module unchanged: KMS delivered another TMK than the one "
          "awaiting confirmation");
    }
  } else {
    SecureModuleState loaded = current;
    loaded.tmk = std::move(tmk->tmk);
    loaded.lifecycle = Lifecycle::kTmkLoaded;
    RKL_RETURN_IF_ERROR(module_.Commit(std::move(loaded)));
  }

  RKL_ASSIGN_OR_RETURN(Bytes kcv, FromHex(tmk->tmk_kcv, "tmk_kcv"));
  RKL_ASSIGN_OR_RETURN(Bytes proof,
                       protocol::MakeInstallProof(keys, sn, kcv, rnd1, challenge->rnd2));
  absl::StatusOr<std::string> confirmed;
  absl::Duration pause = wait.initial_backoff;
  for (;;) {
    ++result.confirm_attempts;
    confirmed = kms.ConfirmInstallation(challenge->session_id, sn, proof);
    if (confirmed.ok() || !ConfirmationOutcomeOpen(confirmed.status()) ||
        result.confirm_attempts >= kConfirmAttempts) {
      break;
    }
    sleep(pause);
    pause = std::min(pause * 2, wait.max_backoff);
  }
  // TMK_LOADED stays: running download-tmk again finishes it.
  if (!confirmed.ok()) return Annotate(confirmed.status(), "kms: ConfirmInstallation: ");

  SecureModuleState installed = module_.state();
  installed.lifecycle = Lifecycle::kInstalled;
  installed.installed_at_unix_ms = NowUnixMs();
  RKL_RETURN_IF_ERROR(module_.Commit(std::move(installed)));

  result.tmk_kcv = tmk->tmk_kcv;
  result.kms_state = *confirmed;
  return result;
}

}  // namespace rkl::pos
