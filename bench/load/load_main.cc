// rkl-bench-load: closed-loop gRPC load generators for bench/run.
//
//   echo-server     the ceiling's server: rkl's RPC bootstrap (mTLS, health, interceptor)
//                   serving only rkl.v1.Echo; with --dispatch sync|callback-inline|
//                   callback-pool, through an rpc::UnaryService with that Dispatch (and
//                   --pool-threads), each body first blocking for --body-us microseconds
//                   (standing in for a database or HSM round trip)
//   echo            bare unary round trips over mTLS against echo-server
//   hsm-translate   HSM #1 TranslateTransportKey (Pu → PK/MAK) as `mtms`, each with its
//                   package signed by the operator card (HSM #1 verifies it); with --batch
//                   B, TranslateTransportKeys with B items per call (what MTMS's forwarder
//                   sends)
//   mtms            MTMS SubmitTransportKey, then waits until every package is FORWARDED
//   kms             KMS BeginAuthentication + CompleteAuthentication + ConfirmInstallation
//
// Every generator builds all its valid inputs before the clock starts (RSA-OAEP under the
// real Pu, ECDSA under the real operator card, Ctk_pk under PK/MAK rebuilt from the bench's
// own ceremony components), then keeps `--concurrency` calls in flight from as many
// threads over `--channels` separate HTTP/2 connections, and checks every answer: a call
// that returns the wrong thing counts as failed, never as throughput. The result is one
// JSON object on stdout. It only measures; it asserts nothing about speed.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "rkl/common/hex.h"
#include "rkl/common/logging.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/rpc/echo_service.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/shutdown.h"
#include "rkl/rpc/tls.h"
#include "rkl/rpc/unary_service.h"
#include "rkl/v1/echo.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "rkl/v1/kms.grpc.pb.h"
#include "rkl/v1/mtms.grpc.pb.h"

namespace rkl::bench {
namespace {

using Clock = std::chrono::steady_clock;
using crypto::KeyAlgorithm;
using crypto::SecretBytes;

constexpr auto kCallTimeout = std::chrono::seconds(60);

// ---- command line ----------------------------------------------------------------------------

class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 2; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) Fail("unexpected argument " + a);
      a = a.substr(2);
      if (auto eq = a.find('='); eq != std::string::npos) {
        values_[a.substr(0, eq)] = a.substr(eq + 1);
      } else if (i + 1 < argc) {
        values_[a] = argv[++i];
      } else {
        Fail("--" + a + " needs a value");
      }
    }
  }
  std::string Str(const std::string& k) const {
    auto it = values_.find(k);
    if (it == values_.end()) Fail("--" + k + " is required");
    return it->second;
  }
  std::string Str(const std::string& k, const std::string& def) const {
    auto it = values_.find(k);
    return it == values_.end() ? def : it->second;
  }
  int64_t Int(const std::string& k, int64_t def) const {
    auto it = values_.find(k);
    return it == values_.end() ? def : std::stoll(it->second);
  }
  [[noreturn]] static void Fail(const std::string& why) {
    std::cerr << "rkl-bench-load: " << why << "\n";
    std::exit(2);
  }

 private:
  std::map<std::string, std::string> values_;
};

template <typename T>
T OrDie(absl::StatusOr<T> v, const std::string& what) {
  if (!v.ok()) Args::Fail(what + ": " + v.status().ToString());
  return *std::move(v);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Args::Fail("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A channel of its own (own subchannel pool, so its own TCP connection).
std::shared_ptr<grpc::Channel> Channel(const std::string& target, const std::string& authority,
                                       const rpc::TlsFiles& tls) {
  auto creds = OrDie(rpc::MakeChannelCredentials(tls), "TLS files");
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(authority);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, creds, args);
}

std::vector<std::shared_ptr<grpc::Channel>> Channels(const Args& a, const std::string& target,
                                                     const std::string& authority,
                                                     const rpc::TlsFiles& tls) {
  std::vector<std::shared_ptr<grpc::Channel>> out;
  for (int i = 0; i < a.Int("channels", 4); ++i) {
    out.push_back(Channel(target, authority, tls));
    if (!out.back()->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(20)))
      Args::Fail("cannot connect to " + target);
  }
  return out;
}

// One unary call of `stub` under the run's deadline (kCallTimeout).
template <typename Stub, typename Request, typename Response>
grpc::Status Call(Stub& stub,
                  grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                  const Request& request, Response* response) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  return (stub.*method)(&ctx, request, response);
}

// A terminal's next request in the session `begun` opened.
template <typename Request>
Request SessionRequest(const v1::BeginAuthenticationResponse& begun, const std::string& sn) {
  Request request;
  request.set_session_id(begun.session_id());
  request.set_sn(sn);
  return request;
}

// ---- closed-loop driver and statistics --------------------------------------------------------

struct RunResult {
  int64_t ok = 0;
  int64_t failed = 0;
  double seconds = 0;
  std::vector<double> latency_ms;  // successful operations only
  std::map<std::string, int64_t> failures;
};

// Runs op(i) for i in [0, n) from `concurrency` threads; op returns "" on success or a
// failure reason.
RunResult Drive(int64_t n, int concurrency, const std::function<std::string(int64_t, int)>& op) {
  std::atomic<int64_t> next{0};
  std::vector<RunResult> per(concurrency);
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      RunResult& r = per[t];
      for (int64_t i = next++; i < n; i = next++) {
        auto s = Clock::now();
        std::string err = op(i, t);
        double ms = std::chrono::duration<double, std::milli>(Clock::now() - s).count();
        if (err.empty()) {
          ++r.ok;
          r.latency_ms.push_back(ms);
        } else {
          ++r.failed;
          ++r.failures[err.substr(0, 160)];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  RunResult all;
  all.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& r : per) {
    all.ok += r.ok;
    all.failed += r.failed;
    all.latency_ms.insert(all.latency_ms.end(), r.latency_ms.begin(), r.latency_ms.end());
    for (auto& [k, v] : r.failures) all.failures[k] += v;
  }
  return all;
}

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

std::string Json(const std::string& s) {
  std::string out = "\"";
  AppendJsonEscaped(s, out);
  return out + "\"";
}

// One JSON object: throughput over the measured window plus latency percentiles of one
// operation. `extra` is appended verbatim (already JSON members).
void Report(const std::string& name, const RunResult& r, int concurrency, double seconds,
            const std::string& extra = "") {
  std::string failures;
  for (auto& [k, v] : r.failures)
    absl::StrAppend(&failures, failures.empty() ? "" : ",", Json(k), ":", v);
  std::cout << absl::StrFormat(
                   "{\"name\":%s,\"ok\":%d,\"failed\":%d,\"concurrency\":%d,\"seconds\":%.3f,"
                   "\"per_second\":%.1f,\"p50_ms\":%.3f,\"p95_ms\":%.3f,\"p99_ms\":%.3f,"
                   "\"max_ms\":%.3f,\"failures\":{%s}%s}",
                   Json(name), r.ok, r.failed, concurrency, seconds, r.ok / seconds,
                   Pct(r.latency_ms, 50), Pct(r.latency_ms, 95), Pct(r.latency_ms, 99),
                   Pct(r.latency_ms, 100), failures, extra)
            << std::endl;
}

rpc::TlsFiles ClientTls(const Args& a, const std::string& prefix = "") {
  return {a.Str(prefix + "cert"), a.Str(prefix + "key"), a.Str("ca")};
}

std::string Fmt(const grpc::Status& s) {
  return absl::StrCat("grpc ", s.error_code(), ": ", s.error_message());
}

// A transport key for one terminal, the way a terminal's secure module makes it.
protocol::TransportKey NewTk() {
  return {KeyAlgorithm::kAes128, crypto::GenerateKey(KeyAlgorithm::kAes128),
          crypto::GenerateKey(KeyAlgorithm::kAes128)};
}

std::string Sn(const std::string& prefix, int64_t i) {
  return absl::StrFormat("%s-%07d", prefix, i);
}

std::string RunPrefix(const std::string& what) {
  return absl::StrFormat("B%s%s", what,
                         ToHex(crypto::RandomBytes(3)));  // fresh per run: SNs never collide
}

// ---- echo ------------------------------------------------------------------------------------

// rkl.v1.Echo as the services serve their RPCs: a UnaryService body, behind its adapter.
class DispatchedEcho final : public rpc::UnaryService {
 public:
  DispatchedEcho(rpc::DispatchOptions dispatch, absl::Duration body_blocks)
      : UnaryService(rpc::PublicEchoDescriptor(), {}, dispatch) {
    Bind("Echo",
         [body_blocks](const rpc::UnaryCall& call, const v1::EchoRequest* req,
                       v1::EchoResponse* resp) -> absl::Status {
           if (body_blocks > absl::ZeroDuration()) absl::SleepFor(body_blocks);
           resp->set_payload(req->payload());
           resp->set_caller_identity(call.caller);
           return absl::OkStatus();
         });
  }
};

int EchoServer(const Args& a) {
  InitLogging({.level = *ParseLogLevel(a.Str("log-level", "warn")), .program = "rkl-bench-echo"});
  rpc::InstallShutdownSignalHandlers();
  const std::string dispatch = a.Str("dispatch", "generated");
  std::unique_ptr<grpc::Service> echo;
  if (dispatch == "generated") {
    echo = std::make_unique<rpc::EchoService>();
  } else {
    std::optional<rpc::Dispatch> d = rpc::DispatchFromName(dispatch);
    if (!d)
      Args::Fail("--dispatch: generated, sync, callback-inline or callback-pool, not " + dispatch);
    rpc::DispatchOptions options{.dispatch = *d,
                                 .pool_threads = static_cast<int>(a.Int("pool-threads", 64))};
    echo = std::make_unique<DispatchedEcho>(options, absl::Microseconds(a.Int("body-us", 0)));
  }
  auto server = rpc::Server::Start(
      {.listen_address = a.Str("listen"), .tls = {a.Str("cert"), a.Str("key"), a.Str("ca")}},
      {echo.get()});
  if (!server.ok()) Args::Fail(server.status().ToString());
  (*server)->RunUntilShutdownSignal(absl::Seconds(2));
  return 0;
}

int Echo(const Args& a) {
  const int64_t n = a.Int("requests", 20000);
  const int c = static_cast<int>(a.Int("concurrency", 32));
  auto channels = Channels(a, a.Str("target"), a.Str("authority"), ClientTls(a));
  std::vector<std::unique_ptr<v1::Echo::Stub>> stubs;
  for (auto& ch : channels) stubs.push_back(v1::Echo::NewStub(ch));
  const std::string payload(64, 'x');
  RunResult r = Drive(n, c, [&](int64_t, int t) -> std::string {
    v1::EchoRequest req;
    req.set_payload(payload);
    v1::EchoResponse resp;
    grpc::Status s = Call(*stubs[t % stubs.size()], &v1::Echo::Stub::Echo, req, &resp);
    if (!s.ok()) return Fmt(s);
    return resp.payload() == payload ? "" : "payload differs";
  });
  Report("echo", r, c, r.seconds);
  return r.failed == 0 ? 0 : 1;
}

// ---- HSM #1 translate --------------------------------------------------------------------------

struct WorkKeyInfo {
  uint64_t pr_index = 0;
  crypto::PublicKey pu;
  std::string serial;
};

WorkKeyInfo CurrentWorkKey(const Args& a) {
  auto ch = Channel(a.Str("mtms"), a.Str("mtms-authority", "mtms"),
                    {a.Str("admin-cert"), a.Str("admin-key"), a.Str("ca")});
  auto stub = v1::Mtms::NewStub(ch);
  v1::ListWorkKeysResponse resp;
  grpc::Status s = Call(*stub, &v1::Mtms::Stub::ListWorkKeys, v1::Empty(), &resp);
  if (!s.ok()) Args::Fail("ListWorkKeys: " + Fmt(s));
  for (const auto& k : resp.work_keys()) {
    if (k.state() != v1::WorkKey::STATE_CURRENT) continue;
    auto cert = OrDie(crypto::Certificate::FromPem(k.certificate_pem()), "work certificate");
    return {k.hsm_key_index(), OrDie(cert.GetPublicKey(), "work public key"), k.serial_hex()};
  }
  Args::Fail("MTMS has no current work key");
}

// A new transport key for `sn`, encrypted to the current work key (Ctk_pu).
Bytes NewCtk(const WorkKeyInfo& wk, const std::string& sn) {
  SecretBytes payload = OrDie(protocol::EncodeTkPayload(NewTk()), "payload");
  return OrDie(crypto::RsaOaepEncrypt(wk.pu, payload, protocol::OaepLabel(sn)), "OAEP");
}

// --batch B: TranslateTransportKeys with B items per call, c / B calls in flight (so c
// translations in flight, as without --batch). Throughput and failures count translations;
// latency is per call.
int HsmTranslateBatches(const std::vector<v1::TranslateTransportKeyRequest>& reqs, int64_t batch,
                        int c, const std::vector<std::unique_ptr<v1::Hsm::Stub>>& stubs) {
  const int64_t calls = (static_cast<int64_t>(reqs.size()) + batch - 1) / batch;
  std::vector<v1::TranslateTransportKeysRequest> batches(calls);
  for (size_t i = 0; i < reqs.size(); ++i) *batches[i / batch].add_items() = reqs[i];
  const int threads = static_cast<int>(std::max<int64_t>(1, c / batch));
  std::atomic<int64_t> bad_items{0};
  RunResult r = Drive(calls, threads, [&](int64_t i, int t) -> std::string {
    v1::TranslateTransportKeysResponse resp;
    grpc::Status s =
        Call(*stubs[t % stubs.size()], &v1::Hsm::Stub::TranslateTransportKeys, batches[i], &resp);
    if (!s.ok()) {
      bad_items += batches[i].items_size();
      return Fmt(s);
    }
    if (resp.outcomes_size() != batches[i].items_size()) {
      bad_items += batches[i].items_size();
      return "wrong number of outcomes";
    }
    std::string err;
    for (int k = 0; k < resp.outcomes_size(); ++k) {
      const auto& outcome = resp.outcomes(k);
      auto parsed = protocol::ParseCtkPk(AsBytes(outcome.ctk_pk()));
      if (outcome.code() != 0 || !parsed.ok() || parsed->header.sn != batches[i].items(k).sn()) {
        ++bad_items;
        err = outcome.code() != 0
                  ? absl::StrCat("item: grpc ", outcome.code(), ": ", outcome.message())
                  : "Ctk_pk malformed";
      }
    }
    return err;
  });
  // Drive counted calls; the report counts translations.
  const int64_t items = static_cast<int64_t>(reqs.size());
  r.failed = bad_items.load();
  r.ok = items - r.failed;
  Report("hsm_translate_batch", r, c, r.seconds, absl::StrCat(",\"batch\":", batch));
  return r.failed == 0 ? 0 : 1;
}

// The deployment's operator card (--operator-card, --operator-pin-file).
struct OperatorCardInfo {
  crypto::Pkcs12Contents card;
  std::string operator_id;
};
OperatorCardInfo LoadOperatorCard(const Args& a) {
  std::string pin = ReadFile(a.Str("operator-pin-file"));
  while (!pin.empty() && (pin.back() == '\n' || pin.back() == '\r')) pin.pop_back();
  std::string p12 = ReadFile(a.Str("operator-card"));
  auto card =
      OrDie(crypto::ReadPkcs12(AsBytes(p12), SecretBytes::CopyOf(AsBytes(pin))), "operator card");
  const std::string cn = card.certificate.SubjectCommonName();
  return {std::move(card), cn.substr(cn.find(':') + 1)};
}

// The package an operator terminal signs for `sn`'s Ctk_Pu (PROTOCOL §4); serialized.
std::string SignedPackage(const OperatorCardInfo& op, const WorkKeyInfo& wk, const std::string& sn,
                          const Bytes& ctk, int64_t created_at_ms, Bytes* signature) {
  v1::TransportKeyPackage pkg;
  pkg.set_sn(sn);
  pkg.set_ctk_pu(std::string(AsString(ctk)));
  pkg.set_work_certificate_serial(wk.serial);
  pkg.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(KeyAlgorithm::kAes128)));
  pkg.set_created_at_unix_ms(created_at_ms);
  Bytes nonce = crypto::RandomBytes(16);
  pkg.set_nonce(std::string(AsString(nonce)));
  pkg.set_operator_id(op.operator_id);
  std::string bytes = pkg.SerializeAsString();
  *signature = OrDie(crypto::EcdsaSign(op.card.private_key, AsBytes(bytes)), "sign");
  return bytes;
}

int HsmTranslate(const Args& a) {
  const int64_t n = a.Int("requests", 5000);
  const int c = static_cast<int>(a.Int("concurrency", 32));
  WorkKeyInfo wk = CurrentWorkKey(a);
  // HSM #1 translates only what an operator signed: each request carries its package.
  const OperatorCardInfo op = LoadOperatorCard(a);
  const std::string card_der(AsString(op.card.certificate.ToDer()));
  const std::string prefix = RunPrefix("T");
  std::vector<v1::TranslateTransportKeyRequest> reqs(n);
  for (int64_t i = 0; i < n; ++i) {
    std::string sn = Sn(prefix, i);
    Bytes ctk = NewCtk(wk, sn);
    auto& r = reqs[i];
    r.set_pr_index(wk.pr_index);
    r.set_ctk_pu(std::string(AsString(ctk)));
    r.set_sn(sn);
    const int64_t created_at = absl::ToUnixMillis(absl::Now());
    r.set_created_at_unix_ms(created_at);
    Bytes signature;
    r.set_package(SignedPackage(op, wk, sn, ctk, created_at, &signature));
    r.set_package_signature(std::string(AsString(signature)));
    r.set_operator_certificate_der(card_der);
    r.set_pk_index(a.Int("pk-index", 0));
    r.set_mak_index(a.Int("mak-index", 0));
    r.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(KeyAlgorithm::kAes128)));
  }
  auto channels = Channels(a, a.Str("target"), a.Str("authority"), ClientTls(a));
  std::vector<std::unique_ptr<v1::Hsm::Stub>> stubs;
  for (auto& ch : channels) stubs.push_back(v1::Hsm::NewStub(ch));
  const int64_t batch = a.Int("batch", 1);
  if (batch > 1) return HsmTranslateBatches(reqs, batch, c, stubs);
  RunResult r = Drive(n, c, [&](int64_t i, int t) -> std::string {
    v1::TranslateTransportKeyResponse resp;
    grpc::Status s =
        Call(*stubs[t % stubs.size()], &v1::Hsm::Stub::TranslateTransportKey, reqs[i], &resp);
    if (!s.ok()) return Fmt(s);
    auto parsed = protocol::ParseCtkPk(AsBytes(resp.ctk_pk()));
    if (!parsed.ok() || parsed->header.sn != reqs[i].sn()) return "Ctk_pk malformed";
    return "";
  });
  Report("hsm_translate", r, c, r.seconds);
  return r.failed == 0 ? 0 : 1;
}

// ---- MTMS intake + forward ---------------------------------------------------------------------

struct QueueCounts {
  uint64_t received = 0, forwarded = 0, rejected = 0;
};

QueueCounts Counts(v1::Mtms::Stub& admin) {
  v1::ListQueueRequest req;
  req.mutable_page()->set_page_size(1);
  v1::ListQueueResponse resp;
  grpc::Status s = Call(admin, &v1::Mtms::Stub::ListQueue, req, &resp);
  if (!s.ok()) Args::Fail("ListQueue: " + Fmt(s));
  return {resp.received(), resp.forwarded(), resp.rejected()};
}

int Mtms(const Args& a) {
  const int64_t n = a.Int("requests", 2000);
  const int c = static_cast<int>(a.Int("concurrency", 32));
  WorkKeyInfo wk = CurrentWorkKey(a);
  const OperatorCardInfo op = LoadOperatorCard(a);
  const std::string card_pem = op.card.certificate.ToPem();

  const std::string prefix = RunPrefix("M");
  std::vector<v1::SubmitTransportKeyRequest> reqs(n);
  for (int64_t i = 0; i < n; ++i) {
    std::string sn = Sn(prefix, i);
    Bytes ctk = NewCtk(wk, sn);
    Bytes sig;
    reqs[i].set_package(SignedPackage(op, wk, sn, ctk, absl::ToUnixMillis(absl::Now()), &sig));
    reqs[i].set_signature(std::string(AsString(sig)));
    reqs[i].set_operator_certificate_pem(card_pem);
  }
  rpc::TlsFiles admin_tls{a.Str("admin-cert"), a.Str("admin-key"), a.Str("ca")};
  auto admin =
      v1::Mtms::NewStub(Channel(a.Str("mtms"), a.Str("mtms-authority", "mtms"), admin_tls));
  const QueueCounts before = Counts(*admin);
  auto channels = Channels(a, a.Str("mtms"), a.Str("mtms-authority", "mtms"), admin_tls);
  std::vector<std::unique_ptr<v1::Mtms::Stub>> stubs;
  for (auto& ch : channels) stubs.push_back(v1::Mtms::NewStub(ch));
  const auto start = Clock::now();
  RunResult r = Drive(n, c, [&](int64_t i, int t) -> std::string {
    v1::SubmitTransportKeyResponse resp;
    grpc::Status s =
        Call(*stubs[t % stubs.size()], &v1::Mtms::Stub::SubmitTransportKey, reqs[i], &resp);
    if (!s.ok()) return Fmt(s);
    return resp.submission_id().empty() ? "no receipt" : "";
  });
  // Until every accepted package has left the queue (FORWARDED or REJECTED).
  QueueCounts now;
  const auto give_up = Clock::now() + std::chrono::seconds(a.Int("drain-timeout-s", 600));
  for (;;) {
    now = Counts(*admin);
    if (now.forwarded + now.rejected - before.forwarded - before.rejected >=
            static_cast<uint64_t>(r.ok) ||
        Clock::now() > give_up)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const uint64_t forwarded = now.forwarded - before.forwarded;
  const uint64_t rejected = now.rejected - before.rejected;
  // Throughput counts FORWARDED packages only, over submission start → last forward.
  RunResult fwd = r;
  fwd.ok = static_cast<int64_t>(forwarded);
  fwd.failed = r.failed + static_cast<int64_t>(rejected);
  Report(
      "mtms_intake_forward", fwd, c, seconds,
      absl::StrFormat(",\"submit_seconds\":%.3f,\"submit_per_second\":%.1f,\"forwarded\":%d,"
                      "\"rejected\":%d,\"note\":\"latency percentiles are of SubmitTransportKey\"",
                      r.seconds, r.ok / r.seconds, forwarded, rejected));
  return (r.failed == 0 && rejected == 0 && forwarded == static_cast<uint64_t>(n)) ? 0 : 1;
}

// ---- KMS authentication + delivery + confirmation ----------------------------------------------

SecretBytes XorComponents(const std::string& files) {
  SecretBytes out(32);
  for (const auto& f : absl::StrSplit(files, ',')) {
    std::string hex = ReadFile(std::string(f));
    hex.erase(std::remove_if(hex.begin(), hex.end(), [](char ch) { return std::isspace(ch); }),
              hex.end());
    Bytes b = OrDie(FromHex(hex, "component"), "component " + std::string(f));
    if (b.size() != 32) Args::Fail("component " + std::string(f) + " is not 32 bytes");
    for (size_t i = 0; i < 32; ++i) out.RevealSecretMutable()[i] ^= b[i];
    std::fill(b.begin(), b.end(), 0);
  }
  return out;
}

struct BenchTerminal {
  std::string sn;
  protocol::TransportKey tk;
};

int Kms(const Args& a) {
  const int64_t n = a.Int("requests", 2000);
  const int c = static_cast<int>(a.Int("concurrency", 32));
  SecretBytes pk = XorComponents(a.Str("pk-components"));
  SecretBytes mak = XorComponents(a.Str("mak-components"));
  Bytes pk_kcv = OrDie(crypto::Kcv(crypto::CipherFamily::kAes, pk), "PK KCV");
  Bytes mak_kcv = OrDie(crypto::Kcv(crypto::CipherFamily::kAes, mak), "MAK KCV");
  if (a.Str("pk-kcv", "") != "" && ToHex(pk_kcv) != a.Str("pk-kcv"))
    Args::Fail("PK rebuilt from the components does not match the ceremony KCV");
  if (a.Str("mak-kcv", "") != "" && ToHex(mak_kcv) != a.Str("mak-kcv"))
    Args::Fail("MAK rebuilt from the components does not match the ceremony KCV");

  const std::string prefix = RunPrefix("K");
  std::vector<BenchTerminal> terms(n);
  std::vector<v1::KmsSubmitTransportKeyRequest> submits(n);
  for (int64_t i = 0; i < n; ++i) {
    terms[i].sn = Sn(prefix, i);
    terms[i].tk = NewTk();
    protocol::CtkPkHeader h{.algorithm = KeyAlgorithm::kAes128,
                            .sn = terms[i].sn,
                            .created_at_unix_ms = absl::ToUnixMillis(absl::Now())};
    std::copy_n(pk_kcv.begin(), 3, h.pk_kcv.begin());
    std::copy_n(mak_kcv.begin(), 3, h.mak_kcv.begin());
    SecretBytes payload = OrDie(protocol::EncodeTkPayload(terms[i].tk), "payload");
    Bytes ctk_pk = OrDie(protocol::BuildCtkPk(h, payload, pk, mak), "Ctk_pk");
    submits[i].set_sn(terms[i].sn);
    submits[i].set_ctk_pk(std::string(AsString(ctk_pk)));
    submits[i].set_mtms_submission_id(absl::StrCat("bench-", prefix, "-", i));
  }
  // Intake as MTMS would do it (not part of the measured step, reported apart).
  auto mtms_channels = Channels(a, a.Str("kms"), a.Str("kms-authority", "kms"),
                                {a.Str("mtms-cert"), a.Str("mtms-key"), a.Str("ca")});
  std::vector<std::unique_ptr<v1::Kms::Stub>> mtms_stubs;
  for (auto& ch : mtms_channels) mtms_stubs.push_back(v1::Kms::NewStub(ch));
  RunResult intake = Drive(n, c, [&](int64_t i, int t) -> std::string {
    v1::KmsSubmitTransportKeyResponse resp;
    grpc::Status s = Call(*mtms_stubs[t % mtms_stubs.size()], &v1::Kms::Stub::SubmitTransportKey,
                          submits[i], &resp);
    return s.ok() ? "" : Fmt(s);
  });
  if (intake.failed > 0) {
    Report("kms_intake", intake, c, intake.seconds);
    Args::Fail("KMS refused bench transport keys");
  }
  // Terminals: server-authenticated TLS, no client certificate, like real terminals.
  auto channels = Channels(a, a.Str("kms"), a.Str("kms-authority", "kms"), {"", "", a.Str("ca")});
  std::vector<std::unique_ptr<v1::Kms::Stub>> stubs;
  for (auto& ch : channels) stubs.push_back(v1::Kms::NewStub(ch));
  std::vector<std::vector<double>> step_ms(3);
  std::mutex step_mu;
  RunResult r = Drive(n, c, [&](int64_t i, int t) -> std::string {
    v1::Kms::Stub& kms = *stubs[t % stubs.size()];
    const BenchTerminal& term = terms[i];
    const KeyAlgorithm alg = term.tk.algorithm;
    auto keys = protocol::DeriveAuthKeys(alg, term.tk.auk, term.sn);
    if (!keys.ok()) return "derive";
    double ms[3];
    auto t0 = Clock::now();
    Bytes rnd1 = crypto::RandomBytes(crypto::BlockSize(alg));
    v1::BeginAuthenticationRequest breq;
    breq.set_sn(term.sn);
    breq.set_rnd1(std::string(AsString(rnd1)));
    v1::BeginAuthenticationResponse bresp;
    if (grpc::Status s = Call(kms, &v1::Kms::Stub::BeginAuthentication, breq, &bresp); !s.ok()) {
      return "begin: " + Fmt(s);
    }
    Bytes rnd2(bresp.rnd2().begin(), bresp.rnd2().end());
    if (!protocol::VerifyCrnd1(*keys, rnd1, rnd2, AsBytes(bresp.crnd1())).ok())
      return "KMS did not prove AUK";
    auto t1 = Clock::now();
    Bytes crnd2 = OrDie(protocol::MakeCrnd2(*keys, rnd1, rnd2), "crnd2");
    auto creq = SessionRequest<v1::CompleteAuthenticationRequest>(bresp, term.sn);
    creq.set_crnd2(std::string(AsString(crnd2)));
    v1::CompleteAuthenticationResponse cresp;
    if (grpc::Status s = Call(kms, &v1::Kms::Stub::CompleteAuthentication, creq, &cresp); !s.ok()) {
      return "complete: " + Fmt(s);
    }
    auto delivery = keyblock::ParseTmkBlock(term.tk.tek, alg, cresp.key_block());
    if (!delivery.ok() || delivery->tmk_kcv != cresp.tmk_kcv()) return "TR-31 block rejected";
    auto t2 = Clock::now();
    Bytes kcv = OrDie(crypto::Kcv(delivery->tmk_algorithm, delivery->tmk), "kcv");
    Bytes proof = OrDie(protocol::MakeInstallProof(*keys, term.sn, kcv, rnd1, rnd2), "proof");
    auto qreq = SessionRequest<v1::ConfirmInstallationRequest>(bresp, term.sn);
    qreq.set_proof(std::string(AsString(proof)));
    v1::ConfirmInstallationResponse qresp;
    if (grpc::Status s = Call(kms, &v1::Kms::Stub::ConfirmInstallation, qreq, &qresp); !s.ok()) {
      return "confirm: " + Fmt(s);
    }
    if (qresp.state() != v1::TERMINAL_STATE_INSTALLED) return "not INSTALLED";
    auto t3 = Clock::now();
    ms[0] = std::chrono::duration<double, std::milli>(t1 - t0).count();
    ms[1] = std::chrono::duration<double, std::milli>(t2 - t1).count();
    ms[2] = std::chrono::duration<double, std::milli>(t3 - t2).count();
    std::lock_guard<std::mutex> lock(step_mu);
    for (int k = 0; k < 3; ++k) step_ms[k].push_back(ms[k]);
    return "";
  });
  std::string steps = ",\"steps\":{";
  const char* names[] = {"begin_authentication", "complete_authentication", "confirm_installation"};
  for (int k = 0; k < 3; ++k) {
    absl::StrAppendFormat(&steps, "%s\"%s\":{\"p50_ms\":%.3f,\"p95_ms\":%.3f,\"p99_ms\":%.3f}",
                          k ? "," : "", names[k], Pct(step_ms[k], 50), Pct(step_ms[k], 95),
                          Pct(step_ms[k], 99));
  }
  steps += "}";
  Report("kms_auth_delivery_confirm", r, c, r.seconds,
         absl::StrFormat("%s,\"intake_per_second\":%.1f", steps, intake.ok / intake.seconds));
  return r.failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace rkl::bench

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::cerr << "usage: rkl-bench-load echo-server|echo|hsm-translate|mtms|kms --flag value ...\n"
                 "(see bench/run for the flags each generator takes)\n";
    return 2;
  }
  const std::string cmd = argv[1];
  rkl::bench::Args args(argc, argv);
  if (cmd != "echo-server")
    rkl::InitLogging({.level = spdlog::level::warn, .program = "rkl-bench-load"});
  if (cmd == "echo-server") return rkl::bench::EchoServer(args);
  if (cmd == "echo") return rkl::bench::Echo(args);
  if (cmd == "hsm-translate") return rkl::bench::HsmTranslate(args);
  if (cmd == "mtms") return rkl::bench::Mtms(args);
  if (cmd == "kms") return rkl::bench::Kms(args);
  rkl::bench::Args::Fail("unknown generator " + cmd);
}
