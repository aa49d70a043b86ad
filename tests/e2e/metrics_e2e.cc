// The metrics of a live deployment (issue 24), scraped from every process's /metrics endpoint
// after a fleet, checked against what happened (metrics.sh runs it):
//
//  Fleet       every process serves the RPC and process metrics and nothing of a terminal
//              (no SN) in any series; KMS counted exactly the fleet's TMK deliveries (as many
//              as its successful CompleteAuthentication calls) and holds its terminals as
//              INSTALLED; MTMS counted the fleet's translations; HSM #2 counted its
//              AuthenticateAndDeliver commands; each audit chain and database pool reports.
//  Refusals    this program causes refusals and checks each counter moved by exactly what it
//              caused: BeginAuthentication calls for one SN past its volume budget
//              (RESOURCE_EXHAUSTED answers = rkl_kms_rate_limited_total), and one wrong proof
//              for a terminal whose TK reached KMS (one auth failure; with lockout.threshold 1,
//              one lockout and one LOCKED terminal).
//
// Environment: E2E_PKI, E2E_KMS_ADDR, E2E_<SERVICE>_METRICS_ADDR (host:port) for ca, hsm-mtms,
// hsm-kms, mtms and kms, E2E_FLEET_COUNT and E2E_FLEET_PREFIX (the fleet's terminals),
// E2E_LOCK_SN (a terminal in TK_RECEIVED), E2E_RATE_SN (an SN KMS does not know).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "e2e_support.h"
#include "rkl/crypto/random.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/call_context.h"
#include "rkl/v1/kms.grpc.pb.h"

namespace rkl::e2e {
namespace {

const std::vector<std::string> kProcesses = {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms"};

std::string MetricsAddress(const std::string& process) {
  std::string env = "E2E_" + process + "_METRICS_ADDR";
  for (char& c : env) c = c == '-' ? '_' : static_cast<char>(std::toupper(c));
  return Env(env.c_str());
}

// One scrape of `address` (host:port): the body, or "" and a test failure.
std::string ScrapeText(const std::string& address) {
  absl::StatusOr<std::string> body = metrics::ScrapeOnce(address);
  EXPECT_TRUE(body.ok()) << body.status();
  return body.ok() ? *body : "";
}

using Series = std::map<std::string, double>;

Series Scrape(const std::string& process) {
  return metrics::ParseExposition(ScrapeText(MetricsAddress(process)));
}

double Value(const Series& s, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  auto it = s.find(metrics::SeriesKey(name, labels));
  return it == s.end() ? 0 : it->second;
}

// The sum of every series of `name` whose labels include `labels`.
double Sum(const Series& s, const std::string& name,
           const std::map<std::string, std::string>& labels = {}) {
  double total = 0;
  for (const auto& [key, value] : s) {
    if (key != name && !absl::StartsWith(key, name + "{")) continue;
    bool match = true;
    for (const auto& [label, v] : labels) {
      if (!absl::StrContains(key, absl::StrCat(label, "=\"", v, "\""))) match = false;
    }
    if (match) total += value;
  }
  return total;
}

int64_t FleetCount() { return static_cast<int64_t>(EnvIndex("E2E_FLEET_COUNT")); }

TEST(Fleet, EveryProcessServesItsMetricsWithoutAnySn) {
  const std::string prefix = Env("E2E_FLEET_PREFIX");
  for (const std::string& process : kProcesses) {
    SCOPED_TRACE(process);
    std::string text = ScrapeText(MetricsAddress(process));
    Series s = metrics::ParseExposition(text);
    EXPECT_GT(Value(s, "process_cpu_seconds_total"), 0);
    EXPECT_GT(Value(s, "process_resident_memory_bytes"), 0);
    EXPECT_GT(Sum(s, "rkl_rpc_requests_total", {{"code", "OK"}}), 0);
    EXPECT_GT(Sum(s, "rkl_rpc_duration_seconds_count"), 0);
    EXPECT_GT(Sum(s, "rkl_db_pool_acquisitions_total"), 0);
    EXPECT_FALSE(absl::StrContains(text, prefix)) << "an SN in the metrics";
    EXPECT_FALSE(absl::StrContains(text, Env("E2E_LOCK_SN"))) << "an SN in the metrics";
  }
}

TEST(Fleet, KmsCountedEveryDeliveryAndHoldsTheTerminalsInstalled) {
  const int64_t n = FleetCount();
  Series kms = Scrape("kms");
  EXPECT_EQ(Value(kms, "rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}), n);
  EXPECT_EQ(Value(kms, "rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}),
            Value(kms, "rkl_rpc_requests_total",
                  {{"method", "/rkl.v1.Kms/CompleteAuthentication"}, {"code", "OK"}}));
  EXPECT_EQ(Value(kms, "rkl_kms_terminals", {{"state", "installed"}, {"protocol", "patent"}}), n);
  EXPECT_EQ(Value(kms, "rkl_rpc_requests_total",
                  {{"method", "/rkl.v1.Kms/ConfirmInstallation"}, {"code", "OK"}}),
            n);
  EXPECT_GT(Value(kms, "rkl_audit_chain_records", {{"chain", "kms"}}), 0);

  Series hsm_kms = Scrape("hsm-kms");
  EXPECT_EQ(Value(hsm_kms, "rkl_hsm_commands_total",
                  {{"command", "AuthenticateAndDeliver"}, {"result", "OK"}}),
            Value(kms, "rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}));
  EXPECT_EQ(Value(hsm_kms, "rkl_hsm_self_test_ok"), 1);
  EXPECT_GE(Value(hsm_kms, "rkl_hsm_keys", {{"type", "tmk"}, {"state", "active"}}), n);
  EXPECT_GT(Value(hsm_kms, "rkl_audit_chain_records", {{"chain", "hsm"}}), 0);
}

TEST(Fleet, MtmsCountedEveryTranslation) {
  const int64_t n = FleetCount();
  Series mtms = Scrape("mtms");
  // The lock test's terminal was submitted too.
  EXPECT_EQ(Value(mtms, "rkl_mtms_translations_total", {{"result", "ok"}}), n + 1);
  EXPECT_GE(Value(mtms, "rkl_mtms_forward_attempts_total"), n + 1);
  EXPECT_EQ(Value(mtms, "rkl_mtms_outbox_oldest_unforwarded_age_seconds"), 0);
  EXPECT_GT(Value(mtms, "rkl_mtms_work_key_expiry_days"), 0);
  EXPECT_GT(Value(mtms, "rkl_audit_chain_records", {{"chain", "mtms"}}), 0);

  Series hsm_mtms = Scrape("hsm-mtms");
  EXPECT_GT(Sum(hsm_mtms, "rkl_hsm_commands_total", {{"result", "OK"}}), 0);
  EXPECT_EQ(Value(hsm_mtms, "rkl_hsm_self_test_ok"), 1);

  Series ca = Scrape("ca");
  EXPECT_GT(Sum(ca, "rkl_ca_certificates", {{"state", "valid"}}), 0);
  EXPECT_GT(Value(ca, "rkl_ca_crl_next_update_days", {{"issuer", "service-ca"}}), 0);
}

std::unique_ptr<v1::Kms::Stub> KmsAsTerminal() {
  auto channel = rpc::MakeChannel(ServiceAddress("kms"), ChannelOptionsAs("kms", Who::kNone));
  EXPECT_TRUE(channel.ok()) << channel.status();
  return v1::Kms::NewStub(*channel);
}

std::string RandomBytes(size_t n) {
  Bytes b(n);
  crypto::FillRandom(b);
  return std::string(b.begin(), b.end());
}

// BeginAuthentication for `sn` as an AES terminal would send it (a fresh 16-byte Rnd1).
grpc::Status Begin(v1::Kms::Stub& kms, const std::string& sn,
                   v1::BeginAuthenticationResponse* challenge) {
  v1::BeginAuthenticationRequest req;
  req.set_sn(sn);
  req.set_rnd1(RandomBytes(16));
  auto ctx = rpc::MakeClientContext(absl::Seconds(30));
  return kms.BeginAuthentication(ctx.get(), req, challenge);
}

TEST(Refusals, EveryRateLimitedCallIsCounted) {
  auto kms = KmsAsTerminal();
  const std::string sn = Env("E2E_RATE_SN");
  const double before = Value(Scrape("kms"), "rkl_kms_rate_limited_total");
  // Past the SN's burst (limits.per_sn.burst, 20 by default): the answers say how many were
  // refused, whatever the machine's speed.
  int refused = 0;
  for (int i = 0; i < 60; ++i) {
    v1::BeginAuthenticationResponse resp;
    grpc::Status s = Begin(*kms, sn, &resp);
    ASSERT_NE(s.error_code(), grpc::StatusCode::OK) << "KMS does not know " << sn;
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++refused;
  }
  EXPECT_GT(refused, 0);
  EXPECT_EQ(Value(Scrape("kms"), "rkl_kms_rate_limited_total") - before, refused);
}

TEST(Refusals, OneWrongProofIsOneAuthFailureAndWithThresholdOneALockout) {
  auto kms = KmsAsTerminal();
  const std::string sn = Env("E2E_LOCK_SN");
  Series before = Scrape("kms");
  ASSERT_EQ(Value(before, "rkl_kms_terminals", {{"state", "locked"}, {"protocol", "patent"}}), 0);

  v1::BeginAuthenticationResponse challenge;
  grpc::Status s = Begin(*kms, sn, &challenge);
  ASSERT_TRUE(s.ok()) << s.error_message();

  v1::CompleteAuthenticationRequest complete;
  complete.set_session_id(challenge.session_id());
  complete.set_sn(sn);
  complete.set_crnd2(RandomBytes(32));  // E(K_p2k, Rnd2 ‖ Rnd1) of an AES terminal, but wrong
  v1::CompleteAuthenticationResponse delivery;
  auto ctx = rpc::MakeClientContext(absl::Seconds(30));
  s = kms->CompleteAuthentication(ctx.get(), complete, &delivery);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();

  Series after = Scrape("kms");
  EXPECT_EQ(
      Value(after, "rkl_kms_auth_failures_total") - Value(before, "rkl_kms_auth_failures_total"),
      1);
  EXPECT_EQ(Value(after, "rkl_kms_lockouts_total") - Value(before, "rkl_kms_lockouts_total"), 1);
  EXPECT_EQ(Value(after, "rkl_kms_terminals", {{"state", "locked"}, {"protocol", "patent"}}), 1);
  EXPECT_EQ(Value(after, "rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}),
            Value(before, "rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}));
}

}  // namespace
}  // namespace rkl::e2e
