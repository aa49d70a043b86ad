#include "rkl/rpc/revocation.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_metadata_processor.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <unordered_set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "openssl_owners.h"
#include "rkl/common/status_macros.h"
#include "rkl/rpc/adapter.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/identity.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/status.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/revocation.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace rkl::rpc {
namespace {

std::string NameDer(const X509_NAME* name) {
  unsigned char* der = nullptr;
  int len = i2d_X509_NAME(name, &der);
  if (len <= 0) return "";
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

// Upper-case hex of an ASN.1 INTEGER's value, no leading zeros ("" on failure).
std::string SerialHex(const ASN1_INTEGER* serial) {
  BnPtr bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (!bn) return "";
  char* hex = BN_bn2hex(bn.get());
  if (hex == nullptr) return "";
  std::string out = absl::AsciiStrToUpper(hex);
  OPENSSL_free(hex);
  return out;
}

std::optional<int64_t> UnixSeconds(const ASN1_TIME* t) {
  if (t == nullptr) return std::nullopt;
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  return static_cast<int64_t>(timegm(&tm));
}

std::string FormatUnix(int64_t s) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(s), absl::UTCTimeZone());
}

class RevocationProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit RevocationProcessor(const RevocationList* list) : list_(list) {}

  // Runs inline on the call's path: a cache lookup and a set lookup, never I/O.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata&, grpc::AuthContext* context, OutputMetadata*,
                       OutputMetadata*) override {
    std::vector<grpc::string_ref> pem =
        context->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
    if (pem.empty()) return grpc::Status::OK;  // no client certificate: not ours to judge
    absl::Status s = list_->Check(std::string_view(pem.front().data(), pem.front().size()));
    if (s.ok()) return grpc::Status::OK;
    spdlog::warn("refused a call: {}", std::string(s.message()));
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(s.message()));
  }

 private:
  const RevocationList* list_;
};

class RevocationServiceImpl final : public v1::Revocation::Service {
 public:
  RevocationServiceImpl(std::function<absl::StatusOr<uint64_t>()> refresh,
                        const RevocationList* list)
      : refresh_(std::move(refresh)),
        list_(list),
        adapter_(ServiceAdapter::DescriptorOf<v1::Revocation>()) {}

  grpc::Status RefreshCrl(grpc::ServerContext* ctx, const v1::RefreshCrlRequest*,
                          v1::RefreshCrlResponse* response) override {
    return adapter_.Serve(*ctx, [&](const std::string&) -> absl::Status {
      absl::StatusOr<uint64_t> number = refresh_();
      if (!number.ok()) return number.status();
      response->set_crl_number(*number);
      response->set_next_update_unix_s(list_->next_update().value_or(0));
      return absl::OkStatus();
    });
  }

 private:
  const std::function<absl::StatusOr<uint64_t>()> refresh_;
  const RevocationList* list_;
  const ServiceAdapter adapter_;  // revocation.proto: admins only
};

}  // namespace

struct RevocationList::Trusted {
  std::string subject_der;
  std::shared_ptr<X509> certificate;
};

struct RevocationList::Snapshot {
  std::string issuer_der;
  std::string issuer_text;  // for messages
  uint64_t crl_number = 0;
  int64_t next_update = 0;
  std::unordered_set<std::string> revoked;  // serials, as SerialHex()
};

RevocationList::RevocationList(std::vector<Trusted> trusted, Clock clock)
    : trusted_(std::move(trusted)), clock_(std::move(clock)) {}

RevocationList::~RevocationList() = default;

absl::StatusOr<std::unique_ptr<RevocationList>> RevocationList::Create(
    const std::string& trusted_ca_pem, Clock clock) {
  std::vector<Trusted> trusted;
  BioPtr bio = MemBio(trusted_ca_pem);
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    trusted.push_back(
        {NameDer(X509_get_subject_name(cert)), std::shared_ptr<X509>(cert, X509_free)});
  }
  ERR_clear_error();
  if (trusted.empty()) {
    return absl::InvalidArgumentError("revocation: the trust bundle holds no PEM certificate");
  }
  return std::unique_ptr<RevocationList>(new RevocationList(std::move(trusted), std::move(clock)));
}

absl::Status RevocationList::Install(std::string_view crl_text) {
  CrlPtr crl;
  if (crl_text.find("-----BEGIN") != std::string_view::npos) {
    BioPtr bio = MemBio(crl_text);
    crl.reset(PEM_read_bio_X509_CRL(bio.get(), nullptr, NoPassphrase, nullptr));
  } else {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(crl_text.data());
    crl.reset(d2i_X509_CRL(nullptr, &p, static_cast<long>(crl_text.size())));
  }
  ERR_clear_error();
  if (!crl) return absl::InvalidArgumentError("crl: not one PEM or DER X.509 CRL");
  std::optional<int64_t> next_update = UnixSeconds(X509_CRL_get0_nextUpdate(crl.get()));
  if (!next_update.has_value()) return absl::InvalidArgumentError("crl: has no nextUpdate");

  auto snapshot = std::make_shared<Snapshot>();
  snapshot->issuer_der = NameDer(X509_CRL_get_issuer(crl.get()));
  char text[256];
  X509_NAME_oneline(X509_CRL_get_issuer(crl.get()), text, sizeof(text));
  snapshot->issuer_text = text;
  snapshot->next_update = *next_update;
  bool verified = false;
  for (const Trusted& t : trusted_) {
    if (t.subject_der != snapshot->issuer_der) continue;
    EVP_PKEY* key = X509_get0_pubkey(t.certificate.get());
    if (key != nullptr && X509_CRL_verify(crl.get(), key) == 1) verified = true;
  }
  ERR_clear_error();
  if (!verified) {
    return absl::UnauthenticatedError(
        absl::StrCat("crl: not signed by a certificate of the trust bundle (issuer ",
                     snapshot->issuer_text, ")"));
  }
  Asn1IntegerPtr number(static_cast<ASN1_INTEGER*>(
      X509_CRL_get_ext_d2i(crl.get(), NID_crl_number, nullptr, nullptr)));
  uint64_t n = 0;
  if (!number || ASN1_INTEGER_get_uint64(&n, number.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("crl: has no cRLNumber");
  }
  snapshot->crl_number = n;
  const int64_t now = absl::ToUnixSeconds(clock_());
  if (now >= snapshot->next_update) {
    return absl::FailedPreconditionError(
        absl::StrCat("crl: number ", n, " expired at ", FormatUnix(snapshot->next_update)));
  }
  STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl.get());
  for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i) {
    snapshot->revoked.insert(
        SerialHex(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revoked, i))));
  }

  absl::MutexLock lock(&mu_);
  if (snapshot_ != nullptr && snapshot_->issuer_der == snapshot->issuer_der) {
    if (n < snapshot_->crl_number) {
      return absl::FailedPreconditionError(absl::StrCat("crl: number ", n, " is older than number ",
                                                        snapshot_->crl_number, " in force"));
    }
    if (n == snapshot_->crl_number) return absl::OkStatus();
  }
  if (snapshot_ == nullptr || snapshot_->crl_number != n) {
    spdlog::info("service-ca CRL number {} in force: {} revoked, next update {}", n,
                 snapshot->revoked.size(), FormatUnix(snapshot->next_update));
  }
  snapshot_ = std::move(snapshot);
  return absl::OkStatus();
}

absl::StatusOr<RevocationList::PeerInfo> RevocationList::Peer(
    std::string_view certificate_pem) const {
  std::string key(certificate_pem);
  {
    absl::MutexLock lock(&cache_mu_);
    auto it = peers_.find(key);
    if (it != peers_.end()) return it->second;
  }
  BioPtr bio = MemBio(certificate_pem);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (!cert) return absl::UnauthenticatedError("client certificate: cannot be parsed");
  PeerInfo info{NameDer(X509_get_issuer_name(cert.get())),
                SerialHex(X509_get0_serialNumber(cert.get()))};
  absl::MutexLock lock(&cache_mu_);
  if (peers_.size() >= kMaxCachedCertificates) peers_.clear();
  peers_.emplace(std::move(key), info);
  return info;
}

absl::Status RevocationList::Check(std::string_view certificate_pem) const {
  RKL_ASSIGN_OR_RETURN(PeerInfo peer, Peer(certificate_pem));
  std::shared_ptr<const Snapshot> snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = snapshot_;
  }
  if (snapshot == nullptr) {
    return absl::UnauthenticatedError(
        absl::StrCat("client certificate ", peer.serial_hex,
                     ": revocation status unknown (no service-ca CRL fetched yet); retry shortly"));
  }
  if (absl::ToUnixSeconds(clock_()) >= snapshot->next_update) {
    return absl::UnauthenticatedError(absl::StrCat(
        "client certificate ", peer.serial_hex, ": revocation status unknown (CRL number ",
        snapshot->crl_number, " expired at ", FormatUnix(snapshot->next_update),
        " and rkl-ca could not be reached since)"));
  }
  if (peer.issuer_der != snapshot->issuer_der) {
    return absl::UnauthenticatedError(
        absl::StrCat("client certificate ", peer.serial_hex, ": no CRL of its issuer is in force"));
  }
  if (snapshot->revoked.contains(peer.serial_hex)) {
    return absl::UnauthenticatedError(absl::StrCat("client certificate ", peer.serial_hex,
                                                   ": revoked (service-ca CRL number ",
                                                   snapshot->crl_number, ")"));
  }
  return absl::OkStatus();
}

std::optional<uint64_t> RevocationList::crl_number() const {
  absl::MutexLock lock(&mu_);
  if (snapshot_ == nullptr) return std::nullopt;
  return snapshot_->crl_number;
}

std::optional<int64_t> RevocationList::next_update() const {
  absl::MutexLock lock(&mu_);
  if (snapshot_ == nullptr) return std::nullopt;
  return snapshot_->next_update;
}

std::shared_ptr<grpc::AuthMetadataProcessor> RevocationList::MakeProcessor() const {
  return std::make_shared<RevocationProcessor>(this);
}

// ---- CrlRefresher -------------------------------------------------------------------------

CrlRefresher::CrlRefresher(RevocationList* list, Fetch fetch, absl::Duration interval,
                           std::function<absl::Status()> also_refresh)
    : list_(list),
      fetch_(std::move(fetch)),
      interval_(interval),
      also_refresh_(std::move(also_refresh)) {}

CrlRefresher::~CrlRefresher() { Stop(); }

absl::StatusOr<uint64_t> CrlRefresher::RefreshNow() {
  absl::Status status;
  {
    absl::MutexLock fetch_lock(&fetch_mu_);
    absl::StatusOr<std::string> crl = fetch_();
    if (!crl.ok()) {
      status = absl::UnavailableError(
          absl::StrCat("service-ca CRL could not be fetched: ", crl.status().message()));
    } else {
      status = list_->Install(*crl);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    last_failed_ = !status.ok();
  }
  if (also_refresh_) {
    if (absl::Status s = also_refresh_(); !s.ok() && status.ok()) status = s;
  }
  if (!status.ok()) {
    spdlog::warn("CRL refresh failed: {}", status.ToString());
    return status;
  }
  return list_->crl_number().value_or(0);
}

absl::Status CrlRefresher::AwaitFirst(absl::Duration max_wait) {
  const absl::Time deadline = absl::Now() + max_wait;  // wall time: a real wait
  while (true) {
    absl::StatusOr<uint64_t> number = RefreshNow();
    if (list_->crl_number().has_value()) return absl::OkStatus();
    if (absl::Now() >= deadline) {  // wall time: a real wait
      return absl::UnavailableError(absl::StrCat("no service-ca CRL after ",
                                                 absl::FormatDuration(max_wait), ": ",
                                                 number.status().message()));
    }
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stop_), kRetryUntilLoaded);
    if (stop_) return absl::CancelledError("stopped while waiting for the first CRL");
  }
}

void CrlRefresher::Start() {
  if (!list_->crl_number().has_value()) (void)RefreshNow();  // logged; the schedule retries
  thread_ = std::thread([this] { Loop(); });
}

void CrlRefresher::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void CrlRefresher::Loop() {
  while (true) {
    absl::Duration wait = interval_;
    {
      absl::MutexLock lock(&mu_);
      if (last_failed_) wait = std::min(wait, kRetryAfterFailure);
    }
    if (!list_->crl_number().has_value()) wait = std::min(wait, kRetryUntilLoaded);
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), wait);
      if (stop_) return;
    }
    (void)RefreshNow();
  }
}

std::unique_ptr<grpc::Service> MakeRevocationService(
    std::function<absl::StatusOr<uint64_t>()> refresh, const RevocationList* list) {
  return std::make_unique<RevocationServiceImpl>(std::move(refresh), list);
}

// ---- ServiceCaCrl -------------------------------------------------------------------------

void DeclareRevocationConfig(ConfigSchema& schema) {
  schema
      .String("crl.ca_endpoint",
              "rkl-ca address (host:port) to fetch the service-ca CRL from; client "
              "certificates on it are refused (docs/pki.md \"Revocation\")")
      .Required();
  schema.String("crl.ca_authority", "server name rkl-ca's certificate carries").Default("ca");
  schema
      .Duration("crl.refresh_interval",
                "how often the service-ca CRL is re-fetched (besides rkl.v1.Revocation/"
                "RefreshCrl); the latest a revocation takes effect without a push")
      .Default("60s");
}

ServiceCaCrlOptions ServiceCaCrlOptionsFromConfig(const Config& config, const TlsFiles& tls) {
  ServiceCaCrlOptions o;
  o.ca_endpoint = config.GetString("crl.ca_endpoint");
  o.ca_authority = config.GetString("crl.ca_authority");
  o.refresh_interval = config.GetDuration("crl.refresh_interval");
  o.tls = tls;
  return o;
}

absl::StatusOr<std::unique_ptr<ServiceCaCrl>> ServiceCaCrl::StartForServer(
    ServiceCaCrlOptions options, ServerOptions& server) {
  RKL_ASSIGN_OR_RETURN(std::unique_ptr<ServiceCaCrl> crl, Create(std::move(options)));
  RKL_RETURN_IF_ERROR(crl->Start());
  crl->ConfigureServer(server);
  return crl;
}

absl::StatusOr<std::unique_ptr<ServiceCaCrl>> ServiceCaCrl::Create(ServiceCaCrlOptions options) {
  if (options.ca_endpoint.empty()) {
    return absl::InvalidArgumentError("crl.ca_endpoint: required (rkl-ca's host:port)");
  }
  if (options.refresh_interval < absl::Seconds(1) || options.refresh_interval > absl::Hours(24)) {
    return absl::InvalidArgumentError("crl.refresh_interval: must be between 1s and 24h");
  }
  RKL_ASSIGN_OR_RETURN(std::string ca_pem, ReadPemFile(options.tls.ca_file, "tls.ca_file"));
  std::unique_ptr<ServiceCaCrl> out(new ServiceCaCrl());
  RKL_ASSIGN_OR_RETURN(out->list_, RevocationList::Create(ca_pem, options.clock));
  ChannelOptions channel_options;
  channel_options.tls = options.tls;
  channel_options.authority = options.ca_authority;
  // Fails now, naming the file, if the TLS material is unusable.
  RKL_RETURN_IF_ERROR(MakeChannel(options.ca_endpoint, channel_options).status());
  // After a failed fetch the next one uses a fresh channel: a reused one would wait out
  // gRPC's reconnect backoff (tens of seconds) long after rkl-ca is back.
  struct CaClient {
    std::string endpoint;
    ChannelOptions channel_options;
    absl::Duration timeout;
    std::unique_ptr<v1::CertificateAuthority::Stub> stub;  // guarded by the refresher's lock
  };
  auto client = std::make_shared<CaClient>(
      CaClient{options.ca_endpoint, channel_options, options.rpc_timeout, nullptr});
  CrlRefresher::Fetch fetch = [client]() -> absl::StatusOr<std::string> {
    if (client->stub == nullptr) {
      RKL_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                           MakeChannel(client->endpoint, client->channel_options));
      client->stub = v1::CertificateAuthority::NewStub(channel);
    }
    auto ctx = MakeClientContext(client->timeout);
    v1::GetCrlRequest request;
    request.set_issuer(v1::ISSUER_SERVICE_CA);
    v1::GetCrlResponse response;
    grpc::Status s = client->stub->GetCrl(ctx.get(), request, &response);
    if (!s.ok()) {
      client->stub.reset();
      return FromGrpcStatus(s);
    }
    return response.crl_pem();
  };
  out->refresher_ =
      std::make_unique<CrlRefresher>(out->list_.get(), std::move(fetch), options.refresh_interval,
                                     std::move(options.also_refresh));
  out->startup_wait_ = options.startup_wait;
  return out;
}

absl::Status ServiceCaCrl::Start() {
  RKL_RETURN_IF_ERROR(refresher_->AwaitFirst(startup_wait_));
  refresher_->Start();
  return absl::OkStatus();
}

void ServiceCaCrl::ConfigureServer(ServerOptions& options) {
  options.revocation = list_.get();
  CrlRefresher* refresher = refresher_.get();
  options.refresh_crl = [refresher] { return refresher->RefreshNow(); };
}

}  // namespace rkl::rpc
