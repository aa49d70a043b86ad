#pragma once
// Revocation of client certificates on rkl's mTLS servers (docs/pki.md "Revocation").
//
// RevocationList holds the service-ca CRL a server enforces. Guarantees:
//  - a CRL is installed only if its signature verifies under a certificate of the server's
//    trust bundle (tls.ca_file) whose subject is the CRL's issuer, only if it has not passed
//    its nextUpdate, and only if its cRLNumber is not lower than the one in force: replaying
//    an old CRL cannot un-revoke a certificate;
//  - Check() refuses (UNAUTHENTICATED) a certificate listed on the CRL in force, and fails
//    closed: it refuses every certificate while no CRL is in force — before the first is
//    installed, after the one in force passes its nextUpdate unrefreshed, and for a
//    certificate of another issuer than the CRL's;
//  - time comes from the injected clock.
// Thread-safe. Check() reads an immutable snapshot; a certificate seen before is not parsed
// again (a bounded cache of public data).
//
// CrlRefresher keeps a RevocationList current: Start() fetches once and then every
// `interval` (every kRetryUntilLoaded until a first CRL is in force, and every
// kRetryAfterFailure after a failed fetch, if that is sooner), and RefreshNow() fetches at
// once — what rkl.v1.Revocation/RefreshCrl runs.
//
// ServiceCaCrl bundles both for a daemon: the service-ca CRL fetched from rkl-ca
// (CertificateAuthority/GetCrl over mTLS with the daemon's own certificate), and
// ConfigureServer() makes a rpc::Server enforce it and serve rkl.v1.Revocation.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rkl/common/clock.h"
#include "rkl/common/config.h"
#include "rkl/rpc/tls.h"

namespace grpc {
class AuthContext;
class AuthMetadataProcessor;
class Service;
}  // namespace grpc

namespace rkl::rpc {

struct ServerOptions;

class RevocationList {
 public:
  static constexpr size_t kMaxCachedCertificates = 1024;  // emptied when full

  // `trusted_ca_pem`: the PEM bundle client certificates must chain to (tls.ca_file).
  // INVALID_ARGUMENT when it holds no certificate.
  static absl::StatusOr<std::unique_ptr<RevocationList>> Create(const std::string& trusted_ca_pem,
                                                                Clock clock);

  // Installs a CRL given as PEM or DER. INVALID_ARGUMENT when it does not parse or has no
  // nextUpdate; UNAUTHENTICATED when no trusted certificate signed it; FAILED_PRECONDITION
  // when it is past its nextUpdate or older (lower cRLNumber) than the one in force, which
  // then stays. Installing the CRL in force again is OK and changes nothing.
  absl::Status Install(std::string_view crl);

  // OK when the client certificate (PEM, as the TLS layer reports it) is not revoked under a
  // current CRL of its issuer; UNAUTHENTICATED naming the reason otherwise.
  absl::Status Check(std::string_view certificate_pem) const;

  // cRLNumber and nextUpdate (unix seconds) of the CRL in force; nullopt before the first.
  std::optional<uint64_t> crl_number() const;
  std::optional<int64_t> next_update() const;

  // Refuses calls whose client certificate Check() refuses; calls without a client
  // certificate pass (the terminal-facing endpoints). For ServerCredentials.
  std::shared_ptr<grpc::AuthMetadataProcessor> MakeProcessor() const;

  ~RevocationList();

 private:
  struct Snapshot;
  struct Trusted;
  struct PeerInfo {
    std::string issuer_der;  // DER of the issuer name
    std::string serial_hex;  // upper-case hex, no leading zeros
  };
  RevocationList(std::vector<Trusted> trusted, Clock clock);
  absl::StatusOr<PeerInfo> Peer(std::string_view certificate_pem) const;

  std::vector<Trusted> trusted_;
  const Clock clock_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  mutable absl::Mutex cache_mu_;
  mutable std::unordered_map<std::string, PeerInfo> peers_ ABSL_GUARDED_BY(cache_mu_);
};

class CrlRefresher {
 public:
  // Returns the CRL (PEM or DER) to install. Never runs concurrently with itself.
  using Fetch = std::function<absl::StatusOr<std::string>()>;
  static constexpr absl::Duration kRetryUntilLoaded = absl::Seconds(1);
  static constexpr absl::Duration kRetryAfterFailure = absl::Seconds(5);

  // `list` is not owned and must outlive the refresher. `also_refresh`, when set, runs after
  // every RefreshNow() (MTMS refreshes its operator-ca CRL there); its error is reported but
  // does not undo the service-ca refresh.
  CrlRefresher(RevocationList* list, Fetch fetch, absl::Duration interval,
               std::function<absl::Status()> also_refresh = nullptr);
  ~CrlRefresher();  // Stop()s
  CrlRefresher(const CrlRefresher&) = delete;
  CrlRefresher& operator=(const CrlRefresher&) = delete;

  // Fetches until a first CRL is in force, retrying every kRetryUntilLoaded, for at most
  // `max_wait`: UNAVAILABLE (the last fetch error) when none arrived. A daemon calls this
  // before it listens, so a client meets "not listening yet" (UNAVAILABLE, retried) rather
  // than every call refused as UNAUTHENTICATED while the CA is still starting.
  absl::Status AwaitFirst(absl::Duration max_wait);
  // Fetches once unless a CRL is in force already (a failure is logged, and retried by the
  // schedule), then refreshes on the schedule above from a thread of its own until Stop().
  void Start();
  void Stop();

  // Fetches and installs now; returns the cRLNumber in force afterwards. UNAVAILABLE when
  // the fetch fails; Install()'s error when the CRL is refused. One fetch at a time.
  absl::StatusOr<uint64_t> RefreshNow();

 private:
  void Loop();

  RevocationList* list_;
  const Fetch fetch_;
  const absl::Duration interval_;
  const std::function<absl::Status()> also_refresh_;
  absl::Mutex fetch_mu_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool last_failed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// The refresh service (proto/rkl/v1/revocation.proto) over `refresh`; admins only.
std::unique_ptr<grpc::Service> MakeRevocationService(
    std::function<absl::StatusOr<uint64_t>()> refresh, const RevocationList* list);

// Config keys of a daemon's client-certificate revocation: crl.ca_endpoint (rkl-ca's
// address, required), crl.ca_authority (default "ca"), crl.refresh_interval (default 60s).
void DeclareRevocationConfig(ConfigSchema& schema);

struct ServiceCaCrlOptions {
  std::string ca_endpoint;  // rkl-ca, e.g. "ca:50051"
  std::string ca_authority = "ca";
  absl::Duration refresh_interval = absl::Seconds(60);
  absl::Duration rpc_timeout = absl::Seconds(10);
  TlsFiles tls;  // the daemon's own certificate (client) and its trust bundle
  Clock clock = SystemClock();
  std::function<absl::Status()> also_refresh;  // see CrlRefresher
  // How long Start() waits for rkl-ca to hand out a first CRL before start-up fails.
  absl::Duration startup_wait = absl::Seconds(120);
};
// Reads the keys DeclareRevocationConfig declared; `tls` is the daemon's TlsFiles.
ServiceCaCrlOptions ServiceCaCrlOptionsFromConfig(const Config& config, const TlsFiles& tls);

class ServiceCaCrl {
 public:
  // Reads the trust bundle and prepares the channel to rkl-ca; fetches nothing yet.
  static absl::StatusOr<std::unique_ptr<ServiceCaCrl>> Create(ServiceCaCrlOptions options);

  // Waits for the first CRL (CrlRefresher::AwaitFirst, up to options.startup_wait), then
  // refreshes on the schedule (CrlRefresher::Start). Call before the server listens.
  absl::Status Start();
  RevocationList& list() { return *list_; }
  CrlRefresher& refresher() { return *refresher_; }
  // Makes the server enforce the list and serve rkl.v1.Revocation (ServerOptions).
  void ConfigureServer(ServerOptions& options);
  // A daemon's start-up in one call: Create, Start, then ConfigureServer(server). The server
  // is not to listen before a first CRL is in force: clients see UNAVAILABLE and retry.
  static absl::StatusOr<std::unique_ptr<ServiceCaCrl>> StartForServer(ServiceCaCrlOptions options,
                                                                      ServerOptions& server);

 private:
  ServiceCaCrl() = default;
  std::unique_ptr<RevocationList> list_;
  std::unique_ptr<CrlRefresher> refresher_;
  absl::Duration startup_wait_;
};

}  // namespace rkl::rpc
