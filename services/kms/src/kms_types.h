#pragma once
// The records rkl-kms keeps about terminals, authentication sessions and its audit trail
// (docs/kms.md). Plain values: nothing here holds key material — keys are HSM #2 indexes
// and KCVs, Ctk_pk is wrapped under PK, nonces and tokens are public.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/audit/audit_event.h"
#include "rkl/audit/refusal_tally.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"

namespace rkl::kms {

// A terminal's life cycle. Values equal rkl.v1.TerminalState.
enum class TerminalState {
  kTkReceived = 1,
  kAuthenticated = 2,
  kTmkDelivered = 3,
  kInstalled = 4,
  kLocked = 5,
  kRevoked = 6,
  kRekeyPending = 7,
};

// How a terminal loads its TMK. Values equal rkl.v1.TerminalProtocol.
enum class TerminalProtocol {
  kPatent = 1,  // CN103237005A: TK under Pu, mutual authentication, TR-31 under TEK
  kTr34 = 2,    // ANSI X9 TR-34-2019 two-pass key token to a KRD
};
// "PATENT" / "TR34", as shown in statistics; the database stores them in lower case.
std::string TerminalProtocolName(TerminalProtocol protocol);

// "TK_RECEIVED", ... as stored in the database and shown in statistics.
std::string TerminalStateName(TerminalState state);
absl::StatusOr<TerminalState> TerminalStateFromName(std::string_view name);

struct TerminalRecord {
  std::string sn;
  TerminalProtocol protocol = TerminalProtocol::kPatent;
  TerminalState state = TerminalState::kTkReceived;
  std::optional<TerminalState> state_before_lock;  // set exactly when state is kLocked
  crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;

  // SN-TK_KMS: the current transport key.
  Bytes ctk_pk;
  std::string mtms_submission_id;
  int64_t tk_received_at_ms = 0;
  std::optional<uint64_t> tek_index;  // set once HSM #2 imported the TK (with auk_index)
  std::string tek_kcv;
  std::optional<uint64_t> auk_index;
  std::string auk_kcv;

  std::optional<uint64_t> tmk_index;  // HSM #2 index of the live TMK
  std::string tmk_kcv;
  uint32_t tmk_generation = 0;  // 1 for the first TMK, +1 per re-key
  bool replace_tmk = false;     // next GenerateTmk supersedes the live TMK
  bool rekey_requested = false;
  uint32_t consecutive_failures = 0;

  // TR-34 terminals only (empty otherwise): the bound KRD (tr34::KrdIdOf, 64 upper-case
  // hex), its certificate (public), and the random number of the last key token issued to
  // it (public; the install proof is checked against it).
  std::string krd_id;
  Bytes krd_certificate_der;
  Bytes krd_nonce;

  int64_t created_at_ms = 0;
  int64_t installed_at_ms = 0;
  int64_t updated_at_ms = 0;
  int64_t version = 0;  // optimistic concurrency token, maintained by the repository
};

enum class SessionState {
  kOpen,           // challenge issued, waiting for Crnd2
  kVerifying,      // one replica claimed it and is asking HSM #2
  kAuthenticated,  // Crnd2 verified, TMK delivered; waiting for the install proof
  kConfirming,     // one replica claimed it for the install proof
  kConfirmed,      // done
  kFailed,         // a token did not verify; never usable again
  kCancelled,      // the terminal's TK was superseded, or it was locked/revoked
};

std::string SessionStateName(SessionState state);
absl::StatusOr<SessionState> SessionStateFromName(std::string_view name);

struct AuthSession {
  std::string id;  // 32 lower-case hex characters (128 random bits)
  std::string sn;
  uint64_t auk_index = 0;
  Bytes rnd1;
  Bytes rnd2;
  SessionState state = SessionState::kOpen;
  std::string tmk_kcv;  // the KCV delivered in this session (for the install proof)
  int64_t created_at_ms = 0;
  int64_t expires_at_ms = 0;
};

// One audit line: who did what to which terminal, with indexes and KCVs only; seq is
// assigned by the repository.
using AuditEntry = audit::AuditEvent;

// Refusals of one kind in one minute, counted instead of audited one by one (docs/kms.md
// "Bounded state"): `sn` is a terminal KMS knows, or kAnySn.
inline constexpr const char* kAnySn = audit::kAny;
using RefusalCount = audit::RefusalCount;

// The TR-34 KDH signing key: its private key is HSM #2's (key_index), its certificate
// kdh-ca's. At most one is active.
struct KdhKeyRecord {
  uint64_t key_index = 0;
  std::string label;
  Bytes certificate_der;
  std::string serial_hex;
  int64_t not_after_s = 0;
  int64_t created_at_ms = 0;
  bool active = true;
};

struct Statistics {
  std::vector<std::pair<std::string, uint64_t>> terminals_by_state;
  std::vector<std::pair<std::string, uint64_t>> terminals_by_protocol;
  uint64_t terminals_total = 0;
  uint64_t distinct_tmk_kcvs = 0;
  uint64_t auth_failures_total = 0;
};

}  // namespace rkl::kms
