#include "provision.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "files.h"
#include "rkl/common/request_id.h"
#include "rkl/common/retry_delay.h"
#include "rkl/common/status_macros.h"
#include "rkl/rpc/call_context.h"
#include "secure_module.h"
#include "spdlog/spdlog.h"

namespace rkl::pos {

absl::StatusOr<Protocol> ProtocolFor(const ProvisionContext& context, const std::string& sn) {
  if (!PathExists(TerminalDirectory(context.state_dir, sn))) return context.protocol;
  RKL_ASSIGN_OR_RETURN(SecureModule module, SecureModule::Open(context.state_dir, sn));
  const Protocol made_for = module.state().protocol;
  if (made_for == Protocol::kPatent && context.protocol_explicit &&
      context.protocol == Protocol::kTr34) {
    return absl::FailedPreconditionError(
        absl::StrCat("protocol: terminal ", sn,
                     " was manufactured for the patent flow and has no KRD key; --protocol tr34 "
                     "applies to new terminals only"));
  }
  return made_for;
}

namespace {

absl::StatusOr<ProvisionResult> ProvisionTr34(const ProvisionContext& context,
                                              const std::string& sn, StepRecorder& steps) {
  if (context.kms_tr34 == nullptr) {
    return absl::InvalidArgumentError("provision: a KMS connection is required");
  }
  std::optional<Terminal> terminal;
  if (PathExists(TerminalDirectory(context.state_dir, sn))) {
    RKL_ASSIGN_OR_RETURN(terminal, Terminal::Load(context.state_dir, sn, context.clock));
  } else {
    RKL_RETURN_IF_ERROR(steps.Run(kStepManufacture, [&]() -> absl::Status {
      RKL_ASSIGN_OR_RETURN(terminal,
                           Terminal::ManufactureTr34(context.state_dir, sn, context.algorithm,
                                                     context.krd_factory, context.clock));
      return absl::OkStatus();
    }));
  }
  if (terminal->secure_module().state().lifecycle == Lifecycle::kInstalled) {
    return absl::FailedPreconditionError(absl::StrCat("terminal: ", sn, " is already INSTALLED"));
  }
  ProvisionResult result;
  absl::StatusOr<DownloadResult> loaded;
  RKL_RETURN_IF_ERROR(steps.Run(kStepKeyToken, [&]() -> absl::Status {
    loaded = terminal->LoadTmkTr34(*context.kms_tr34, context.forwarding, context.sleep);
    return loaded.status();
  }));
  result.kms_state = loaded->kms_state;
  result.terminal = terminal->Describe();
  return result;
}

}  // namespace

absl::StatusOr<ProvisionResult> ProvisionTerminal(const ProvisionContext& context,
                                                  const std::string& sn, StepRecorder& steps) {
  steps.SetSubject(sn);
  RKL_ASSIGN_OR_RETURN(Protocol protocol, ProtocolFor(context, sn));
  if (protocol == Protocol::kTr34) return ProvisionTr34(context, sn, steps);
  if (context.operator_terminal == nullptr || context.kms == nullptr) {
    return absl::InvalidArgumentError("provision: MTMS and KMS connections are required");
  }
  steps.SetSubject(sn);
  std::optional<Terminal> terminal;
  if (PathExists(TerminalDirectory(context.state_dir, sn))) {
    RKL_ASSIGN_OR_RETURN(terminal, Terminal::Load(context.state_dir, sn, context.clock));
  } else {
    if (context.terminal_root == nullptr) {
      return absl::InvalidArgumentError("terminal_root: needed to manufacture a new terminal");
    }
    RKL_RETURN_IF_ERROR(steps.Run(kStepManufacture, [&]() -> absl::Status {
      RKL_ASSIGN_OR_RETURN(terminal, Terminal::Manufacture(context.state_dir, sn, context.algorithm,
                                                           *context.terminal_root, context.clock));
      return absl::OkStatus();
    }));
  }

  const Lifecycle lifecycle = terminal->secure_module().state().lifecycle;
  if (lifecycle == Lifecycle::kInstalled) {
    return absl::FailedPreconditionError(absl::StrCat("terminal: ", sn, " is already INSTALLED"));
  }
  if (lifecycle <= Lifecycle::kManufactured) {
    RKL_RETURN_IF_ERROR(steps.Run(kStepInstallCert, [&]() -> absl::Status {
      RKL_ASSIGN_OR_RETURN(WorkCertificateBundle bundle,
                           context.operator_terminal->FetchWorkCertificate());
      return terminal->InstallWorkCertificatePem(bundle.work_certificate_pem);
    }));
  }
  if (lifecycle <= Lifecycle::kCertInstalled) {
    RKL_RETURN_IF_ERROR(
        steps.Run(kStepGenerateTk, [&] { return terminal->GenerateTransportKey(); }));
  }
  if (lifecycle <= Lifecycle::kTkGenerated) {
    RKL_RETURN_IF_ERROR(steps.Run(kStepSubmit, [&]() -> absl::Status {
      RKL_ASSIGN_OR_RETURN(TransportKeyOffer offer, terminal->OfferTransportKey());
      RKL_ASSIGN_OR_RETURN(SubmissionReceipt receipt, context.operator_terminal->Submit(offer));
      return terminal->MarkSubmitted(receipt.submission_id);
    }));
  }

  ProvisionResult result;
  const auto t0 = std::chrono::steady_clock::now();
  auto download = terminal->DownloadTmk(*context.kms, context.forwarding, context.sleep);
  const absl::Duration total = absl::FromChrono(std::chrono::steady_clock::now() - t0);
  if (download.ok()) steps.AddBeginCalls(download->begin_attempts);
  if (!download.ok()) {
    steps.MarkFailed(
        download.status().code() == absl::StatusCode::kDeadlineExceeded &&
                absl::StartsWith(download.status().message(), kForwardingTimeoutMessagePrefix)
            ? kStepForwarding
            : kStepDownloadTmk);
    return download.status();
  }
  // The forwarding wait is MTMS's and KMS's time, not the download's: report it apart.
  const absl::Duration waited = std::min(download->waited_for_forwarding, total);
  steps.Record(kStepForwarding, waited);
  steps.Record(kStepDownloadTmk, total - waited);
  result.kms_state = download->kms_state;
  result.terminal = terminal->Describe();
  return result;
}

bool IsTransientFailure(const absl::Status& status) {
  // UNKNOWN: a write whose outcome the service could not tell (docs/kms.md "Retries");
  // every step resumes safely from the secure module's state.
  // RESOURCE_EXHAUSTED with a retry hint: over a service's rate limit (waited out below).
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded ||
         status.code() == absl::StatusCode::kAborted ||
         status.code() == absl::StatusCode::kUnknown ||
         (status.code() == absl::StatusCode::kResourceExhausted && RetryDelay(status));
}

absl::StatusOr<ProvisionResult> ProvisionTerminalWithRetry(const ProvisionContext& context,
                                                           const std::string& sn,
                                                           StepRecorder& steps,
                                                           const TransientRetry& retry) {
  // One request id for the terminal's whole flow, every attempt and every call to MTMS and
  // KMS (rkl/rpc/call_context.h sends the thread's current id); logged with each line below,
  // so an operator can follow the terminal through every service's log.
  const ScopedRequestId flow(rpc::NewRequestId());
  spdlog::info("terminal {}: flow starts", sn);
  absl::Duration backoff = retry.initial_backoff;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<ProvisionResult> r = ProvisionTerminal(context, sn, steps);
    if (r.ok() || !IsTransientFailure(r.status()) || attempt >= retry.attempts) {
      if (!r.ok() && attempt > 1) {
        r = absl::Status(r.status().code(),
                         absl::StrCat(r.status().message(), " (after ", attempt, " attempts)"));
      }
      if (!r.ok()) {
        spdlog::warn("terminal {}: flow failed at {}: {}: {}", sn,
                     steps.failed_step().empty() ? "-" : steps.failed_step(),
                     absl::StatusCodeToString(r.status().code()),
                     std::string(r.status().message()));
      }
      return r;
    }
    // The next run resumes where this one stopped; the step that failed is re-timed.
    spdlog::warn("terminal {}: {} failed ({}: {}); resuming in {} (attempt {} of {})", sn,
                 steps.failed_step(), absl::StatusCodeToString(r.status().code()),
                 std::string(r.status().message()), absl::FormatDuration(backoff), attempt + 1,
                 retry.attempts);
    steps.MarkFailed("");
    if (context.sleep) context.sleep(std::max(backoff, RetryDelay(r.status()).value_or(backoff)));
    backoff = std::min(backoff * 2, retry.max_backoff);
  }
}

}  // namespace rkl::pos
