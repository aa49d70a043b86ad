#pragma once
// One terminal through the whole patent flow, as `rkl-pos provision` and each fleet worker
// run it: manufacture (S2xx prerequisite) → install-cert (S204–S206) → generate-tk
// (S102–S103) → submit (S104–S105, S301–S303) → wait for MTMS→KMS forwarding (S106–S108)
// → download-tmk (S109–S113, S401–S405).
//
// A TR-34 terminal instead: manufacture (device key, KRD certificate, kdh-ca) → CT_KDH →
// RT_KRD → key token → ConfirmKeyToken (Terminal::LoadTmkTr34).
// A terminal that already exists resumes from its lifecycle state, so an interrupted
// provision can be re-run. Each step is timed through the StepRecorder under the names in
// kStep*; a refused step leaves the secure module unchanged (terminal.h).
// Thread-safe for distinct SNs as long as the ports are (they are: clients.h).

#include <string>

#include "absl/status/statusor.h"
#include "fleet.h"
#include "operator_terminal.h"
#include "ports.h"
#include "rkl/crypto/x509.h"
#include "terminal.h"

namespace rkl::pos {

inline constexpr char kStepManufacture[] = "manufacture";
inline constexpr char kStepInstallCert[] = "install-cert";
inline constexpr char kStepGenerateTk[] = "generate-tk";
inline constexpr char kStepSubmit[] = "submit";
inline constexpr char kStepForwarding[] = "forwarding-wait";
inline constexpr char kStepDownloadTmk[] = "download-tmk";
// TR-34 terminals: CT_KDH + key token + confirmation, timed as one step.
inline constexpr char kStepKeyToken[] = "tr34-key-token";

struct ProvisionContext {
  std::string state_dir;
  crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
  // The protocol of terminals this context manufactures. An existing terminal keeps the one
  // it was made for: a TR-34 terminal runs TR-34 whatever this says; a patent terminal asked
  // to run TR-34 (protocol_explicit) is refused.
  Protocol protocol = Protocol::kPatent;
  bool protocol_explicit = false;
  const crypto::Certificate* terminal_root = nullptr;  // needed to manufacture (patent)
  KrdFactory krd_factory = {};                         // needed to manufacture (TR-34)
  OperatorTerminal* operator_terminal = nullptr;       // patent only
  KmsTerminalPort* kms = nullptr;                      // patent only
  KmsTr34Port* kms_tr34 = nullptr;                     // TR-34 only
  ForwardingWait forwarding;
  Clock clock;
  Sleeper sleep;
};

// Bounded retry of transient failures: the whole flow is run again, and resumes from the
// terminal's lifecycle state, when a step fails with UNAVAILABLE, DEADLINE_EXCEEDED or
// ABORTED (PROTOCOL §10 / STYLE: "safe to retry"), as a real terminal retries after a
// service restart. Any other code is final. Backoff doubles from `initial_backoff`, capped.
struct TransientRetry {
  int attempts = 1;  // total runs of the flow; 1 = no retry
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(10);
};

bool IsTransientFailure(const absl::Status& status);

struct ProvisionResult {
  SecureModuleDescription terminal;
  std::string kms_state;
};

absl::StatusOr<ProvisionResult> ProvisionTerminal(const ProvisionContext& context,
                                                  const std::string& sn, StepRecorder& steps);

// The protocol `sn` runs under `context`: the existing terminal's, else context.protocol.
// FAILED_PRECONDITION for a patent terminal when TR-34 was asked for explicitly.
absl::StatusOr<Protocol> ProtocolFor(const ProvisionContext& context, const std::string& sn);

// ProvisionTerminal, run again (after context.sleep) while it fails transiently and attempts
// remain. The last failure is returned, annotated with the number of attempts. The whole
// flow runs under one new request id (rkl/common/request_id.h), sent with every call it makes
// and logged when the flow starts ("terminal <sn>: flow starts request_id=<id>"), retries
// and fails.
absl::StatusOr<ProvisionResult> ProvisionTerminalWithRetry(const ProvisionContext& context,
                                                           const std::string& sn,
                                                           StepRecorder& steps,
                                                           const TransientRetry& retry);

}  // namespace rkl::pos
