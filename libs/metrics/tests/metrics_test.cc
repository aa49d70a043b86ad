#include "rkl/metrics/metrics.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/status/status.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"

namespace rkl::metrics {
namespace {

// One scrape of 127.0.0.1:port (empty when it fails, which the test then reports).
std::string Scrape(int port) {
  auto body = ScrapeOnce("127.0.0.1:" + std::to_string(port));
  EXPECT_TRUE(body.ok()) << body.status();
  return body.ok() ? *body : "";
}

TEST(MetricsTest, CountersAndRefreshedGaugesAppearInACollection) {
  Metrics m;
  auto& counter =
      prometheus::BuildCounter().Name("rkl_test_total").Help("h").Register(m.registry());
  counter.Add({{"code", "OK"}}).Increment(3);
  auto& gauge = prometheus::BuildGauge().Name("rkl_test_depth").Help("h").Register(m.registry());
  int reads = 0;
  m.OnCollect("test", [&] {
    gauge.Add({{"state", "pending"}}).Set(++reads * 10);
    return absl::OkStatus();
  });

  auto families = m.Collect();
  EXPECT_EQ(SampleValue(families, "rkl_test_total", {{"code", "OK"}}), 3);
  EXPECT_EQ(SampleValue(families, "rkl_test_depth", {{"state", "pending"}}), 10);
  EXPECT_EQ(SampleValue(families, "rkl_test_total"), std::nullopt);  // labels must match
  EXPECT_EQ(SampleValue(m.Collect(), "rkl_test_depth", {{"state", "pending"}}), 20);
}

TEST(MetricsTest, AFailingRefreshKeepsTheOldValuesAndIsCounted) {
  Metrics m;
  auto& gauge = prometheus::BuildGauge().Name("rkl_test_depth").Help("h").Register(m.registry());
  bool fail = false;
  m.OnCollect("db", [&]() -> absl::Status {
    if (fail) return absl::UnavailableError("database down");
    gauge.Add({}).Set(7);
    return absl::OkStatus();
  });
  m.OnCollect("throws", []() -> absl::Status { throw std::runtime_error("boom"); });
  auto families = m.Collect();
  EXPECT_EQ(SampleValue(families, "rkl_test_depth"), 7);
  EXPECT_EQ(SampleValue(families, "rkl_metrics_refresh_errors_total", {{"source", "throws"}}), 1);
  EXPECT_EQ(SampleValue(families, "rkl_metrics_refresh_errors_total", {{"source", "db"}}),
            std::nullopt);
  fail = true;
  families = m.Collect();
  EXPECT_EQ(SampleValue(families, "rkl_test_depth"), 7);
  EXPECT_EQ(SampleValue(families, "rkl_metrics_refresh_errors_total", {{"source", "db"}}), 1);
}

TEST(MetricsTest, ProcessMetricsAreRead) {
  Metrics m;
  auto families = m.Collect();
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                           "process_start_time_seconds", "process_threads"}) {
    SCOPED_TRACE(name);
    auto v = SampleValue(families, name);
    ASSERT_TRUE(v.has_value());
    EXPECT_GE(*v, 0);
  }
  EXPECT_GT(*SampleValue(families, "process_resident_memory_bytes"), 0);
  EXPECT_GE(*SampleValue(families, "process_threads"), 1);
  EXPECT_GT(*SampleValue(families, "process_start_time_seconds"), 1.6e9);  // after 2020
}

TEST(MetricsTest, ParseExpositionReadsTheTextFormat) {
  auto parsed = ParseExposition(
      "# HELP rkl_x_total h\n# TYPE rkl_x_total counter\n"
      "rkl_x_total{method=\"/rkl.v1.Kms/GetTerminal\",code=\"OK\"} 12\n"
      "rkl_y 3.5\n"
      "rkl_h_bucket{le=\"+Inf\"} 4\n"
      "garbage line\n");
  EXPECT_EQ(
      parsed.at(SeriesKey("rkl_x_total", {{"code", "OK"}, {"method", "/rkl.v1.Kms/GetTerminal"}})),
      12);
  EXPECT_EQ(parsed.at("rkl_x_total{code=\"OK\",method=\"/rkl.v1.Kms/GetTerminal\"}"), 12);
  EXPECT_EQ(parsed.at("rkl_y"), 3.5);
  EXPECT_EQ(parsed.at("rkl_h_bucket{le=\"+Inf\"}"), 4);
  EXPECT_EQ(parsed.count("garbage"), 0u);
}

TEST(MetricsTest, TheEndpointServesWhatCollectReturns) {
  Metrics m;
  auto& counter =
      prometheus::BuildCounter().Name("rkl_test_total").Help("h").Register(m.registry());
  counter.Add({{"code", "OK"}}).Increment(5);
  auto endpoint = Endpoint::Start("127.0.0.1:0", m);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  ASSERT_GT((*endpoint)->port(), 0);
  auto parsed = ParseExposition(Scrape((*endpoint)->port()));
  EXPECT_EQ(parsed[SeriesKey("rkl_test_total", {{"code", "OK"}})], 5);
  EXPECT_TRUE(parsed.contains("process_cpu_seconds_total"));
}

TEST(MetricsTest, AnEndpointOnABadOrTakenAddressIsAnError) {
  Metrics m;
  auto first = Endpoint::Start("127.0.0.1:0", m);
  ASSERT_TRUE(first.ok()) << first.status();
  auto taken = Endpoint::Start("127.0.0.1:" + std::to_string((*first)->port()), m);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(taken.status().message().find("metrics.listen"), std::string::npos);
  EXPECT_FALSE(Endpoint::Start("not-an-address", m).ok());
}

TEST(MetricsTest, NoEndpointWhenMetricsListenIsEmpty) {
  ConfigSchema schema("RKL_TEST");
  DeclareMetricsConfig(schema);
  auto config =
      LoadConfigFromYaml(schema, "", [](std::string_view) { return std::optional<std::string>(); });
  ASSERT_TRUE(config.ok()) << config.status();
  Metrics m;
  auto endpoint = StartEndpoint(*config, m);
  ASSERT_TRUE(endpoint.ok());
  EXPECT_EQ(*endpoint, nullptr);
}

}  // namespace
}  // namespace rkl::metrics
