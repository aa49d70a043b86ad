#pragma once
// Prometheus metrics of one rkl process (docs/operations.md, "Metrics").
//
// main() makes one Metrics and hands it to what measures: the gRPC server (every RPC's count
// and latency, rkl/rpc/server.h), the database pool, the audit chain and the service itself.
// Counters and histograms live in registry(); values that live in the database (terminals by
// state, keys, the outbox) are read when Prometheus scrapes, by refreshers registered with
// OnCollect, so nothing polls in the background. StartEndpoint serves /metrics on its own
// port (`metrics.listen`); with the key empty there is no endpoint and the metrics cost only
// their in-memory updates.
//
// Guarantees:
//  - labels carry no key material, no SN and nothing else of unbounded cardinality: every
//    label value is a method, a status code or an enum name;
//  - a scrape runs the refreshers one scrape at a time; a refresher that fails keeps its
//    previous values and counts rkl_metrics_refresh_errors_total{source};
//  - the standard process metrics (process_cpu_seconds_total, process_resident_memory_bytes,
//    process_virtual_memory_bytes, process_open_fds, process_max_fds,
//    process_start_time_seconds, process_threads) are read from /proc at each scrape;
//  - thread-safe.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "rkl/common/config.h"

namespace rkl::metrics {

class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Where components add their families:
  //   prometheus::BuildCounter().Name("rkl_x_total").Help("...").Register(m.registry())
  prometheus::Registry& registry();

  // `refresh` runs before every collection (scrape), one collection at a time; it sets gauges
  // of registry() — every label value of its fixed set each time, zeros included. `source`
  // names it in rkl_metrics_refresh_errors_total and the log when it fails.
  void OnCollect(std::string source, std::function<absl::Status()> refresh);

  // Everything a scrape returns, refreshers run first.
  std::vector<prometheus::MetricFamily> Collect() const;
  // The same in Prometheus's text exposition format.
  std::string Render() const;

  // What StartEndpoint registers with the HTTP exposer.
  std::shared_ptr<prometheus::Collectable> collectable() const;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

// The value of the series `name` with exactly `labels` among `families`: a counter's or a
// gauge's value, a histogram's sample count; nullopt when there is no such series.
std::optional<double> SampleValue(const std::vector<prometheus::MetricFamily>& families,
                                  std::string_view name,
                                  const std::map<std::string, std::string>& labels = {});

// Prometheus text exposition format → value per series, keyed `name{a="x",b="y"}` with the
// labels sorted by name (just `name` without labels). Histograms appear as their _bucket,
// _sum and _count series; comments are skipped. For tests that scrape a process.
std::map<std::string, double> ParseExposition(std::string_view text);

// GET http://<address>/metrics (address "host:port") once, over plain HTTP/1.0: the body.
// UNAVAILABLE when nothing answers, INTERNAL on any status but 200. For tests that scrape a
// process.
absl::StatusOr<std::string> ScrapeOnce(const std::string& address);

// The key of `name` with `labels` as ParseExposition spells it.
std::string SeriesKey(std::string_view name, const std::map<std::string, std::string>& labels = {});

// Declares `metrics.listen`: host:port of the /metrics endpoint, empty (the default) for none.
void DeclareMetricsConfig(ConfigSchema& schema);

// The HTTP endpoint serving /metrics (prometheus-cpp's pull exposer: a small embedded web
// server with its own threads). Stops serving when destroyed.
class Endpoint {
 public:
  // Serves `metrics` on `listen` (host:port; port 0 picks a free port). `metrics` must
  // outlive the endpoint. Errors name the address.
  static absl::StatusOr<std::unique_ptr<Endpoint>> Start(const std::string& listen,
                                                         Metrics& metrics);
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  int port() const { return port_; }

 private:
  class Server;
  Endpoint(std::unique_ptr<Server> server, int port);
  std::unique_ptr<Server> server_;
  int port_;
};

// Endpoint::Start on `metrics.listen`, or nullptr (and a log line) when it is empty.
absl::StatusOr<std::unique_ptr<Endpoint>> StartEndpoint(const Config& config, Metrics& metrics);

}  // namespace rkl::metrics
