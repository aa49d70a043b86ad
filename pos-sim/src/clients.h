#pragma once
// gRPC implementations of the ports (ports.h) over rkl::rpc channels.
//
// Terminals and the operator terminal reach MTMS and KMS over server-authenticated TLS:
// they trust the service-ca bundle and present no certificate (the package is authenticated
// by the operator card, the terminal by AUK). The KMS admin client, used only to verify
// results, presents an `admin:*` certificate. Every call has a deadline and an
// x-request-id. Statuses are converted once, with rpc::FromGrpcStatus.
// Thread-safe: one client (one channel) is shared by all fleet workers.

#include <grpcpp/channel.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ports.h"
#include "rkl/rpc/tls.h"
#include "rkl/v1/kms.grpc.pb.h"
#include "rkl/v1/mtms.grpc.pb.h"

namespace rkl::pos {

inline constexpr absl::Duration kDefaultRpcTimeout = absl::Seconds(30);

struct Endpoint {
  std::string target;     // host:port or any gRPC target
  std::string authority;  // name the server certificate must carry; empty: the host
  rpc::TlsFiles tls;      // ca_file always; cert/key only for the admin client
};

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakePosChannel(const Endpoint& endpoint);

class GrpcMtmsClient final : public MtmsPort {
 public:
  explicit GrpcMtmsClient(std::shared_ptr<grpc::Channel> channel,
                          absl::Duration timeout = kDefaultRpcTimeout);
  absl::StatusOr<WorkCertificateBundle> GetWorkCertificate() override;
  absl::StatusOr<SubmissionReceipt> SubmitTransportKey(
      const Bytes& package, const Bytes& signature,
      const std::string& operator_certificate_pem) override;
  absl::StatusOr<SubmissionView> GetOwnSubmission(
      const Bytes& query, const Bytes& signature,
      const std::string& operator_certificate_pem) override;

 private:
  std::unique_ptr<rkl::v1::Mtms::Stub> stub_;
  absl::Duration timeout_;
};

class GrpcKmsClient final : public KmsTerminalPort, public KmsTr34Port, public KmsAdminPort {
 public:
  explicit GrpcKmsClient(std::shared_ptr<grpc::Channel> channel,
                         absl::Duration timeout = kDefaultRpcTimeout);
  absl::StatusOr<AuthChallenge> BeginAuthentication(const std::string& sn, const Bytes& rnd1,
                                                    absl::Duration wait) override;
  absl::StatusOr<KeyDelivery> CompleteAuthentication(const std::string& session_id,
                                                     const std::string& sn,
                                                     const Bytes& crnd2) override;
  absl::StatusOr<std::string> ConfirmInstallation(const std::string& session_id,
                                                  const std::string& sn,
                                                  const Bytes& proof) override;
  absl::StatusOr<Bytes> GetKdhCredential(const std::string& sn) override;
  absl::StatusOr<KeyTokenDelivery> RequestKeyToken(const std::string& sn, const Bytes& ct_krd,
                                                   const Bytes& rt_krd,
                                                   crypto::KeyAlgorithm algorithm) override;
  absl::StatusOr<std::string> ConfirmKeyToken(const std::string& sn, const Bytes& proof) override;
  absl::StatusOr<KmsTerminalView> GetTerminal(const std::string& sn) override;
  absl::StatusOr<std::vector<KmsTerminalView>> ListTerminals(const std::string& sn_prefix) override;

 private:
  std::unique_ptr<rkl::v1::Kms::Stub> stub_;
  absl::Duration timeout_;
};

// The test switch RKL_POS_TEST_DROP_CONFIRM_REPLIES=N (docs/pos-sim.md): every call goes to
// `kms`, but the answers of the first N ConfirmInstallation calls of the process are
// replaced by UNAVAILABLE, as a network that lost them would — KMS did act on them. For the
// end-to-end tests of lost replies only. Thread-safe; `kms` must outlive it.
inline constexpr char kDropConfirmRepliesEnv[] = "RKL_POS_TEST_DROP_CONFIRM_REPLIES";

class ConfirmReplyDropper final : public KmsTerminalPort {
 public:
  ConfirmReplyDropper(KmsTerminalPort& kms, int drop) : kms_(kms), remaining_(drop) {}
  absl::StatusOr<AuthChallenge> BeginAuthentication(const std::string& sn, const Bytes& rnd1,
                                                    absl::Duration wait) override {
    return kms_.BeginAuthentication(sn, rnd1, wait);
  }
  absl::StatusOr<KeyDelivery> CompleteAuthentication(const std::string& session_id,
                                                     const std::string& sn,
                                                     const Bytes& crnd2) override {
    return kms_.CompleteAuthentication(session_id, sn, crnd2);
  }
  absl::StatusOr<std::string> ConfirmInstallation(const std::string& session_id,
                                                  const std::string& sn,
                                                  const Bytes& proof) override;
  int dropped() const { return dropped_.load(); }

 private:
  KmsTerminalPort& kms_;
  std::atomic<int> remaining_;
  std::atomic<int> dropped_{0};
};

// The same test switch for TR-34 terminals: the answers of the first N ConfirmKeyToken calls
// of the process are replaced by UNAVAILABLE (its own count, apart from ConfirmInstallation's).
class KeyTokenConfirmReplyDropper final : public KmsTr34Port {
 public:
  KeyTokenConfirmReplyDropper(KmsTr34Port& kms, int drop) : kms_(kms), remaining_(drop) {}
  absl::StatusOr<Bytes> GetKdhCredential(const std::string& sn) override {
    return kms_.GetKdhCredential(sn);
  }
  absl::StatusOr<KeyTokenDelivery> RequestKeyToken(const std::string& sn, const Bytes& ct_krd,
                                                   const Bytes& rt_krd,
                                                   crypto::KeyAlgorithm algorithm) override {
    return kms_.RequestKeyToken(sn, ct_krd, rt_krd, algorithm);
  }
  absl::StatusOr<std::string> ConfirmKeyToken(const std::string& sn, const Bytes& proof) override;
  int dropped() const { return dropped_.load(); }

 private:
  KmsTr34Port& kms_;
  std::atomic<int> remaining_;
  std::atomic<int> dropped_{0};
};

}  // namespace rkl::pos
