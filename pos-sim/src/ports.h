#pragma once
// What the simulated terminal and operator terminal need from MTMS and KMS, as interfaces,
// so the terminal logic runs unchanged against the real gRPC clients (clients.h) and
// against in-memory fakes in unit tests. Nothing that crosses these interfaces is key
// material: certificates, ciphertexts, nonces, key blocks under TEK, MACs and KCVs.
// Implementations must be thread-safe: a fleet calls them from many workers at once.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"

namespace rkl::pos {

// S204: what MTMS hands the operator terminal.
struct WorkCertificateBundle {
  std::string work_certificate_pem;  // HsmWCRT
  std::string terminal_root_pem;     // for reference only: terminals trust their own copy
  std::string serial_hex;
};

struct SubmissionReceipt {
  std::string submission_id;
  std::string state;  // SubmissionState name, e.g. "SUBMISSION_STATE_RECEIVED"
};

// What MTMS tells the submitting operator about its submission (GetOwnSubmission).
struct SubmissionView {
  std::string submission_id;
  std::string sn;
  std::string state;   // SubmissionState name, e.g. "SUBMISSION_STATE_REJECTED"
  std::string reason;  // why, when REJECTED
  uint32_t attempts = 0;
};

class MtmsPort {
 public:
  virtual ~MtmsPort() = default;
  virtual absl::StatusOr<WorkCertificateBundle> GetWorkCertificate() = 0;
  virtual absl::StatusOr<SubmissionReceipt> SubmitTransportKey(
      const Bytes& package, const Bytes& signature,
      const std::string& operator_certificate_pem) = 0;
  // `query` is a serialized rkl.v1.SubmissionQuery, `signature` the operator card's over
  // "RKL-SUBMISSION-QUERY:" ‖ query.
  virtual absl::StatusOr<SubmissionView> GetOwnSubmission(
      const Bytes& query, const Bytes& signature, const std::string& operator_certificate_pem) = 0;
};

struct AuthChallenge {
  std::string session_id;
  Bytes crnd1;
  Bytes rnd2;
};

struct KeyDelivery {
  std::string key_block;
  std::string tmk_kcv;
};

// The terminal-facing KMS RPCs (S109–S113, S401–S405).
class KmsTerminalPort {
 public:
  virtual ~KmsTerminalPort() = default;
  // `wait` > 0: KMS may hold the call up to that long for the SN's transport key to arrive
  // from MTMS before it answers NOT_FOUND (wait_ms; a KMS that ignores it answers at once).
  virtual absl::StatusOr<AuthChallenge> BeginAuthentication(const std::string& sn,
                                                            const Bytes& rnd1,
                                                            absl::Duration wait) = 0;
  virtual absl::StatusOr<KeyDelivery> CompleteAuthentication(const std::string& session_id,
                                                             const std::string& sn,
                                                             const Bytes& crnd2) = 0;
  // Returns the terminal state name KMS reports, e.g. "TERMINAL_STATE_INSTALLED".
  virtual absl::StatusOr<std::string> ConfirmInstallation(const std::string& session_id,
                                                          const std::string& sn,
                                                          const Bytes& proof) = 0;
};

// What KMS returns for RequestKeyToken: the two-pass key token and the TMK's KCV.
struct KeyTokenDelivery {
  Bytes key_token;
  std::string tmk_kcv;
  std::string state;  // TerminalState name, TMK_DELIVERED
};

// The terminal-facing TR-34 KMS RPCs (docs/tr34.md): CT_KDH, the key token for CT_KRD +
// RT_KRD, and the install proof.
class KmsTr34Port {
 public:
  virtual ~KmsTr34Port() = default;
  // DER CT_KDH.
  virtual absl::StatusOr<Bytes> GetKdhCredential(const std::string& sn) = 0;
  virtual absl::StatusOr<KeyTokenDelivery> RequestKeyToken(const std::string& sn,
                                                           const Bytes& ct_krd, const Bytes& rt_krd,
                                                           crypto::KeyAlgorithm algorithm) = 0;
  // Returns the terminal state name KMS reports, e.g. "TERMINAL_STATE_INSTALLED".
  virtual absl::StatusOr<std::string> ConfirmKeyToken(const std::string& sn,
                                                      const Bytes& proof) = 0;
};

struct KmsTerminalView {
  std::string sn;
  std::string state;  // TerminalState name
  std::string tmk_kcv;
  std::string tek_kcv;
  std::string auk_kcv;
};

// KMS administration, used only to verify results independently of the simulator.
class KmsAdminPort {
 public:
  virtual ~KmsAdminPort() = default;
  virtual absl::StatusOr<KmsTerminalView> GetTerminal(const std::string& sn) = 0;
  // Every terminal whose SN starts with `sn_prefix` (all pages).
  virtual absl::StatusOr<std::vector<KmsTerminalView>> ListTerminals(
      const std::string& sn_prefix) = 0;
};

}  // namespace rkl::pos
